"""Time and peak working memory of the attention operators, beside dense-attention baselines.

For each input size (256, 512, 1024) the operators run at the scales and channel widths of the DeepFashion
DynaST model (ngf 64, pos_dim 16, prune_dim 16, max_multi 8):

    scale  grid     q/k C   v C   gate C   operator
    1/8    S/8      640     512   128      dense dynamic attention (top-4)
    1/4    S/4      320     256   64       inter-scale sparse (16 candidates), inner-scale sparse (20)
    1/2    S/2      160     128   32       inter, inner
    1/1    S        80      64    16       inter, inner

Baselines: plain dense softmax attention at the same grid (what the sparse ops replace; quadratic), and a
naive inner-scale op that materialises the gathered keys and their broadcast product for all queries at
once (the official formulation). Each case runs in its own subprocess; "peak MB" is the growth of the peak
resident set over the resident set just before the call (inputs excluded). Cases whose memory would exceed
the machine are not run: the table shows what they would need.

    python benchmarks/attention.py [--sizes 256 512 1024] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = {8: (640, 512, 128), 4: (320, 256, 64), 2: (160, 128, 32), 1: (80, 64, 16)}
TOP_K = 4
LIMIT_BYTES = 16 * 1024 ** 3


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(case: str, size: int, down: int, threads: int) -> dict:
    import torch
    sys.path.insert(0, ROOT)
    from dynast_core.attention import (dynamic_attention, inner_scale_sparse_attention,
                                       inter_scale_sparse_attention)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    c, cv, d = WIDTHS[down]
    h = w = size // down
    n = h * w
    q, k = torch.randn(1, c, h, w), torch.randn(1, c, h, w)
    v = torch.randn(1, cv, h, w)
    qg, kg = torch.randn(1, d, h, w), torch.randn(1, d, h, w)
    if case == "inter":
        prev = torch.randint(0, n // 4, (1, n // 4, TOP_K))
    else:
        prev = torch.randint(0, n, (1, n, TOP_K))
    before = rss_bytes()
    t0 = time.perf_counter()
    with torch.no_grad():
        if case == "dense":
            dynamic_attention(q, k, v, qg, kg, top_k=TOP_K)
        elif case == "inter":
            inter_scale_sparse_attention(q, k, v, prev, qg, kg, scale=0.01)
        elif case == "inner":
            inner_scale_sparse_attention(q, k, v, prev, qg, kg, scale=0.01)
        elif case == "baseline_dense":
            attn = torch.softmax(torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2)) / c ** 0.5, -1)
            torch.bmm(attn, v.flatten(2).transpose(1, 2))
        elif case == "baseline_inner_broadcast":
            # 5K candidates per query (the top-k repeated stands in for the neighbours: same sizes)
            kf = k.flatten(2).transpose(1, 2)[0]
            sel = kf[prev[0].repeat(1, 5).reshape(-1)].view(n, 5 * TOP_K, c)
            logits = (q.flatten(2)[0].t().unsqueeze(1) * sel).sum(-1)
            attn = torch.softmax(logits / 0.01, -1)
            vf = v.flatten(2).transpose(1, 2)[0]
            vsel = vf[prev[0].repeat(1, 5).reshape(-1)].view(n, 5 * TOP_K, cv)
            (attn.unsqueeze(-1) * vsel).sum(1)
        else:
            raise ValueError(case)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_mb": max(0, peak - before) / 2 ** 20}


def estimate_bytes(case: str, size: int, down: int) -> int:
    c, cv, d = WIDTHS[down]
    n = (size // down) ** 2
    if case == "baseline_dense":
        return 2 * n * n * 4
    if case == "baseline_inner_broadcast":
        return 3 * n * 5 * TOP_K * c * 4
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, size, down = args.child
        print(json.dumps(run_case(case, int(size), int(down), args.threads)))
        return 0

    plan = []
    for size in args.sizes:
        plan.append((size, 8, "dense", "baseline_dense"))
        for down in (4, 2, 1):
            plan.append((size, down, "inter", "baseline_dense"))
            plan.append((size, down, "inner", "baseline_inner_broadcast"))
    print(f"{'input':>6} {'scale':>5} {'grid':>9} {'op':>6} | {'ours s':>8} {'ours MB':>9} | "
          f"{'baseline':>24} {'base s':>8} {'base MB':>9}")
    cache = {}
    for size, down, case, base in plan:
        grid = f"{size // down}x{size // down}"
        row = []
        for name in (case, base):
            key = (name, size, down)
            if key not in cache:
                need = estimate_bytes(name, size, down)
                if need > LIMIT_BYTES:
                    cache[key] = {"skip": need}
                else:
                    out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                          "--child", name, str(size), str(down)],
                                         capture_output=True, text=True)
                    if out.returncode != 0:
                        cache[key] = {"error": out.stderr.strip().splitlines()[-1:]}
                    else:
                        cache[key] = json.loads(out.stdout.strip().splitlines()[-1])
            row.append(cache[key])

        def fmt(r):
            if "skip" in r:
                return f"{'not run':>8} {'needs %.0f GB' % (r['skip'] / 2 ** 30):>9}"
            if "error" in r:
                return f"{'failed':>8} {'':>9}"
            return f"{r['seconds']:8.2f} {r['peak_mb']:9.0f}"
        print(f"{size:>6} {'1/%d' % down:>5} {grid:>9} {case:>6} | {fmt(row[0])} | {base:>24} {fmt(row[1])}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
