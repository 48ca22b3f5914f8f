"""Shared helpers of the attention operators: shape checks and query chunking.

Every operator here processes its queries in chunks so that a caller can bound peak working memory.
A chunk size is either given directly (``query_chunk_size``: number of query positions per chunk) or
derived from a memory budget in bytes (``memory_budget``) and the operator's per-query working size.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence, Tuple

import torch

#: Working memory an operator may use per chunk when the caller sets neither a chunk size nor a budget.
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024


def check_shape(x: torch.Tensor, dims: str, name: str) -> None:
    """Raise ValueError unless ``x`` is a tensor whose rank matches ``dims`` (e.g. ``"B,C,H,W"``).

    Entries of ``dims`` that are integers must match exactly; names are only counted.

    Example:
        >>> check_shape(torch.zeros(1, 3, 4, 4), "B,3,H,W", "image")
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape ({dims}), got {type(x).__name__}")
    want = [d.strip() for d in dims.split(",")]
    if x.dim() != len(want):
        raise ValueError(
            f"{name} must have shape ({dims}) ({len(want)} dimensions), got {tuple(x.shape)}")
    for i, d in enumerate(want):
        if d.isdigit() and x.shape[i] != int(d):
            raise ValueError(f"{name} must have shape ({dims}), got {tuple(x.shape)}: dimension {i} "
                             f"must be {d}")


def check_same(values: Sequence[Tuple[str, int]], what: str) -> None:
    """Raise ValueError unless every named integer in ``values`` is equal (e.g. batch sizes)."""
    first_name, first = values[0]
    for name, value in values[1:]:
        if value != first:
            listing = ", ".join(f"{n}={v}" for n, v in values)
            raise ValueError(f"{what} must agree: {listing}")


def resolve_chunk_size(num_queries: int, bytes_per_query: float,
                       query_chunk_size: Optional[int] = None,
                       memory_budget: Optional[int] = None) -> int:
    """Number of query positions processed at once.

    Args:
        num_queries: total number of query positions (per batch, all batches are processed together).
        bytes_per_query: working memory one query position needs in the operator (all batch items).
        query_chunk_size: explicit chunk size; wins over ``memory_budget``.
        memory_budget: bytes of working memory allowed per chunk (default 256 MiB).

    Returns:
        chunk size in ``[1, num_queries]``.
    """
    if query_chunk_size is not None:
        if int(query_chunk_size) < 1:
            raise ValueError(f"query_chunk_size must be a positive integer, got {query_chunk_size}")
        return max(1, min(int(query_chunk_size), max(num_queries, 1)))
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    size = int(budget // max(bytes_per_query, 1.0))
    size = max(1, min(size, max(num_queries, 1)))
    if _CHUNK_LIMIT:
        size = max(1, min(size, _CHUNK_LIMIT[-1]))
    _CHUNK_SEEN[0] = max(_CHUNK_SEEN[0], size)
    return size


#: stack of caps on automatically sized chunks (see :func:`chunk_limit`) and the largest chunk sized so far
_CHUNK_LIMIT: list = []
_CHUNK_SEEN = [0]


class chunk_limit:
    """Context manager: automatically sized query chunks (no explicit ``query_chunk_size``) are at most
    ``limit`` positions inside it; ``None`` leaves them alone. An out-of-memory retry uses it to run again
    with chunks smaller than the ones that failed (see :func:`largest_chunk`).

    Example:
        >>> with chunk_limit(64):
        ...     resolve_chunk_size(10_000, 4.0)
        64
    """

    def __init__(self, limit: Optional[int]):
        self.limit = None if limit is None else max(1, int(limit))

    def __enter__(self):
        if self.limit is not None:
            _CHUNK_LIMIT.append(self.limit)
        return self

    def __exit__(self, *exc):
        if self.limit is not None:
            _CHUNK_LIMIT.pop()
        return False


def largest_chunk(reset: bool = False) -> int:
    """The largest automatically sized chunk since the last reset (0 if none); ``reset=True`` starts over."""
    value = _CHUNK_SEEN[0]
    if reset:
        _CHUNK_SEEN[0] = 0
    return value


#: callables run before every chunk of every attention op (see :func:`set_cancel_check`)
_CANCEL_CHECKS = []


def set_cancel_check(fn: Optional[Callable[[], None]]) -> None:
    """Install ``fn`` to be called before every chunk of every attention op (None removes it).

    A host application (the ComfyUI nodes) raises its own cancel exception from ``fn``, so a long run stops
    within one chunk of the user's request; the library itself never cancels.
    """
    _CANCEL_CHECKS.clear()
    if fn is not None:
        _CANCEL_CHECKS.append(fn)


def chunk_ranges(total: int, chunk: int) -> Iterator[Tuple[int, int]]:
    """Yield ``(start, end)`` ranges that cover ``range(total)`` in steps of ``chunk`` (running the cancel
    check, if one is installed, before each)."""
    for start in range(0, total, chunk):
        for check in _CANCEL_CHECKS:
            check()
        yield start, min(start + chunk, total)
