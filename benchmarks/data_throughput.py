"""Images/s of the training data streams (``DataStream.next_batch``, one process, no workers).

Times batches of the ``photos`` crop stream (grey and colour, 8/16/32 px) and of ``digits``, as the
trainer draws them; the medians over rounds give images/s, and each stream's ratio to the digits
stream (the peer: the bundled dataset the demo used before), to compare with the demo's training
rate (hundreds of images/s on 2 CPU cores). The decoded photographs are cached once per process; the
first build is timed separately.

    python benchmarks/data_throughput.py                  # batch 16, 5 rounds of 50 batches
    python benchmarks/data_throughput.py --batch 256 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dit_core.data import DataConfig, build_dataset
from dit_core.trainer.data_stream import DataStream

CASES = [
    ("digits 16 px", DataConfig(name="digits", image_size=16)),
    ("photos grey 8 px", DataConfig(name="photos", image_size=8, channels=1)),
    ("photos grey 16 px", DataConfig(name="photos", image_size=16, channels=1)),
    ("photos colour 16 px", DataConfig(name="photos", image_size=16, channels=3)),
    ("photos grey 32 px", DataConfig(name="photos", image_size=32, channels=1)),
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=50, help="batches per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"batch {a.batch}, {a.rounds} rounds of {a.batches} batches, {a.threads} thread(s)")
    peer = None
    for label, cfg in CASES:
        t0 = time.perf_counter()
        stream = DataStream(build_dataset(cfg, "train"), a.batch, seed=0)
        stream.next_batch()
        build = time.perf_counter() - t0
        rates = []
        for _ in range(a.rounds):
            t = time.perf_counter()
            for _ in range(a.batches):
                stream.next_batch()
            rates.append(a.batches * a.batch / (time.perf_counter() - t))
        rate = statistics.median(rates)
        peer = peer or rate  # CASES[0] is digits
        print(
            f"{label:22s} {rate:10.0f} images/s  {rate / peer:5.2f}x digits"
            f"   (first batch incl. build {build:.2f} s)"
        )


if __name__ == "__main__":
    main()
