"""All-to-key attention (StyA2K, Zhu et al., ICCV 2023).

Content (query) positions attend to *key* style positions instead of all style positions:

* distributed attention: the style map is cut into ``r = region x region`` regions; each region is
  summarised into one aggregated key and value (the region mean plus the sigmoid-similarity-weighted sum of
  its members); every query attends, with softmax, to the aggregated keys of all regions;
* progressive attention: each content region picks the style region whose position-aligned features match
  it best (argmax), then every query of the region attends, with softmax, to the ``r`` positions of that
  style region.

Both are multi-head (the channels are split contiguously into ``heads`` groups). The logits are not scaled
by ``1/sqrt(d)``, as in the official code.

Where the official code cannot run, this module extends it: content and style may have different sizes
and aspect ratios (the regions of both are formed independently), and sizes need not be multiples of the
region: both maps are padded to the next multiple (reflection, or replication when the map is too small to
reflect) and the output is cropped back. Padding rather than dropping partial regions keeps every output
position computed (the official unfold/fold leaves border strips at zero) and keeps the region statistics
made of real, nearby features; at official sizes no padding happens and the results equal the official ones.

Precision and speed. The operators accept any floating dtype and return it. In float16/bfloat16 what would
overflow or lose its resolution there is computed in float32 and cast back: the region aggregation (the
``sim_alpha``/``sim_beta`` sigmoid similarity and the region means), the attention logits with their scale,
the softmax, and the progressive part's region match and argmax; the products with the values stay in the
input dtype. Without gradients (inference) the operators take a fast path that computes the same function:
the distributed part through :func:`torch.nn.functional.scaled_dot_product_attention` (a fused kernel that
never holds the ``Nq x n_k`` logits), the progressive part from one region layout with batched matrix
products. The region match of the progressive part is computed exactly as on the reference path, so the
chosen regions are the same bit for bit in float32/float64. With gradients the reference path runs, as the
official code computes it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ._common import check_shape, chunk_ranges, resolve_chunk_size

__all__ = [
    "AllToKeyResult",
    "distributed_attention",
    "progressive_attention",
    "all_to_key_attention",
    "aggregate_region_keys",
    "to_regions",
    "from_regions",
    "pad_to_multiple",
]


class AllToKeyResult(NamedTuple):
    """``distributed`` and ``progressive``: ``(B, Cv, Hq, Wq)`` each."""

    distributed: torch.Tensor
    progressive: torch.Tensor


def pad_to_multiple(x: torch.Tensor, multiple: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Pad ``(B, C, H, W)`` at the bottom/right to multiples of ``multiple``.

    Reflection where the map is large enough, replication otherwise. Returns the padded map and the
    original ``(H, W)``.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def to_regions(x: torch.Tensor, region: int, heads: int) -> torch.Tensor:
    """``(B, C, H, W)`` with H, W multiples of ``region`` -> ``(B, heads, C/heads, n, r)``.

    ``n`` counts regions in raster order, ``r = region**2`` positions inside a region in raster order
    (the layout of the official ``block``).
    """
    b, c, h, w = x.shape
    y = x.view(b, heads, c // heads, h // region, region, w // region, region)
    return y.permute(0, 1, 2, 3, 5, 4, 6).reshape(b, heads, c // heads, (h // region) * (w // region),
                                                  region * region)


def from_regions(x: torch.Tensor, region: int, size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_regions`: ``(B, heads, d, n, r)`` -> ``(B, heads*d, H, W)``."""
    b, hd, d, n, r = x.shape
    h, w = size
    y = x.reshape(b, hd * d, h // region, w // region, region, region)
    return y.permute(0, 1, 2, 4, 3, 5).reshape(b, hd * d, h, w)


_HALF = (torch.float16, torch.bfloat16)
#: scaled_dot_product_attention takes ``scale=`` from torch 2.1 on
_SDPA_SCALE = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 1)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for float16/bfloat16 (logits, softmax, statistics), the tensor's own dtype otherwise."""
    return torch.float32 if x.dtype in _HALF else x.dtype


def _as_compute(value, like: torch.Tensor, dtype: torch.dtype):
    """A scalar stays a scalar; a tensor (e.g. the learned ``sim_alpha``) moves to ``like``'s device and
    ``dtype`` (so a parameter left on another device or in another dtype still works)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=dtype)
    return value


def _needs_grad(*tensors) -> bool:
    """True when autograd records this call (then the reference path runs)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _region_rows(x: torch.Tensor, region: int, heads: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, heads, n, (C/heads) * r)``: one row per region, channels outer, positions
    inner (the region descriptors of the progressive match, laid out as the reference path lays them)."""
    b, c, h, w = x.shape
    y = x.view(b, heads, c // heads, h // region, region, w // region, region)
    return y.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, heads, (h // region) * (w // region),
                                                  (c // heads) * region * region)


def aggregate_region_keys(k: torch.Tensor, v: torch.Tensor, sim_alpha, sim_beta
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Aggregated key and value of every region.

    Args:
        k: ``(B, heads, d, n, r)``; v: ``(B, heads, dv, n, r)``.
        sim_alpha, sim_beta: scalars or 1-element tensors (learned in the A2K module).

    Returns:
        ``(B, heads, d, n)`` and ``(B, heads, dv, n)``:
        ``(sum_y sigmoid(beta + alpha <center, k_y>) k_y + center) / (r + 1)``, the same weights for v.
        In float16/bfloat16 the whole aggregation runs in float32 and the results are cast back.
    """
    dtype = _compute_dtype(k)
    out_k, out_v = k.dtype, v.dtype
    k, v = k.to(dtype), v.to(dtype)
    sim_alpha, sim_beta = _as_compute(sim_alpha, k, dtype), _as_compute(sim_beta, k, dtype)
    r = k.shape[-1]
    k_center = k.mean(-1)
    v_center = v.mean(-1)
    sim = torch.sigmoid(sim_beta + sim_alpha * torch.einsum("bhcx,bhcxy->bhxy", k_center, k))
    k_agg = (torch.einsum("bhxy,bhcxy->bhcx", sim, k) + k_center) / (r + 1)
    v_agg = (torch.einsum("bhxy,bhcxy->bhcx", sim, v) + v_center) / (r + 1)
    return k_agg.to(out_k), v_agg.to(out_v)


def _check(q, k, v, region, heads):
    check_shape(q, "B,C,Hq,Wq", "q")
    check_shape(k, "B,C,Hk,Wk", "k")
    check_shape(v, "B,Cv,Hk,Wk", "v")
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"q and k must have the same channel count, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if v.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"v must lie on the style grid of k {tuple(k.shape[-2:])}, got v {tuple(v.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch sizes of q, k, v must agree, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if int(region) < 1:
        raise ValueError(f"region must be a positive integer, got {region}")
    if int(heads) < 1 or q.shape[1] % heads or v.shape[1] % heads:
        raise ValueError(f"heads={heads} must divide the channel counts of q/k ({q.shape[1]}) and v ({v.shape[1]})")


def distributed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, region: int, heads: int = 8,
                          sim_alpha=1.0, sim_beta=0.0, scale: float = 1.0, query_chunk_size: Optional[int] = None,
                          memory_budget: Optional[int] = None) -> torch.Tensor:
    """Distributed attention: every query attends to the region-aggregated keys of the whole style map.

    Args:
        q: ``(B, C, Hq, Wq)`` content-side queries.
        k: ``(B, C, Hk, Wk)`` style-side keys; v: ``(B, Cv, Hk, Wk)`` style-side values.
        region: side of the square regions of the style map (StyA2K: 8 at relu3_1/relu4_1, 4 at relu5_1).
        heads: attention heads (StyA2K: 8).
        sim_alpha, sim_beta: affine map inside the sigmoid similarity of the key aggregation (learned in
            the A2K module; 1 and 0 in the parameter-free loss). Scalars or tensors on any device.
        scale: factor of the logits (StyA2K: 1, no ``1/sqrt(d)``; a temperature ``T`` is ``scale=1/T``).
        query_chunk_size, memory_budget: queries per chunk, or the working memory a chunk may use. The
            official code holds ``heads * Nq * n_k`` logits at once (2 GB at relu3_1 of a 1024 image).

    Returns:
        ``(B, Cv, Hq, Wq)`` in the dtype of ``q``.

    Queries need no blocking: each one attends to the ``n_k`` aggregated keys directly.

    Example:
        >>> q, k, v = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 12, 4), torch.randn(1, 8, 12, 4)
        >>> distributed_attention(q, k, v, region=4, heads=2).shape
        torch.Size([1, 8, 8, 8])
    """
    _check(q, k, v, region, heads)
    kp, _ = pad_to_multiple(k, region)
    vp, _ = pad_to_multiple(v, region)
    if _SDPA_SCALE and not _needs_grad(q, k, v, sim_alpha, sim_beta):
        k_tok, v_tok = _aggregate_tokens(_region_rows(kp, region, heads), _region_rows(vp, region, heads),
                                         region * region, sim_alpha, sim_beta)
        del kp, vp
        return _distributed_fused(q, k_tok, v_tok, heads, scale, query_chunk_size, memory_budget)
    k_agg, v_agg = aggregate_region_keys(to_regions(kp, region, heads), to_regions(vp, region, heads),
                                         sim_alpha, sim_beta)                   # (B, h, d, n), (B, h, dv, n)
    del kp, vp
    b, c, hq, wq = q.shape
    cv = v.shape[1]
    n_k = k_agg.shape[-1]
    dtype = _compute_dtype(q)
    qf = q.reshape(b, heads, c // heads, hq * wq)
    k_logit = k_agg.to(dtype)
    v_t = v_agg.transpose(-1, -2)                                               # (B, h, n, dv)
    per_query = b * heads * n_k * max(q.element_size(), 4) * 3                  # float32 logits for halves
    chunk = resolve_chunk_size(hq * wq, per_query, query_chunk_size, memory_budget)
    outs = []
    for s, e in chunk_ranges(hq * wq, chunk):
        logits = torch.einsum("bhcq,bhcz->bhqz", qf[..., s:e].to(dtype), k_logit)
        if scale != 1:
            logits = logits * scale
        outs.append(torch.matmul(torch.softmax(logits, -1).to(v_t.dtype), v_t))  # (B, h, n, dv)
    out = torch.cat(outs, 2)                                                    # (B, h, Nq, dv)
    return out.permute(0, 1, 3, 2).reshape(b, cv, hq, wq).to(q.dtype)


def _aggregate_tokens(k_rows: torch.Tensor, v_rows: torch.Tensor, r: int, sim_alpha, sim_beta
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`aggregate_region_keys` on region rows, as batched products (inference path).

    ``k_rows`` ``(B, h, n, d*r)``, ``v_rows`` ``(B, h, n, dv*r)`` (channels outer, positions inner) ->
    aggregated keys ``(B, h, n, d)`` and values ``(B, h, n, dv)``, computed in float32 for half inputs and
    cast back.
    """
    dtype = _compute_dtype(k_rows)
    b, h, n = k_rows.shape[:3]
    d, dv = k_rows.shape[3] // r, v_rows.shape[3] // r
    keys = k_rows.to(dtype).view(b * h * n, d, r)
    values = v_rows.to(dtype).view(b * h * n, dv, r)
    alpha, beta = _as_compute(sim_alpha, keys, dtype), _as_compute(sim_beta, keys, dtype)
    k_center = keys.mean(-1, keepdim=True).transpose(1, 2)                      # (Bhn, 1, d)
    sim = torch.sigmoid(beta + alpha * torch.bmm(k_center, keys))             # (Bhn, 1, r)
    k_agg = torch.baddbmm(k_center, sim, keys.transpose(1, 2)).div_(r + 1)
    v_agg = torch.baddbmm(values.mean(-1).unsqueeze(1), sim, values.transpose(1, 2)).div_(r + 1)
    return k_agg.view(b, h, n, d).to(k_rows.dtype), v_agg.view(b, h, n, dv).to(v_rows.dtype)


def _distributed_fused(q: torch.Tensor, k_tok: torch.Tensor, v_tok: torch.Tensor, heads: int, scale: float,
                       query_chunk_size: Optional[int], memory_budget: Optional[int]) -> torch.Tensor:
    """Inference path of :func:`distributed_attention` after the key aggregation.

    ``q`` ``(B, C, Hq, Wq)``, aggregated ``k_tok`` ``(B, h, n, d)`` and ``v_tok`` ``(B, h, n, dv)`` ->
    ``(B, Cv, Hq, Wq)``. Fused softmax attention (on CPU a flash kernel that keeps its logits and softmax in
    float32 for every input dtype); where ``d != dv`` the heads are zero-padded to one width (zeros add
    nothing to the logits, the padded value channels are dropped).
    """
    b, c, hq, wq = q.shape
    n_k, d = k_tok.shape[2:]
    dv = v_tok.shape[3]
    cv = heads * dv
    nq = hq * wq
    width = d if d == dv else -(-max(d, dv) // 8) * 8
    dtype = q.dtype
    qt = q.reshape(b, heads, d, nq).transpose(-1, -2)                           # (B, h, Nq, d) view
    kt, vt = k_tok.to(dtype), v_tok.to(dtype)
    if width != d or width != dv:
        kt, vt = F.pad(kt, (0, width - d)), F.pad(vt, (0, width - dv))
    kt, vt = kt.contiguous(), vt.contiguous()
    out = torch.empty(b, heads, dv, nq, dtype=dtype, device=q.device)
    # per query: the token copy of q, the kernel's output and its copy; where no fused kernel may exist
    # (float64 off the CPU) also the logits and softmax the math kernel holds
    per_query = b * heads * 3 * width * q.element_size()
    if q.device.type != "cpu" and dtype == torch.float64:
        per_query += b * heads * 2 * n_k * q.element_size()
    chunk = resolve_chunk_size(nq, per_query, query_chunk_size, memory_budget)
    for s, e in chunk_ranges(nq, chunk):
        qc = qt[:, :, s:e]
        qc = F.pad(qc, (0, width - d)) if width != d else qc.contiguous()
        o = F.scaled_dot_product_attention(qc, kt, vt, scale=float(scale))   # (B, h, n, width)
        del qc
        out[..., s:e].copy_(o[..., :dv].transpose(-1, -2))
        del o
    return out.view(b, cv, hq, wq)


def progressive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, region: int, heads: int = 8,
                          scale: float = 1.0, query_chunk_size: Optional[int] = None,
                          memory_budget: Optional[int] = None) -> torch.Tensor:
    """Progressive attention: best-matching style region per content region, then attention inside it.

    The match of content region ``x`` and style region ``z`` is ``sum_{c,y} q[c, x, y] k[c, z, y]``
    (positions ``y`` aligned inside the regions), per head; the best ``z`` is taken by argmax and every query
    of ``x`` attends with softmax to the ``r`` keys of ``z``.

    Args:
        q: ``(B, C, Hq, Wq)``; k: ``(B, C, Hk, Wk)``; v: ``(B, Cv, Hk, Wk)``.
        region, heads, scale: as :func:`distributed_attention` (the match is scale-invariant; ``scale``
            multiplies the logits inside the chosen region).
        query_chunk_size, memory_budget: chunking over content regions (the size counts query positions).

    Returns:
        ``(B, Cv, Hq, Wq)`` in the dtype of ``q``.

    Example:
        >>> q, k, v = torch.randn(1, 16, 6, 10), torch.randn(1, 16, 8, 8), torch.randn(1, 8, 8, 8)
        >>> progressive_attention(q, k, v, region=4, heads=2).shape
        torch.Size([1, 8, 6, 10])
    """
    _check(q, k, v, region, heads)
    if not _needs_grad(q, k, v):
        return _progressive_fast(q, k, v, region, heads, scale, query_chunk_size, memory_budget)
    b, c, hq, wq = q.shape
    dtype = _compute_dtype(q)
    qp, _ = pad_to_multiple(q, region)
    kp, _ = pad_to_multiple(k, region)
    vp, _ = pad_to_multiple(v, region)
    qr = to_regions(qp, region, heads)                                          # (B, h, d, n_q, r)
    kr = to_regions(kp, region, heads)                                          # (B, h, d, n_k, r)
    vr = to_regions(vp, region, heads)                                          # (B, h, dv, n_k, r)
    hd, d, n_q, r = qr.shape[1:]
    n_k = kr.shape[3]
    dv = vr.shape[2]
    k_flat = kr.permute(0, 1, 3, 2, 4).reshape(b, hd, n_k, d * r).to(dtype)    # region descriptors
    q_flat = qr.permute(0, 1, 3, 2, 4).reshape(b, hd, n_q, d * r).to(dtype)
    per_query = b * hd * (n_k + 4 * r + d + dv) * max(q.element_size(), 4)
    chunk = max(1, resolve_chunk_size(n_q * r, per_query, query_chunk_size, memory_budget) // r)
    outs = []
    for s, e in chunk_ranges(n_q, chunk):
        match = torch.matmul(q_flat[:, :, s:e], k_flat.transpose(-1, -2))      # (B, h, n, n_k)
        best = match.argmax(-1)                                                 # (B, h, n)
        idx = best.view(b, hd, 1, e - s, 1)
        k_sel = torch.gather(kr, 3, idx.expand(b, hd, d, e - s, r))             # (B, h, d, n, r)
        v_sel = torch.gather(vr, 3, idx.expand(b, hd, dv, e - s, r))
        logits = torch.einsum("bhcxy,bhcxz->bhxyz", qr[:, :, :, s:e].to(dtype), k_sel.to(dtype))
        if scale != 1:
            logits = logits * scale
        outs.append(torch.einsum("bhxyz,bhcxz->bhcxy", torch.softmax(logits, -1).to(v_sel.dtype), v_sel))
    out = from_regions(torch.cat(outs, 3), region, qp.shape[-2:])
    return out[..., :hq, :wq].to(q.dtype)


def _progressive_fast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region: int, heads: int, scale: float,
                      query_chunk_size: Optional[int], memory_budget: Optional[int]) -> torch.Tensor:
    """Inference path of :func:`progressive_attention` (same arguments, same result).

    Every map is laid out once as region rows of ``d*r`` features (channels outer, positions inner), the
    content's with the region index outermost so that a chunk of regions is one contiguous block. The match
    is the same product of the same rows as on the reference path (so the same regions win, bit for bit), the
    chosen style regions are gathered as whole rows, and the attention inside each region is two batched
    products on views of those rows.
    """
    b, c, hq, wq = q.shape
    dtype = _compute_dtype(q)
    qp, _ = pad_to_multiple(q, region)
    kp, _ = pad_to_multiple(k, region)
    vp, _ = pad_to_multiple(v, region)
    hp, wp = qp.shape[-2:]
    hr, wr = hp // region, wp // region
    r = region * region
    d, dv = c // heads, v.shape[1] // heads
    # content rows (n_q, B, h, d*r); style rows (B, h, n_k, d*r) and (B*h*n_k, dv*r)
    q_rows = qp.view(b, heads, d, hr, region, wr, region).permute(3, 5, 0, 1, 2, 4, 6)
    q_rows = q_rows.reshape(hr * wr, b, heads, d * r).to(dtype)                # float32 match for halves
    k_rows = _region_rows(kp, region, heads).to(dtype)
    v_rows = _region_rows(vp, region, heads)
    del qp, kp, vp
    n_q, n_k = q_rows.shape[0], k_rows.shape[2]
    k_flat = k_rows.view(b * heads * n_k, d * r)
    v_flat = v_rows.view(b * heads * n_k, dv * r)
    k_t = k_rows.transpose(-1, -2)                                              # (B, h, d*r, n_k)
    offset = (torch.arange(b * heads, device=q.device, dtype=torch.long) * n_k).view(1, b * heads)
    out = torch.empty(n_q, b, heads, dv, r, dtype=q.dtype, device=q.device)
    per_query = b * heads * (n_k + 4 * r + d + dv) * max(q.element_size(), 4)
    chunk = max(1, resolve_chunk_size(n_q * r, per_query, query_chunk_size, memory_budget) // r)
    for s, e in chunk_ranges(n_q, chunk):
        n = e - s
        q_chunk = q_rows[s:e]                                                   # (n, B, h, d*r)
        best = torch.matmul(q_chunk.permute(1, 2, 0, 3), k_t).argmax(-1)        # (B, h, n)
        rows = (best.view(b * heads, n).t() + offset).reshape(-1)               # (n*B*h,) rows of k_flat
        del best
        k_sel = k_flat.index_select(0, rows).view(n * b * heads, d, r)
        v_sel = v_flat.index_select(0, rows).view(n * b * heads, dv, r)
        # logits[y, z] = sum_c q[c, y] k[c, z] inside each region
        logits = torch.bmm(q_chunk.reshape(n * b * heads, d, r).transpose(1, 2), k_sel)
        del k_sel
        if scale != 1:
            logits.mul_(scale)
        att = torch.softmax(logits, -1).to(v_sel.dtype)
        del logits
        torch.bmm(v_sel, att.transpose(1, 2), out=out[s:e].view(n * b * heads, dv, r))
        del att, v_sel
    # (Hr, Wr, B, h, dv, R, R) -> (B, h, dv, Hr, R, Wr, R) = (B, Cv, Hp, Wp)
    out = out.view(hr, wr, b, heads, dv, region, region).permute(2, 3, 4, 0, 5, 1, 6).reshape(b, heads * dv, hp, wp)
    return out[..., :hq, :wq]


def all_to_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, region: int, heads: int = 8,
                         sim_alpha=1.0, sim_beta=0.0, q_local: Optional[torch.Tensor] = None,
                         k_local: Optional[torch.Tensor] = None, v_local: Optional[torch.Tensor] = None,
                         scale: float = 1.0, query_chunk_size: Optional[int] = None,
                         memory_budget: Optional[int] = None) -> AllToKeyResult:
    """Distributed and progressive attention together.

    The A2K module feeds different learned projections to the two parts (``q, k, v`` to the distributed
    part, ``q_local, k_local, v_local`` to the progressive one). The parameter-free form used by StyA2K's
    training loss passes normalised features as ``q`` and ``k``, raw style features as ``v``, no ``*_local``
    (the same tensors serve both parts) and ``sim_alpha=1, sim_beta=0``: see
    :func:`parameter_free_all_to_key`.

    Args:
        q: ``(B, C, Hq, Wq)``; k: ``(B, C, Hk, Wk)``; v: ``(B, Cv, Hk, Wk)``.
        q_local, k_local, v_local: the progressive part's inputs (default: ``q``, ``k``, ``v``).
        Other arguments as :func:`distributed_attention`.

    Returns:
        :class:`AllToKeyResult` with ``distributed`` and ``progressive``, ``(B, Cv, Hq, Wq)`` each.
    """
    dist = distributed_attention(q, k, v, region=region, heads=heads, sim_alpha=sim_alpha, sim_beta=sim_beta,
                                 scale=scale, query_chunk_size=query_chunk_size, memory_budget=memory_budget)
    prog = progressive_attention(q if q_local is None else q_local, k if k_local is None else k_local,
                                 v if v_local is None else v_local, region=region, heads=heads, scale=scale,
                                 query_chunk_size=query_chunk_size, memory_budget=memory_budget)
    return AllToKeyResult(dist, prog)


def parameter_free_all_to_key(content_key: torch.Tensor, style_key: torch.Tensor, style_value: torch.Tensor, *,
                              region: int, heads: int = 8, query_chunk_size: Optional[int] = None,
                              memory_budget: Optional[int] = None) -> torch.Tensor:
    """All-to-key attention without learned projections: ``distributed + progressive``.

    This is the target of StyA2K's A2K loss (the stylised features should equal this plus the content
    features) and a weight-free style transfer operator in its own right.

    Args:
        content_key: ``(B, C, Hq, Wq)`` normalised content features (queries).
        style_key: ``(B, C, Hk, Wk)`` normalised style features (keys).
        style_value: ``(B, Cv, Hk, Wk)`` style features (values).
        region, heads, query_chunk_size, memory_budget: as :func:`distributed_attention`.

    Returns:
        ``(B, Cv, Hq, Wq)``.
    """
    r = all_to_key_attention(content_key, style_key, style_value, region=region, heads=heads,
                             query_chunk_size=query_chunk_size, memory_budget=memory_budget)
    return r.distributed + r.progressive


__all__.append("parameter_free_all_to_key")
