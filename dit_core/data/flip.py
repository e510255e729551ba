"""Deterministic per-item coin flips: a hash of ``(seed, epoch, index)``, no global RNG.

The same item is flipped the same way whatever the DataLoader worker count or the process that
loads it, so a resumed run sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def splitmix64(x):
    """One SplitMix64 finaliser step (Steele, Lea & Flood 2014) on a 64-bit Python int, or elementwise
    on a ``numpy.uint64`` array (whose arithmetic wraps; the masks then change nothing)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_hash(seed: int, epoch: int, index: int) -> int:
    """A 64-bit hash of ``(seed, epoch, index)`` (chained SplitMix64)."""
    h = splitmix64(seed & _MASK64)
    h = splitmix64(h ^ (epoch & _MASK64))
    return splitmix64(h ^ (index & _MASK64))


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether item ``index`` is horizontally flipped in ``epoch`` (probability 1/2)."""
    return bool(item_hash(seed, epoch, index) >> 63)


class EpochFlipMixin:
    """``set_epoch`` plus the flip decision shared by all datasets (subclasses set ``seed`` and
    ``random_flip``). Workers hold a copy of the dataset: call ``set_epoch`` before the epoch's iterator."""

    seed: int = 0
    epoch: int = 0
    random_flip: bool = True

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose flips ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def is_flipped(self, index: int) -> bool:
        """The flip of item ``index`` in the current epoch (False when ``random_flip`` is off)."""
        return self.random_flip and flip_decision(self.seed, self.epoch, index)
