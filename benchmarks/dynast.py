"""DynaST generator inference: time and peak memory at 256, 512 and 1024 (batch 1, CPU), beside the official
figures (measured on this machine class with the official code, quoted from the issue: 256 about 8 s and
2.4 GB peak RSS; the official model fails at any other size). Weights are random (the deepfashion preset;
cost does not depend on their values). Each size runs in its own subprocess.

    python benchmarks/dynast.py [--sizes 256 512 1024] [--threads 2]
"""
from __future__ import annotations

import sys

from _harness import measure, set_threads, size_benchmark_main

OFFICIAL = {256: (8.0, 2.4 * 1024)}


def child(size: int, threads: int) -> dict:
    import torch
    from dynast_core.models.dynast import DynaSTGenerator, dynast_config
    set_threads(threads)
    torch.manual_seed(0)
    model = DynaSTGenerator(dynast_config("deepfashion")).eval()
    label, ex_label = torch.rand(1, 20, size, size), torch.rand(1, 20, size, size)
    ex = torch.rand(1, 3, size, size) * 2 - 1
    with torch.no_grad():
        _, seconds, peak = measure(lambda: model(label, ex, ex_label))
    return {"seconds": seconds, "peak_mb": peak}


def main(argv=None) -> int:
    return size_benchmark_main(__doc__, __file__, child, (256, 512, 1024), OFFICIAL, "fails", argv)


if __name__ == "__main__":
    sys.exit(main())
