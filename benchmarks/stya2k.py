"""StyA2K inference: time, peak memory and the convolutions' share at 512, 1024 and 2048 (batch 1, CPU),
beside the official figures.

Columns: ``s`` wall time of ``model(content, style)`` without autograd; ``peak MB`` the highest resident set
during the call minus the one before it (see ``_harness.py``); ``conv s`` the time the convolutions take in a
second, profiled call (``aten::conv2d`` totals) and ``ratio`` that call's wall time over its convolution time:
the convolutions are the floor (the official code runs the same ones), the ratio is what everything else
adds. ``--dtype bfloat16`` / ``float16`` runs the model in half precision (CPUs without AVX-512 BF16/FP16 or
AMX units run it many times slower than float32).

The official figures (2 threads, float32, same weights and inputs, measured with github LearningHx/StyA2K's
code on this machine class) are quoted from the performance issue: 1024 25.0 s / 7072 MB; 512 about 5 s /
1.6 GB; the official code was not run at 2048. Weights are random (cost does not depend on their values).
Each size runs in its own subprocess. The machine is shared: repeat, and compare ratios measured together.

    python benchmarks/stya2k.py [--sizes 512 1024 2048] [--threads 2] [--dtype float32]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from _harness import measure, run_child, set_threads

OFFICIAL = {512: (5.0, 1.6 * 1024), 1024: (25.0, 7072)}


def child(size: int, threads: int, dtype: str = "float32") -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from dynast_core.models.stya2k import StyA2K
    set_threads(threads)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    model = StyA2K().eval().to(dt)
    c, s = torch.rand(1, 3, size, size, dtype=dt), torch.rand(1, 3, size, size, dtype=dt)
    with torch.no_grad():
        model(c[..., :64, :64], s[..., :64, :64])            # one-time library set-up is not counted
        _, seconds, peak = measure(lambda: model(c, s))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            model(c, s)
            profiled = time.perf_counter() - t0
    conv = sum(e.cpu_time_total for e in prof.key_averages() if e.key == "aten::conv2d") / 1e6
    return {"seconds": seconds, "peak_mb": peak, "conv_s": conv, "ratio": profiled / max(conv, 1e-9)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(int(a.child[0]), a.threads, a.child[1])))
        return 0
    print(f"StyA2K {a.dtype}, {a.threads} threads")
    print(f"{'size':>6} | {'ours s':>8} {'peak MB':>8} {'conv s':>7} {'ratio':>6} | "
          f"{'official s':>10} {'official MB':>11}")
    for size in a.sizes:
        r = run_child(__file__, [size, a.dtype], a.threads)
        o = OFFICIAL.get(size)
        off = f"{o[0]:10.1f} {o[1]:11.0f}" if o else f"{'not run':>10} {'':>11}"
        if "error" in r:
            print(f"{size:>6} | failed: {r['error']} | {off}", flush=True)
            continue
        print(f"{size:>6} | {r['seconds']:8.1f} {r['peak_mb']:8.0f} {r['conv_s']:7.1f} {r['ratio']:6.2f} | {off}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
