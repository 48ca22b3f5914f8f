"""Sparse dynamic attention: DynaST's cascade from coarse to fine scales.

Every query attends only to a short candidate list of keys:

* inter-scale (:func:`inter_scale_sparse_attention`): the 2x2 children, on this scale's key grid, of the
  top-k keys that the query's parent chose on the previous (half-resolution) scale: ``4K`` candidates;
* inner-scale (:func:`inner_scale_sparse_attention`): the query's own top-k on this scale plus the top-k of
  its 4 neighbours shifted by one position towards the query: ``5K`` candidates.

Both return the top-k of their own attention for the next block, so the cascade carries correspondences
down to full resolution at a cost linear in the number of positions.

Two execution paths, equal up to float rounding (float64: 1e-12):

* inference on the CPU (no tensor needs a gradient): fused kernels that never copy a candidate's features.
  The logits of all candidates are sampled dot products (``torch.sparse.sampled_addmm`` on a CSR pattern of
  the candidate lists), the output a weighted embedding-bag sum of value rows. Working memory is
  ``O(chunk * candidates)`` scalars; the row tables are views of channels-last inputs (else one copy each).
* autograd, or another device: candidate keys and values are gathered per chunk of queries and contracted
  with a batched matrix product (the official operand layouts, so float32 results equal the official ones),
  peak working memory ``O(chunk * candidates * C)``.

Nothing of size ``Nq x Nk`` is ever allocated; the full-size outputs are linear in the number of positions.
The official inner-scale op materialises ``B * N * C * 5K`` twice (gathered keys and a broadcast product).

Precision: logits, softmax, the gate and the weights are computed in float32 for float16/bfloat16 inputs
(the logits are multiplied by ``1/scale`` = 100 in DynaST), results are returned in the input dtype.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ._common import check_same, check_shape, chunk_ranges, resolve_chunk_size
from ._inference import needs_autograd, rows_of, work_dtype
from .dense import warp_exclusion_fill
from .gate import hard_gate

__all__ = [
    "SparseAttentionResult",
    "inter_scale_sparse_attention",
    "inner_scale_sparse_attention",
    "sparse_attention",
    "inter_scale_candidates",
    "inner_scale_candidates",
]


class SparseAttentionResult(NamedTuple):
    """What the sparse operators return.

    Attributes:
        output: ``(B, Cv, Hq, Wq)`` gated attention output.
        confidence: ``(B, 1, Hq, Wq)`` sum of the kept attention weights per query.
        topk_indices: ``(B, Hq*Wq, K)`` flat indices into the ``(Hk, Wk)`` key grid of the top-k
            candidates (ranked by attention before gating, as the official code does), or None.
        candidate_indices: ``(B, Hq*Wq, M)`` flat key indices of every candidate (M = 4K or 5K; an index
            may repeat: repeated candidates are counted as often as they appear, as in the official code).
        candidate_weights: ``(B, Hq*Wq, M)`` gated attention weights of the candidates (they sum to the
            confidence).
        warped: ``(B, Cw, Hq, Wq)`` warp branch output when ``warp_values`` is given, else None.
    """

    output: torch.Tensor
    confidence: torch.Tensor
    topk_indices: Optional[torch.Tensor]
    candidate_indices: torch.Tensor
    candidate_weights: torch.Tensor
    warped: Optional[torch.Tensor]


CandidateFn = Callable[[int, int], torch.Tensor]


def _decode(idx: torch.Tensor, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.div(idx, width, rounding_mode="floor"), idx % width


def _children(coarse: torch.Tensor, key_size: Tuple[int, int]) -> torch.Tensor:
    """``(B, n, K)`` flat indices on the coarse key grid -> ``(B, n, 4K)`` their 2x2 children on the
    ``(Hk, Wk)`` grid, grouped per top-k entry in the order (0,0), (0,1), (1,0), (1,1); clamped into the grid."""
    hk, wk = key_size
    py, px = _decode(coarse, (wk + 1) // 2)
    d = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]], device=coarse.device, dtype=coarse.dtype)
    cy = (2 * py.unsqueeze(-1) + d[0]).clamp_(max=hk - 1)          # (B, n, K, 4)
    cx = (2 * px.unsqueeze(-1) + d[1]).clamp_(max=wk - 1)
    return cy.mul_(wk).add_(cx).flatten(-2)


def inter_scale_candidates(prev_topk: torch.Tensor, key_size: Tuple[int, int], start: int = 0,
                           end: Optional[int] = None) -> torch.Tensor:
    """Candidate keys of the inter-scale step: the 2x2 children of each coarse query's top-k.

    The four fine queries of the 2x2 window below coarse query ``P`` share one candidate list: the
    children of ``prev_topk[P]``. The children of coarse key ``(Y, X)`` on the coarse key grid
    ``(ceil(Hk/2), ceil(Wk/2))`` are ``(2Y + dy, 2X + dx)`` for ``(dy, dx)`` in ``(0,0), (0,1), (1,0),
    (1,1)``, in that order, grouped per top-k entry (the official order). For odd key sizes (the official
    code requires even ones) a child beyond the last row/column is clamped onto it.

    Args:
        prev_topk: ``(B, Nc, K)`` long, ``Nc`` coarse query positions.
        key_size: ``(Hk, Wk)`` of this (fine) scale.
        start, end: range of coarse query positions.

    Returns:
        ``(B, end - start, 4K)`` long flat indices into the ``(Hk, Wk)`` grid.
    """
    return _children(prev_topk[:, start:end], key_size)


def inner_scale_candidates(topk: torch.Tensor, query_size: Tuple[int, int],
                           key_size: Tuple[int, int], start: int = 0,
                           end: Optional[int] = None) -> torch.Tensor:
    """Candidate keys of the inner-scale step: own top-k plus the neighbours' top-k shifted by one.

    For query ``(y, x)`` the candidates are, in the official order: its own top-k; the top-k of the
    query above, moved one row down; of the query below, moved one row up; of the query to the left,
    moved one column right; of the query to the right, moved one column left. At the borders the
    official code replicates the index map, so the missing neighbour is the query itself (its top-k
    shifted), and shifted keys are clamped into the key grid. Duplicates are kept.

    Args:
        topk: ``(B, Hq*Wq, K)`` long flat indices into the ``(Hk, Wk)`` key grid.
        query_size: ``(Hq, Wq)``.
        key_size: ``(Hk, Wk)``.
        start, end: range of flat query positions.

    Returns:
        ``(B, end - start, 5K)`` long.
    """
    hq, wq = query_size
    hk, wk = key_size
    nk = hk * wk
    end = hq * wq if end is None else end
    n, kk = end - start, topk.shape[-1]
    pos = torch.arange(start, end, device=topk.device)
    y, x = _decode(pos, wq)
    up, down = (y - 1).clamp_(min=0), (y + 1).clamp_(max=hq - 1)
    left, right = (x - 1).clamp_(min=0), (x + 1).clamp_(max=wq - 1)
    # one gather of the top-k of the query and its four neighbours, in the candidate order: (B, n, 5, K)
    rows = torch.stack([pos, up.mul_(wq).add_(x), down.mul_(wq).add_(x), left.add_(y * wq), right.add_(y * wq)], 1)
    out = topk.index_select(1, rows.view(-1)).view(topk.shape[0], n, 5, kk)
    # shift each neighbour's keys by one position, staying put at the key grid's border (the official clamp)
    u, d, l, r = out[:, :, 1], out[:, :, 2], out[:, :, 3], out[:, :, 4]
    u.add_((u < nk - wk).to(u.dtype).mul_(wk))             # above: one row down
    d.sub_((d >= wk).to(d.dtype).mul_(wk))                 # below: one row up
    l.add_((l % wk < wk - 1).to(l.dtype))                  # left: one column right
    r.sub_((r % wk > 0).to(r.dtype))                       # right: one column left
    return out.view(topk.shape[0], n, 5 * kk)


def _gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table (B, N, C), idx (B, n, M) -> (B, n, M, C)."""
    b, n_rows, c = table.shape
    offset = (torch.arange(b, device=idx.device, dtype=idx.dtype) * n_rows).view(b, 1, 1)
    return table.reshape(b * n_rows, c).index_select(0, (idx + offset).reshape(-1)).view(*idx.shape, c)


def _contract_keys(qg: torch.Tensor, kc: torch.Tensor, mode: str) -> torch.Tensor:
    """Dot products of grouped queries with their gathered candidates.

    qg: (B, n, G, C); kc: (B, n, M, C) -> (B, n, G, M). Both modes lay the candidates out as a contiguous
    (C, M) block per group, as the official code does, so the float32 results equal the official ones
    bit for bit: ``"matmul"`` is the inter-scale matrix product of a 2x2 window of queries with its
    shared candidates; ``"sum"`` is the inner-scale multiply-and-sum over channels (G = 1). The
    temporaries are per chunk of queries, never per image.
    """
    kt = kc.transpose(-1, -2).contiguous()                              # (B, n, C, M)
    if mode == "matmul":
        return torch.matmul(qg, kt)
    # G == 1; the operand layouts decide the reduction order, so they mirror the official ones
    return torch.sum(qg.squeeze(2).unsqueeze(-1) * kt, dim=-2).unsqueeze(2)


def _contract_values(weights: torch.Tensor, vc: torch.Tensor, mode: str) -> torch.Tensor:
    """weights (B, n, G, M), vc (B, n, M, Cv) -> (B, n, G, Cv)."""
    if mode == "matmul":
        return torch.matmul(weights, vc)
    return torch.sum(weights.squeeze(2).unsqueeze(-1) * vc, dim=-2).unsqueeze(2)


def _sampled_dots(crow: torch.Tensor, col: torch.Tensor, rows: torch.Tensor, table_t: torch.Tensor) -> torch.Tensor:
    """``rows[i] . table_t[:, col[i, j]]`` for every candidate: ``(R, M)``; rows ``(R, C)``, table_t ``(C, N)``,
    col ``(R, M)``. One fused kernel (no candidate features are copied)."""
    r, m = col.shape
    if m > table_t.shape[1]:
        # more candidates than keys (tiny grids): the sparse kernel needs nnz <= rows * columns
        return torch.einsum("rc,rmc->rm", rows, table_t.t()[col])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(crow, col.reshape(-1), torch.zeros(r * m, dtype=rows.dtype,
                                          device=rows.device), size=(r, table_t.shape[1]), check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, rows, table_t, beta=0.0).values().view(r, m)


def _per_query(candidates: CandidateFn, group: int, wq: int, device: torch.device) -> CandidateFn:
    """A candidate function over query positions from one over groups (2x2 windows for ``group=4``)."""
    if group == 1:
        return candidates
    wg = wq // 2

    def fn(s, e):
        lo = (s // wq // 2) * wg                      # the windows of the rows that [s, e) touches
        hi = ((e - 1) // wq // 2 + 1) * wg
        y, x = _decode(torch.arange(s, e, device=device), wq)
        return candidates(lo, hi).index_select(1, (y // 2) * wg + x // 2 - lo)
    return fn


def _fused_sparse(q, k, v, candidates, q_gate, k_gate, m, scale, gate_scale, top_k, warp_values, warp_exclude,
                  chunk, return_candidates) -> SparseAttentionResult:
    """Inference path on the CPU (see the module docstring); ``candidates`` is over query positions."""
    b, c, hq, wq = q.shape
    hk, wk = k.shape[-2:]
    nq, nk = hq * wq, hk * wk
    dev, work = q.device, work_dtype(q)
    cv = v.shape[1]
    qr = rows_of(q, work)
    kt = rows_of(k, work).view(b * nk, c).t()
    gated = q_gate is not None
    if gated:
        qgr = rows_of(q_gate, work)
        kgt = rows_of(k_gate, work).view(b * nk, -1).t()
    vt = rows_of(v, work).view(b * nk, cv) if cv else None
    wvt = rows_of(warp_values, work).view(b * nk, -1) if warp_values is not None else None
    n_ret = m if return_candidates is True else min(int(return_candidates), m)
    outs, confs, topks, cidx, cw, warps = [], [], [], [], [], []
    offset = (torch.arange(b, device=dev) * nk).view(b, 1, 1)
    for s, e in chunk_ranges(nq, chunk):
        n = e - s
        idx = candidates(s, e)                                              # (B, n, M) key-grid indices
        col = (idx if b == 1 else idx + offset).reshape(b * n, m)          # rows of the (B*Nk) tables
        crow = torch.arange(0, b * n * m + 1, m, device=dev)
        logits = _sampled_dots(crow, col, qr[:, s:e].reshape(b * n, c), kt).div_(scale)
        attn = torch.softmax(logits, dim=-1)
        if top_k:
            topks.append(idx.view(b * n, m).gather(-1, torch.topk(attn, top_k, dim=-1).indices).view(b, n, top_k))
        gate = None
        if gated:
            gate = _sampled_dots(crow, col, qgr[:, s:e].reshape(b * n, -1), kgt).div_(gate_scale) > 0
            kept = attn.mul_(gate)
        else:
            kept = attn
        confs.append(kept.sum(-1).view(b, n))
        if cv:
            outs.append(F.embedding_bag(col, vt, mode="sum", per_sample_weights=kept).view(b, n, cv))
        if return_candidates is True:
            cidx.append(idx)
            cw.append(kept.view(b, n, m))
        elif return_candidates:
            w_best, j = torch.topk(kept, n_ret, dim=-1)
            cidx.append(idx.view(b * n, m).gather(-1, j).view(b, n, n_ret))
            cw.append(w_best.view(b, n, n_ret))
        if wvt is not None:
            fill = gate if gate is not None else torch.ones_like(logits, dtype=torch.bool)
            warp_attn = torch.softmax(warp_exclusion_fill(logits, fill, warp_exclude), dim=-1)
            warps.append(F.embedding_bag(col, wvt, mode="sum", per_sample_weights=warp_attn).view(b, n, -1))

    def joined(parts, dtype=None):       # one chunk: no copy
        x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return x if dtype is None else x.to(dtype)

    def grid(x):                          # (B, Nq, X) rows -> (B, X, Hq, Wq) channels-last view
        return x.view(b, hq, wq, x.shape[-1]).permute(0, 3, 1, 2)

    output = grid(joined(outs, v.dtype)) if cv else torch.zeros(b, 0, hq, wq, dtype=v.dtype, device=dev)
    return SparseAttentionResult(output, joined(confs, q.dtype).view(b, 1, hq, wq),
                                 joined(topks) if top_k else None, joined(cidx) if cidx else None,
                                 joined(cw, q.dtype) if cw else None,
                                 grid(joined(warps, warp_values.dtype)) if warps else None)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, candidates: CandidateFn,
                     q_gate: Optional[torch.Tensor] = None, k_gate: Optional[torch.Tensor] = None, *,
                     num_candidates: int, group: int = 1, scale: Optional[float] = None,
                     gate_scale: float = 1.0, top_k: int = 0, warp_values: Optional[torch.Tensor] = None,
                     warp_exclude: str = "kept", query_chunk_size: Optional[int] = None,
                     memory_budget: Optional[int] = None,
                     return_candidates: Union[bool, int] = True) -> SparseAttentionResult:
    """Gated attention of groups of queries over a candidate list per group (engine of the sparse ops).

    ``group=1``: every query has its own candidates (inner-scale); the queries are the raster positions
    of ``q``. ``group=4``: the 2x2 windows of ``q`` share candidates (inter-scale); ``q`` must have even
    height and width and the groups are the windows in raster order.

    Args:
        q: ``(B, C, Hq, Wq)``; k: ``(B, C, Hk, Wk)``; v: ``(B, Cv, Hk, Wk)`` (``Cv`` may be 0: no output).
        candidates: ``fn(start, end) -> (B, end - start, M)`` flat key indices for a range of groups.
        q_gate, k_gate: ``(B, D, Hq, Wq)`` / ``(B, D, Hk, Wk)`` or None.
        num_candidates: M, used to size chunks.
        group: 1 or 4 (see above).
        scale: divisor of the logits, default ``sqrt(C)``; gate_scale: divisor of the gate logits.
        top_k: how many candidates to return for the next step (0: none).
        warp_values, warp_exclude: see :func:`dynast_core.attention.dense.dynamic_attention`.
        query_chunk_size, memory_budget: chunking (the chunk size counts queries, rounded to groups).
        return_candidates: True: all candidates and their gated weights; an integer ``n``: only the ``n``
            with the largest gated weight per query (for a compact correspondence); False: none.

    Returns:
        :class:`SparseAttentionResult` (per query, raster order of ``q``). ``output`` and ``warped`` may be
        channels-last views.
    """
    b, c, hq, wq = q.shape
    cv = v.shape[1]
    if scale is None:
        scale = math.sqrt(c)
    mode = "matmul" if group == 4 else "sum"
    if q.device.type == "cpu" and not needs_autograd(q, k, v, q_gate, k_gate, warp_values):
        # per query: logits, softmax, gate, kept weights (work dtype), two index tensors, plus row copies
        per_query = b * (num_candidates * 40 + 8 * (c + (q_gate.shape[1] if q_gate is not None else 0)))
        chunk = resolve_chunk_size(hq * wq, per_query, query_chunk_size, memory_budget)
        return _fused_sparse(q, k, v, _per_query(candidates, group, wq, q.device), q_gate, k_gate, num_candidates,
                             scale, gate_scale, top_k, warp_values, warp_exclude, chunk, return_candidates)

    def grouped(x):  # (B, C, Hq, Wq) -> (B, Ng, G, C)
        if group == 1:
            return x.flatten(2).transpose(1, 2).contiguous().unsqueeze(2)
        bb, cc, hh, ww = x.shape
        return x.view(bb, cc, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(
            bb, (hh // 2) * (ww // 2), 4, cc)

    def ungrouped(x):  # (B, Ng, G, X) -> (B, Hq*Wq, X)
        if group == 1:
            return x.squeeze(2)
        bb, _, _, xx = x.shape
        return x.view(bb, hq // 2, wq // 2, 2, 2, xx).permute(0, 1, 3, 2, 4, 5).reshape(bb, hq * wq, xx)

    work = work_dtype(q)
    qg = grouped(q)
    ng = qg.shape[1]
    # (B, N, C) row tables, contiguous once so that every chunk's gather is a plain row lookup
    kf = rows_of(k)
    vf = rows_of(v)
    qgg = grouped(q_gate) if q_gate is not None else None
    kgf = rows_of(k_gate) if k_gate is not None else None
    wvf = rows_of(warp_values) if warp_values is not None else None

    width = c + cv + (q_gate.shape[1] if q_gate is not None else 0)
    width += warp_values.shape[1] if warp_values is not None else 0
    # gathered candidates and their contiguous copies, plus per-candidate scalars, per query
    per_query = b * num_candidates * (2 * width + 12) * q.element_size()
    chunk = max(1, resolve_chunk_size(hq * wq, per_query, query_chunk_size, memory_budget) // group)

    outs, confs, topks, cidx, cw, warps = [], [], [], [], [], []
    for s, e in chunk_ranges(ng, chunk):
        idx = candidates(s, e)                                            # (B, n, M)
        # logits and weights in the work dtype (float32 for half inputs); the products in the input dtype
        logits = _contract_keys(qg[:, s:e], _gather_rows(kf, idx), mode).to(work) / scale   # (B, n, G, M)
        attn = torch.softmax(logits, dim=-1)
        if qgg is not None:
            gate = hard_gate(_contract_keys(qgg[:, s:e], _gather_rows(kgf, idx), mode).to(work) / gate_scale)
            kept = gate * attn
        else:
            gate = None
            kept = attn
        outs.append(_contract_values(kept.to(v.dtype), _gather_rows(vf, idx), mode))
        confs.append(kept.sum(-1).to(q.dtype))
        full_idx = idx.unsqueeze(2).expand(-1, -1, group, -1)
        if return_candidates is True:
            cidx.append(full_idx)
            cw.append(kept.to(q.dtype))
        elif return_candidates:
            w_best, j = torch.topk(kept, min(int(return_candidates), kept.shape[-1]), dim=-1)
            cidx.append(full_idx.gather(-1, j))
            cw.append(w_best.to(q.dtype))
        if top_k:
            _, best = torch.topk(attn, top_k, dim=-1)
            topks.append(full_idx.gather(-1, best))
        if wvf is not None:
            fill = gate if gate is not None else torch.ones_like(logits)
            warp_attn = torch.softmax(warp_exclusion_fill(logits, fill, warp_exclude), dim=-1)
            warps.append(_contract_values(warp_attn.to(wvf.dtype), _gather_rows(wvf, idx), mode))

    output = ungrouped(torch.cat(outs, 1)).transpose(1, 2).reshape(b, cv, hq, wq)
    confidence = ungrouped(torch.cat(confs, 1).unsqueeze(-1)).reshape(b, 1, hq, wq)
    warped = None
    if wvf is not None:
        warped = ungrouped(torch.cat(warps, 1)).transpose(1, 2).reshape(b, warp_values.shape[1], hq, wq)
    return SparseAttentionResult(output, confidence,
                                 ungrouped(torch.cat(topks, 1)) if top_k else None,
                                 ungrouped(torch.cat(cidx, 1)) if cidx else None,
                                 ungrouped(torch.cat(cw, 1)) if cw else None, warped)


def _check_inputs(q, k, v, q_gate, k_gate, warp_values, topk, topk_name, topk_rows):
    check_shape(q, "B,C,Hq,Wq", "q")
    check_shape(k, "B,C,Hk,Wk", "k")
    check_shape(v, "B,Cv,Hk,Wk", "v")
    b = q.shape[0]
    check_same([("q", b), ("k", k.shape[0]), ("v", v.shape[0]), (topk_name, topk.shape[0])],
               "batch sizes of q, k, v and the top-k indices")
    if k.shape[1] != q.shape[1]:
        raise ValueError(f"q and k must have the same channel count, got q {tuple(q.shape)} and "
                         f"k {tuple(k.shape)}")
    if v.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"v must lie on the key grid {tuple(k.shape[-2:])}, got v {tuple(v.shape)}")
    if (q_gate is None) != (k_gate is None):
        raise ValueError("give both q_gate and k_gate, or neither (no pruning)")
    if q_gate is not None:
        check_shape(q_gate, "B,D,Hq,Wq", "q_gate")
        check_shape(k_gate, "B,D,Hk,Wk", "k_gate")
        if q_gate.shape[0] != b or q_gate.shape[-2:] != q.shape[-2:]:
            raise ValueError(f"q_gate must be (B, D, {q.shape[2]}, {q.shape[3]}) like q, got "
                             f"{tuple(q_gate.shape)}")
        if (k_gate.shape[0] != b or k_gate.shape[-2:] != k.shape[-2:]
                or k_gate.shape[1] != q_gate.shape[1]):
            raise ValueError(f"k_gate must be (B, {q_gate.shape[1]}, {k.shape[2]}, {k.shape[3]}), got "
                             f"{tuple(k_gate.shape)}")
    if warp_values is not None:
        check_shape(warp_values, "B,Cw,Hk,Wk", "warp_values")
        if warp_values.shape[0] != b or warp_values.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"warp_values must be (B, Cw, {k.shape[2]}, {k.shape[3]}), got "
                             f"{tuple(warp_values.shape)}")
    check_shape(topk, "B,N,K", topk_name)
    if topk.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{topk_name} must hold integer indices, got dtype {topk.dtype}")
    if topk.shape[1] != topk_rows:
        raise ValueError(f"{topk_name} must have {topk_rows} rows (one per query of its grid), got "
                         f"{tuple(topk.shape)}")
    if topk.shape[2] < 1:
        raise ValueError(f"{topk_name} must hold at least one index per query")


def _check_index_range(idx: torch.Tensor, limit: int, name: str, grid) -> None:
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= limit):
        raise ValueError(f"{name} holds indices outside the {grid[0]}x{grid[1]} key grid "
                         f"(valid: 0..{limit - 1}); was it computed for another exemplar size?")


def inter_scale_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 prev_topk: torch.Tensor, q_gate: Optional[torch.Tensor] = None,
                                 k_gate: Optional[torch.Tensor] = None, *, scale: Optional[float] = None,
                                 gate_scale: float = 1.0, top_k: Optional[int] = None,
                                 warp_values: Optional[torch.Tensor] = None, warp_exclude: str = "kept",
                                 return_topk: bool = True, query_chunk_size: Optional[int] = None,
                                 memory_budget: Optional[int] = None,
                                 return_candidates: Union[bool, int] = True) -> SparseAttentionResult:
    """Sparse attention whose candidates are the 2x2 children of the previous scale's top-k.

    Equals Huage001/DynaST ``inter_scale_dynamic_sparse_attention`` for even sizes, including its quirks:
    the gate logits are *not* scaled (``gate_scale=1``, unlike the dense unit), the logits are divided by
    ``scale`` (the DynaST blocks pass ``smooth=0.01``; the function's own default is ``sqrt(C)``), and the
    new top-k ranks candidates by attention before gating. Extensions: odd and non-square sizes (see
    :func:`inter_scale_candidates`), query and key grids of different sizes, chunked queries.

    Args:
        q: ``(B, C, Hq, Wq)`` projected queries of this (fine) scale.
        k: ``(B, C, Hk, Wk)`` projected keys; v: ``(B, Cv, Hk, Wk)``.
        prev_topk: ``(B, ceil(Hq/2)*ceil(Wq/2), K)`` long, indices into the ``(ceil(Hk/2), ceil(Wk/2))``
            key grid of the previous scale.
        q_gate, k_gate: ``(B, D, Hq, Wq)`` / ``(B, D, Hk, Wk)`` gate embeddings, or None (no pruning).
        scale: logit divisor; gate_scale: gate logit divisor.
        top_k: candidates to return for the next step (default: K of ``prev_topk``).
        warp_values, warp_exclude: warp branch of the training loss (see ``dynamic_attention``).
        return_topk: False skips the top-k (the last block of the cascade needs none).
        query_chunk_size, memory_budget: chunking of the queries.
        return_candidates: True (all), an integer n (the n best by gated weight) or False (none): what
            ``candidate_indices``/``candidate_weights`` hold.

    Returns:
        :class:`SparseAttentionResult` with ``M = 4K`` candidates per query.

    Example:
        >>> q, k, v = torch.randn(1, 8, 4, 6), torch.randn(1, 8, 4, 6), torch.randn(1, 3, 4, 6)
        >>> prev = torch.randint(0, 6, (1, 6, 2))
        >>> r = inter_scale_sparse_attention(q, k, v, prev)
        >>> r.output.shape, r.candidate_indices.shape, r.topk_indices.shape
        (torch.Size([1, 3, 4, 6]), torch.Size([1, 24, 8]), torch.Size([1, 24, 2]))
    """
    hq, wq = q.shape[-2:]
    hk, wk = k.shape[-2:]
    coarse_q = ((hq + 1) // 2, (wq + 1) // 2)
    coarse_k = ((hk + 1) // 2, (wk + 1) // 2)
    _check_inputs(q, k, v, q_gate, k_gate, warp_values, prev_topk, "prev_topk", coarse_q[0] * coarse_q[1])
    _check_index_range(prev_topk, coarse_k[0] * coarse_k[1], "prev_topk", coarse_k)
    kprev = prev_topk.shape[-1]
    top_k = kprev if top_k is None else int(top_k)
    m = 4 * kprev
    if return_topk and not 1 <= top_k <= m:
        raise ValueError(f"top_k must be in [1, {m}] (the number of candidates), got {top_k}")
    prev_topk = prev_topk.long()
    fn = lambda s, e: inter_scale_candidates(prev_topk, (hk, wk), s, e)  # noqa: E731
    ph, pw = 2 * coarse_q[0] - hq, 2 * coarse_q[1] - wq
    if ph or pw:
        # Odd query grid: pad by replication to even (the padded queries are computed and dropped).
        pad = lambda x: None if x is None else F.pad(x, (0, pw, 0, ph), mode="replicate")  # noqa: E731
        q, q_gate = pad(q), pad(q_gate)
    r = sparse_attention(q, k, v, fn, q_gate, k_gate, num_candidates=m, group=4, scale=scale,
                         gate_scale=gate_scale, top_k=top_k if return_topk else 0,
                         warp_values=warp_values, warp_exclude=warp_exclude,
                         query_chunk_size=query_chunk_size, memory_budget=memory_budget,
                         return_candidates=return_candidates)
    if ph or pw:
        r = _crop_result(r, (hq + ph, wq + pw), (hq, wq))
    return r


def _crop_result(r: SparseAttentionResult, padded: Tuple[int, int], size: Tuple[int, int]):
    hp, wp = padded
    h, w = size

    def grid(x):
        return None if x is None else x[..., :h, :w]

    def rows(x):
        return None if x is None else x.view(x.shape[0], hp, wp, x.shape[-1])[:, :h, :w].reshape(
            x.shape[0], h * w, x.shape[-1])

    return SparseAttentionResult(grid(r.output), grid(r.confidence), rows(r.topk_indices),
                                 rows(r.candidate_indices), rows(r.candidate_weights), grid(r.warped))


def inner_scale_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 topk: torch.Tensor, q_gate: Optional[torch.Tensor] = None,
                                 k_gate: Optional[torch.Tensor] = None, *, scale: Optional[float] = None,
                                 gate_scale: float = 1.0, top_k: Optional[int] = None,
                                 warp_values: Optional[torch.Tensor] = None, warp_exclude: str = "kept",
                                 return_topk: bool = True, query_chunk_size: Optional[int] = None,
                                 memory_budget: Optional[int] = None,
                                 return_candidates: Union[bool, int] = True) -> SparseAttentionResult:
    """Sparse attention whose candidates are the query's own top-k and its 4 neighbours' shifted top-k.

    Equals Huage001/DynaST ``inner_scale_dynamic_sparse_attention`` (same quirks as the inter-scale op:
    unscaled gate logits, ``scale`` divisor, top-k by attention before gating; border neighbours
    replicate the query itself; duplicate candidates are attended to as often as they occur). The
    official op materialises a ``B * N * C * 5K`` broadcast product; this one gathers candidates per chunk
    of queries and contracts them with a matrix product.

    Args:
        q: ``(B, C, Hq, Wq)``; k: ``(B, C, Hk, Wk)``; v: ``(B, Cv, Hk, Wk)``.
        topk: ``(B, Hq*Wq, K)`` long indices into the ``(Hk, Wk)`` key grid (from the previous block).
        Other arguments as :func:`inter_scale_sparse_attention`.

    Returns:
        :class:`SparseAttentionResult` with ``M = 5K`` candidates per query.

    Example:
        >>> q, k, v = torch.randn(1, 8, 5, 3), torch.randn(1, 8, 4, 4), torch.randn(1, 2, 4, 4)
        >>> r = inner_scale_sparse_attention(q, k, v, torch.randint(0, 16, (1, 15, 2)))
        >>> r.candidate_indices.shape
        torch.Size([1, 15, 10])
    """
    hq, wq = q.shape[-2:]
    hk, wk = k.shape[-2:]
    _check_inputs(q, k, v, q_gate, k_gate, warp_values, topk, "topk", hq * wq)
    _check_index_range(topk, hk * wk, "topk", (hk, wk))
    kprev = topk.shape[-1]
    top_k = kprev if top_k is None else int(top_k)
    m = 5 * kprev
    if return_topk and not 1 <= top_k <= m:
        raise ValueError(f"top_k must be in [1, {m}] (the number of candidates), got {top_k}")
    topk = topk.long()
    fn = lambda s, e: inner_scale_candidates(topk, (hq, wq), (hk, wk), s, e)  # noqa: E731
    return sparse_attention(q, k, v, fn, q_gate, k_gate, num_candidates=m, group=1, scale=scale,
                            gate_scale=gate_scale, top_k=top_k if return_topk else 0,
                            warp_values=warp_values, warp_exclude=warp_exclude,
                            query_chunk_size=query_chunk_size, memory_budget=memory_budget,
                            return_candidates=return_candidates)
