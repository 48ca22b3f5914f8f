"""Reuse freed memory during a CPU inference call instead of returning it to the system and faulting it in
again.

glibc serves every allocation above 32 MiB (the ceiling of its dynamic mmap threshold) with a fresh ``mmap``
and unmaps it on free. A DynaST forward at 512 px allocates hundreds of such activations (64 channels x
512 x 512 x 4 bytes = 64 MiB each, and every reflection pad is another), so the kernel zero-fills and maps
3 million pages per call: 11 s of system time against 48 s of compute on one core. Inside
:func:`reuse_freed_memory` large blocks come from the heap instead and freed blocks are reused; on exit mmap
is allowed again, the trim threshold is set back to glibc's default and the free memory is handed back
(``malloc_trim``), so the resident set after the call is what it was. (glibc stops adapting its mmap
threshold once a program sets one of these parameters; it stays where it was.)

It is a process-wide setting of the C allocator for the duration of the call (nested uses are one), on
glibc only (a no-op elsewhere), and can be switched off with ``DYNAST_REUSE_FREED_MEMORY=0``.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading

__all__ = ["reuse_freed_memory", "cpu_inference_heap", "on_cpu_heap"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_lock = threading.Lock()
_depth = [0]


def _glibc():
    """The process's own C library when it is glibc (looked up in the running process: no file search, no
    subprocess), else ``None``: musl, macOS and Windows have other allocators."""
    if _cache:
        return _cache[0]
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version
        libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        libc = None
    _cache.append(libc)
    return libc


_cache: list = []


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True):
    """Context manager: inside it, large allocations are served from (and returned to) the heap.

    Example:
        >>> with reuse_freed_memory():
        ...     pass
    """
    active = enabled and os.environ.get("DYNAST_REUSE_FREED_MEMORY", "1") != "0" and _glibc() is not None
    if not active:
        yield
        return
    with _lock:
        _depth[0] += 1
        if _depth[0] == 1:
            _glibc().mallopt(_M_MMAP_MAX, 0)
            _glibc().mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        with _lock:
            _depth[0] -= 1
            if _depth[0] == 0:
                _glibc().mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _glibc().mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                _glibc().malloc_trim(0)


def cpu_inference_heap(x) -> "contextlib.AbstractContextManager":
    """:func:`reuse_freed_memory` for an inference call on ``x``'s device: active when ``x`` is a CPU tensor and
    autograd is off (training keeps the default allocator policy; GPU memory is not the C heap)."""
    import torch
    return reuse_freed_memory(enabled=isinstance(x, torch.Tensor) and x.device.type == "cpu"
                              and not torch.is_grad_enabled())


def on_cpu_heap(fn):
    """Decorator: run ``fn`` inside :func:`cpu_inference_heap` of its first tensor argument."""
    import functools

    import torch

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        with cpu_inference_heap(first):
            return fn(*args, **kwargs)
    return wrapper
