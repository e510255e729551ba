"""``--device`` of the single-process CLIs (sampling, evaluation, latent extraction): a name -> a torch
device, ``auto`` being the first CUDA GPU where there is one, else the CPU."""

from __future__ import annotations

import torch

DEVICE_HELP = "auto | cpu | cuda | cuda:N (default %(default)s: cuda if available)"
#: the device types these CLIs run on (torch names more: mps, xpu, meta, ... fail at ``model.to``)
DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """The torch device of ``--device name``, or a ValueError naming the devices this machine has."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(auto if name == "auto" else name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in DEVICE_TYPES:  # mps, xpu, meta, ...: failed later, with a traceback
        raise ValueError(
            f"--device {name!r}: only the CPU and CUDA GPUs are supported; use auto, cpu, cuda or cuda:N"
        )
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (device.index or 0) >= n:
            raise ValueError(f"--device {name}: this machine has {n} CUDA GPU(s); use --device cpu (or auto)")
    return device
