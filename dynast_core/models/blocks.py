"""Building blocks of the DynaST generator, key-compatible with Huage001/DynaST ``architecture.py`` and
``dynast_transformer.py`` (spectral norm folded into plain weights at load time)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import dynamic_attention, inner_scale_sparse_attention, inter_scale_sparse_attention

__all__ = ["positional_norm2d", "feature_normalize", "SPADE", "ResidualBlock", "SPADEResnetBlock",
           "FeatureGenerator", "DenseTransformerBlock", "SparseTransformerBlock", "BlockOutput"]


def positional_norm2d(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise over channels at every position (official ``PositionalNorm2d``: *unbiased* variance)."""
    mean = x.mean(dim=1, keepdim=True)
    std = x.var(dim=1, keepdim=True).add(eps).sqrt()
    return (x - mean) / std


def feature_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """L2-normalise over channels (official ``util.feature_normalize``: eps added to the norm)."""
    return x / (torch.norm(x, 2, 1, keepdim=True) + eps)


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, (3, 3), (stride, stride), 1, padding_mode="reflect")


class SPADE(nn.Module):
    """``(1 + gamma(seg)) * positional_norm(x) + beta(seg)``; ``seg`` resized (nearest) to ``x``."""

    def __init__(self, dim: int, ic: int):
        super().__init__()
        self.mlp_shared = nn.Sequential(_conv3(ic, dim), nn.ReLU())
        self.mlp_gamma = _conv3(dim, dim)
        self.mlp_beta = _conv3(dim, dim)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        if seg.shape[-2:] != x.shape[-2:]:
            seg = F.interpolate(seg, x.shape[-2:])
        hidden = self.mlp_shared(seg)
        return (1 + self.mlp_gamma(hidden)) * positional_norm2d(x) + self.mlp_beta(hidden)


class ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN plus identity, then the *same* PReLU again. The PReLU is registered twice
    (``relu`` and ``model.2``), so the official state dict stores its weight under both keys."""

    def __init__(self, dim: int):
        super().__init__()
        self.relu = nn.PReLU()
        self.model = nn.Sequential(_conv3(dim, dim), nn.BatchNorm2d(dim), self.relu, _conv3(dim, dim),
                                   nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.model(x))


class SPADEResnetBlock(nn.Module):
    """Two SPADE-PReLU-conv steps plus identity (convs spectrally normalised in the official file)."""

    def __init__(self, dim: int, ic: int):
        super().__init__()
        self.conv_0 = _conv3(dim, dim)
        self.conv_1 = _conv3(dim, dim)
        self.norm_0 = SPADE(dim, ic)
        self.norm_1 = SPADE(dim, ic)
        self.relu = nn.PReLU()

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(self.relu(self.norm_0(x, seg)))
        dx = self.conv_1(self.relu(self.norm_1(dx, seg)))
        return self.relu(x + dx)


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
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
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

    def _inputs(self, q, k, v, pos):
        pos = pos.expand(q.shape[0], -1, -1, -1)
        query = torch.cat([feature_normalize(q), pos], 1)
        key = torch.cat([feature_normalize(k), pos], 1)     # exemplar and target share the grid
        return self.f(query), self.g(key), self.h(v), self.f_prune(query), self.g_prune(key)

    def _finish(self, q, seg, attn_out, conf):
        y = positional_norm2d(attn_out + (1 - conf) * self.spade(q, seg) + q)
        return self.res_block(y)


class DenseTransformerBlock(_TransformerBlock):
    """The 1/8-scale block: dense dynamic attention (logits divided by sqrt(C): the official blocks are
    built with ``smooth=None``; gate logits divided by the gate width)."""

    def forward(self, q, k, v, pos, seg, top_k: int = 0, warp_values=None, warp_exclude="kept",
                query_chunk_size: Optional[int] = None) -> BlockOutput:
        fq, gk, hv, fp, gp = self._inputs(q, k, v, pos)
        r = dynamic_attention(fq, gk, hv, fp, gp, top_k=top_k, warp_values=warp_values,
                              warp_exclude=warp_exclude, query_chunk_size=query_chunk_size)
        return BlockOutput(self._finish(q, seg, r.output, r.confidence), r.topk_indices, r.confidence,
                           r.topk_indices, r.topk_weights, r.warped)


class SparseTransformerBlock(_TransformerBlock):
    """A finer-scale block: inter-scale (first block of a scale) or inner-scale sparse attention with
    logits divided by ``smooth`` and unscaled gate logits (official quirks)."""

    def __init__(self, dim_qk, dim_v, dim_prune, ic, smooth: float = 0.01, inter_scale: bool = True):
        super().__init__(dim_qk, dim_v, dim_prune, ic)
        self.smooth = smooth
        self.inter_scale = inter_scale

    def forward(self, q, k, v, pos, seg, prev_topk, need_topk: bool = True, warp_values=None,
                warp_exclude="kept", query_chunk_size: Optional[int] = None) -> BlockOutput:
        fq, gk, hv, fp, gp = self._inputs(q, k, v, pos)
        op = inter_scale_sparse_attention if self.inter_scale else inner_scale_sparse_attention
        r = op(fq, gk, hv, prev_topk, fp, gp, scale=self.smooth, return_topk=need_topk,
               warp_values=warp_values, warp_exclude=warp_exclude, query_chunk_size=query_chunk_size)
        return BlockOutput(self._finish(q, seg, r.output, r.confidence), r.topk_indices, r.confidence,
                           r.candidate_indices, r.candidate_weights, r.warped)
