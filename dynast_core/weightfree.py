"""Weight-free correspondence, warping and style transfer: the papers' attention mechanisms on hand-made
features, so a fresh install does useful work with no checkpoint.

Features (no learned weights). Each pyramid level describes every position by

* its colour in CIE Lab (images) or its channels, standardised jointly over both inputs (labels, latents);
* its local structure: the 3x3 neighbourhood of the luminance (or of every channel) with the neighbourhood
  mean removed, divided by the image's own global standard deviation (contrast-invariant).

The benchmark (``benchmarks/weightfree.py``) is what justified this choice over plain colour (too ambiguous
in flat regions) and over random projections of larger patches (slower, no better on the synthetic warps).
Attention logits are negative squared distances ``-|q - k|^2 / T``, computed as dot products of augmented
vectors ``q' = [2q, -1]`` and ``k' = [k, |k|^2]`` so the paper's operators run unchanged.

Matching runs the DynaST cascade parameter-free: dense attention at the coarsest level (at most
``coarse_side`` positions per side, about 1/8 of a 256 image), then at every finer level the inter-scale
sparse attention (the 2x2 children of the coarse top-k) and one or more inner-scale steps (the own and the
four neighbours' top-k, shifted), carrying the top-k down. Cost and memory are linear in pixels above the
coarsest level. The result is a :class:`~dynast_core.correspondence.Correspondence` on the full grid.

Confidence is honest about what the weights cannot know: the product of (a) how well the best exemplar
patch matches (``exp(-d / d0)`` of the mean squared descriptor distance) and (b) forward-backward
consistency at the coarsest level (a target position whose match does not map back near itself, e.g. an
occlusion or content absent from the exemplar, gets at most 0.3 of its match-quality value; in flat,
ambiguous regions the round trip may drift a few cells without the match being wrong, so this term is soft).

Style transfer (:func:`stylize_weight_free`) uses all-to-key attention over style patches, coarse to fine:
queries describe the content's structure plus the colour of the current estimate, keys the style's; the
values are 3x3 style colour patches, folded back with overlap averaging. Distributed attention (region-
aggregated keys) gives the region's colours, progressive attention (best region, then its positions) the
details; the two are blended ``(1 - detail) * DA + detail * PA``. Averaging overlapping patches smooths the
result, so the final image gets the style's per-channel Lab mean and standard deviation (the pixel-space
analogue of AdaIN).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._heap import on_cpu_heap

from .attention._common import chunk_ranges
from .attention._inference import rows_of, work_dtype
from .attention import (all_to_key_attention, dynamic_attention, inner_scale_candidates,
                        inner_scale_sparse_attention, inter_scale_sparse_attention,
                        sparse_attention)
from .correspondence import Correspondence
from .stylize import (blend_with_mask, match_batches, match_shorter_side, prepare_mask, preserve_content_color,
                      resize_longer_side)

__all__ = ["pyramid_sizes", "image_descriptors", "channel_descriptors", "match_descriptors", "match_images",
           "match_layouts", "match_latents", "stylize_weight_free"]

Progress = Optional[Callable[[int, int], None]]
MATCH_MEMORY_BUDGET = 16 * 2 ** 20


# ---------------------------------------------------------------------------------------------- features
def pyramid_sizes(size: Tuple[int, int], coarse_side: int = 32, min_levels: int = 1) -> List[Tuple[int, int]]:
    """Grid sizes from fine to coarse, halving (rounding up, as the inter-scale op expects) until the
    longer side is at most ``coarse_side``."""
    h, w = int(size[0]), int(size[1])
    sizes = [(h, w)]
    while max(h, w) > coarse_side or len(sizes) < min_levels:
        if min(h, w) <= 2:
            break
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _structure(x: torch.Tensor) -> torch.Tensor:
    """3x3 neighbourhoods minus their mean, divided by each image's global std: ``(B, 9C, H, W)``."""
    b, c, h, w = x.shape
    std = x.flatten(1).std(1).clamp_min(1e-3).view(b, 1, 1, 1)
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3).view(b, c, 9, h, w)
    patches = patches - patches.mean(2, keepdim=True)
    return (patches / std.unsqueeze(1)).reshape(b, c * 9, h, w)


def _lab(rgb: torch.Tensor) -> torch.Tensor:
    from kornia.color import rgb_to_lab
    lab = rgb_to_lab(rgb.clamp(0, 1).float())
    return torch.stack([lab[:, 0] / 25.0, lab[:, 1] / 25.0, lab[:, 2] / 25.0], 1).to(rgb.dtype)


def image_descriptors(img: torch.Tensor, sizes: Sequence[Tuple[int, int]], colour_weight: float = 1.0,
                      structure_weight: float = 1.0) -> List[torch.Tensor]:
    """Weight-free descriptors of an RGB image ``(B, 3, H, W)`` in [0, 1] at each size of ``sizes``:
    ``(B, 12, h, w)`` each (Lab colour, 3x3 luminance structure), float32 for float16/bfloat16 images (the
    matching computes squared distances of them), else the image's dtype."""
    _check_rgb(img, "image")
    lab = _lab(img.to(work_dtype(img)))
    out = []
    for size in sizes:
        x = _resize(lab, size)
        out.append(torch.cat([colour_weight * x, structure_weight * _structure(x[:, :1])], 1))
    return out


def channel_descriptors(a: torch.Tensor, b: torch.Tensor, sizes_a, sizes_b,
                        structure_weight: float = 0.5) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Descriptors of two maps with the same channels (layout labels, latents): each channel standardised
    with statistics pooled over both maps, plus a down-weighted 3x3 structure of the channel mean.

    Float32 for float16/bfloat16 maps: a channel that is non-zero on a few pixels standardises to values in
    the hundreds, whose squared norms overflow float16."""
    if a.dim() != 4 or b.dim() != 4 or a.shape[1] != b.shape[1]:
        raise ValueError(f"the two maps must be (B, C, H, W) with the same C, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    # per-channel statistics pooled over both maps and all batch items (batches may differ: 1 vs B)
    both = torch.cat([a.transpose(0, 1).flatten(1), b.transpose(0, 1).flatten(1)], 1).float()
    mean = both.mean(1).view(1, -1, 1, 1)
    std = both.std(1).clamp_min(1e-4).view(1, -1, 1, 1)
    scale = 1.0 / math.sqrt(a.shape[1])

    def build(x, sizes):
        x = ((x.float() - mean) / std).to(work_dtype(x))
        res = []
        for size in sizes:
            y = _resize(x, size)
            res.append(torch.cat([y * (3 * scale) ** 0.5 * 2, structure_weight * _structure(y.mean(1, keepdim=True))], 1))
        return res

    return build(a, sizes_a), build(b, sizes_b)


def _augment(q: torch.Tensor, k: torch.Tensor, temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dot products of the results are ``(2 q.k - |k|^2)``: softmax over them equals softmax of ``-|q-k|^2``."""
    qa = torch.cat([2 * q, -torch.ones_like(q[:, :1])], 1)
    ka = torch.cat([k, (k * k).sum(1, keepdim=True)], 1)
    return qa, ka


def _augmented(q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The values of :func:`_augment` (``[2q, -1]`` and ``[k, |k|^2]``), laid out channels-last: the attention
    operators read them as rows without a copy."""
    c = q.shape[1]
    qa = torch.empty(q.shape[0], c + 1, *q.shape[-2:], dtype=q.dtype, device=q.device,
                     memory_format=torch.channels_last)
    torch.mul(q, 2, out=qa[:, :c])
    qa[:, c].fill_(-1)
    ka = torch.empty(k.shape[0], c + 1, *k.shape[-2:], dtype=k.dtype, device=k.device,
                     memory_format=torch.channels_last)
    ka[:, :c] = k
    ka[:, c] = (k * k).sum(1)
    return qa, ka


def _no_values(k: torch.Tensor) -> torch.Tensor:
    """Zero-channel values on ``k``'s grid: matching needs the attention's weights, not an output."""
    return torch.empty(k.shape[0], 0, *k.shape[-2:], dtype=k.dtype, device=k.device)


def _check_rgb(img, name):
    if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"{name} must be an RGB batch (B, 3, H, W) in [0, 1], got "
                         f"{getattr(img, 'shape', type(img).__name__)}; drop an alpha channel first")
    if not img.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point in [0, 1], got {img.dtype}")
    if min(img.shape[-2:]) < 4:
        raise ValueError(f"{name} is {img.shape[-2]}x{img.shape[-1]}: at least 4 pixels per side are needed")


def _interrupt(progress: Progress, step: int, total: int) -> None:
    if progress is not None:
        progress(step, total)


# ---------------------------------------------------------------------------------------------- matching

def match_descriptors(target: Sequence[torch.Tensor], exemplar: Sequence[torch.Tensor], *, top_k: int = 4,
                      temperature: float = 0.05, propagation_steps: int = 2, confidence_scale: float = 1.0,
                      query_chunk_size: Optional[int] = None, memory_budget: int = MATCH_MEMORY_BUDGET,
                      progress: Progress = None, init: Optional[torch.Tensor] = None,
                      subpixel: bool = True) -> Correspondence:
    """The parameter-free DynaST cascade on two descriptor pyramids.

    Args:
        target, exemplar: lists of ``(B, C, h, w)`` from fine to coarse (as :func:`pyramid_sizes` makes them:
            each level the previous one halved, rounding up). The exemplar batch may be 1 (one exemplar for
            every target).
        top_k: candidates carried from level to level (DynaST: 4).
        temperature: softmax temperature of the negative squared distances.
        propagation_steps: inner-scale steps per level after the inter-scale step.
        confidence_scale: ``d0`` of the match-quality confidence ``exp(-d / d0)``.
        query_chunk_size: queries per chunk of every attention call (overrides ``memory_budget``).
        memory_budget: bytes of working memory per chunk (default 16 MiB: the fused sparse attention needs
            under 1 KiB per query, so a chunk is some 18 000 queries, few enough Python steps at 1024 px, and
            the peak stays near the size of the descriptors).
        All computation is in float32 for float16/bfloat16 descriptors (``-|q - k|^2 / T`` overflows float16);
        the weights and confidence are returned in the target's dtype.
        progress: ``progress(step, total)`` called after every level (for progress bars / interruption).
        init: warm start (video: the previous frame's result): ``(B, h0*w0, K0)`` candidate indices on the
            finest grids (``Correspondence.indices`` of the previous frame against the same exemplar). The
            cascade runs as usual, except that the finest level's first propagation step ranks the previous
            frame's candidates along with its usual ones (own and neighbours' shifted top-k, see
            :func:`~dynast_core.attention.inner_scale_candidates`); the next step spreads them. A position keeps its previous match unless the fresh cascade or a neighbour
            finds a closer one: on a static clip the match never gets worse than per frame, on moving
            clips it has fewer outliers (``benchmarks/video.py``). The cost of a cold match.
            Ignored for a one-level pyramid.
        subpixel: refine each position's best match to a fractional exemplar position (one damped
            Gauss-Newton step on the descriptors, see :func:`_subpixel`) and return it as the four keys around
            it with bilinear weights. Integer matches quantise every warp: as the true position slides
            between keys from frame to frame the warp jumps, which is most of a per-frame clip's flicker
            (``benchmarks/video.py``). Only with ``top_k=4`` (the four corners); otherwise the ``top_k``
            best keys with softmax weights are returned, as with ``subpixel=False``.

    Returns:
        :class:`Correspondence` from the finest target grid to the finest exemplar grid, ``top_k`` candidates
        per position with weights summing to one (the largest first).
    """
    if len(target) != len(exemplar) or not target:
        raise ValueError(f"the pyramids must have the same number of levels, got {len(target)} and {len(exemplar)}")
    b = target[0].shape[0]
    if exemplar[0].shape[0] not in (1, b):
        raise ValueError(f"exemplar batch {exemplar[0].shape[0]} must be 1 or the target batch {b}")
    if init is not None:
        n0, nk0 = target[0].shape[-2] * target[0].shape[-1], exemplar[0].shape[-2] * exemplar[0].shape[-1]
        if init.dim() != 3 or init.shape[0] not in (1, b) or init.shape[1] != n0 or init.dtype.is_floating_point:
            raise ValueError(f"init must be (B, {n0}, K) integer candidate indices on the finest grids (the "
                             f"previous frame's correspondence against the same exemplar), got "
                             f"{tuple(init.shape)} {init.dtype}")
        if init.numel() and (int(init.min()) < 0 or int(init.max()) >= nk0):
            raise ValueError(f"init holds indices outside the exemplar grid of {nk0} positions: was it matched "
                             "against another exemplar or at another size?")
        init = init.to(target[0].device, torch.long).expand(b, -1, -1)
    # everything in the work dtype (float32 for half inputs: squared distances / T overflow float16), channels-
    # last (the attention operators read rows); the results are cast back to the target's dtype
    out_dtype = target[0].dtype
    work = torch.float64 if torch.float64 in (target[0].dtype, exemplar[0].dtype) else torch.float32
    target = [t.to(work) for t in target]
    exemplar = [e.to(work).expand(b, -1, -1, -1) for e in exemplar]
    levels = len(target)
    total = levels
    # coarsest: dense, both ways (the reverse pass gives the forward-backward consistency)
    qa, ka = _augmented(target[-1], exemplar[-1])
    hq, wq = target[-1].shape[-2:]
    hk, wk = exemplar[-1].shape[-2:]
    k_eff = min(top_k, hk * wk)
    dense = dynamic_attention(qa, ka, _no_values(ka), top_k=k_eff, scale=temperature,
                              query_chunk_size=query_chunk_size, memory_budget=memory_budget)
    topk = dense.topk_indices
    qb, kb = _augmented(exemplar[-1], target[-1])
    back = dynamic_attention(qb, kb, _no_values(kb), top_k=1, scale=temperature,
                             query_chunk_size=query_chunk_size, memory_budget=memory_budget).topk_indices[..., 0]
    fwd = topk[..., 0]
    round_trip = back.gather(1, fwd)
    pos = torch.arange(hq * wq, device=fwd.device)
    ty, tx = pos // wq, pos % wq
    err = ((round_trip // wq - ty).float() ** 2 + (round_trip % wq - tx).float() ** 2).sqrt()
    # ambiguity (flat regions) is not error: a failed round trip lowers the confidence, it does not zero it
    cycle = (0.3 + 0.7 * torch.exp(-(err / 3.0) ** 2)).view(b, 1, hq, wq)
    _interrupt(progress, 1, total)
    del qa, ka, qb, kb
    weights = dense.topk_weights
    target = list(target)
    for level in range(levels - 2, -1, -1):
        last = level == 0
        q, k = target[level], exemplar[level]
        target[level] = exemplar[level] = None    # free each level once used: the peak stays near one level
        qa, ka = _augmented(q, k)
        del q, k
        v = _no_values(ka)
        for step in range(propagation_steps + 1):
            final = last and step == propagation_steps
            if step == 1 and last and init is not None:
                # warm start: the first propagation step also ranks the previous frame's candidates
                result = sparse_attention(qa, ka, v, _warm_candidates(topk, init, qa.shape[-2:], ka.shape[-2:]),
                                          num_candidates=5 * topk.shape[-1] + init.shape[-1], group=1,
                                          scale=temperature, top_k=0 if final else k_eff,
                                          return_candidates=k_eff if final else False,
                                          query_chunk_size=query_chunk_size, memory_budget=memory_budget)
            else:
                op = inter_scale_sparse_attention if step == 0 else inner_scale_sparse_attention
                result = op(qa, ka, v, topk, scale=temperature, top_k=k_eff, return_topk=not final,
                            return_candidates=k_eff if final else False, query_chunk_size=query_chunk_size,
                            memory_budget=memory_budget)
            if final:
                topk, weights = result.candidate_indices, result.candidate_weights
            else:
                topk = result.topk_indices
            del result
        if not last:
            del qa, ka
        _interrupt(progress, levels - level, total)
    if levels == 1:
        qa, ka = _augmented(target[0], exemplar[0])
    hq, wq = qa.shape[-2:]
    hk, wk = ka.shape[-2:]
    refine = subpixel and topk.shape[-1] == 4 and hk > 1 and wk > 1
    if not refine:                                  # the refinement replaces the candidates and their weights
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    # match quality: mean squared descriptor distance of the best candidate (q = qa[:-1] / 2, k = ka[:-1]),
    # in chunks of positions so no full-size temporary is made
    qr, kr = rows_of(qa)[..., :-1], rows_of(ka)[..., :-1]
    best = topk[..., 0]
    dist = torch.empty(b, hq * wq, dtype=qa.dtype, device=qa.device)
    if refine:
        topk = torch.empty_like(topk)
        weights = torch.empty(b, hq * wq, 4, dtype=qa.dtype, device=qa.device)
    for s0, e0 in chunk_ranges(hq * wq, 1 << 16):
        kb_ = _gather_keys(kr, best[:, s0:e0])
        resid = qr[:, s0:e0] / 2 - kb_
        dist[:, s0:e0] = (resid ** 2).mean(-1)
        if refine:
            topk[:, s0:e0], weights[:, s0:e0] = _subpixel(resid, kr, best[:, s0:e0], (hk, wk))
    dist = dist.view(b, 1, hq, wq)
    quality = torch.exp(-dist / confidence_scale)
    cycle_up = F.interpolate(cycle, size=(hq, wq), mode="bilinear", align_corners=False)
    confidence = (quality * cycle_up).clamp(0, 1).to(out_dtype)
    return Correspondence(topk, weights.to(out_dtype), (hq, wq), (hk, wk), confidence)


def _gather_keys(kr: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of ``kr`` ``(B, Nk, C)`` at ``idx`` ``(B, n)``: ``(B, n, C)``."""
    return kr.gather(1, idx[..., None].expand(-1, -1, kr.shape[-1]))


def _subpixel(resid: torch.Tensor, kr: torch.Tensor, best: torch.Tensor, key_size, damping: float = 1e-2):
    """Sub-pixel refinement of the best match (one Gauss-Newton step, as Lucas-Kanade does): the exemplar's
    descriptors are linearised around each query's best key, ``k(p + s) ~ k(p) + J s`` (central differences,
    one-sided at the border), and ``s = (J^T J + damping I)^-1 J^T (q - k(p))`` (damped: flat regions stay
    put), clamped to under one key. The refined position is returned as its four surrounding keys with bilinear
    weights, so every consumer (warps of any resolution, flow, warm starts) sees the fractional position.

    resid: ``(B, n, C)`` ``q - k(best)``; kr: ``(B, Nk, C)`` key rows; best: ``(B, n)`` flat indices.
    Returns ``(indices (B, n, 4), weights (B, n, 4))``, the largest weight first.
    """
    hk, wk = key_size
    y, x = torch.div(best, wk, rounding_mode="floor"), best % wk
    left, right = best - (x > 0).long(), best + (x < wk - 1).long()
    up, down = best - wk * (y > 0).long(), best + wk * (y < hk - 1).long()
    jx = (_gather_keys(kr, right) - _gather_keys(kr, left)) / (right - left).unsqueeze(-1).to(kr.dtype)
    jy = (_gather_keys(kr, down) - _gather_keys(kr, up)) / ((down - up) // wk).unsqueeze(-1).to(kr.dtype)
    axx, axy, ayy = (jx * jx).sum(-1) + damping, (jx * jy).sum(-1), (jy * jy).sum(-1) + damping
    bx, by = (jx * resid).sum(-1), (jy * resid).sum(-1)
    det = axx * ayy - axy * axy
    # under one key either way, so the integer best stays one of the four corners (warm starts rank it)
    fx = (x.to(kr.dtype) + ((ayy * bx - axy * by) / det).clamp_(-0.99, 0.99)).clamp_(0, wk - 1)
    fy = (y.to(kr.dtype) + ((axx * by - axy * bx) / det).clamp_(-0.99, 0.99)).clamp_(0, hk - 1)
    x0, y0 = fx.floor().clamp_(max=wk - 2), fy.floor().clamp_(max=hk - 2)
    ax, ay = fx - x0, fy - y0
    i00 = y0.long() * wk + x0.long()
    idx = torch.stack([i00, i00 + 1, i00 + wk, i00 + wk + 1], -1)
    w = torch.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], -1)
    w, order = w.sort(-1, descending=True)
    return idx.gather(-1, order), w


def _warm_candidates(topk: torch.Tensor, init: torch.Tensor, query_size, key_size):
    """Candidate function of the warm propagation step: each finest query's own and its four neighbours'
    shifted top-k (the usual inner-scale candidates), then its candidates in the previous frame."""

    def fn(s, e):
        return torch.cat([inner_scale_candidates(topk, query_size, key_size, s, e), init[:, s:e]], -1)
    return fn


def _grid_size(size, grid_scale: float) -> Tuple[int, int]:
    if not 0 < grid_scale <= 1:
        raise ValueError(f"grid_scale must be in (0, 1], got {grid_scale}")
    return max(4, round(size[0] * grid_scale)), max(4, round(size[1] * grid_scale))


def _levels(target_size, exemplar_size, coarse_side):
    t = pyramid_sizes(target_size, coarse_side)
    e = pyramid_sizes(exemplar_size, coarse_side, min_levels=len(t))
    if len(e) > len(t):
        t = pyramid_sizes(target_size, coarse_side, min_levels=len(e))
    n = min(len(t), len(e))
    return t[:n], e[:n]


@torch.no_grad()
@on_cpu_heap
def match_images(target: torch.Tensor, exemplar: torch.Tensor, *, grid_scale: float = 1.0, coarse_side: int = 32,
                 top_k: int = 4, temperature: float = 0.05, propagation_steps: int = 2,
                 query_chunk_size: Optional[int] = None, progress: Progress = None,
                 init: Optional[torch.Tensor] = None, exemplar_cache: Optional[dict] = None,
                 subpixel: bool = True) -> Correspondence:
    """Weight-free correspondence from ``target`` to ``exemplar`` (RGB ``(B, 3, H, W)`` in [0, 1]; the exemplar
    may be another size and batch 1).

    ``grid_scale`` < 1 matches on a coarser grid (faster; warps still resample at any resolution). ``init``:
    warm start from a previous frame's ``Correspondence.indices``; ``subpixel``: fractional matches (both
    see :func:`match_descriptors`).
    ``exemplar_cache``: a dict kept by the caller for one exemplar over several calls (the frames of a clip):
    the exemplar's descriptor pyramid is computed at the first call and reused.

    Example:
        >>> img = torch.rand(1, 3, 64, 64)
        >>> corr = match_images(img, img)
        >>> corr.query_size, corr.key_size
        ((64, 64), (64, 64))
    """
    _check_rgb(target, "target")
    _check_rgb(exemplar, "exemplar")
    ts, es = _levels(_grid_size(target.shape[-2:], grid_scale), _grid_size(exemplar.shape[-2:], grid_scale),
                     coarse_side)
    key = ("image", tuple(es), exemplar.shape, exemplar.device, work_dtype(exemplar))
    if exemplar_cache is not None and key in exemplar_cache:
        kd = exemplar_cache[key]
    else:
        kd = image_descriptors(exemplar, es)
        if exemplar_cache is not None:
            exemplar_cache[key] = kd
    corr = match_descriptors(image_descriptors(target, ts), list(kd), top_k=top_k, temperature=temperature,
                             propagation_steps=propagation_steps, query_chunk_size=query_chunk_size,
                             progress=progress, init=init, subpixel=subpixel)
    return corr.to(dtype=target.dtype)


@torch.no_grad()
@on_cpu_heap
def match_layouts(target_label: torch.Tensor, exemplar_label: torch.Tensor, *, grid_scale: float = 1.0,
                  coarse_side: int = 32, top_k: int = 4, temperature: float = 0.05, propagation_steps: int = 2,
                  query_chunk_size: Optional[int] = None, progress: Progress = None,
                  init: Optional[torch.Tensor] = None, subpixel: bool = True) -> Correspondence:
    """Weight-free correspondence between two layout maps with the same channels ``(B, L, H, W)`` (for
    example the 20-channel pose labels of :mod:`dynast_core.conditioning`, whose limb distance maps say
    where each position lies relative to every limb). ``init``: warm start; ``subpixel``: fractional matches
    (both see :func:`match_descriptors`).
    The channels are standardised with statistics pooled over both maps, so the exemplar's descriptors
    depend on the target and are built at every call."""
    ts, es = _levels(_grid_size(target_label.shape[-2:], grid_scale),
                     _grid_size(exemplar_label.shape[-2:], grid_scale), coarse_side)
    qd, kd = channel_descriptors(target_label, exemplar_label, ts, es)
    corr = match_descriptors(qd, kd, top_k=top_k, temperature=temperature, propagation_steps=propagation_steps,
                             query_chunk_size=query_chunk_size, progress=progress, init=init, subpixel=subpixel)
    return corr.to(dtype=target_label.dtype) if target_label.is_floating_point() else corr


@torch.no_grad()
@on_cpu_heap
def match_latents(target_latent: torch.Tensor, exemplar_latent: torch.Tensor, *, coarse_side: int = 16,
                  top_k: int = 4, temperature: float = 0.05, propagation_steps: int = 2,
                  query_chunk_size: Optional[int] = None, progress: Progress = None,
                  subpixel: bool = True) -> Correspondence:
    """Weight-free correspondence between two latents ``(B, C, h, w)`` (any channel count and downscale),
    on the latent grid (``subpixel``: see :func:`match_descriptors`)."""
    ts, es = _levels(target_latent.shape[-2:], exemplar_latent.shape[-2:], coarse_side)
    qd, kd = channel_descriptors(target_latent, exemplar_latent, ts, es)
    corr = match_descriptors(qd, kd, top_k=top_k, temperature=temperature, propagation_steps=propagation_steps,
                             query_chunk_size=query_chunk_size, progress=progress, subpixel=subpixel)
    return corr.to(dtype=target_latent.dtype) if target_latent.is_floating_point() else corr


# ---------------------------------------------------------------------------------------------- style
def _colour_transfer(content_lab: torch.Tensor, style_lab: torch.Tensor) -> torch.Tensor:
    """Match the per-channel mean and std of ``content_lab`` ``(B, C, H, W)`` to ``style_lab``
    ``(B, C, Hs, Ws)`` (Reinhard et al.). Statistics in float32 (at least); the result in ``content_lab``'s
    dtype. A constant image (std 0) keeps its offset: its std is floored at 1e-3."""
    dtype = torch.promote_types(content_lab.dtype, torch.float32)
    c, st = content_lab.to(dtype), style_lab.to(dtype)
    cm, cs = c.mean((2, 3), keepdim=True), c.std((2, 3), keepdim=True).clamp_min(1e-3)
    sm, ss = st.mean((2, 3), keepdim=True), st.std((2, 3), keepdim=True).clamp_min(1e-3)
    return ((c - cm) / cs * ss + sm).to(content_lab.dtype)


def _patch_counts(n: int, like: torch.Tensor) -> torch.Tensor:
    """How many of the 3x3 patches centred on a line of ``n`` positions cover each position: 3 inside, 2 at
    the ends (1 or 2 for ``n < 3``), as the fold of the patch grid counts them."""
    y = torch.arange(1, n + 1, device=like.device)
    return ((y.clamp(max=n - 1) - (y - 2).clamp(min=0)) + 1).to(like.dtype)


def _fold_patches(values: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(B, 3*9, H, W)`` predicted 3x3 patches -> ``(B, 3, H, W)`` by overlap averaging (each pixel: the mean
    of the predictions of the patches that cover it)."""
    b = values.shape[0]
    h, w = size
    summed = F.fold(values.flatten(2), (h + 2, w + 2), 3)[..., 1:-1, 1:-1]
    count = _patch_counts(h, values)[:, None] * _patch_counts(w, values)[None, :]
    return (summed / count).reshape(b, -1, h, w)


def _style_descriptors(lab: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Query/key descriptors of one level: ``(B, 12, h, w)`` = colour (Lab / 25) and the 3x3 structure of
    the luminance of ``lab``."""
    return torch.cat([colour, _structure(lab[:, :1])], 1)


#: the distributed part's query grid is at most this many times the style grid per side (see _style_level)
DISTRIBUTED_GRID_RATIO = 2


def _distributed_factor(size: Tuple[int, int], style_size: Tuple[int, int]) -> int:
    """Downscaling factor (a power of two) of the distributed part's query grid: the largest that keeps it at
    least :data:`DISTRIBUTED_GRID_RATIO` times the style grid per side (1 up to 512 px with the default style
    cap: the style there is at least half the content's size)."""
    f = 1
    while (size[0] / (2 * f) >= DISTRIBUTED_GRID_RATIO * style_size[0]
           and size[1] / (2 * f) >= DISTRIBUTED_GRID_RATIO * style_size[1]):
        f *= 2
    return f


def _style_level(c_lab: torch.Tensor, s_lab: torch.Tensor, s_rgb: torch.Tensor, colour: torch.Tensor, *,
                 region: int, detail: float, temperature: float, offsets: Sequence[int],
                 query_chunk_size: Optional[int]) -> torch.Tensor:
    """One level of the weight-free style transfer: the predicted 3x3 style colour patches of every content
    position, ``(B, 27, h, w)``.

    ``c_lab`` ``(B, 3, h, w)``, ``s_lab`` / ``s_rgb`` ``(B, 3, hs, ws)``, ``colour`` ``(B, 3, h, w)`` (the
    colour of the current estimate, Lab / 25). Distributed attention attends from every position to all
    aggregated style regions, so its result does not depend on where the content's region grid lies: it runs
    once. Where the content grid is more than twice the (capped) style grid per side (1024 px and up), it runs
    on the area-averaged queries of a coarser grid (at most twice the style grid) and its patch predictions
    are upsampled bilinearly: its keys summarise style regions of that coarser scale, and its full-resolution
    cost grew with the square of the content size. Progressive attention runs at full resolution, once per
    grid offset in ``offsets``, and is averaged.
    """
    from .attention.all_to_key import distributed_attention, progressive_attention
    qa, ka = _augment(_style_descriptors(c_lab, colour), _style_descriptors(s_lab, s_lab), temperature)
    h, w = qa.shape[-2:]
    hs, ws = s_rgb.shape[-2:]
    values = F.unfold(F.pad(s_rgb, (1, 1, 1, 1), mode="replicate"), 3).view(-1, 27, hs, ws)
    scale = 1.0 / temperature
    f = _distributed_factor((h, w), (hs, ws))
    q_dist = qa if f == 1 else F.interpolate(qa, size=(-(-h // f), -(-w // f)), mode="area")
    mixed = distributed_attention(q_dist, ka, values, region=region, heads=1, scale=scale,
                                  query_chunk_size=query_chunk_size)
    del q_dist
    if f > 1:
        mixed = F.interpolate(mixed, size=(h, w), mode="bilinear", align_corners=False)
    mixed.mul_(1 - detail)
    for off in offsets:
        qo = F.pad(qa, (off, 0, off, 0), mode="replicate") if off else qa
        part = progressive_attention(qo, ka, values, region=region, heads=1, scale=scale,
                                     query_chunk_size=query_chunk_size)
        mixed.add_(part[..., off:, off:], alpha=detail / len(offsets))
        del part, qo
    return mixed


@torch.no_grad()
@on_cpu_heap
def stylize_weight_free(content: torch.Tensor, style: torch.Tensor, *, strength: float = 1.0,
                        preserve_color: bool = False, mask: Optional[torch.Tensor] = None,
                        size: Optional[int] = None, levels: int = 3, region: int = 4, detail: float = 0.85,
                        temperature: float = 0.1, max_style_regions: int = 4096, grid_offsets: bool = True,
                        query_chunk_size: Optional[int] = None, progress: Progress = None) -> torch.Tensor:
    """Stylise ``content`` with ``style`` using parameter-free all-to-key attention over style patches.

    Args:
        content: ``(B, 3, H, W)`` RGB in [0, 1]; style: ``(1 or B, 3, Hs, Ws)``, any size and aspect.
        strength: 0 = content, 1 = full stylisation (blend of the images).
        preserve_color: keep the content's colours (luminance transfer).
        mask: stylise only inside this content mask (any size), feathered seam.
        size: longer side of the output (default: the content's).
        levels: pyramid levels, coarse to fine (each doubles the resolution).
        region: side of the all-to-key regions (the paper: 8 at relu3_1/relu4_1, 4 at relu5_1).
        detail: weight of the progressive (details) part against the distributed (colours) part.
        temperature: softmax temperature of the negative squared distances.
        max_style_regions: the style is downscaled at a level where it would have more regions (bounds the
            quadratic part of the attention; keeps 1024 inputs at interactive speed).
        grid_offsets: average the progressive attention over two content region grids offset by half a
            region (hides its block seams) at all but the finest level.
        progress: ``progress(step, total)`` after every level.

    Returns:
        ``(B, 3, H, W)`` in [0, 1], in the dtype of ``content``. Half-precision inputs are processed in
        float32: the squared descriptor norms of the attention logits lose their resolution in float16 and
        bfloat16 (and CPUs without half-precision units run float32 faster).
    """
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    if not 0.0 <= float(detail) <= 1.0:
        raise ValueError(f"detail must be between 0 and 1, got {detail}")
    _check_rgb(content, "content")
    _check_rgb(style, "style")
    out_dtype = content.dtype
    work = torch.promote_types(content.dtype, torch.float32)
    content, style = match_batches(content.to(work), style.to(device=content.device, dtype=work))
    content = resize_longer_side(content, size)
    out_full = content
    if strength > 0:
        h, w = content.shape[-2:]
        style_full = match_shorter_side(style, (h, w))
        c_lab_full, s_lab_full = _lab(content), _lab(style_full)
        c_sizes = pyramid_sizes((h, w), 0, min_levels=levels)[:levels][::-1]
        estimate = None
        for i, (lh, lw) in enumerate(c_sizes):
            factor = lh / h
            sh, sw = max(4, round(style_full.shape[-2] * factor)), max(4, round(style_full.shape[-1] * factor))
            cap = math.sqrt(max_style_regions * region * region / (sh * sw))
            if cap < 1:
                sh, sw = max(4, int(sh * cap)), max(4, int(sw * cap))
            c_lab = _resize(c_lab_full, (lh, lw))
            s_lab = _resize(s_lab_full, (sh, sw))
            colour = _colour_transfer(c_lab, s_lab) if estimate is None else _lab(_resize(estimate, (lh, lw)))
            # progressive attention picks one style region per content region; averaging two region grids
            # offset by half a region hides the block seams that one grid leaves in flat areas
            # (not at the finest level: its blocks are a few pixels, and it costs three quarters of the time)
            finest = i == len(c_sizes) - 1
            offsets = (0, region // 2) if grid_offsets and region > 1 and not finest else (0,)
            mixed = _style_level(c_lab, s_lab, _resize(style_full, (sh, sw)), colour, region=region,
                                 detail=detail, temperature=temperature, offsets=offsets,
                                 query_chunk_size=query_chunk_size)
            del c_lab, s_lab, colour
            estimate = _fold_patches(mixed, (lh, lw)).clamp_(0, 1)
            del mixed
            _interrupt(progress, i + 1, len(c_sizes))
        # final colour statistics of the style (per-channel Lab mean/std, as AdaIN does for features)
        from kornia.color import lab_to_rgb
        final_lab = _colour_transfer(_lab(_resize(estimate, (h, w))), s_lab_full) * 25.0
        stylised = lab_to_rgb(final_lab.float()).to(content.dtype).clamp(0, 1)
        out_full = strength * stylised + (1 - strength) * content
    if preserve_color:
        out_full = preserve_content_color(out_full, content)
    if mask is not None:
        out_full = blend_with_mask(out_full, content, prepare_mask(mask.to(out_full.device), out_full.shape[0],
                                                                   out_full.shape[-2:]))
    return out_full.clamp(0, 1).to(out_dtype)
