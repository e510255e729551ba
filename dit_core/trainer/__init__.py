"""Pieces of the training loop, one idea per module: lr schedules, the resumable data stream,
per-step randomness, preemption signals and progress reporting. `dit_core.train` assembles them."""
