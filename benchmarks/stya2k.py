"""StyA2K inference: time and peak memory at 512, 1024 and 2048 (batch 1, CPU), beside the official figures.

The official figures were measured on this machine class (2 threads) with the official code and are quoted
from the issue: 512 about 5 s / 1.6 GB peak RSS, 1024 about 32 s / 8.9 GB (of which about 11 s is the relu3_1
A2K and its 2 GB tensor); the official code was not run at 2048. Weights are random (cost does not depend on
their values). Each size runs in its own subprocess.

    python benchmarks/stya2k.py [--sizes 512 1024 2048] [--threads 2]
"""
from __future__ import annotations

import sys

from _harness import measure, set_threads, size_benchmark_main

OFFICIAL = {512: (5.0, 1.6 * 1024), 1024: (32.0, 8.9 * 1024)}


def child(size: int, threads: int) -> dict:
    import torch
    from dynast_core.models.stya2k import StyA2K
    set_threads(threads)
    torch.manual_seed(0)
    model = StyA2K().eval()
    c, s = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
    with torch.no_grad():
        _, seconds, peak = measure(lambda: model(c, s))
    return {"seconds": seconds, "peak_mb": peak}


def main(argv=None) -> int:
    return size_benchmark_main(__doc__, __file__, child, (512, 1024, 2048), OFFICIAL, "not run", argv)


if __name__ == "__main__":
    sys.exit(main())
