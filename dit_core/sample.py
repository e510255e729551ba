"""``python -m dit_core.sample --checkpoint RUN_OR_FILE --out grid.png``: images from a trained DiT.

Samples with the checkpoint's EMA weights and, unless given, the run's own sampler, steps, guidance
and seed, and writes a PNG grid (``--npz``: also the uint8 images and labels in ADM's format). Sample
i is seeded by (seed, i), as in ``python -m dit_core.evaluate``, so the same settings give the same
images as its ``--save-samples``. A model with rotary positions (``model.pos_embed rope``) samples at
any ``--image-size`` its patch divides, sizes it was not trained at included; a sin-cos model only
at its training size. Exits 2 with a message on bad input.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .configio import ConfigError, check_fields, exit_codes_help, int_at_least, join_negative_values
from .device import DEVICE_HELP
from .memory import out_of_memory

log = logging.getLogger(__name__)

#: the CLI's exit codes (docs/interfaces.md, "Exit codes"), listed in its --help
EXIT_CODES = {
    0: "the grid (and --npz) written",
    1: "the model failed: sampling gave NaN or inf (lower --cfg-scale, or another checkpoint);\n"
    "or a crash (a traceback); nothing written",
    2: "bad input (a flag, the checkpoint, --vae, --device, an output path; out of memory at these\n"
    "sizes), said in one line; nothing written",
    130: "Ctrl-C; nothing written",
}

#: Pixels per latent pixel of the Stable Diffusion VAE that latent runs train on (given a VAE: its own,
#: `dit_core.data.latents.vae_factor`).
VAE_FACTOR = 8
#: The side, in PNG pixels, that images are enlarged to by default (nearest neighbour; the demo's are 16 px).
MIN_TILE = 64


@dataclass
class SampleConfig:
    """Settings of one sampling (the CLI's flags); a setting left at None is the run's own."""

    checkpoint: str
    out: str  # the PNG grid
    num_samples: int = 16  # without class_labels: labels 0, 1, 2, ... cycling through the classes
    class_labels: Sequence[int] | None = None  # one image per label (then num_samples is not used)
    image_size: int | None = None  # pixels; None: the training size
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    vae: str | None = None  # local diffusers AutoencoderKL folder, for latent runs
    use_ema: bool = True
    batch_size: int = 64
    npz: str | None = None  # also the images (arr_0 NHWC uint8) and labels
    progress: bool = False
    device: str = "auto"  # auto (cuda if available) | cpu | cuda[:N]
    zoom: int | None = None  # the PNG's pixels per image pixel; None: tiles of at least `MIN_TILE` px


def input_size(cfg: SampleConfig, dit, trained_on: str, vae_scale: int = VAE_FACTOR) -> int:
    """The model input's side for ``cfg.image_size`` pixels (latent runs: / ``vae_scale``, the VAE's
    `dit_core.data.latents.vae_factor`); ConfigError where the model cannot sample it."""
    if cfg.image_size is None:
        return dit.input_size
    factor = vae_scale if trained_on == "latents" else 1
    size, step = cfg.image_size // factor, factor * dit.patch_size
    if dit.pos_embed != "rope" and cfg.image_size != dit.input_size * factor:  # first: only one size works
        raise ConfigError(
            f"image_size: the model was trained at {dit.input_size * factor} px with a fixed sin-cos "
            f"position table (model.pos_embed {dit.pos_embed}), so it samples only at that size; drop "
            "--image-size, or train with --set model.pos_embed=rope to sample at other sizes"
        )
    if cfg.image_size < step or cfg.image_size % step:
        what = f"the VAE's {factor} x " if trained_on == "latents" else ""
        raise ConfigError(
            f"image_size: {cfg.image_size} px is not a positive multiple of {what}the model's patch "
            f"{dit.patch_size} ({step} px); give e.g. --image-size {max(step, cfg.image_size // step * step)}"
        )
    return size


def labels_for(cfg: SampleConfig, num_classes: int) -> torch.Tensor:
    """(N,) int64 class labels: ``cfg.class_labels``, else 0, 1, ... cycling; ConfigError if out of range."""
    if cfg.class_labels is None:
        if cfg.num_samples < 1:
            raise ConfigError(f"num_samples: must be >= 1, got {cfg.num_samples}")
        return torch.arange(cfg.num_samples) % num_classes
    labels = list(cfg.class_labels)
    if not labels or any(not 0 <= y < num_classes for y in labels):
        raise ConfigError(
            f"class_labels: {labels} must be one or more labels in 0..{num_classes - 1} (the run's "
            f"{num_classes} classes); e.g. --class-labels 0,1,2"
        )
    return torch.tensor(labels, dtype=torch.long)


def sample_checkpoint(cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W, C) uint8, labels (N,)) sampled from ``cfg.checkpoint`` (file or run folder)."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .data.latents import latent_scale, vae_factor
    from .device import resolve_device
    from .evaluate.checkpoint_eval import check_vae, load_vae
    from .evaluate.sampling import generate_images, vae_decoder
    from .trainer.evaluation import check_guidance, check_steps, sampling_settings

    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(cfg.checkpoint, map_location="cpu")
    check_vae(cfg, ckpt)  # --vae for latents only, before the model is built
    model, diffusion, tcfg = model_from_checkpoint(ckpt, cfg.use_ema, cfg.checkpoint)
    model = model.to(device)
    dit, data = model.config, tcfg.data.name
    vae = load_vae(cfg.vae, device, dit.in_channels, cfg.checkpoint) if cfg.vae else None
    size = input_size(cfg, dit, data, vae_factor(vae) or VAE_FACTOR)
    labels = labels_for(cfg, dit.num_classes)
    settings = sampling_settings(tcfg).overridden(cfg)
    check_guidance(settings.cfg_scale, dit)
    check_steps(settings.steps, diffusion.num_timesteps, given=cfg.steps is not None)
    images = generate_images(
        model, diffusion, range(len(labels)), settings, batch_size=cfg.batch_size,
        num_classes=dit.num_classes, image_size=size, channels=dit.in_channels, labels=labels,
        decode=vae_decoder(vae, latent_scale(tcfg.data, ckpt)), device=device, progress=cfg.progress,
    )  # fmt: skip
    log.info("sampled %d images at %d px (%s-%d, cfg %.2f, seed %d)", len(labels), images.shape[-1],
             settings.sampler, settings.steps, settings.cfg_scale, settings.seed)  # fmt: skip
    return images.permute(0, 2, 3, 1).numpy(), labels.numpy()


def zoomed(images: np.ndarray, zoom: int | None) -> np.ndarray:
    """(N, H, W, C) -> (N, zH, zW, C), each pixel repeated ``zoom`` times per axis (None: the smallest
    zoom giving tiles of at least `MIN_TILE` pixels)."""
    zoom = zoom or max(1, math.ceil(MIN_TILE / max(images.shape[1:3])))
    return images.repeat(zoom, axis=1).repeat(zoom, axis=2)


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows (H + pad) + pad, nrow (W + pad) + pad, C) uint8 grid, row-major,
    ``nrow`` = ceil(sqrt(N)) by default, padding white."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[top : top + h, left : left + w] = img
    return grid


def image_format(path: str) -> str:
    """The PIL format ``path``'s suffix names (``.png`` -> PNG, ``.jpg`` -> JPEG; none: PNG); a
    ConfigError for a suffix PIL cannot write."""
    from PIL import Image

    suffix = os.path.splitext(path)[1].lower()
    if not suffix:
        return "PNG"
    fmt = Image.registered_extensions().get(suffix)
    if fmt is not None and fmt in Image.SAVE:
        try:  # a format PIL has a writer for may still refuse a grey or RGB grid (XBM, QOI) or lack
            for mode in ("L", "RGB"):  # its handler (HDF5): tried on one pixel before any sampling
                Image.new(mode, (1, 1)).save(io.BytesIO(), format=fmt)
        except (OSError, ValueError, KeyError):
            fmt = None
    if fmt is None or fmt not in Image.SAVE:
        raise ConfigError(
            f"--out {path}: {suffix} is not an image format this can write; end the name in .png (lossless, "
            "the default), .jpg or .webp"
        )
    return fmt


def save_grid(grid: np.ndarray, path, fmt: str = "PNG") -> None:
    """Write an (H, W, 1 | 3) uint8 array as an image of PIL format ``fmt`` (``path``: a file name or a
    binary file)."""
    from PIL import Image

    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format=fmt)


def write_outputs(files: dict[str, tuple[str, object]], probe: bool = False) -> None:
    """``{flag: (path, write(binary_file))}``: each written to a temporary file beside ``path``, and all
    renamed into place only once every one is written, so that a failure leaves none half-written; a
    ConfigError naming the flag and path that could not be written. ``probe``: only create and remove
    the temporary files (a check that the paths are writable)."""
    done: list[tuple[str, str]] = []
    try:
        for flag, (path, write) in files.items():
            tmp = f"{path}.{os.getpid()}.tmp"
            try:
                with open(tmp, "wb") as f:
                    done.append((tmp, path))
                    if not probe:
                        write(f)
            except OSError as e:
                raise ConfigError(
                    f"{flag} {path}: cannot be written ({e.strerror or e}); give a path in a writable folder"
                ) from None
        for tmp, path in [] if probe else done:
            os.replace(tmp, path)
    finally:
        for tmp, _ in done:
            if os.path.exists(tmp):
                os.remove(tmp)


def _labels(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated class labels, e.g. 0,1,2; got {text!r}") from None


_OWN = "default: the run's own"
#: the CLI's flags in --help's order (`build_parser`)
_FLAGS = (
    ("--checkpoint", dict(required=True, help="checkpoint .pt or a run folder (latest checkpoint)")),
    ("--out", dict(required=True, help="the image grid to write (.png; .jpg, .webp by suffix)")),
    ("--num-samples", dict(type=int_at_least(1), help=f"images, labels 0, 1, ... cycling (default: "
                           f"{SampleConfig.num_samples})")),
    ("--class-labels", dict(type=_labels, help="one image per label, e.g. 0,1,2 (not with --num-samples)")),
    ("--image-size", dict(type=int_at_least(1), help="pixels; other than the training size needs a rope "
                          "model")),
    ("--sampler", dict(help=f"sampler ({_OWN}: eval.sampler)")),
    ("--steps", dict(type=int_at_least(1), help=f"sampler steps ({_OWN}: eval.steps)")),
    ("--cfg-scale", dict(type=float, help=f"guidance scale, 1 = none ({_OWN}: eval.cfg_scale)")),
    ("--seed", dict(type=int, help=f"sampling seed ({_OWN}: the run's seed)")),
    ("--vae", dict(help="local diffusers AutoencoderKL folder, or a pipeline folder with it in vae/ "
                   "(latent runs only)")),
    ("--raw-weights", dict(action="store_true", help="use the raw weights instead of the EMA")),
    ("--device", dict(default=SampleConfig.device, help=DEVICE_HELP)),
    ("--batch-size", dict(type=int_at_least(1), default=SampleConfig.batch_size,
                          help="sampling batch (default: %(default)s)")),
    ("--zoom", dict(type=int_at_least(1), help=f"PNG pixels per image pixel (default: tiles of at least "
                    f"{MIN_TILE} px)")),
    ("--npz", dict(help="also write the images here (.npz: arr_0 NHWC uint8, labels)")),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dit_core.sample",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m dit_core.sample --checkpoint runs/s2 --out s2.png\n"
        "  python -m dit_core.sample --checkpoint runs/rope --out x.png --image-size 32 --class-labels 3,7\n"
        "  python -m dit_core.sample --checkpoint runs/in256 --out in.png --vae /models/sd-vae-ft-ema\n\n"
        + exit_codes_help(EXIT_CODES),
    )
    for flag, kwargs in _FLAGS:
        p.add_argument(flag, **kwargs)
    return p


def main(argv: list[str] | None = None) -> int:
    from .evaluate.checkpoint_eval import check_output_files

    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv, parser))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    opts = {k: v for k, v in vars(args).items() if k in SampleConfig.__dataclass_fields__ and v is not None}
    cfg = SampleConfig(**opts, use_ema=not args.raw_weights, progress=sys.stderr.isatty())
    try:
        if args.num_samples is not None and args.class_labels is not None:
            raise ConfigError("num_samples: --class-labels gives one image per label; drop --num-samples")
        # not over the checkpoint, a device (/dev/null), a folder or each other
        check_output_files({"--out": cfg.out, "--npz": cfg.npz}, [cfg.checkpoint])
        for flag, path in (("--out", cfg.out), ("--npz", cfg.npz)):
            if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise ConfigError(f"{flag} {path}: its folder does not exist; create it or give another path")
            if path:  # fail before sampling, not after: probe the temporary file `write_outputs` uses
                write_outputs({flag: (path, None)}, probe=True)
        fmt = image_format(cfg.out)  # a .jpg name gets JPEG bytes, not a PNG under that name
        check_fields(cfg, "", {"seed": ">= 0"})  # None: the run's own
        try:
            images, labels = sample_checkpoint(cfg)
            grid = image_grid(zoomed(images, cfg.zoom))
        except (MemoryError, RuntimeError) as e:
            if not out_of_memory(e):
                raise
            size = f"{cfg.image_size} px" if cfg.image_size else "the training size"
            why = str(e).splitlines()[0][:200]
            raise ConfigError(
                f"out of memory sampling at {size} (--batch-size {cfg.batch_size}, --zoom "
                f"{cfg.zoom or 'auto'}): {why}; give a smaller --image-size, --batch-size or --zoom"
            ) from None
        files = {"--out": (cfg.out, lambda f: save_grid(grid, f, fmt))}
        if cfg.npz:  # at exactly this path (np.savez to a file name would append ".npz")
            files["--npz"] = (cfg.npz, lambda f: np.savez(f, arr_0=images, labels=labels))
        write_outputs(files)
    except (ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        # `NonFiniteSamples`: the model failed, not the arguments; else a ConfigError, a checkpoint
        # that is not one, a sampler the model lacks
        return 1 if isinstance(e, FloatingPointError) else 2
    except KeyboardInterrupt:  # write_outputs removed its temporary files: nothing half-written is left
        print("error: interrupted (Ctrl-C); nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {cfg.out}: {len(images)} images of {images.shape[1]}x{images.shape[2]} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
