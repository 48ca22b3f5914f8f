"""How far each model is from its floor: the time its convolutions take.

For DynaST (256, 512) and StyA2K (512, 1024), batch 1, random weights (cost does not depend on their values):
the forward time (best of ``--reps`` calls after a warm-up), the convolutions' time (torch.profiler: the sum
of the convolution kernels' self time in one profiled call), their ratio (target: at most 1.15), and the
working memory of the first call (peak resident set during the call above the resident set before it), in float32
and in bfloat16, beside the official code's float32 figures measured on this machine class and quoted from
the issue (DynaST 256: 5.28 s and 1504 MB; StyA2K 1024: 25.0 s). Targets: float32 ratio <= 1.15 and memory
<= 1/3 of the official's; bfloat16 time <= 1/3 of the official float32 time.

Each case runs in its own subprocess (see ``_harness.py``). On a CPU without native bfloat16 arithmetic
(AVX512-BF16 or AMX) bfloat16 convolutions are emulated and 30-50x slower than float32: ``--no-bf16`` skips
those rows. The header says what this CPU has.

    python benchmarks/floor.py [--cases dynast:256 dynast:512 stya2k:512 stya2k:1024] [--threads 2]
                               [--reps 3] [--no-bf16]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from _harness import measure, run_child, set_threads

OFFICIAL = {("dynast", 256): (5.28, 1504.0), ("stya2k", 1024): (25.0, None)}
DEFAULT_CASES = ("dynast:256", "dynast:512", "stya2k:512", "stya2k:1024")
CONV_KERNELS = ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::slow_conv_dilated2d",
                "aten::_nnpack_spatial_convolution", "aten::cudnn_convolution", "aten::miopen_convolution",
                "aten::_mps_convolution", "aten::convolution_overrideable")


def cpu_capability() -> str:
    """The CPU's model and whether it has native bfloat16 / AMX arithmetic (from /proc/cpuinfo)."""
    import torch
    flags, model = set(), "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    has = lambda *names: "yes" if any(n in flags for n in names) else "no"  # noqa: E731
    return (f"{model}, {os.cpu_count()} CPUs; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); "
            f"AVX-512: {has('avx512f')}, AVX512-BF16: {has('avx512_bf16')}, AMX-BF16: {has('amx_bf16')}, "
            f"AVX-VNNI: {has('avx_vnni')}")


def _model_and_inputs(model: str, size: int, dtype):
    import torch
    torch.manual_seed(0)
    if model == "dynast":
        from dynast_core.models.dynast import DynaSTGenerator, dynast_config, load_dynast
        net = load_dynast(DynaSTGenerator(dynast_config("deepfashion")).state_dict(), dtype=dtype)
        args = (torch.rand(1, 20, size, size), torch.rand(1, 3, size, size) * 2 - 1, torch.rand(1, 20, size, size))
    elif model == "stya2k":
        from dynast_core.models.stya2k import StyA2K
        net = StyA2K().eval().to(dtype)
        args = (torch.rand(1, 3, size, size), torch.rand(1, 3, size, size))
    else:
        raise ValueError(f"unknown model {model!r}: choose dynast or stya2k")
    return net, tuple(a.to(dtype) for a in args)


def child(model: str, size: int, dtype_name: str, threads: int, reps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    set_threads(threads)
    dtype = getattr(torch, dtype_name)
    net, args = _model_and_inputs(model, size, dtype)
    with torch.no_grad():
        # the first call gives the working memory (later calls reuse heap pages it left behind) and warms up
        _, _, peak = measure(lambda: net(*args))
        best = float("inf")
        for _ in range(reps):
            best = min(best, measure(lambda: net(*args))[1])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net(*args)
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_KERNELS) / 1e6
    return {"seconds": best, "conv": conv, "peak_mb": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="model:size, e.g. dynast:256")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="timed calls per case (the best counts)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 rows (slow without native bf16)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        model, size, dtype, reps = a.child
        print(json.dumps(child(model, int(size), dtype, a.threads, int(reps))))
        return 0
    print(f"CPU: {cpu_capability()}; {a.threads} threads")
    print("floor = the convolution kernels' self time (torch.profiler); target ratio <= 1.15 (float32), "
          "bfloat16 time <= 1/3 of the official float32 time\n")
    head = (f"{'model':>7} {'size':>5} {'dtype':>9} | {'total s':>8} {'conv s':>7} {'ratio':>6} {'other s':>8} "
            f"{'peak MB':>8} | {'official s':>10} {'official MB':>11}")
    print(head)
    print("-" * len(head))
    dtypes = ["float32"] + ([] if a.no_bf16 else ["bfloat16"])
    for case in a.cases:
        model, _, size = case.partition(":")
        size = int(size)
        for dtype in dtypes:
            r = run_child(__file__, [model, size, dtype, a.reps], a.threads)
            o = OFFICIAL.get((model, size))
            off = f"{'':>10} {'':>11}"
            if o and dtype == "float32":
                off = f"{o[0]:10.2f} " + (f"{o[1]:11.0f}" if o[1] else f"{'':>11}")
            if "error" in r:
                print(f"{model:>7} {size:>5} {dtype:>9} | failed: {r['error']}", flush=True)
                continue
            ratio = r["seconds"] / r["conv"] if r["conv"] > 0 else float("nan")
            print(f"{model:>7} {size:>5} {dtype:>9} | {r['seconds']:8.2f} {r['conv']:7.2f} {ratio:6.2f} "
                  f"{r['seconds'] - r['conv']:8.2f} {r['peak_mb']:8.0f} | {off}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
