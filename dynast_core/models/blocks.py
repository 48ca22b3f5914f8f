"""Building blocks of the DynaST generator, key-compatible with Huage001/DynaST ``architecture.py`` and
``dynast_transformer.py`` (spectral norm folded into plain weights at load time).

Two execution paths with the same modules and state-dict keys:

* autograd on (training): the official operation order, out of place;
* inference (``torch.no_grad`` / ``torch.inference_mode``): the same arithmetic with fewer passes over
  memory: activations in place on freshly computed tensors, SPADE's normalise-and-modulate fused into two
  passes, the positional norm in two passes over a channels-last tensor (where the channel reduction is
  contiguous). Outputs equal the autograd path's up to float rounding (float64: 1e-12).

Precision: statistics (positional norm, feature normalisation, instance norm) are computed in float32 for
float16/bfloat16 inputs (the eps values 1e-8 and 1e-10 are zero in float16) and cast back; convolutions run
in the input dtype. Parameters used outside convolutions (the PReLU weights) are cast to the input's device
and dtype where used, so a module left on another device by a low-VRAM host still runs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import dynamic_attention, inner_scale_sparse_attention, inter_scale_sparse_attention
from ..attention._inference import work_dtype

__all__ = ["positional_norm2d", "feature_normalize", "instance_norm2d", "reflect_pad1", "conv_padded", "PReLU",
           "SPADE", "ResidualBlock", "SPADEResnetBlock", "FeatureGenerator", "DenseTransformerBlock", "SparseTransformerBlock", "BlockOutput"]


def _inference() -> bool:
    """The in-place inference path is taken when autograd is off."""
    return not torch.is_grad_enabled()


def _centred(x: torch.Tensor, eps: float, inplace: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x - mean_c(x), 1 / sqrt(var_c(x) + eps))`` over channels, unbiased variance, in the work dtype (two
    passes: the centred values, then their norm). ``inplace`` reuses ``x`` when it is in the work dtype."""
    xw = x.to(work_dtype(x))
    mean = xw.mean(dim=1, keepdim=True)
    d = xw.sub_(mean) if inplace or xw is not x else xw - mean     # a cast is a fresh copy
    var = torch.linalg.vector_norm(d, dim=1, keepdim=True).square_().div_(max(x.shape[1] - 1, 1))
    return d, var.add_(eps).rsqrt_()


def positional_norm2d(x: torch.Tensor, eps: float = 1e-8, inplace: bool = False) -> torch.Tensor:
    """Normalise over channels at every position (official ``PositionalNorm2d``: *unbiased* variance).

    Args:
        x: ``(B, C, H, W)``, any floating dtype (statistics in float32 for half inputs).
        eps: added to the variance.
        inplace: inference only: ``x`` may be overwritten (it must be a fresh tensor nobody else reads).

    Returns:
        ``(B, C, H, W)`` in ``x.dtype``.
    """
    if not _inference() or x.shape[1] < 2:
        xw = x.to(work_dtype(x))
        mean = xw.mean(dim=1, keepdim=True)
        std = xw.var(dim=1, keepdim=True).add(eps).sqrt()
        return ((xw - mean) / std).to(x.dtype)
    d, rstd = _centred(x, eps, inplace)
    return d.mul_(rstd).to(x.dtype)


def feature_normalize(x: torch.Tensor, eps: float = 1e-10, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L2-normalise over channels (official ``util.feature_normalize``: eps added to the norm).

    Args:
        x: ``(B, C, H, W)``, any floating dtype (the norm and eps in float32 for half inputs).
        out: optional ``(B, C, H, W)`` tensor (or view) to write into (inference only).

    Returns:
        ``(B, C, H, W)`` in ``x.dtype``.
    """
    xw = x.to(work_dtype(x))
    denom = torch.norm(xw, 2, 1, keepdim=True) + eps
    if out is not None:
        return torch.div(xw, denom, out=out)
    return (xw / denom).to(x.dtype)


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, (3, 3), (stride, stride), 1, padding_mode="reflect")


def reflect_pad1(x: torch.Tensor) -> torch.Tensor:
    """``x`` reflection-padded by one pixel on each side: the input a 3x3 ``padding_mode="reflect"``
    convolution actually convolves. Padded once, it can feed several convolutions (see :func:`conv_padded`)."""
    return F.pad(x, (1, 1, 1, 1), mode="reflect")


def _plain(conv: nn.Module) -> bool:
    """A plain 3x3 reflect-padded ``nn.Conv2d`` without hooks: calling ``F.conv2d`` on its padded input is
    exactly what its forward does. A host may swap in a weight-casting subclass (ComfyUI) or add hooks
    (spectral norm): those are always called as modules."""
    from torch.nn.modules import module as m
    return (type(conv) is nn.Conv2d and conv.padding_mode == "reflect" and conv.padding == (1, 1)
            and not conv._forward_hooks and not conv._forward_pre_hooks
            and not m._global_forward_hooks and not m._global_forward_pre_hooks)


def conv_padded(conv: nn.Conv2d, x: torch.Tensor, x_padded: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv(x)``, convolving ``x_padded`` (:func:`reflect_pad1` of ``x``) directly when it is given and
    ``conv`` is plain, so a padded input is shared instead of being padded again by every convolution."""
    if x_padded is not None and _plain(conv):
        return F.conv2d(x_padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    return conv(x)


class PReLU(nn.PReLU):
    """:class:`torch.nn.PReLU` (same state-dict key ``weight``) whose weight is cast to the input's device
    and dtype where used. :meth:`inplace` is the inference form (overwrites its input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight.to(x))

    def inplace(self, x: torch.Tensor) -> torch.Tensor:
        """``prelu(x)`` written into ``x`` (a fresh tensor); a single weight on the CPU is a leaky ReLU slope
        (the same arithmetic, ``x > 0 ? x : w * x``)."""
        w = self.weight
        if w.numel() == 1 and w.device.type == "cpu":
            return F.leaky_relu_(x, float(w))
        return F.prelu(x, w.to(x))


class SPADE(nn.Module):
    """``(1 + gamma(seg)) * positional_norm(x) + beta(seg)``; ``seg`` resized (nearest) to ``x``.

    Args (forward):
        x: ``(B, dim, H, W)``; seg: ``(B, ic, h, w)`` (resized to ``(H, W)`` unless already that size);
        seg_padded: optional :func:`reflect_pad1` of ``seg`` at ``(H, W)`` (inference: shared by the SPADEs
        of a scale instead of padding the label for each).

    Returns:
        ``(B, dim, H, W)``.
    """

    def __init__(self, dim: int, ic: int):
        super().__init__()
        self.mlp_shared = nn.Sequential(_conv3(ic, dim), nn.ReLU())
        self.mlp_gamma = _conv3(dim, dim)
        self.mlp_beta = _conv3(dim, dim)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, seg_padded: Optional[torch.Tensor] = None) -> torch.Tensor:
        if seg.shape[-2:] != x.shape[-2:]:
            seg, seg_padded = F.interpolate(seg, x.shape[-2:]), None
        if not _inference():
            hidden = self.mlp_shared(seg)
            return (1 + self.mlp_gamma(hidden)) * positional_norm2d(x) + self.mlp_beta(hidden)
        hidden = conv_padded(self.mlp_shared[0], seg, seg_padded)
        if _plain(self.mlp_gamma) and _plain(self.mlp_beta):
            # gamma and beta convolve the same padded hidden map (ReLU commutes with reflection padding)
            hidden_padded = F.relu_(reflect_pad1(hidden))
            gamma = conv_padded(self.mlp_gamma, None, hidden_padded)
            beta = conv_padded(self.mlp_beta, None, hidden_padded)
            del hidden_padded
        else:
            hidden = F.relu_(hidden)
            gamma, beta = self.mlp_gamma(hidden), self.mlp_beta(hidden)
        del hidden
        d, rstd = _centred(x, 1e-8)
        work = d.dtype
        # beta + (x - mean) * ((1 + gamma) * rstd): two passes over fresh tensors
        scale = gamma.to(work).add_(1).mul_(rstd)
        return beta.to(work).addcmul_(d, scale).to(x.dtype)


class ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN plus identity, then the *same* PReLU again. The PReLU is registered twice
    (``relu`` and ``model.2``), so the official state dict stores its weight under both keys."""

    def __init__(self, dim: int):
        super().__init__()
        self.relu = PReLU()
        self.model = nn.Sequential(_conv3(dim, dim), nn.BatchNorm2d(dim), self.relu, _conv3(dim, dim),
                                   nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _inference():
            return self.relu(x + self.model(x))
        m = self.model
        h = m[4](m[3](self.relu.inplace(m[1](m[0](x)))))
        return self.relu.inplace(h.add_(x))


class SPADEResnetBlock(nn.Module):
    """Two SPADE-PReLU-conv steps plus identity (convs spectrally normalised in the official file)."""

    def __init__(self, dim: int, ic: int):
        super().__init__()
        self.conv_0 = _conv3(dim, dim)
        self.conv_1 = _conv3(dim, dim)
        self.norm_0 = SPADE(dim, ic)
        self.norm_1 = SPADE(dim, ic)
        self.relu = PReLU()

    def forward(self, x: torch.Tensor, seg: torch.Tensor, seg_padded: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not _inference():
            dx = self.conv_0(self.relu(self.norm_0(x, seg)))
            dx = self.conv_1(self.relu(self.norm_1(dx, seg)))
            return self.relu(x + dx)
        dx = self.conv_0(self.relu.inplace(self.norm_0(x, seg, seg_padded)))
        dx = self.conv_1(self.relu.inplace(self.norm_1(dx, seg, seg_padded)))
        return self.relu.inplace(dx.add_(x))


def instance_norm2d(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free instance norm (``nn.InstanceNorm2d`` defaults: biased variance over H, W per channel)
    in the work dtype, the result in ``x.dtype``.

    Inference overwrites ``x`` (a fresh tensor) when it is in the work dtype and keeps its memory format
    (``F.instance_norm`` returns a contiguous tensor, and its channels-last alternatives lose precision:
    ``batch_norm`` in training mode is off by 5e-5, ``vector_norm`` over H, W is slow)."""
    if not _inference():
        return F.instance_norm(x.to(work_dtype(x)), eps=eps).to(x.dtype)
    xw = x.to(work_dtype(x))
    d = xw.sub_(xw.mean(dim=(2, 3), keepdim=True))
    var = (d * d).mean(dim=(2, 3), keepdim=True)
    return d.mul_(var.add_(eps).rsqrt_()).to(x.dtype)


class FeatureGenerator(nn.Module):
    """Four conv (stride 1, 2, 2, 2) - InstanceNorm (affine=False) - ResidualBlock stages; returns the
    features at 1/8, 1/4, 1/2, 1."""

    def __init__(self, ic: int, nf: int = 64, max_multi: int = 8):
        super().__init__()
        widths = [nf, nf * min(2, max_multi), nf * min(4, max_multi), nf * min(8, max_multi)]
        cin = ic
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(_conv3(cin, w, 1 if i == 0 else 2),
                                                         nn.InstanceNorm2d(w), ResidualBlock(w)))
            cin = w

    def forward(self, x: torch.Tensor):
        feats = []
        for i in range(1, 5):
            conv, norm, res = getattr(self, f"layer{i}")
            if norm.affine or norm.track_running_stats:
                x = res(norm(conv(x)))
            else:                    # the DynaST configuration: parameter-free, statistics in the work dtype
                x = res(instance_norm2d(conv(x), norm.eps))
            feats.append(x)
        x1, x2, x3, x4 = feats
        return x4, x3, x2, x1


class BlockOutput(tuple):
    """``(features, topk, confidence, candidates, candidate_weights, warped)`` of one transformer block."""

    __slots__ = ()

    def __new__(cls, features, topk, confidence, candidates, weights, warped):
        return super().__new__(cls, (features, topk, confidence, candidates, weights, warped))

    features = property(lambda s: s[0])
    topk = property(lambda s: s[1])
    confidence = property(lambda s: s[2])
    candidates = property(lambda s: s[3])
    weights = property(lambda s: s[4])
    warped = property(lambda s: s[5])


class _TransformerBlock(nn.Module):
    """Shared parts of the dense and sparse blocks: projections f, g, h, gate projections f_prune,
    g_prune, the SPADE fallback for pruned positions and the residual block.

    ``y = positional_norm(attention + (1 - confidence) * SPADE(q, seg) + q)``; output ``res_block(y)``.
    """

    def __init__(self, dim_qk: int, dim_v: int, dim_prune: int, ic: int):
        super().__init__()
        self.f = nn.Conv2d(dim_qk, dim_qk, (1, 1))
        self.g = nn.Conv2d(dim_qk, dim_qk, (1, 1))
        self.h = nn.Conv2d(dim_v, dim_v, (1, 1))
        self.f_prune = nn.Conv2d(dim_qk, dim_prune, (1, 1))
        self.g_prune = nn.Conv2d(dim_qk, dim_prune, (1, 1))
        self.spade = SPADE(dim_v, ic)
        self.res_block = ResidualBlock(dim_v)

    @staticmethod
    def embed(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``cat([feature_normalize(x), pos])``: ``(B, C, H, W)``, ``(1 or B, P, H, W)`` -> ``(B, C + P, H, W)``.

        The key embedding of a scale is the same for all its blocks (the exemplar features and the position
        embedding): compute it once and pass it as ``key`` to each block. Inference writes both parts into
        one channels-last tensor (the 1x1 projections then produce the row layout the attention reads)."""
        b, c, h, w = x.shape
        pos = pos.to(x).expand(b, -1, -1, -1)
        if not _inference():
            return torch.cat([feature_normalize(x), pos], 1)
        out = torch.empty(b, c + pos.shape[1], h, w, dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        feature_normalize(x, out=out[:, :c])
        out[:, c:] = pos
        return out

    def _inputs(self, q, k, v, pos, key=None):
        query = self.embed(q, pos)
        key = self.embed(k, pos) if key is None else key     # exemplar and target share the grid
        return self.f(query), self.g(key), self.h(v), self.f_prune(query), self.g_prune(key)

    def _finish(self, q, seg, attn_out, conf, seg_padded=None):
        if not _inference():
            y = positional_norm2d(attn_out + (1 - conf) * self.spade(q, seg) + q)
            return self.res_block(y)
        # the same sums in the same order, accumulated in the fresh SPADE output
        y = self.spade(q, seg, seg_padded).mul_(1 - conf).add_(attn_out).add_(q)
        return self.res_block(positional_norm2d(y, inplace=True))


class DenseTransformerBlock(_TransformerBlock):
    """The 1/8-scale block: dense dynamic attention (logits divided by sqrt(C): the official blocks are
    built with ``smooth=None``; gate logits divided by the gate width).

    Args (forward): q ``(B, C, H, W)`` target features, k, v ``(B, C, Hk, Wk)`` exemplar features, pos
    ``(1 or B, P, H, W)``, seg ``(B, L, h, w)`` the target label; ``key``: :meth:`embed` of ``(k, pos)`` if
    already computed; ``seg_padded``: see :class:`SPADE`.
    """

    def forward(self, q, k, v, pos, seg, top_k: int = 0, warp_values=None, warp_exclude="kept",
                query_chunk_size: Optional[int] = None, key: Optional[torch.Tensor] = None,
                seg_padded: Optional[torch.Tensor] = None) -> BlockOutput:
        fq, gk, hv, fp, gp = self._inputs(q, k, v, pos, key)
        r = dynamic_attention(fq, gk, hv, fp, gp, top_k=top_k, warp_values=warp_values,
                              warp_exclude=warp_exclude, query_chunk_size=query_chunk_size)
        del fq, gk, hv, fp, gp
        return BlockOutput(self._finish(q, seg, r.output, r.confidence, seg_padded), r.topk_indices, r.confidence,
                           r.topk_indices, r.topk_weights, r.warped)


class SparseTransformerBlock(_TransformerBlock):
    """A finer-scale block: inter-scale (first block of a scale) or inner-scale sparse attention with
    logits divided by ``smooth`` and unscaled gate logits (official quirks).

    ``need_candidates=False`` skips the candidate list of the output (only the last block of a scale
    provides the scale's correspondence)."""

    def __init__(self, dim_qk, dim_v, dim_prune, ic, smooth: float = 0.01, inter_scale: bool = True):
        super().__init__(dim_qk, dim_v, dim_prune, ic)
        self.smooth = smooth
        self.inter_scale = inter_scale

    def forward(self, q, k, v, pos, seg, prev_topk, need_topk: bool = True, warp_values=None,
                warp_exclude="kept", query_chunk_size: Optional[int] = None, key: Optional[torch.Tensor] = None,
                need_candidates: bool = True, seg_padded: Optional[torch.Tensor] = None) -> BlockOutput:
        fq, gk, hv, fp, gp = self._inputs(q, k, v, pos, key)
        op = inter_scale_sparse_attention if self.inter_scale else inner_scale_sparse_attention
        r = op(fq, gk, hv, prev_topk, fp, gp, scale=self.smooth, return_topk=need_topk,
               warp_values=warp_values, warp_exclude=warp_exclude, query_chunk_size=query_chunk_size,
               return_candidates=need_candidates)
        del fq, gk, hv, fp, gp
        return BlockOutput(self._finish(q, seg, r.output, r.confidence, seg_padded), r.topk_indices, r.confidence,
                           r.candidate_indices, r.candidate_weights, r.warped)
