"""dynast_core._heap: inside reuse_freed_memory large freed blocks are reused instead of unmapped and faulted
in again; outside it the allocator's policy is what it was."""
import resource

import pytest
import torch

from dynast_core._heap import _glibc, reuse_freed_memory

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc only")


def _faults_of_churn(n=6, mb=48):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.empty(mb * 1024 * 1024 // 4)
        t.fill_(1.0)                                  # touch every page
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_large_blocks_are_reused_inside_and_unmapped_outside():
    pages = 48 * 1024 * 1024 // resource.getpagesize()
    outside = _faults_of_churn()
    with reuse_freed_memory():
        inside = _faults_of_churn()
    after = _faults_of_churn()
    assert outside > 4 * pages                        # every block mapped and faulted in afresh
    assert inside < 2 * pages                         # the first block's pages, then reused
    assert after > 4 * pages                          # the previous policy is back


def test_switch_off_by_environment(monkeypatch):
    monkeypatch.setenv("DYNAST_REUSE_FREED_MEMORY", "0")
    pages = 48 * 1024 * 1024 // resource.getpagesize()
    with reuse_freed_memory():
        assert _faults_of_churn() > 4 * pages
