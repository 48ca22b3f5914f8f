"""Shared benchmark plumbing: run a case in a fresh subprocess and report its time and peak memory.

"peak MB" is the growth of the process's peak resident set over the resident set just before the call
(inputs made before the call are excluded), so cases do not inherit each other's allocations.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn):
    """Run ``fn()``; return ``(result, seconds, peak_mb)``."""
    before = rss_bytes()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result, seconds, max(0, peak - before) / 2 ** 20


def run_child(script: str, args, threads: int) -> dict:
    """Run ``script --threads T --child ARGS...`` and parse the JSON it prints last."""
    out = subprocess.run([sys.executable, script, "--threads", str(threads), "--child", *map(str, args)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def set_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
