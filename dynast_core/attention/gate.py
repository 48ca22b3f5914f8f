"""The learned pruning gate of DynaST's dynamic attention unit.

The gate keeps a key for a query when the dot product of their gate embeddings is positive. The forward
pass is a hard 0/1 step; the backward pass uses the derivative of a sigmoid as a surrogate (a
straight-through estimator), so the gate embeddings can be trained.
"""
from __future__ import annotations

import torch

__all__ = ["hard_gate", "HardGateSigmoidGrad"]


class HardGateSigmoidGrad(torch.autograd.Function):
    """``(x > 0)`` in the forward pass, ``grad * sigmoid(x) * (1 - sigmoid(x))`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None
        s = torch.sigmoid(x)
        return grad_output * s * (1 - s)


def hard_gate(gate_logits: torch.Tensor) -> torch.Tensor:
    """Hard 0/1 gate with a sigmoid surrogate gradient.

    Args:
        gate_logits: any shape; typically ``q_gate . k_gate`` (divided by a scale).

    Returns:
        tensor of the same shape and dtype holding 1.0 where ``gate_logits > 0`` and 0.0 elsewhere.

    Example:
        >>> x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
        >>> hard_gate(x)
        tensor([0., 0., 1.], grad_fn=<HardGateSigmoidGradBackward>)
    """
    if gate_logits.requires_grad:
        return HardGateSigmoidGrad.apply(gate_logits)
    return (gate_logits > 0).to(gate_logits.dtype)
