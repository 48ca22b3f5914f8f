"""Dense dynamic attention: DynaST's dynamic attention unit at the coarsest scale.

Each query attends with softmax to every key; a learned pruning gate then drops keys per query. The kept
attention is *not* renormalised: its sum per query is the confidence, and DynaST fills the missing mass
with a SPADE branch (``attn_out + (1 - confidence) * spade(q) + q``).

Inference (no tensor needs a gradient) takes a path with fewer passes over the ``chunk x Nk`` score block:
in-place scaling, the gate as a boolean mask (the sign of the gate logits), in-place gating; the row tables
are views of channels-last inputs. Precision: logits, softmax and the gate in float32 for float16/bfloat16
inputs (on the CPU the matrix products too: it has no fast half-precision matmul); results in the input dtype.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ._common import check_same, check_shape, chunk_ranges, resolve_chunk_size
from .gate import hard_gate
from ._inference import needs_autograd, rows_of, work_dtype

__all__ = ["DenseAttentionResult", "dynamic_attention", "warp_exclusion_fill"]


class DenseAttentionResult(NamedTuple):
    """What :func:`dynamic_attention` returns.

    Attributes:
        output: ``(B, Cv, Hq, Wq)`` gated attention output.
        confidence: ``(B, 1, Hq, Wq)`` sum of the kept attention weights per query, in ``[0, 1]``.
        topk_indices: ``(B, Hq*Wq, K)`` flat indices into the ``(Hk, Wk)`` key grid of the K largest
            logits per query (the candidates handed to the next, sparse scale), or None when ``top_k=0``.
        topk_weights: ``(B, Hq*Wq, K)`` gated attention weights of those keys, or None.
        warped: ``(B, Cw, Hq, Wq)`` the warp branch (see ``warp_values``), or None.
        scores: ``(B, Hq*Wq, Hk*Wk)`` scaled logits when ``return_scores=True``, else None.
    """

    output: torch.Tensor
    confidence: torch.Tensor
    topk_indices: Optional[torch.Tensor]
    topk_weights: Optional[torch.Tensor]
    warped: Optional[torch.Tensor]
    scores: Optional[torch.Tensor]


def warp_exclusion_fill(logits: torch.Tensor, gate: torch.Tensor, warp_exclude: str) -> torch.Tensor:
    """Logits of the warp branch: the excluded keys are filled with -1e4 before the softmax.

    ``warp_exclude="kept"`` reproduces the official code, which fills the positions the gate *keeps*
    (``masked_fill(cor, mask.bool(), -1e4)``), so the warped exemplar is drawn from the pruned keys.
    ``"pruned"`` fills the pruned positions instead (the warp then uses the kept keys).
    """
    if warp_exclude == "kept":
        return logits.masked_fill(gate.bool(), -1e4)
    if warp_exclude == "pruned":
        return logits.masked_fill(~gate.bool(), -1e4)
    raise ValueError(f"warp_exclude must be 'kept' (official) or 'pruned', got {warp_exclude!r}")


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def dynamic_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      q_gate: Optional[torch.Tensor] = None, k_gate: Optional[torch.Tensor] = None, *,
                      scale: Optional[float] = None, gate_scale: Optional[float] = None, top_k: int = 4,
                      warp_values: Optional[torch.Tensor] = None, warp_exclude: str = "kept",
                      return_scores: bool = False, query_chunk_size: Optional[int] = None,
                      memory_budget: Optional[int] = None) -> DenseAttentionResult:
    r"""Dense softmax attention with DynaST's learned pruning gate.

    For query ``i`` and key ``j``: ``a_ij = softmax_j(q_i . k_j / scale)``, gate
    ``m_ij = [q_gate_i . k_gate_j / gate_scale > 0]`` (sigmoid surrogate gradient), output
    ``sum_j a_ij m_ij v_j`` and confidence ``sum_j a_ij m_ij``. Without gates every key is kept.

    Official quirks reproduced (Huage001/DynaST ``dynamic_attention``):

    * ``scale`` defaults to ``sqrt(C)``: the dense blocks are built with ``smooth=None``, while the sparse
      blocks use the configured smoothing constant (0.01).
    * the gate logits are divided by the number of gate channels here (``gate_scale`` default), but not in
      the sparse operators. The sign, hence the forward pass, is unchanged; the surrogate gradient differs.
    * the kept attention is not renormalised.
    * ``top_k`` candidates are the largest logits (the generator's ``torch.topk(cross_cor_map)``).

    Queries are processed in chunks (``query_chunk_size`` or ``memory_budget``); peak working memory is
    ``O(chunk * Hk * Wk)`` instead of ``O(Hq * Wq * Hk * Wk)`` unless ``return_scores`` asks for the map.
    Query and key grids may differ in size and aspect.

    Args:
        q: ``(B, C, Hq, Wq)`` projected queries.
        k: ``(B, C, Hk, Wk)`` projected keys.
        v: ``(B, Cv, Hk, Wk)`` values.
        q_gate: ``(B, D, Hq, Wq)`` query gate embedding, or None (no pruning).
        k_gate: ``(B, D, Hk, Wk)`` key gate embedding, or None.
        scale: divisor of the logits (DynaST's ``smooth``); default ``sqrt(C)``.
        gate_scale: divisor of the gate logits; default ``D``.
        top_k: number of candidates to return per query (0 for none).
        warp_values: ``(B, Cw, Hk, Wk)`` optional values of the warp branch used by the training loss:
            ``softmax(fill(logits)) @ warp_values`` where ``fill`` is :func:`warp_exclusion_fill`.
        warp_exclude: which keys the warp branch excludes, ``"kept"`` (official) or ``"pruned"``.
        return_scores: also return the full ``(B, Nq, Nk)`` logits (quadratic memory).
        query_chunk_size: queries per chunk.
        memory_budget: bytes of working memory per chunk when no chunk size is given.

    Returns:
        :class:`DenseAttentionResult`.

    Example:
        >>> q, k = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
        >>> v = torch.randn(1, 3, 4, 4)
        >>> r = dynamic_attention(q, k, v, top_k=2)
        >>> r.output.shape, r.confidence.shape, r.topk_indices.shape
        (torch.Size([1, 3, 4, 4]), torch.Size([1, 1, 4, 4]), torch.Size([1, 16, 2]))
    """
    check_shape(q, "B,C,Hq,Wq", "q")
    check_shape(k, "B,C,Hk,Wk", "k")
    check_shape(v, "B,Cv,Hk,Wk", "v")
    b, c, hq, wq = q.shape
    hk, wk = k.shape[-2:]
    check_same([("q", b), ("k", k.shape[0]), ("v", v.shape[0])], "batch sizes of q, k, v")
    if k.shape[1] != c:
        raise ValueError(f"q and k must have the same channel count, got q {tuple(q.shape)} and "
                         f"k {tuple(k.shape)}")
    if v.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"v must lie on the key grid {hk}x{wk}, got v {tuple(v.shape)}")
    if (q_gate is None) != (k_gate is None):
        raise ValueError("give both q_gate and k_gate, or neither (no pruning)")
    if q_gate is not None:
        check_shape(q_gate, "B,D,Hq,Wq", "q_gate")
        check_shape(k_gate, "B,D,Hk,Wk", "k_gate")
        if q_gate.shape[0] != b or q_gate.shape[-2:] != q.shape[-2:]:
            raise ValueError(f"q_gate must be (B, D, {hq}, {wq}) like q, got {tuple(q_gate.shape)}")
        if k_gate.shape[0] != b or k_gate.shape[-2:] != k.shape[-2:] or k_gate.shape[1] != q_gate.shape[1]:
            raise ValueError(f"k_gate must be (B, {q_gate.shape[1]}, {hk}, {wk}), got {tuple(k_gate.shape)}")
    if warp_values is not None:
        check_shape(warp_values, "B,Cw,Hk,Wk", "warp_values")
        if warp_values.shape[0] != b or warp_values.shape[-2:] != k.shape[-2:]:
            raise ValueError(f"warp_values must be (B, Cw, {hk}, {wk}), got {tuple(warp_values.shape)}")
    nq, nk = hq * wq, hk * wk
    top_k = int(top_k)
    if top_k < 0 or top_k > nk:
        raise ValueError(f"top_k must be in [0, {nk}] (the number of keys), got {top_k}")
    if scale is None:
        scale = math.sqrt(c)
    if q_gate is not None and gate_scale is None:
        gate_scale = float(q_gate.shape[1])

    if not needs_autograd(q, k, v, q_gate, k_gate, warp_values):
        return _inference(q, k, v, q_gate, k_gate, scale, gate_scale, top_k, warp_values, warp_exclude,
                          return_scores, query_chunk_size, memory_budget)

    work = work_dtype(q)
    qf, kt, vf = _flatten(q), k.flatten(2), _flatten(v)
    qgf = _flatten(q_gate) if q_gate is not None else None
    kgt = k_gate.flatten(2) if k_gate is not None else None
    wvf = _flatten(warp_values) if warp_values is not None else None

    # logits, softmax, gate, gated product and (warp branch) a second softmax per key
    per_query = b * nk * q.element_size() * (6 if warp_values is not None else 4)
    chunk = resolve_chunk_size(nq, per_query, query_chunk_size, memory_budget)

    outs, confs, idxs, wts, warps, scores = [], [], [], [], [], []
    for s, e in chunk_ranges(nq, chunk):
        logits = torch.bmm(qf[:, s:e], kt).to(work) / scale
        attn = torch.softmax(logits, dim=-1)
        if qgf is not None:
            gate = hard_gate(torch.bmm(qgf[:, s:e], kgt).to(work) / gate_scale)
            kept = attn * gate
        else:
            gate = None
            kept = attn
        outs.append(torch.bmm(kept.to(vf.dtype), vf))
        confs.append(kept.sum(-1).to(q.dtype))
        if top_k:
            _, idx = torch.topk(logits, top_k, dim=-1)
            idxs.append(idx)
            wts.append(kept.gather(-1, idx).to(q.dtype))
        if wvf is not None:
            fill = gate if gate is not None else torch.ones_like(logits)
            warps.append(torch.bmm(torch.softmax(warp_exclusion_fill(logits, fill, warp_exclude), -1).to(wvf.dtype),
                                   wvf))
        if return_scores:
            scores.append(logits)

    output = torch.cat(outs, 1).transpose(1, 2).reshape(b, v.shape[1], hq, wq)
    confidence = torch.cat(confs, 1).reshape(b, 1, hq, wq)
    topk_indices = torch.cat(idxs, 1) if top_k else None
    topk_weights = torch.cat(wts, 1) if top_k else None
    warped = None
    if wvf is not None:
        warped = torch.cat(warps, 1).transpose(1, 2).reshape(b, warp_values.shape[1], hq, wq)
    return DenseAttentionResult(output, confidence, topk_indices, topk_weights, warped,
                                torch.cat(scores, 1) if return_scores else None)


def _inference(q, k, v, q_gate, k_gate, scale, gate_scale, top_k, warp_values, warp_exclude, return_scores,
               query_chunk_size, memory_budget) -> DenseAttentionResult:
    """The no-autograd path of :func:`dynamic_attention` (same arguments, already checked)."""
    b, c, hq, wq = q.shape
    hk, wk = k.shape[-2:]
    nq, nk = hq * wq, hk * wk
    dev, work = q.device, work_dtype(q)
    # the CPU has no fast half-precision matmul: the products run in float32 there (they are exact enough
    # and 30-50x faster); elsewhere they stay in the input dtype and their results are upcast
    mm = work if dev.type == "cpu" else q.dtype
    qf = rows_of(q, mm)
    kt = rows_of(k, mm).transpose(1, 2)
    vf = rows_of(v, mm)
    gated = q_gate is not None
    if gated:
        qgf = rows_of(q_gate, mm)
        kgt = rows_of(k_gate, mm).transpose(1, 2)
    wvf = rows_of(warp_values, mm) if warp_values is not None else None
    # logits, weights (work dtype), the boolean gate and a gate-logit block, per query
    per_query = b * nk * (2 * torch.finfo(work).bits // 8 + 1 + torch.finfo(mm).bits // 8 * gated
                          + (torch.finfo(work).bits // 4 if wvf is not None else 0))
    chunk = resolve_chunk_size(nq, per_query, query_chunk_size, memory_budget)
    outs, confs, idxs, wts, warps, scores = [], [], [], [], [], []
    for s, e in chunk_ranges(nq, chunk):
        logits = torch.bmm(qf[:, s:e], kt).to(work).div_(scale)
        attn = torch.softmax(logits, dim=-1)
        gate = None
        if gated:
            gate = torch.bmm(qgf[:, s:e], kgt).to(work).div_(gate_scale) > 0
            attn.mul_(gate)
        outs.append(torch.bmm(attn.to(mm), vf))
        confs.append(attn.sum(-1))
        if top_k:
            idx = torch.topk(logits, top_k, dim=-1).indices
            idxs.append(idx)
            wts.append(attn.gather(-1, idx))
        del attn
        if wvf is not None:
            fill = gate if gate is not None else torch.ones_like(logits, dtype=torch.bool)
            warp_attn = torch.softmax(warp_exclusion_fill(logits, fill, warp_exclude), -1)
            warps.append(torch.bmm(warp_attn.to(mm), wvf))
        if return_scores:
            scores.append(logits)

    def joined(parts, dtype=None):       # one chunk: no copy
        x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return x if dtype is None else x.to(dtype)

    def grid(x):                          # (B, Nq, X) rows -> (B, X, Hq, Wq) channels-last view
        return x.view(b, hq, wq, x.shape[-1]).permute(0, 3, 1, 2)

    return DenseAttentionResult(grid(joined(outs, v.dtype)), joined(confs, q.dtype).view(b, 1, hq, wq),
                                joined(idxs) if top_k else None, joined(wts, q.dtype) if top_k else None,
                                grid(joined(warps, warp_values.dtype)) if warps else None,
                                joined(scores) if return_scores else None)
