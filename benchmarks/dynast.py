"""DynaST generator inference: time and working memory at 256, 512 and 1024 (batch 1, CPU), beside the official
figures (measured side by side with the official code on this machine class, 2 threads, and quoted from the
issue: 256 5.28 s and 1504 MB working memory, i.e. peak RSS during the call above RSS before it; the official
model fails at any other size). Weights are random (the deepfashion preset; cost does not depend on their
values), loaded with ``load_dynast`` as a user's would be. Each size runs in its own subprocess. For the
gap to the convolutions' own time, see ``floor.py``.

    python benchmarks/dynast.py [--sizes 256 512 1024] [--threads 2]
"""
from __future__ import annotations

import sys

from _harness import measure, set_threads, size_benchmark_main

OFFICIAL = {256: (5.28, 1504.0)}


def child(size: int, threads: int) -> dict:
    import torch
    from dynast_core.models.dynast import DynaSTGenerator, dynast_config, load_dynast
    set_threads(threads)
    torch.manual_seed(0)
    model = load_dynast(DynaSTGenerator(dynast_config("deepfashion")).state_dict())
    label, ex_label = torch.rand(1, 20, size, size), torch.rand(1, 20, size, size)
    ex = torch.rand(1, 3, size, size) * 2 - 1
    with torch.no_grad():
        _, seconds, peak = measure(lambda: model(label, ex, ex_label))
    return {"seconds": seconds, "peak_mb": peak}


def main(argv=None) -> int:
    return size_benchmark_main(__doc__, __file__, child, (256, 512, 1024), OFFICIAL, "fails", argv)


if __name__ == "__main__":
    sys.exit(main())
