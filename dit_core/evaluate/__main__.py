"""``python -m dit_core.evaluate --checkpoint RUN_OR_FILE [--num-samples N --sampler ddim --steps 50
--cfg-scale 1.5 --reference digits --metrics fid,fid_digits --mlflow-run-id ID]``.

Samples with the checkpoint's EMA weights (on every process under ``accelerate launch``), computes
the metrics against cached reference statistics, prints them as JSON and optionally logs them to
MLflow as ``eval/<metric>`` at the checkpoint's step. Every sampling setting not given is the run's
own (``eval.*`` and its seed), so the default result is comparable with the run's logged metrics.
Exits 2 with a message on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from ..atomic import atomic_write_text
from ..config import TrainConfig
from ..configio import KeepRawFormatter, exit_codes_help, float_where, int_at_least
from ..device import DEVICE_HELP
from ..diffusion.config import SAMPLERS
from ..tracking import EVAL_PREFIX, FEATURE_SPACE_TAG, feature_space_tag
from .checkpoint_eval import CheckpointEvalConfig
from .features import WEIGHTS_ENV
from .metrics import INCEPTION_METRICS, METRICS, domain_metrics

log = logging.getLogger("dit_core.evaluate")

#: the CLI's exit codes (docs/interfaces.md, "Exit codes"), listed in its --help
EXIT_CODES = {
    0: "the metrics printed (and written, logged)",
    1: "the model failed: sampling gave NaN or inf (lower --cfg-scale, or another checkpoint);\n"
    "or, under accelerate launch, a rank waited --dist-timeout-s for another; or a crash (a\n"
    "traceback); nothing logged",
    2: "bad input (a flag, the checkpoint, --reference, --inception-weights, --mlflow-run-id, an\n"
    "output path), said in one line, nothing logged; or, after the scoring, an --output that\n"
    "cannot be written or scores the run refuses (the metrics are printed)",
    130: "Ctrl-C; nothing logged",
}
ACCELERATE_CODES = (
    "Under accelerate launch each process exits with these; the launcher (torchrun) exits 1 when\n"
    "any of them fails (its report lists each rank's exitcode), or 128 + the signal it got itself."
)


_OWN = "default: the run's own, as its logged eval/* metrics"
_DOMAIN, _INCEPTION = ", ".join(domain_metrics("<d>")), ", ".join(INCEPTION_METRICS)  # as default_metrics
#: the CLI's flags in --help's order (`build_parser`)
_FLAGS = (
    ("--checkpoint", dict(required=True, help="checkpoint .pt or a run folder (latest checkpoint)")),
    ("--num-samples", dict(type=int_at_least(2, "num_samples", " to fit a covariance"),
                           help=f"samples to score, >= 2 ({_OWN}: eval.num_samples)")),
    ("--batch-size", dict(type=int_at_least(1), default=CheckpointEvalConfig.batch_size,
                          help="per-process sampling batch (default: %(default)s)")),
    ("--sampler", dict(help=f"{' | '.join(SAMPLERS)} ({_OWN}: eval.sampler)")),
    ("--steps", dict(type=int_at_least(1), help=f"sampler steps ({_OWN}: eval.steps)")),
    ("--cfg-scale", dict(type=float, help=f"guidance scale, 1 = none ({_OWN}: eval.cfg_scale)")),
    ("--seed", dict(type=int_at_least(0), help=f"sampling seed, >= 0 ({_OWN}: the run's seed)")),
    ("--reference", dict(help="digits[:split] | photos[:options] | image folder | .npz with arr_0")),
    ("--metrics", dict(help=f"comma list of {sorted(METRICS)}. Default: the run's own (eval.metrics, else "
                       f"{_DOMAIN} for a <d> = digits | photos run, and fid alone for other data); with "
                       f"--reference, that reference's: {_INCEPTION}, after those four for <d>")),
    ("--inception-weights", dict(help=f"Inception .pt (else ${WEIGHTS_ENV}, ...)")),
    ("--vae", dict(help="local diffusers AutoencoderKL folder, or a pipeline folder with it in vae/ (latent "
                   "runs only; refused for pixel-space runs)")),
    ("--raw-weights", dict(action="store_true", help="use the raw weights instead of the EMA")),
    ("--device", dict(default=CheckpointEvalConfig.device,
                      help=f"{DEVICE_HELP}; under accelerate launch, each process's own")),
    ("--clip-denoised", dict(action=argparse.BooleanOptionalAction, default=None,
                             help="clamp the sampler's x0 estimate to [-1, 1] at each step (default: as the "
                             "run's own evaluation, eval.clip_denoised: on for pixel data, off for latents "
                             "and flow models)")),
    ("--mlflow-run-id", dict(help="log eval/<metric> to this run at the ckpt step (only with the run's own "
                             "sampling settings; the seed may differ)")),
    ("--output", dict(help="also write the metrics JSON here")),
    ("--save-samples", dict(help="write the samples to this .npz file (arr_0 NHWC uint8, labels)")),
    ("--dist-timeout-s", dict(type=float_where("a finite number > 0"), default=TrainConfig.dist_timeout_s,
                              help="under accelerate launch, the seconds a rank waits for the others in one "
                              "collective before it exits 1 saying so (another rank is stuck: a deadlock, "
                              "stuck I/O). Default: %(default)g, torch's for gloo, as the trainer's. Raise "
                              "it when rank 0 alone may take longer: it scores every sample (Inception "
                              "features, a reference's statistics on first use) while the others wait")),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dit_core.evaluate",
        description=__doc__.split("\n\n")[1],
        epilog=exit_codes_help(EXIT_CODES, ACCELERATE_CODES),
        formatter_class=KeepRawFormatter,
    )
    for flag, kwargs in _FLAGS:
        p.add_argument(flag, **kwargs)
    return p


def _other_feature_space(run_id: str, space: str) -> str | None:
    """Why scores in ``space`` may not go into run ``run_id`` (its FIDs are in another), or None."""
    from mlflow import MlflowClient

    have = MlflowClient().get_run(run_id).data.tags.get(FEATURE_SPACE_TAG)
    if have is None or have == space:
        return None
    return (
        f"run {run_id}'s FIDs are in the feature space {have!r}, these in {space!r} (another training of "
        "the classifier, e.g. on another CPU type; docs/evaluation.md): logging them would mix the two. "
        "Nothing was logged; keep the result with --output, or score with the run's own classifier"
    )


def _check_run(run_id: str) -> None:
    """ValueError, before any sampling, when ``run_id`` is not a run of the tracking store."""
    from mlflow import MlflowClient, get_tracking_uri
    from mlflow.exceptions import MlflowException

    from ..tracking import check_sqlite_store, check_tracking_server

    uri = get_tracking_uri()
    where = (
        "give the id in the run folder's mlflow_run_id file, and set MLFLOW_TRACKING_URI to the store the "
        "run is in"
    )
    missing = f"--mlflow-run-id {run_id}: the MLflow tracking store {uri} does not exist; {where}"
    try:
        if uri.startswith(("http://", "https://")):  # MLflow would retry for minutes, then say "no such run"
            check_tracking_server(uri, "start it, or set MLFLOW_TRACKING_URI to the store the run is in")
        # reading only: MLflow would create an empty store (in the working folder by default) just to look
        check_sqlite_store(uri, missing=missing)
    except ValueError as e:
        raise ValueError(str(e) if str(e) == missing else f"--mlflow-run-id {run_id}: {e}") from None
    try:
        MlflowClient().get_run(run_id)
    except MlflowException as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ValueError(
            f"--mlflow-run-id {run_id}: no such run in the MLflow tracking store {uri} ({why}); {where}"
        ) from None


def _check_folders(args: argparse.Namespace) -> None:
    """ValueError, before any sampling, when a file to write a result into cannot be: its folder does
    not exist, or the path is a folder."""
    for flag, path, name in (
        ("--output", args.output, "metrics.json"),
        ("--save-samples", args.save_samples, "samples.npz"),
    ):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(
                f"{flag} {path}: the folder {folder} does not exist; create it or give another path"
            )
        if os.path.isdir(path):
            raise ValueError(f"{flag} {path} is a folder; give a file name, e.g. {os.path.join(path, name)}")


#: Ctrl-C's message, whenever it comes before the metrics
INTERRUPTED = "error: interrupted (Ctrl-C) before the metrics were computed; nothing was logged"
#: where a rank that waited --dist-timeout-s for another stopped (`timeout_explained`)
STOPPED_WHEN = "before the metrics were computed"
TERMINATED = "error: terminated (SIGTERM) before the metrics were computed; nothing was logged"


class Terminated(BaseException):
    """SIGTERM to one of several processes: the launcher's, once another rank has exited (or when it
    was signalled itself). Not raised: `_on_sigterm` ends the process from its handler."""


def _on_sigterm(accelerator, timeout_s: float):
    """The SIGTERM handler of a multi-process evaluation until every rank has scored: says why and
    leaves (`_leave`) at once, wherever the main thread was (another rank that failed, named, exit 1;
    else the signal itself, after the shutdown). Written straight to the stderr file descriptor (the
    main thread may be inside a write to ``sys.stderr``)."""

    def handler(_signum: int, _frame) -> None:
        code, message, _ = _failure(Terminated(), accelerator, timeout_s)
        os.write(2, (message + "\n").encode())
        _leave(accelerator, code, together=False)

    return handler


def _failure(err: BaseException, accelerator, timeout_s: float) -> tuple[int, str, bool]:
    """(exit code, its one-line message, whether it names another rank's failure) for ``err``, which
    stopped this process before the metrics. With several processes, a later SIGTERM is ignored from
    here on (this rank is on its way out), and an error that is not bad input or NaN samples (gloo's
    lost peer, the launcher's SIGTERM) names first the rank that failed before it (`failed_peers`);
    else a SIGTERM is handed on after the shutdown (code ``-SIGTERM``), a collective that waited
    ``timeout_s`` (`timeout_explained`) is said in one line (exit 1), and a crash is logged with its
    traceback (raised, with one process)."""
    several = accelerator is not None and accelerator.num_processes > 1
    if several:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if isinstance(err, KeyboardInterrupt):
        return 130, INTERRUPTED, False
    if isinstance(err, (ValueError, FloatingPointError)):  # bad input (2); NaN samples: the model failed (1)
        return (2 if isinstance(err, ValueError) else 1), f"error: {err}", False
    if not several:
        raise err
    from ..trainer.ranklog import failed_peers, timeout_explained

    rank = accelerator.process_index
    if peers := failed_peers(rank, accelerator.num_processes):
        log.debug("rank %d stopped on %s", rank, type(err).__name__, exc_info=err)
        first = "; ".join(f"rank {other} failed: {error}" for other, error in peers.items())
        return 1, f"error: {first} (rank {rank} stopped with it)", True
    if isinstance(err, Terminated):
        return -signal.SIGTERM, TERMINATED, False
    if (said := timeout_explained(err, timeout_s, rank, STOPPED_WHEN)) is not err:
        return 1, f"error: {said}", False
    log.error("rank %d stopped on %s", rank, type(err).__name__, exc_info=err)
    return 1, f"error: rank {rank} stopped on {type(err).__name__}: {err}", False


def _agree(accelerator, code: int, message: str, timeout_s: float) -> tuple[int, str, bool]:
    """Every rank's outcome of the checks (a collective): (the first failing rank's code and message,
    naming that rank unless it is 0; whether this rank says it: rank 0 only). A rank that stopped on
    Ctrl-C has left: the others' collective fails, and names it if it could."""
    from accelerate.utils import gather_object

    rank = accelerator.process_index
    try:
        outcomes = gather_object([(code, message)])
    except Exception as e:  # noqa: BLE001 - a rank that has gone (its Ctrl-C, a crash)
        return *_failure(e, accelerator, timeout_s)[:2], True
    for other, (their_code, their_message) in enumerate(outcomes):
        if their_code:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # on the way out (`_leave`)
            named = not other or their_message.startswith(f"error: rank {other} ")
            return their_code, their_message + ("" if named else f" (on rank {other})"), rank == 0
    return 0, "", False


def _leave(accelerator, code: int, together: bool) -> None:
    """End a multi-process evaluation: wait for the others (``together``: every rank is still here),
    shut the process group down, and exit with ``code`` (a negative one: by that signal), skipping the
    interpreter's teardown (gloo on CPU can abort or hang there: notes/dependencies.md section 0). On
    an error, the launcher's SIGTERM meanwhile (another rank exited first) ends it with ``code`` too."""
    if code > 0 and not together:
        signal.signal(signal.SIGTERM, lambda _signum, _frame: os._exit(code))
    if together:
        accelerator.wait_for_everyone()
    accelerator.end_training()  # destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from ..memory import keep_freed_memory
    from ..trainer.ranklog import process_state, publish_failure, timeout_explained
    from .checkpoint_eval import check_output_files, prepare_checkpoint_eval, score_prepared
    from .sampling import log_metrics

    keep_freed_memory()  # sampling reuses its blocks instead of faulting them in (dit_core.memory)

    accelerator, timeout_s = None, args.dist_timeout_s
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import Accelerator

        process_state(timeout_s)  # the process group, with its collective timeout
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    several = accelerator is not None and accelerator.num_processes > 1
    if several:  # the launcher's SIGTERM once another rank has exited: named
        signal.signal(signal.SIGTERM, _on_sigterm(accelerator, timeout_s))
    opts = {k: v for k, v in vars(args).items() if k in CheckpointEvalConfig.__dataclass_fields__}
    opts["metrics"] = args.metrics.split(",") if args.metrics else None
    cfg = CheckpointEvalConfig(
        **opts,
        use_ema=not args.raw_weights,
        log_to_run=bool(args.mlflow_run_id),
        run_id=args.mlflow_run_id,
        progress=sys.stderr.isatty(),
    )
    spaces: dict[str, str] = {}
    code, message, say = 0, "", True
    try:  # the checks, each process on its own
        _check_folders(args)
        check_output_files(
            {"--output": args.output, "--save-samples": args.save_samples}, [args.checkpoint, args.reference]
        )
        if args.mlflow_run_id:
            _check_run(args.mlflow_run_id)
        prepared = prepare_checkpoint_eval(cfg, accelerator)
    except (Exception, KeyboardInterrupt) as e:
        code, message, _ = _failure(e, accelerator, timeout_s)
    if several and code in (0, 1, 2):  # the ranks agree: the same input may be bad on one rank only
        code, message, say = _agree(accelerator, code, message, timeout_s)
    if not code:
        try:
            metrics = score_prepared(prepared, cfg, accelerator, spaces)
        except (Exception, KeyboardInterrupt) as e:  # this rank's own error, or a lost peer's
            (code, message, peers), say = _failure(e, accelerator, timeout_s), True
            if several and code in (1, 2) and not peers:  # for the others, waiting for it in a collective
                said = timeout_explained(e, timeout_s, accelerator.process_index, STOPPED_WHEN)  # not gloo's
                publish_failure(accelerator.process_index, f"{type(said).__name__}: {said}")
    if code:  # the checks or the scoring failed
        if say:
            print(message, file=sys.stderr)
        if several:
            _leave(accelerator, code, together=False)
        return code
    if several:  # every rank has scored: a SIGTERM now acts as it would without this CLI
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    refused, unwritten = None, False
    if accelerator is None or accelerator.is_main_process:
        if args.mlflow_run_id and spaces:
            refused = _other_feature_space(args.mlflow_run_id, feature_space_tag(spaces))
        step, scores = prepared.step, {EVAL_PREFIX + k: v for k, v in metrics.items()}
        out = {"step": step, "num_samples": prepared.num_samples, **scores}
        print(json.dumps(out, indent=2))
        if args.output:
            try:  # whole or not at all: an interrupted write leaves no torn JSON that looks like a result
                atomic_write_text(Path(args.output), json.dumps(out, indent=2))
            except OSError as e:
                print(
                    f"error: --output {args.output}: cannot write it ({e.strerror or e}); the metrics are "
                    "printed above",
                    file=sys.stderr,
                )
                unwritten = True
        if refused:
            print(f"error: {refused}", file=sys.stderr)
        elif args.mlflow_run_id:
            if held := log_metrics(metrics, step, run_id=args.mlflow_run_id):
                where = f"printed above and in --output {args.output}" if args.output else "printed above"
                print(f"note: run {args.mlflow_run_id} already holds {', '.join(held)} at step {step}: its "
                      "first scores are kept (one value per step), so these were not logged again; this "
                      f"result is {where}", file=sys.stderr)  # fmt: skip
            if spaces:
                from mlflow import MlflowClient

                MlflowClient().set_tag(args.mlflow_run_id, FEATURE_SPACE_TAG, feature_space_tag(spaces))
    code = 2 if refused or unwritten else 0
    if accelerator is not None:
        _leave(accelerator, code, together=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
