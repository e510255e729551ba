"""Encode an image folder into VAE latents once, so DiT trains on latents (the fast-DiT approach):
``python -m dit_core.extract_latents --data-path DIR --output OUT --vae VAE_FOLDER``.

Shards ``latents_{k:05d}.safetensors`` hold ``latents`` ``(n, 2, C, h, w)`` [image, flipped image]
(the posterior sample or mean times ``scale_factor``) and ``labels`` ``(n,)``; ``manifest.json`` is
written last, and rerunning the command resumes. The full account: docs/data.md, "extract_latents".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import urllib.parse
import warnings
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dit_core.atomic import atomic_write_bytes, atomic_write_text
from dit_core.configio import KeepRawFormatter, check_fields, exit_codes_help, require
from dit_core.data.imagefolder import center_crop_arr, load_rgb, scan_image_folder, to_tensor
from dit_core.data.latents import MANIFEST_FORMAT, MANIFEST_NAME, SD_VAE_SCALE, shard_name, vae_factor
from dit_core.device import DEVICE_HELP, resolve_device

log = logging.getLogger(__name__)

POSTERIORS = ("sample", "mean")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ExtractConfig:
    """Settings of one extraction (all recorded in the manifest).

    data_path: image folder ``root/<class>/<images>``. output: folder for shards + manifest.
    vae: local ``AutoencoderKL`` folder (``save_pretrained`` layout) or a hub id (needs network).
    vae_subfolder: e.g. ``"vae"`` for a whole Stable Diffusion pipeline folder.
    posterior: ``"sample"`` (fast-DiT) or ``"mean"`` of the VAE's Gaussian posterior.
    device: ``"auto"`` (cuda if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    dtype: storage dtype of the latents (encoding itself runs in float32).
    rank, world_size: split the shards over processes (e.g. one per GPU or SLURM array task: shard k
        goes to rank ``k % world_size``); the last rank to finish writes the manifest.
    """

    data_path: str
    output: str
    vae: str
    image_size: int = 256
    vae_subfolder: str | None = None
    batch_size: int = 32
    device: str = "auto"
    posterior: str = "sample"
    scale_factor: float = SD_VAE_SCALE
    shard_size: int = 10_000
    dtype: str = "float32"
    seed: int = 0
    num_workers: int = 4
    validate_images: bool = True
    progress: bool | None = None
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        rules = {"posterior": POSTERIORS, "dtype": tuple(DTYPES), "num_workers": ">= 0"}
        rules |= {"scale_factor": "> 0", **dict.fromkeys(("image_size", "batch_size", "shard_size"), ">= 1")}
        check_fields(self, "", rules)
        r, n = self.rank, self.world_size
        require(0 <= r < n, "rank", f"need 0 <= rank < world_size, got rank={r}, world_size={n}")


def _is_local(vae: str) -> bool:
    """Whether ``vae`` is a local folder (absolute, ./ ../ ~ prefixed, or existing), not a hub id."""
    expanded = os.path.expanduser(vae)
    return os.path.isabs(expanded) or vae.startswith((".", "~")) or os.path.exists(expanded)


def load_vae(vae: str, subfolder: str | None = None) -> torch.nn.Module:
    """``AutoencoderKL.from_pretrained`` from a local folder or a hub id, with errors that say what to do."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ValueError(
            "extract_latents needs diffusers: pip install 'ditscale[latents]' (or pip install diffusers)"
        ) from e
    expanded = os.path.expanduser(vae)
    if _is_local(vae):
        folder = os.path.join(expanded, subfolder) if subfolder else expanded
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ValueError(
                f"VAE folder {folder!r} not found or has no config.json; pass a folder written by "
                "AutoencoderKL.save_pretrained (or a pipeline folder with --vae-subfolder vae)"
            )
        return AutoencoderKL.from_pretrained(expanded, subfolder=subfolder)
    with contextlib.suppress(Exception), warnings.catch_warnings():  # in the local HF cache: no network
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        return AutoencoderKL.from_pretrained(vae, subfolder=subfolder, local_files_only=True)
    hint = (
        "Without network access, download it where the hub is reachable, e.g. "
        f"`hf download {vae} --local-dir ./vae`, copy the folder here and pass --vae ./vae"
    )
    if not _hub_reachable():
        raise ValueError(
            f"VAE {vae!r} is not a local folder and the Hugging Face hub is not reachable. {hint}"
        )
    try:
        return AutoencoderKL.from_pretrained(vae, subfolder=subfolder)
    except Exception as e:
        raise ValueError(
            f"could not load VAE {vae!r} from the Hugging Face hub ({type(e).__name__}: {e}). {hint}"
        ) from e


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host does not resolve/connect (fast, no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


class _ShardImages(Dataset):
    """Images of one shard: ``(x (3, S, S) in [-1, 1], label, error text or "")``; never raises."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int):
        self.samples, self.image_size = samples, image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        path, label = self.samples[i]
        try:
            return to_tensor(center_crop_arr(load_rgb(path), self.image_size)), label, ""
        except Exception as e:
            return torch.zeros(3, self.image_size, self.image_size), label, f"{type(e).__name__}: {e}"


def _fingerprint(cfg: ExtractConfig, samples: list[tuple[str, int]], root: str) -> str:
    """Hash of everything that determines the shards' contents."""
    keys = ("vae", "vae_subfolder", "image_size", "posterior", "scale_factor", "shard_size", "dtype", "seed")
    if cfg.posterior == "sample":  # a batch draws its images' noise together: another size, other latents
        keys += ("batch_size",)
    h = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True).encode())
    for path, label in samples:
        h.update(f"{os.path.relpath(path, root)}\t{label}\n".encode())
    return h.hexdigest()


def _existing_shard(path: str, fingerprint: str, k: int) -> dict[str, Any] | None:
    """Metadata of a finished shard ``k`` from this same extraction, None if absent; raises if foreign."""
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("fingerprint") != fingerprint or meta.get("shard") != str(k):
        raise ValueError(
            f"{path} comes from a different extraction (other images or settings); "
            "use a new --output folder or delete the old shards"
        )
    return meta


@torch.inference_mode()
def _encode(vae: torch.nn.Module, x: torch.Tensor, cfg: ExtractConfig, gen: torch.Generator) -> torch.Tensor:
    """``(B, 3, S, S)`` images -> ``(B, 2, C, h, w)`` scaled latents of [image, flipped image]."""
    b = x.shape[0]
    dist = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist
    z = dist.sample(generator=gen) if cfg.posterior == "sample" else dist.mean
    z = z.float() * cfg.scale_factor
    return torch.stack([z[:b], z[b:]], dim=1)


def extract_latents(cfg: ExtractConfig) -> dict[str, Any]:
    """Encode ``cfg.data_path`` into shards under ``cfg.output``; returns the manifest (also written)."""
    if not os.path.isdir(cfg.data_path):
        raise ValueError(f"image folder {cfg.data_path!r} does not exist or is not a directory")
    if os.path.exists(cfg.output) and not os.path.isdir(cfg.output):
        raise ValueError(f"--output {cfg.output!r} is a file; give a folder (a new one, or one to resume)")
    out, root = os.path.realpath(cfg.output), os.path.realpath(cfg.data_path)
    if out == root or out.startswith(root.rstrip(os.sep) + os.sep):  # its shards among the images
        raise ValueError(
            f"--output {cfg.output!r} is inside --data-path {cfg.data_path!r}: a rerun would read it as one "
            "more class of images; give a folder outside the image folder"
        )
    device = resolve_device(cfg.device)
    vae = load_vae(cfg.vae, cfg.vae_subfolder).to(device).eval()  # before the (slow) scan: fail fast
    factor = vae_factor(vae)
    size, fit = cfg.image_size, max(factor, cfg.image_size // factor * factor)
    require(
        size % factor == 0,
        "image_size",
        f"{size} is not a multiple of the VAE's downsampling factor {factor}; give e.g. image_size {fit}",
    )
    scan = scan_image_folder(cfg.data_path, validate=cfg.validate_images)
    try:
        os.makedirs(cfg.output, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"--output {cfg.output!r}: cannot create the folder ({e.strerror}); give another"
        ) from None
    latent_shape = [int(vae.config.latent_channels), cfg.image_size // factor, cfg.image_size // factor]
    fingerprint = _fingerprint(cfg, scan.samples, scan.root)
    n_shards = math.ceil(len(scan.samples) / cfg.shard_size)
    progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    from tqdm.auto import tqdm

    mine = [k for k in range(n_shards) if k % cfg.world_size == cfg.rank]
    if not mine:
        log.warning(
            f"rank {cfg.rank} of {cfg.world_size} has no shards: {len(scan.samples)} images make "
            f"{n_shards} shard(s) of {cfg.shard_size}, shard k going to rank k % {cfg.world_size}; to use "
            f"every rank give --world-size {max(1, n_shards)} or a smaller --shard-size"
        )
    for k in tqdm(mine, unit="shard", disable=not progress, desc="extract_latents"):
        path = os.path.join(cfg.output, shard_name(k))
        if _existing_shard(path, fingerprint, k) is not None:
            log.info("shard %s already done, skipping", path)
            continue
        part = scan.samples[k * cfg.shard_size : (k + 1) * cfg.shard_size]
        _write_shard(vae, part, cfg, k, fingerprint, latent_shape, device, path)
    shards, skipped, missing = [], list(scan.skipped), []
    for k in range(n_shards):  # after our own shards, so the last rank to finish sees them all
        meta = _existing_shard(os.path.join(cfg.output, shard_name(k)), fingerprint, k)
        if meta is None:
            missing.append(k)
            continue
        skipped += json.loads(meta["skipped"])
        shards.append({"file": shard_name(k), "count": int(meta["count"])})
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d in %s", len(skipped), len(scan.samples), scan.root)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "vae": os.path.abspath(os.path.expanduser(cfg.vae)) if _is_local(cfg.vae) else cfg.vae,
        "vae_subfolder": cfg.vae_subfolder,
        "scale_factor": cfg.scale_factor,
        "posterior": cfg.posterior,
        "image_size": cfg.image_size,
        "latent_shape": latent_shape,
        "dtype": cfg.dtype,
        "classes": scan.classes,
        "num_items": sum(s["count"] for s in shards),
        "num_shards": n_shards,
        "shards": shards,
        "skipped": skipped,
        "data_path": scan.root,
        "fingerprint": fingerprint,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("rank", "world_size", "progress")},
        "complete": not missing,
    }
    if missing:
        done = f"rank {cfg.rank}/{cfg.world_size} done; shards {missing} of other ranks are not finished"
        log.info(
            "%s, so no manifest yet (the last rank to finish writes it; or rerun with --world-size 1)", done
        )
        return manifest
    atomic_write_text(Path(cfg.output) / MANIFEST_NAME, json.dumps(manifest, indent=2))
    log.info("wrote %d latents in %d shards to %s", manifest["num_items"], len(shards), cfg.output)
    return manifest


@contextlib.contextmanager
def _sigint_held():
    """Hold Ctrl-C (SIGINT) back while the image readers are forked, then raise it as KeyboardInterrupt.
    The readers inherit the blocked signal, so the Ctrl-C a terminal sends the whole process group stops
    only this process (a reader that died of it first failed the run with "DataLoader worker exited
    unexpectedly"); one arriving meanwhile is neither lost in Python's at-fork callbacks nor raised
    inside the DataLoader's set-up (whose clean-up then failed). Main thread only (signal's rule); a
    process that ignores SIGINT (started in the background, `nohup`) goes on ignoring it."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield
        return
    got = []
    handler = signal.signal(signal.SIGINT, lambda *_: got.append(1))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one held back is handled now, by the recorder
        signal.signal(signal.SIGINT, handler)
    if got:
        raise KeyboardInterrupt


def _write_shard(vae, part, cfg, k, fingerprint, latent_shape, device, path) -> None:
    """Encode one shard's images and write it atomically."""
    from safetensors.torch import save

    images = _ShardImages(part, cfg.image_size)
    loader = DataLoader(images, batch_size=cfg.batch_size, num_workers=cfg.num_workers, shuffle=False)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + k)
    lats, labels, bad = [], [], []
    files = (file for file, _ in part)  # in the loader's order
    with _sigint_held():  # the readers start here
        batches = iter(loader)
    for x, y, errors in batches:
        ok = torch.tensor([not e for e in errors], dtype=torch.bool)
        for e, file in zip(errors, files):  # errors first: zip takes no file past the batch's
            if e:
                log.warning("skipping unreadable image %s (%s)", file, e)
                bad.append(file)
        if ok.any():
            z = _encode(vae, x[ok].to(device), cfg, gen)
            lats.append(z.to("cpu", DTYPES[cfg.dtype]))
            labels.append(y[ok].long())
    latents = torch.cat(lats) if lats else torch.zeros(0, 2, *latent_shape, dtype=DTYPES[cfg.dtype])
    labels_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    meta = dict(fingerprint=fingerprint, shard=str(k), count=str(len(labels_t)), skipped=json.dumps(bad))
    tensors = {"latents": latents.contiguous(), "labels": labels_t.contiguous()}
    atomic_write_bytes(Path(path), save(tensors, metadata=meta))


#: the CLI's exit codes (docs/interfaces.md, "Exit codes"), listed in its --help
EXIT_CODES = {
    0: "done: every shard written, or this --rank's shards (the manifest follows the last rank)",
    1: "a crash (a traceback); the finished shards are kept, rerun to resume",
    2: "bad input (a flag, the image folder, --vae, --output), said in one line",
    130: "Ctrl-C; the finished shards are kept, rerun to resume",
}


#: the CLI's flags in --help's order (`build_parser`); each one's default is `ExtractConfig`'s field
_FLAGS = (
    ("--data-path", dict(required=True, help="image folder with one subfolder per class")),
    ("--output", dict(required=True, help="output folder (shards + manifest.json); rerun to resume")),
    ("--vae", dict(required=True, help="local AutoencoderKL folder, or a hub id where the hub is reachable")),
    ("--vae-subfolder", dict(help="subfolder of --vae holding the VAE (e.g. 'vae')")),
    ("--image-size", dict(type=int, help="pixel size images are centre-cropped to (default %(default)s)")),
    ("--batch-size", dict(type=int, help="images per VAE forward (default %(default)s)")),
    ("--device", dict(help=DEVICE_HELP)),
    ("--posterior", dict(choices=POSTERIORS, help="store a sample of the VAE's Gaussian posterior "
                         "(fast-DiT's choice) or its mean (default %(default)s)")),
    ("--scale-factor", dict(type=float, help="latents are stored multiplied by this; decode with "
                            "vae.decode(x / it) (default %(default)s, Stable Diffusion's VAE)")),
    ("--shard-size", dict(type=int, help="images per .safetensors shard (default %(default)s)")),
    ("--dtype", dict(choices=list(DTYPES), help="storage dtype of the latents; encoding runs in float32 "
                     "(default %(default)s)")),
    ("--seed", dict(type=int, help="seed of the posterior samples (default %(default)s)")),
    ("--num-workers", dict(type=int, help="DataLoader workers reading images (default %(default)s)")),
    ("--no-validate", dict(dest="validate_images", action="store_false", help="skip the PIL verify pass")),
    ("--rank", dict(type=int, help="this process's share: shards k with k %% world-size == rank")),
    ("--world-size", dict(type=int, help="number of processes sharing the shards")),
    ("--no-progress", dict(dest="progress", action="store_false",
                           help="no progress bar (default: a bar on a terminal only)")),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags; their defaults are `ExtractConfig`'s (set once, below)."""
    p = argparse.ArgumentParser(
        prog="python -m dit_core.extract_latents",
        description="Encode an image folder (root/<class>/<images>) into VAE latent shards for DiT training.",
        epilog=exit_codes_help(EXIT_CODES),
        formatter_class=KeepRawFormatter,
    )
    for flag, kwargs in _FLAGS:
        p.add_argument(flag, **kwargs)
    p.set_defaults(**{f.name: f.default for f in fields(ExtractConfig) if f.default is not MISSING})
    return p


def _in_flags(message: str) -> str:
    """A message that names `ExtractConfig` fields (``image_size: ...``, the library's words) in the
    CLI's: each field as its flag (``--image-size: ...``). Words inside a path or name (``/data/output``,
    ``output.npz``) and other messages stay."""
    fields = ExtractConfig.__dataclass_fields__
    if message.partition(": ")[0] not in fields:
        return message
    word = rf"(?<![\w/.~-])({'|'.join(fields)})(?![\w/-]|\.\w)"
    return re.sub(word, lambda m: "--" + m[1].replace("_", "-"), message)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a message on bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = extract_latents(ExtractConfig(**vars(args)))
    except ValueError as e:
        print(f"error: {_in_flags(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # shards are renamed into place whole: the one being written is dropped
        print(
            f"\ninterrupted (Ctrl-C): the finished shards in {args.output} are kept; run the same command "
            "to resume",
            file=sys.stderr,
        )
        return 130
    if manifest["complete"]:
        print(f"{manifest['num_items']} latents {manifest['latent_shape']} -> {args.output}")
        return 0
    own = len(range(args.rank, manifest["num_shards"], args.world_size))
    print(
        f"rank {args.rank}/{args.world_size}: {own} of {manifest['num_shards']} shards are this rank's; "
        f"{len(manifest['shards'])} finished so far ({manifest['num_items']} latents "
        f"{manifest['latent_shape']}) -> {args.output} (partial: no manifest until every shard is done)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
