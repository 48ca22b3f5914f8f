"""Masks from correspondences: grow (dilate) and feather, in time that does not depend on the radius.

* :func:`dilate`: a square max filter of side ``2r + 1``, done as two 1-D passes (rows, then columns), each
  a van Herk-style doubling: ``log2(r)`` shifted maxima, so a radius of 256 costs about what 8 does. The
  result equals one ``max_pool2d`` with the full ``(2r+1)^2`` window.
* :func:`feather`: a Gaussian blur of standard deviation ``radius / 2`` approximated by three box blurs
  (running sums), with replicated borders: linear time for any radius.
* :func:`confidence_to_mask`: a match's low-confidence regions as an inpainting mask.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["dilate", "feather", "confidence_to_mask"]


def _check_mask(mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise ValueError(f"mask must be (B, C, H, W), got {getattr(mask, 'shape', type(mask).__name__)}")


def _max_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over the window ``[i - radius, i + radius]`` along ``dim`` (positions outside count as -inf)."""
    n = x.shape[dim]
    length = 2 * radius + 1
    low = torch.finfo(x.dtype).min
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [radius, radius]
    xp = F.pad(x, pad, value=low)                          # window of i starts at padded index i
    # m_k[j] = max(xp[j : j + 2^k]); combine two overlapping windows of 2^k to cover `length`
    k = int(math.floor(math.log2(length)))
    m = xp
    width = 1
    for _ in range(k):
        size = m.shape[dim] - width
        m = torch.maximum(m.narrow(dim, 0, size), m.narrow(dim, width, size))
        width *= 2
    return torch.maximum(m.narrow(dim, 0, n), m.narrow(dim, length - width, n))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow the non-zero regions of ``mask`` ``(B, C, H, W)`` by ``radius`` pixels (square window).

    Example:
        >>> m = torch.zeros(1, 1, 9, 9); m[..., 4, 4] = 1
        >>> int(dilate(m, 2).sum())
        25
    """
    _check_mask(mask)
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if r == 0:
        return mask
    x = mask if mask.is_floating_point() else mask.float()
    return _max_1d(_max_1d(x, r, 3), r, 2)


def _box_sizes(sigma: float, n: int = 3):
    """Widths of ``n`` box filters whose succession approximates a Gaussian of ``sigma`` (Kovesi)."""
    ideal = math.sqrt(12 * sigma * sigma / n + 1)
    lo = int(math.floor(ideal))
    lo -= (lo % 2 == 0)
    hi = lo + 2
    m = round((12 * sigma * sigma - n * lo * lo - 4 * n * lo - 3 * n) / (-4 * lo - 4))
    return [lo if i < m else hi for i in range(n)]


def _box_1d(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Mean over an odd ``width`` window along ``dim`` (2 or 3 of a 4-D tensor) with replicated borders, by
    running sums (float32 sums of values in [0, 1] stay accurate to ~1e-6 per thousand pixels)."""
    if width <= 1:
        return x
    r = width // 2
    n = x.shape[dim]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    reps = [r if d == dim else -1 for d in range(4)]
    xp = torch.cat([torch.zeros_like(first), first.expand(*reps), x, last.expand(*reps)], dim)
    c = xp.float().cumsum(dim)
    return ((c.narrow(dim, width, n) - c.narrow(dim, 0, n)) / width).to(x.dtype)


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Soften the edges of ``mask`` ``(B, C, H, W)``: a Gaussian of sigma ``radius / 2`` (three box blurs)."""
    _check_mask(mask)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    sigma = float(radius) / 2
    if sigma < 0.5:
        return mask
    x = mask if mask.is_floating_point() else mask.float()
    for w in _box_sizes(sigma):
        w = min(w, 2 * (min(x.shape[-2:]) - 1) + 1)        # replicate padding needs width <= 2 * side - 1
        x = _box_1d(_box_1d(x, w, 3), w, 2)
    return x


def confidence_to_mask(result, threshold: Optional[float] = 0.5, grow: int = 0, feather_radius: float = 0,
                       invert: bool = False) -> torch.Tensor:
    """A :class:`~dynast_core.api.MatchResult`'s low-confidence regions (1 = redo here) at the target size.

    Args:
        threshold: confidence below it is marked (None: the soft ``1 - confidence``).
        grow: dilate the marked regions by this many pixels; feather_radius: then blur their edges.
        invert: mark the confident regions instead.

    Returns:
        ``(B, 1, H, W)`` in [0, 1].
    """
    m = result.confidence(threshold, low=not invert)
    if grow:
        m = dilate(m, grow)
    if feather_radius:
        m = feather(m, feather_radius)
    return m.clamp(0, 1)
