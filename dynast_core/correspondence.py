"""The Correspondence type: which exemplar positions each output position draws from.

A matching step (DynaST's attention cascade, learned or weight-free) decides, for every query position on
a ``(Hq, Wq)`` grid, a short list of K exemplar (key) positions on a ``(Hk, Wk)`` grid and a weight for
each. That list is the product's central object: it warps anything laid out on the exemplar (an image,
a mask, a latent, at any resolution), shows itself as a flow-colour picture, and says how confident it is.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["Correspondence"]

_FORMAT = "dynast_core.Correspondence"
_VERSION = "1"


def _size(value, name: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (height, width) of positive integers, got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be a pair (height, width) of positive integers, got {value!r}")
    return h, w


class Correspondence:
    """Sparse correspondence from a query grid to an exemplar (key) grid.

    Args:
        indices: ``(B, Hq*Wq, K)`` integer flat indices into the ``(Hk, Wk)`` exemplar grid
            (``y * Wk + x``).
        weights: ``(B, Hq*Wq, K)`` non-negative weight of each candidate (need not sum to one).
        query_size: ``(Hq, Wq)``.
        key_size: ``(Hk, Wk)``.
        confidence: ``(B, 1, Hq, Wq)`` in ``[0, 1]``; default: the sum of the weights, clamped to 1.

    Example:
        >>> idx = torch.arange(16).view(1, 16, 1)          # identity on a 4x4 grid
        >>> c = Correspondence(idx, torch.ones(1, 16, 1), (4, 4), (4, 4))
        >>> img = torch.rand(1, 3, 8, 8)                    # the exemplar at twice the grid resolution
        >>> torch.allclose(c.warp(img), img, atol=1e-6)
        True
    """

    def __init__(self, indices: torch.Tensor, weights: torch.Tensor, query_size, key_size,
                 confidence: Optional[torch.Tensor] = None):
        self.query_size = _size(query_size, "query_size")
        self.key_size = _size(key_size, "key_size")
        hq, wq = self.query_size
        hk, wk = self.key_size
        if not isinstance(indices, torch.Tensor) or indices.dim() != 3:
            raise ValueError(f"indices must be a (B, Hq*Wq, K) integer tensor, got "
                             f"{getattr(indices, 'shape', type(indices).__name__)}")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"indices must hold integers, got dtype {indices.dtype}")
        if not isinstance(weights, torch.Tensor) or weights.shape != indices.shape:
            raise ValueError(f"weights must have the shape of indices {tuple(indices.shape)}, got "
                             f"{getattr(weights, 'shape', type(weights).__name__)}")
        if not weights.dtype.is_floating_point:
            raise ValueError(f"weights must be floating point, got dtype {weights.dtype}")
        if indices.shape[1] != hq * wq:
            raise ValueError(f"indices has {indices.shape[1]} rows but the query grid {hq}x{wq} has "
                             f"{hq * wq} positions")
        if indices.shape[2] < 1:
            raise ValueError("a correspondence needs at least one candidate per query (K >= 1)")
        if indices.numel() and indices.device.type != "meta" and (int(indices.min()) < 0
                                                                  or int(indices.max()) >= hk * wk):
            raise ValueError(f"indices must lie in [0, {hk * wk - 1}] for the {hk}x{wk} exemplar grid, got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        b = indices.shape[0]
        if confidence is None:
            confidence = weights.detach().sum(-1).clamp(0, 1).view(b, 1, hq, wq)
        elif not isinstance(confidence, torch.Tensor) or tuple(confidence.shape) != (b, 1, hq, wq):
            raise ValueError(f"confidence must be (B, 1, Hq, Wq) = {(b, 1, hq, wq)}, got "
                             f"{getattr(confidence, 'shape', type(confidence).__name__)}")
        self.indices = indices.long()
        self.weights = weights
        self.confidence = confidence

    @classmethod
    def from_attention(cls, result, query_size, key_size) -> "Correspondence":
        """Build from a :class:`~dynast_core.attention.SparseAttentionResult` (all candidates and their
        gated weights) or a :class:`~dynast_core.attention.DenseAttentionResult` (its top-k)."""
        if hasattr(result, "candidate_indices"):
            return cls(result.candidate_indices, result.candidate_weights, query_size, key_size,
                       result.confidence)
        if getattr(result, "topk_indices", None) is None:
            raise ValueError("the dense attention result has no top-k: call it with top_k >= 1")
        return cls(result.topk_indices, result.topk_weights, query_size, key_size, result.confidence)

    # ------------------------------------------------------------------ basics
    @property
    def batch_size(self) -> int:
        return self.indices.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.indices.shape[2]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def __repr__(self) -> str:
        return (f"Correspondence(batch={self.batch_size}, query={self.query_size[0]}x{self.query_size[1]}, "
                f"exemplar={self.key_size[0]}x{self.key_size[1]}, candidates={self.num_candidates}, "
                f"mean confidence={float(self.confidence.float().mean()):.3f})")

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Correspondence":
        """Move to ``device``; ``dtype`` applies to the weights and confidence."""
        return Correspondence(self.indices.to(device), self.weights.to(device=device, dtype=dtype),
                              self.query_size, self.key_size,
                              self.confidence.to(device=device, dtype=dtype))

    def detach(self) -> "Correspondence":
        return Correspondence(self.indices, self.weights.detach(), self.query_size, self.key_size,
                              self.confidence.detach())

    def select(self, index: int) -> "Correspondence":
        """The correspondence of one batch item (batch size 1)."""
        if not -self.batch_size <= index < self.batch_size:
            raise ValueError(f"batch index {index} out of range for batch size {self.batch_size}")
        s = slice(index, index + 1) if index != -1 else slice(index, None)
        return Correspondence(self.indices[s], self.weights[s], self.query_size, self.key_size,
                              self.confidence[s])

    def narrow(self, start: int, end: int) -> "Correspondence":
        """Batch items ``start:end`` (a window of frames)."""
        if not 0 <= start < end <= self.batch_size:
            raise ValueError(f"batch range {start}:{end} is outside 0:{self.batch_size}")
        return Correspondence(self.indices[start:end], self.weights[start:end], self.query_size, self.key_size,
                              self.confidence[start:end])

    def crop(self, query_size, key_size) -> "Correspondence":
        """Undo bottom/right reflection padding: keep the top-left ``query_size`` queries, and map candidates
        that fall in the exemplar's padded border back to the positions they mirror (``F.pad`` reflect:
        padded row ``h + j`` is row ``h - 2 - j``).

        Args:
            query_size: ``(h, w)`` at most the query grid; key_size: ``(hk, wk)`` at most the key grid.
        """
        hq, wq = _size(query_size, "query_size")
        hk, wk = _size(key_size, "key_size")
        HQ, WQ = self.query_size
        HK, WK = self.key_size
        if hq > HQ or wq > WQ or hk > HK or wk > WK:
            raise ValueError(f"crop sizes {(hq, wq)}/{(hk, wk)} exceed the grids {self.query_size}/{self.key_size}")
        b, _, k = self.indices.shape
        rows = lambda x: x.reshape(b, HQ, WQ, -1)[:, :hq, :wq].reshape(b, hq * wq, x.shape[-1])  # noqa: E731
        idx = rows(self.indices)
        y = torch.div(idx, WK, rounding_mode="floor")
        x = idx % WK
        y = torch.where(y >= hk, 2 * hk - 2 - y, y).clamp(0, hk - 1)
        x = torch.where(x >= wk, 2 * wk - 2 - x, x).clamp(0, wk - 1)
        return Correspondence(y * wk + x, rows(self.weights), (hq, wq), (hk, wk),
                              self.confidence[..., :hq, :wq])

    @staticmethod
    def cat(items) -> "Correspondence":
        """Concatenate along the batch (same grids; candidate counts may differ: padded with weight 0)."""
        items = list(items)
        if not items:
            raise ValueError("nothing to concatenate")
        first = items[0]
        for c in items[1:]:
            if c.query_size != first.query_size or c.key_size != first.key_size:
                raise ValueError("correspondences to concatenate must share query and exemplar grid sizes, "
                                 f"got {c.query_size}/{c.key_size} and {first.query_size}/{first.key_size}")
        k = max(c.num_candidates for c in items)

        def pad(t, value):
            return F.pad(t, (0, k - t.shape[-1]), value=value)
        return Correspondence(torch.cat([pad(c.indices, 0) for c in items]),
                              torch.cat([pad(c.weights, 0.0) for c in items]),
                              first.query_size, first.key_size,
                              torch.cat([c.confidence for c in items]))

    # ------------------------------------------------------------------ geometry
    def normalized_weights(self, eps: float = 1e-8) -> torch.Tensor:
        """``(B, Nq, K)`` weights divided by their sum; uniform where every candidate has weight 0."""
        w = self.weights
        total = w.sum(-1, keepdim=True)
        uniform = torch.full_like(w, 1.0 / w.shape[-1])
        return torch.where(total > eps, w / total.clamp_min(eps), uniform)

    def source_coordinates(self, mode: str = "mean") -> torch.Tensor:
        """Where each query position draws from, in exemplar-grid pixels.

        Args:
            mode: ``"mean"`` (weight-averaged candidate position) or ``"argmax"`` (best candidate).

        Returns:
            ``(B, 2, Hq, Wq)`` float: ``(x, y)`` of the source on the ``(Hk, Wk)`` grid.
        """
        hq, wq = self.query_size
        wk = self.key_size[1]
        ys = torch.div(self.indices, wk, rounding_mode="floor").float()
        xs = (self.indices % wk).float()
        if mode == "argmax":
            best = self.weights.argmax(-1, keepdim=True)
            x, y = xs.gather(-1, best).squeeze(-1), ys.gather(-1, best).squeeze(-1)
        elif mode == "mean":
            w = self.normalized_weights().float()
            x, y = (w * xs).sum(-1), (w * ys).sum(-1)
        else:
            raise ValueError(f"mode must be 'mean' or 'argmax', got {mode!r}")
        return torch.stack([x, y], 1).view(self.batch_size, 2, hq, wq)

    def flow(self, mode: str = "mean") -> torch.Tensor:
        """``(B, 2, Hq, Wq)`` displacement ``(dx, dy)`` from each query to its source, in query-grid pixels.

        The exemplar grid is mapped onto the query grid by scaling (centre-aligned), so an identity match
        between grids of different sizes has zero flow.
        """
        hq, wq = self.query_size
        hk, wk = self.key_size
        src = self.source_coordinates(mode)
        sx = (src[:, 0] + 0.5) * (wq / wk) - 0.5
        sy = (src[:, 1] + 0.5) * (hq / hk) - 0.5
        gy, gx = torch.meshgrid(torch.arange(hq, device=src.device, dtype=src.dtype),
                                torch.arange(wq, device=src.device, dtype=src.dtype), indexing="ij")
        return torch.stack([sx - gx, sy - gy], 1)

    def visualize(self, kind: str = "flow", max_flow: Optional[float] = None, mode: str = "mean",
                  size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """A colour picture of the correspondence, ``(B, 3, H, W)`` RGB in ``[0, 1]``.

        Args:
            kind: ``"flow"``: hue is the direction of the displacement, saturation its length relative to
                ``max_flow`` (white = stays in place); ``"source"``: each query shows the colour of its
                source position in a fixed 2-D colour map of the exemplar (red grows to the right,
                green downwards).
            max_flow: displacement (query pixels) of full saturation; default the largest one per image.
            mode: see :meth:`source_coordinates`.
            size: output ``(H, W)``; default the query grid (nearest-neighbour resize otherwise).
        """
        if kind == "flow":
            fl = self.flow(mode)
            mag = fl.norm(dim=1)
            if max_flow is None:
                scale = mag.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
            else:
                if max_flow <= 0:
                    raise ValueError(f"max_flow must be positive, got {max_flow}")
                scale = torch.full_like(mag[:, :1, :1], float(max_flow))
            hue = torch.atan2(fl[:, 1], fl[:, 0]) % (2 * math.pi)
            sat = (mag / scale).clamp(0, 1)
            rgb = _hsv_to_rgb(hue, sat, torch.ones_like(sat))
        elif kind == "source":
            hk, wk = self.key_size
            src = self.source_coordinates(mode)
            r = (src[:, 0] + 0.5) / wk
            g = (src[:, 1] + 0.5) / hk
            rgb = torch.stack([r, g, 1 - 0.5 * (r + g)], 1).clamp(0, 1)
        else:
            raise ValueError(f"kind must be 'flow' or 'source', got {kind!r}")
        if size is not None:
            rgb = F.interpolate(rgb, size=_size(size, "size"), mode="nearest")
        return rgb

    def confidence_mask(self, threshold: Optional[float] = 0.5, size: Optional[Tuple[int, int]] = None,
                        low: bool = False) -> torch.Tensor:
        """Confidence as a mask, ``(B, 1, H, W)`` in ``[0, 1]``.

        Args:
            threshold: None for the soft confidence; else 1 where ``confidence >= threshold``.
            size: output ``(H, W)`` (bilinear resize of the confidence before thresholding); default the
                query grid.
            low: mark the *low*-confidence positions instead (what an inpainting step should redo).
        """
        conf = self.confidence.float()
        if size is not None:
            conf = F.interpolate(conf, size=_size(size, "size"), mode="bilinear", align_corners=False)
        if threshold is None:
            mask = conf.clamp(0, 1)
            return 1 - mask if low else mask
        mask = (conf >= float(threshold)).float()
        return 1 - mask if low else mask

    # ------------------------------------------------------------------ warping
    def warp(self, x: torch.Tensor, *, normalize: bool = True, output_size: Optional[Tuple[int, int]] = None,
             mode: str = "bilinear") -> torch.Tensor:
        """Warp a tensor laid out on the exemplar onto the query (target) layout.

        ``x`` may have any resolution: it is taken to cover the same area as the exemplar grid (an image
        at 4x the grid, a latent at 1/8 of the image, a mask). The *grid* is resampled, not just the
        result: each output pixel finds its query cell, and samples ``x`` at each candidate's position
        plus the pixel's offset inside that cell (bilinearly), so detail finer than the correspondence grid
        survives. When ``x`` is no finer than the exemplar grid (a latent, a grid-sized mask), each exemplar
        cell takes the pixel of ``x`` containing it and the cells are gathered exactly; whenever the output
        is coarser than the query grid, the result is computed at the query grid and area-averaged down
        (so an identity correspondence returns ``x`` unchanged at every resolution).

        Args:
            x: ``(Bx, C, Hx, Wx)`` with ``Bx`` equal to the batch size or 1 (or the correspondence has batch
                size 1 and ``x`` any batch: one exemplar warped for many targets is the other way round).
            normalize: divide by the sum of the candidate weights (the default; a pruned-away query falls
                back to uniform weights over its candidates and shows in :meth:`confidence_mask`). False
                gives the raw weighted sum, which equals DynaST's attention output when ``x`` is on the
                exemplar grid.
            output_size: ``(Ho, Wo)``; default the query grid scaled by ``x``'s scale relative to the
                exemplar grid (``round(Hq * Hx / Hk)``, ``round(Wq * Wx / Wk)``).
            mode: ``"bilinear"`` or ``"nearest"`` sampling of ``x`` (nearest keeps label values).

        Returns:
            ``(B, C, Ho, Wo)`` in the dtype of ``x``.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor on the exemplar grid, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        b = self.batch_size
        bx = x.shape[0]
        if bx != b and bx != 1 and b != 1:
            raise ValueError(f"x has batch size {bx} but the correspondence has {b}: give one exemplar "
                             f"(batch 1) or one per correspondence")
        corr = self
        if b == 1 and bx > 1:
            corr = Correspondence(self.indices.expand(bx, -1, -1), self.weights.expand(bx, -1, -1),
                                  self.query_size, self.key_size, self.confidence.expand(bx, -1, -1, -1))
            b = bx
        if bx == 1 and b > 1:
            x = x.expand(b, -1, -1, -1)
        hq, wq = self.query_size
        hk, wk = self.key_size
        hx, wx = x.shape[-2:]
        if output_size is None:
            output_size = (max(1, round(hq * hx / hk)), max(1, round(wq * wx / wk)))
        ho, wo = _size(output_size, "output_size")
        weights = corr.normalized_weights() if normalize else corr.weights
        work = x.float()
        weights = weights.float()

        if hx <= hk and wx <= wk and ho <= hq and wo <= wq:
            # x no finer than the exemplar grid (a latent, a mask at grid size): every exemplar cell
            # takes the value of the pixel of x that contains it, the cells are gathered exactly on the
            # query grid, and the result is area-averaged to the output size (exact for an identity).
            if (hx, wx) != (hk, wk):
                work = F.interpolate(work, size=(hk, wk), mode="nearest")
            flat = work.flatten(2)                                        # (B, C, Nk)
            out = torch.zeros(b, x.shape[1], hq * wq, dtype=work.dtype, device=x.device)
            for j in range(corr.num_candidates):
                idx = corr.indices[:, :, j].unsqueeze(1).expand(-1, x.shape[1], -1)
                out += flat.gather(2, idx) * weights[:, :, j].unsqueeze(1)
            out = out.view(b, -1, hq, wq)
            if (ho, wo) != (hq, wq):
                out = F.adaptive_avg_pool2d(out, (ho, wo))
            return out.to(x.dtype)

        hw, ww = max(ho, hq), max(wo, wq)
        dev = x.device
        # every work pixel's query cell and its offset inside that cell, in query-cell units
        uy = (torch.arange(hw, device=dev, dtype=torch.float32) + 0.5) / hw * hq
        ux = (torch.arange(ww, device=dev, dtype=torch.float32) + 0.5) / ww * wq
        cy = uy.floor().clamp(max=hq - 1)
        cx = ux.floor().clamp(max=wq - 1)
        oy, ox = uy - cy - 0.5, ux - cx - 0.5
        cell = (cy.long().view(-1, 1) * wq + cx.long().view(1, -1)).view(-1)   # (Hw*Ww,)
        out = torch.zeros(b, x.shape[1], hw, ww, dtype=work.dtype, device=dev)
        for j in range(corr.num_candidates):
            idx = corr.indices[:, :, j][:, cell].view(b, hw, ww)
            ky = torch.div(idx, wk, rounding_mode="floor").float()
            kx = (idx % wk).float()
            gx = (kx + 0.5 + ox.view(1, 1, ww)) / wk * 2 - 1
            gy = (ky + 0.5 + oy.view(1, hw, 1)) / hk * 2 - 1
            grid = torch.stack([gx, gy], -1)
            sampled = F.grid_sample(work, grid, mode=mode, padding_mode="border", align_corners=False)
            out += sampled * weights[:, :, j][:, cell].view(b, 1, hw, ww)
        if (hw, ww) != (ho, wo):
            out = F.adaptive_avg_pool2d(out, (ho, wo))
        return out.to(x.dtype)

    def upsample(self, factor: int) -> "Correspondence":
        """The same correspondence on grids ``factor`` times finer (both query and exemplar).

        Each fine query inherits its parent's candidates, moved to the same offset inside the parent's
        exemplar cell: a piecewise-constant displacement field, as :meth:`warp` uses.
        """
        s = int(factor)
        if s < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        if s == 1:
            return self
        hq, wq = self.query_size
        hk, wk = self.key_size
        b, _, k = self.indices.shape
        fy = torch.arange(hq * s, device=self.device)
        fx = torch.arange(wq * s, device=self.device)
        parent = ((fy // s).view(-1, 1) * wq + (fx // s).view(1, -1)).view(-1)
        dy = (fy % s).view(-1, 1).expand(-1, wq * s).reshape(-1, 1)
        dx = (fx % s).view(1, -1).expand(hq * s, -1).reshape(-1, 1)
        idx = self.indices[:, parent]                                  # (B, N', K)
        ky, kx = torch.div(idx, wk, rounding_mode="floor"), idx % wk
        new_idx = (ky * s + dy) * (wk * s) + (kx * s + dx)
        conf = F.interpolate(self.confidence, scale_factor=s, mode="nearest")
        return Correspondence(new_idx, self.weights[:, parent], (hq * s, wq * s), (hk * s, wk * s), conf)

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write to a ``.safetensors`` file (tensors plus grid sizes in the metadata)."""
        from .checkpoints import save_safetensors
        meta = {"format": _FORMAT, "version": _VERSION,
                "query_size": json.dumps(list(self.query_size)), "key_size": json.dumps(list(self.key_size))}
        return save_safetensors(path, {"indices": self.indices, "weights": self.weights,
                                       "confidence": self.confidence}, meta)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> "Correspondence":
        """Read a file written by :meth:`save`."""
        from .checkpoints import CheckpointError, read_state_dict
        path = Path(path)
        if path.suffix.lower() != ".safetensors":
            raise ValueError(f"{path.name}: a correspondence file must be .safetensors (written by "
                             "Correspondence.save)")
        tensors, meta = read_state_dict(path, device=device)
        if meta.get("format") != _FORMAT or not {"indices", "weights", "confidence"} <= set(tensors):
            raise CheckpointError(f"{path} is not a correspondence file (no '{_FORMAT}' metadata); it looks "
                                  "like a model checkpoint or another safetensors file")
        return cls(tensors["indices"], tensors["weights"], json.loads(meta["query_size"]),
                   json.loads(meta["key_size"]), tensors["confidence"])


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h in [0, 2pi), s, v in [0, 1], all (B, H, W) -> (B, 3, H, W)."""
    h6 = h / (2 * math.pi) * 6
    i = h6.floor() % 6
    f = h6 - h6.floor()
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = torch.zeros(h.shape[0], 3, *h.shape[1:], dtype=h.dtype, device=h.device)
    for n, (r, g, b) in enumerate(choices):
        sel = (i == n).unsqueeze(1)
        rgb = torch.where(sel, torch.stack([r, g, b], 1), rgb)
    return rgb
