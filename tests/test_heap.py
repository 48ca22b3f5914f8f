"""dynast_core._heap: inside reuse_freed_memory large freed blocks are reused instead of unmapped and faulted
in again. Measured in a fresh interpreter (the allocator's state depends on everything the process did)."""
import subprocess
import sys

import pytest

from conftest import ROOT
from dynast_core._heap import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc only")

CHURN = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from dynast_core._heap import reuse_freed_memory

def churn(n=6, mb=48):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.empty(mb * 1024 * 1024 // 4)
        t.fill_(1.0)                                  # touch every page
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

outside = churn()
with reuse_freed_memory():
    inside = churn()
print(outside, inside, 48 * 1024 * 1024 // resource.getpagesize())
"""


def _run(env=None):
    import os
    out = subprocess.run([sys.executable, "-c", CHURN.format(root=str(ROOT))], capture_output=True, text=True,
                         env=dict(os.environ, **(env or {})), timeout=120)
    assert out.returncode == 0, out.stderr
    return [int(v) for v in out.stdout.split()]


def test_large_blocks_are_reused_inside():
    outside, inside, pages = _run()
    assert outside > 4 * pages                        # every 48 MiB block mapped and faulted in afresh
    assert inside < 2.5 * pages                       # reused: about one block's pages


def test_switch_off_by_environment():
    outside, inside, pages = _run({"DYNAST_REUSE_FREED_MEMORY": "0"})
    assert outside > 4 * pages and inside > 4 * pages
