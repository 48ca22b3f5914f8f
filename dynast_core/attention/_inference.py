"""What the operators' inference paths share: when to take them, which dtype to compute in, which layout.

* :func:`needs_autograd`: an operator takes its differentiable path only when autograd is on and an input
  requires a gradient; otherwise it may work in place and in fused kernels.
* :func:`work_dtype`: the precision contract. Logits, softmax, gates, norms and statistics are computed in
  float32 for float16/bfloat16 inputs (float64 stays float64) and the results cast back.
* :func:`rows_of`: attention reads features as ``(B, H*W, C)`` rows; for a channels-last input that is a
  view, so a model that keeps its activations channels-last pays no transposing copies.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["needs_autograd", "work_dtype", "rows_of"]


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 ``x``, else float32 (float16 overflows and underflows, and both half types lose
    the logits' precision once they are scaled by ``1/T`` or ``1/smooth``).

    Example:
        >>> work_dtype(torch.zeros(1, dtype=torch.bfloat16))
        torch.float32
    """
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def needs_autograd(*tensors: Optional[torch.Tensor]) -> bool:
    """True when autograd is on and one of ``tensors`` (None entries are skipped) requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def rows_of(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)`` contiguous rows in ``dtype`` (default ``x.dtype``): a view when
    ``x`` is channels-last in that dtype, else one copy.

    Example:
        >>> x = torch.rand(1, 3, 2, 2).contiguous(memory_format=torch.channels_last)
        >>> rows_of(x).data_ptr() == x.data_ptr()
        True
    """
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c).to(dtype or x.dtype).contiguous()
