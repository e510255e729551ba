#!/usr/bin/env bash
# slurm-ci.sh - idempotent throw-away single-node SLURM cluster (Debian 12 / Ubuntu, root, no systemd needed).
#
#   slurm-ci.sh up       install the packages if needed, start munged (+ mariadbd/slurmdbd), slurmctld,
#                        slurmd, wait until the node is idle. A no-op when already up with the same settings.
#   slurm-ci.sh down     cancel all jobs, then stop ONLY the daemons this script started (by pid file).
#   slurm-ci.sh status   print daemon states and `sinfo`; exit 0 when the cluster is up, 3 when it is not.
#   slurm-ci.sh restart  down + up.
#
# Environment:
#   SLURM_CI_CPUS        CPUs declared for the node (default: nproc). May exceed the real core count
#                        (SlurmdParameters=config_overrides) so that small jobs run concurrently.
#   SLURM_CI_ACCOUNTING  1 = also run MariaDB + slurmdbd so that `sacct` works and job states are real
#                        (submitit reads job states with sacct; recommended). Default 0.
#   SLURM_CI_RUN         directory for pid and log files of the daemons (default /tmp/slurm-ci-run).
#
# Settings and their reasons are documented in slurm/README.md. Cluster: ClusterName=ci, one node
# `localhost`, one partition `debug` (default). A foreign /etc/slurm/slurm.conf is never overwritten.
set -euo pipefail

RUN=${SLURM_CI_RUN:-/tmp/slurm-ci-run}
CPUS=${SLURM_CI_CPUS:-$(nproc)}
ACCT=${SLURM_CI_ACCOUNTING:-0}
CONF=/etc/slurm/slurm.conf
MARK="# managed by slurm-ci.sh"
NODE=localhost     # hostname-independent: slurmd is started with -N localhost

log() { echo "[slurm-ci $(date +%T)] $*" >&2; }

alive() {  # alive NAME -> true if $RUN/NAME.pid holds a live process whose comm is NAME
    local f="$RUN/$1.pid" pid
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ -r /proc/$pid/comm && $(</proc/$pid/comm) == "$1" ]] || return 1
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]   # a zombie counts as stopped
}

start() {  # start NAME CMD... : run CMD (which must exec NAME in the foreground) in background
    local name=$1; shift
    if alive "$name"; then log "$name already running (pid $(<"$RUN/$name.pid"))"; return; fi
    "$@" >"$RUN/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
    log "started $name (pid $!)"
}

stop() {  # stop NAME : TERM, wait up to 20 s, then KILL - only the pid we recorded
    local name=$1 pid i
    if ! alive "$name"; then rm -f "$RUN/$name.pid"; return; fi
    pid=$(<"$RUN/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do alive "$name" || break; sleep 0.2; done
    if alive "$name"; then log "$name did not stop, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
    rm -f "$RUN/$name.pid"
    log "stopped $name (pid $pid)"
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
    local t=$1 what=$2; shift 2
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then log "timeout waiting for $what"; tail -n 30 "$RUN"/*.log >&2 || true; return 1; fi
        sleep 0.2
    done
}

install_pkgs() {
    local pkgs=(slurmctld slurmd slurm-client munge)
    [[ $ACCT == 1 ]] && pkgs+=(slurmdbd mariadb-server)
    local missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: 8 packages instead of ~43; policy-rc.d/no systemd -> services are not auto-started
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_conf() {
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        log "$CONF exists and is not ours; refusing to overwrite"; exit 1
    fi
    local mem; mem=$(awk '/MemTotal/ {printf "%d", $2/1024*0.85}' /proc/meminfo)
    local acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    [[ $ACCT == 1 ]] && acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    local new="$RUN/slurm.conf.new"
    cat >"$new" <<EOF
$MARK
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
# requeued jobs wait cred_expire seconds before they may start again (default 120, min 5)
AuthInfo=cred_expire=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# fast scheduling loops (defaults 30 s / 60 s) so requeued/pending jobs start quickly
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# allow CPUS > real cores (oversubscribed CI node) without the node being marked INVALID
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
# one job array per sweep: up to 10,000 cells (default 1001); MaxJobCount must hold them all
MaxArraySize=10001
MaxJobCount=50000
$acct
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if ! cmp -s "$new" "$CONF"; then
        if alive slurmctld || alive slurmd; then log "slurm.conf changed: restarting the cluster"; down; fi
        mv "$new" "$CONF"
    else
        rm -f "$new"
    fi
    if [[ $ACCT == 1 ]]; then
        cat >/etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
EOF
        chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a world-readable config
    fi
}

preflight() {
    if [[ $(id -u) != 0 ]]; then
        echo "slurm-ci.sh: must run as root (it installs packages and starts daemons); try: sudo $0 $*" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null && ! command -v slurmctld >/dev/null; then
        echo "slurm-ci.sh: needs a Debian/Ubuntu system (apt-get) or preinstalled slurmctld/slurmd/munge;" \
            "on other systems run it inside a debian:12 container (see slurm/README.md)" >&2
        exit 1
    fi
    [[ $CPUS =~ ^[1-9][0-9]*$ ]] || { echo "slurm-ci.sh: SLURM_CI_CPUS must be a positive integer, got '$CPUS'" >&2; exit 1; }
    [[ $ACCT == 0 || $ACCT == 1 ]] || { echo "slurm-ci.sh: SLURM_CI_ACCOUNTING must be 0 or 1, got '$ACCT'" >&2; exit 1; }
}

up() {
    local t0=$SECONDS
    preflight
    install_pkgs
    mkdir -p "$RUN" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    # munge: Debian's postinst creates the key; make one if it is missing
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge   # systemd's RuntimeDirectory= normally does this
    write_conf

    start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
    wait_for 20 munged munge -n

    if [[ $ACCT == 1 ]]; then
        install -d -o mysql -g mysql -m 0755 /run/mysqld
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
        start mariadbd /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock
        wait_for 60 mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping
        # fresh accounting DB on a fresh start: if /var/spool/slurmctld is ever wiped, job ids
        # restart at 1 and old rows with the same ids would make sacct/submitit see stale states
        alive slurmdbd || mariadb --socket=/run/mysqld/mysqld.sock -e 'DROP DATABASE IF EXISTS slurm_acct_db'
        start slurmdbd /usr/sbin/slurmdbd -D
        wait_for 30 slurmdbd sacctmgr -i show cluster
    fi

    local clear=()
    alive slurmctld || clear=(-c)     # fresh start: forget jobs/node state of earlier runs
    start slurmctld /usr/sbin/slurmctld -D "${clear[@]}"
    wait_for 30 slurmctld scontrol ping
    start slurmd /usr/sbin/slurmd -D -N "$NODE"
    wait_for 60 "node idle" bash -c "sinfo -h -n $NODE -o %T | grep -Eq '^(idle|mixed|allocated)'"
    log "cluster up in $((SECONDS - t0)) s"
    sinfo >&2
}

down() {
    if alive slurmctld; then
        # cancel everything so no slurmstepd/job processes outlive the cluster
        scancel --full --quiet $(squeue -h -o %A) 2>/dev/null || true
        wait_for 30 "jobs gone" bash -c '[[ -z $(squeue -h -o %A) ]]' || true
    fi
    stop slurmd
    stop slurmctld
    stop slurmdbd
    stop mariadbd
    stop munged
}

status() {
    local n
    for n in munged mariadbd slurmdbd slurmctld slurmd; do
        if alive "$n"; then echo "$n: running (pid $(<"$RUN/$n.pid"))"; else echo "$n: stopped"; fi
    done
    if alive slurmctld && alive slurmd; then
        sinfo
        return 0
    fi
    return 3
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    restart) down; up ;;
    *) echo "usage: $0 up|down|status|restart" >&2; exit 2 ;;
esac
