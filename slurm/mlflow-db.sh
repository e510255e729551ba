#!/usr/bin/env bash
# mlflow-db.sh - the PostgreSQL database behind a many-writer `mlflow server` (Debian 12, run as root).
#   mlflow-db.sh up      install postgresql (if needed), start its cluster, create the role and database
#   mlflow-db.sh down    stop the cluster (data and packages stay)
#   mlflow-db.sh status
#   mlflow-db.sh uri     print the backend-store URI for `mlflow server --backend-store-uri`
# Env knobs: MLFLOW_DB_USER (default ditscale), MLFLOW_DB_PASSWORD (default ditscale: a throw-away CI
#            password; set your own on a shared machine), MLFLOW_DB_NAME (default mlflow).
# The cluster listens on 127.0.0.1 only (Debian's default listen_addresses = 'localhost'), password
# (scram-sha-256) over TCP; the role may create databases (tests make a fresh one per session).
set -euo pipefail

DB_USER=${MLFLOW_DB_USER:-ditscale}
DB_PASS=${MLFLOW_DB_PASSWORD:-ditscale}
DB_NAME=${MLFLOW_DB_NAME:-mlflow}

log() { echo "[mlflow-db $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

install_pkgs() {
    if dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "ok installed"; then return; fi
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # no systemd here: the postinst cannot start the cluster (policy-rc.d), `up` starts it below
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

cluster() {  # "VERSION NAME" of the first cluster (Debian's postinst creates 15/main)
    pg_lsclusters -h 2>/dev/null | awk 'NR == 1 {print $1, $2}'
}

psql_admin() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtA "$@"; }

up() {
    local t0=$SECONDS c
    install_pkgs
    c=$(cluster)
    if [[ -z $c ]]; then
        local v; v=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        [[ -n $v ]] || die "postgresql is installed but /usr/lib/postgresql holds no version"
        log "creating cluster $v/main"
        pg_createcluster "$v" main >/dev/null
        c="$v main"
    fi
    # shellcheck disable=SC2086
    if ! pg_ctlcluster $c status >/dev/null 2>&1; then
        log "starting cluster $c"
        # shellcheck disable=SC2086
        pg_ctlcluster $c start || { tail -n 30 /var/log/postgresql/*.log >&2 || true; die "cluster $c did not start"; }
    fi
    local i
    for i in $(seq 100); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
    pg_isready -q -h 127.0.0.1 || die "postgresql does not answer on 127.0.0.1"
    if [[ -z $(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'") ]]; then
        psql_admin -c "CREATE ROLE \"$DB_USER\" LOGIN CREATEDB PASSWORD '$DB_PASS'"
        log "created role $DB_USER"
    else
        psql_admin -c "ALTER ROLE \"$DB_USER\" LOGIN CREATEDB PASSWORD '$DB_PASS'"
    fi
    if [[ -z $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ]]; then
        psql_admin -c "CREATE DATABASE \"$DB_NAME\" OWNER \"$DB_USER\""
        log "created database $DB_NAME"
    fi
    # the password works over TCP (what mlflow server and the tests use)
    PGPASSWORD=$DB_PASS psql -qtA -h 127.0.0.1 -U "$DB_USER" -d "$DB_NAME" -c "SELECT 1" >/dev/null \
        || die "cannot log in as $DB_USER on 127.0.0.1"
    log "postgresql up in $((SECONDS - t0)) s: $(uri)"
}

down() {
    local c; c=$(cluster)
    [[ -n $c ]] || return 0
    # shellcheck disable=SC2086
    if pg_ctlcluster $c status >/dev/null 2>&1; then pg_ctlcluster $c stop -m fast; log "stopped $c"; fi
}

status() {
    pg_lsclusters
}

uri() { echo "postgresql://$DB_USER:$DB_PASS@127.0.0.1:5432/$DB_NAME"; }

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    uri) uri ;;
    *) echo "usage: $0 up|down|status|uri" >&2; exit 2 ;;
esac
