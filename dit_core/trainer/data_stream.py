"""A resumable stream of training batches: a seeded permutation per epoch and a position in it.

Epoch ``e`` visits the dataset in the order ``torch.randperm(N, generator seeded by (seed, e))``,
in global batches of ``B`` images (the last ``N mod B`` images of the permutation are skipped);
rank ``r`` of ``W`` gets images ``[r*B/W, (r+1)*B/W)`` of each global batch. The position
``(epoch, index)`` says where the next global batch starts, so resuming skips straight there
instead of replaying a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .rng import mix_seed

__all__ = ["CHUNK_IMAGES", "DataStream", "fetch_batch"]

_PERM_STREAM = 0xDA7A
_WORKER_STREAM = 0x5EED
#: Datasets with ``get_batch(indices) -> (x, y)`` (photos) render this many images per call, several
#: batches at once: the per-call cost is amortised (photos, 1 thread: ~19 us/image at 32, ~12 at 128).
CHUNK_IMAGES = 128


class DataStream:
    """Batches ``(x (B/W, C, H, W), y (B/W,))`` for this rank, resumable through `state_dict`."""

    def __init__(
        self,
        dataset: Dataset,
        global_batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ):
        n = len(dataset)
        if global_batch_size % world_size:
            raise ValueError(
                f"budget.global_batch_size: {global_batch_size} images per step are not divisible by "
                f"{world_size} processes; give a --batch-size that is a multiple of {world_size}, or (when "
                f"resuming, where the batch cannot change) a process count that divides {global_batch_size}"
            )
        if n < global_batch_size:
            raise ValueError(
                f"the training set has {n} images, fewer than one global batch of {global_batch_size}; "
                "lower --global-batch-size or use more data"
            )
        self.dataset, self.size = dataset, n
        self.global_batch, self.local_batch = global_batch_size, global_batch_size // world_size
        self.seed, self.rank, self.num_workers = int(seed), int(rank), int(num_workers)
        self.batches_per_epoch = n // global_batch_size
        self.epoch, self.index = 0, 0
        self._iter: Iterator | None = None

    # ------------------------------------------------------------------ position
    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "index", "dataset_size", "global_batch_size"}``: where the next batch starts."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "dataset_size": self.size,
            "global_batch_size": self.global_batch,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["dataset_size"]) != self.size or int(state["global_batch_size"]) != self.global_batch:
            raise ValueError(
                f"cannot resume the data position: the checkpoint was written with {state['dataset_size']} "
                f"images and global batch {state['global_batch_size']}, this run has {self.size} and "
                f"{self.global_batch}"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._iter = None

    # ------------------------------------------------------------------ batches
    def permutation(self, epoch: int) -> torch.Tensor:
        """The visiting order ``(N,)`` of epoch ``epoch``."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, _PERM_STREAM, epoch))
        return torch.randperm(self.size, generator=g)

    def _local_batches(self, epoch: int, start: int) -> list[list[int]]:
        perm, lo = self.permutation(epoch), self.rank * self.local_batch
        starts = range(start, self.batches_per_epoch * self.global_batch, self.global_batch)
        return [perm[b + lo : b + lo + self.local_batch].tolist() for b in starts]

    def _start_epoch(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        batches = self._local_batches(self.epoch, self.index)
        if self.num_workers == 0 and hasattr(self.dataset, "get_batch"):  # photos: tensors directly
            per_call = max(1, CHUNK_IMAGES // self.local_batch)
            self._iter = _chunked(self.dataset.get_batch, batches, per_call)
        elif self.num_workers == 0:
            self._iter = (fetch_batch(self.dataset, idx) for idx in batches)
        else:  # the workers' seeds from (seed, rank, epoch): a DataLoader seeds them from the global RNG
            # by default, and a resumed run's extra loader (for the rest of its epoch) would move that RNG
            g = torch.Generator().manual_seed(mix_seed(self.seed, _WORKER_STREAM, self.rank, self.epoch))
            loader = DataLoader(
                self.dataset, batch_sampler=batches, num_workers=self.num_workers, generator=g
            )
            self._iter = iter(loader)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next local batch; the position advances by one global batch (and wraps epochs)."""
        if self.index >= self.batches_per_epoch * self.global_batch:
            self.epoch, self.index, self._iter = self.epoch + 1, 0, None
        if self._iter is None:
            self._start_epoch()
        x, y = next(self._iter)
        self.index += self.global_batch
        if self.index >= self.batches_per_epoch * self.global_batch:
            self._iter = None  # the next call starts the next epoch
        return x, y


Batch = tuple[torch.Tensor, torch.Tensor]


def _chunked(get_batch: Callable[[list[int]], Batch], batches: list[list[int]], k: int) -> Iterator[Batch]:
    """The batches in order, fetched ``k`` at a time by one ``get_batch`` over their indices
    and split back (views). Same tensors as one call per batch: an item of ``get_batch`` depends
    on its own index only (checked for photos in tests/test_step_cost.py)."""
    for i in range(0, len(batches), k):
        group = batches[i : i + k]
        x, y = get_batch([j for idx in group for j in idx])
        sizes = [len(idx) for idx in group]
        yield from zip(x.split(sizes), y.split(sizes))


def fetch_batch(dataset: Dataset, idx: list[int]) -> Batch:
    """Items ``idx`` of ``dataset`` stacked, ``(x (n, C, H, W), y (n,))``: through the dataset's
    ``__getitems__`` where it has one (a whole batch at once)."""
    get = getattr(dataset, "__getitems__", None)
    return _collate(get(idx) if get else [dataset[i] for i in idx])


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*items)
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])
