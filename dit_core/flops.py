"""Compute accounting, kept importable here for code written against it: see `dit_core.spec`."""

from .spec import flop_breakdown, forward_gflops, forward_macs, param_count, train_flops_per_image

__all__ = ["flop_breakdown", "forward_gflops", "forward_macs", "param_count", "train_flops_per_image"]
