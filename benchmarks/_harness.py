"""Shared benchmark plumbing: run a case in a fresh subprocess and report its time and peak memory.

"peak MB" is the highest resident set seen during the call (sampled every millisecond by a thread) minus
the resident set just before it: inputs made before the call are excluded, and an earlier, larger peak of
the process (imports, a warm-up run) does not hide or inflate the call's own.
"""
from __future__ import annotations

import json
import os
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
    import threading
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    peak[0] = max(peak[0], rss_bytes())
    return result, seconds, max(0, peak[0] - before) / 2 ** 20


def run_child(script: str, args, threads: int, exact_memory: bool = False) -> dict:
    """Run ``script --threads T --child ARGS...`` and parse the JSON it prints last.

    ``exact_memory``: allocations above 64 KiB get their own mappings, returned to the system on free, so
    the resident set follows live memory instead of the heap's high-water mark (freed inputs would
    otherwise hide a call's allocations). It slows allocation-heavy code several times: use such a run
    for memory only, and another for time (see :func:`run_timed_and_measured`).
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if exact_memory else None
    out = subprocess.run([sys.executable, script, "--threads", str(threads), "--child", *map(str, args)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def set_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def run_timed_and_measured(script: str, args, threads: int) -> dict:
    """Two child runs: time from a normal one, peak memory from an ``exact_memory`` one."""
    timed = run_child(script, args, threads)
    if "error" in timed:
        return timed
    mem = run_child(script, args, threads, exact_memory=True)
    if "error" not in mem:
        timed["peak_mb"] = mem["peak_mb"]
    return timed


def print_size_table(script: str, sizes, threads: int, official: dict, official_missing: str) -> None:
    """Run ``script --child SIZE`` for each size and print ours beside the official figures."""
    print(f"{'size':>6} | {'ours s':>8} {'ours MB':>9} | {'official s':>10} {'official MB':>11}")
    for size in sizes:
        r = run_child(script, [size], threads)
        o = official.get(size)
        ours = "failed: " + r["error"] if "error" in r else f"{r['seconds']:8.1f} {r['peak_mb']:9.0f}"
        off = f"{o[0]:10.1f} {o[1]:11.0f}" if o else f"{official_missing:>10} {'':>11}"
        print(f"{size:>6} | {ours} | {off}", flush=True)


def size_benchmark_main(doc: str, script: str, child, default_sizes, official: dict, official_missing: str,
                        argv=None) -> int:
    """The command line shared by the per-size model benchmarks: ``--sizes``, ``--threads``; each size runs
    ``child(size, threads) -> {"seconds", "peak_mb"}`` in its own process."""
    import argparse
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=list(default_sizes))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(int(a.child[0]), a.threads)))
        return 0
    print_size_table(script, a.sizes, a.threads, official, official_missing)
    return 0
