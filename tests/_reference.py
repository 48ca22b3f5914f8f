"""Naive reference implementations for the attention tests, written from the official semantics.

Slow, loop-based and independent of dynast_core's vectorised code paths.
"""
import math

import torch


def ste_gate(x):
    """Straight-through hard gate: forward (x > 0), backward sigmoid'(x); independent of dynast_core."""
    s = torch.sigmoid(x)
    return (x > 0).to(x.dtype) + (s - s.detach())


def dense_reference(q, k, v, q_gate=None, k_gate=None, scale=None, gate_scale=None, warp_values=None,
                    warp_exclude="kept"):
    b, c, hq, wq = q.shape
    scale = math.sqrt(c) if scale is None else scale
    qf, kf, vf = q.flatten(2), k.flatten(2), v.flatten(2)
    logits = torch.einsum("bci,bcj->bij", qf, kf) / scale
    attn = torch.softmax(logits, -1)
    if q_gate is not None:
        gs = q_gate.shape[1] if gate_scale is None else gate_scale
        gate = ste_gate(torch.einsum("bdi,bdj->bij", q_gate.flatten(2), k_gate.flatten(2)) / gs)
    else:
        gate = torch.ones_like(attn)
    kept = attn * gate
    out = torch.einsum("bij,bcj->bci", kept, vf).reshape(b, -1, hq, wq)
    conf = kept.sum(-1).reshape(b, 1, hq, wq)
    warped = None
    if warp_values is not None:
        sel = gate.bool() if warp_exclude == "kept" else ~gate.bool()
        wa = torch.softmax(logits.masked_fill(sel, -1e4), -1)
        warped = torch.einsum("bij,bcj->bci", wa, warp_values.flatten(2)).reshape(b, -1, hq, wq)
    return out, conf, logits, kept, warped


def inter_candidates_loop(prev_topk, q_size, k_size):
    """Per fine query: children of the parent's top-k (official order), clamped for odd sizes."""
    hq, wq = q_size
    hk, wk = k_size
    wqc, wkc = (wq + 1) // 2, (wk + 1) // 2
    b, _, kk = prev_topk.shape
    out = torch.zeros(b, hq * wq, 4 * kk, dtype=torch.long)
    for bi in range(b):
        for y in range(hq):
            for x in range(wq):
                parent = (y // 2) * wqc + (x // 2)
                cands = []
                for j in range(kk):
                    p = int(prev_topk[bi, parent, j])
                    py, px = divmod(p, wkc)
                    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                        cy, cx = min(2 * py + dy, hk - 1), min(2 * px + dx, wk - 1)
                        cands.append(cy * wk + cx)
                out[bi, y * wq + x] = torch.tensor(cands)
    return out


def inner_candidates_loop(topk, q_size, k_size):
    hq, wq = q_size
    hk, wk = k_size
    b, _, kk = topk.shape
    out = torch.zeros(b, hq * wq, 5 * kk, dtype=torch.long)
    for bi in range(b):
        for y in range(hq):
            for x in range(wq):
                cands = [int(t) for t in topk[bi, y * wq + x]]
                for (ny, nx), (sy, sx) in (((max(y - 1, 0), x), (1, 0)), ((min(y + 1, hq - 1), x), (-1, 0)),
                                           ((y, max(x - 1, 0)), (0, 1)), ((y, min(x + 1, wq - 1)), (0, -1))):
                    for t in topk[bi, ny * wq + nx]:
                        ky, kx = divmod(int(t), wk)
                        ky = min(max(ky + sy, 0), hk - 1)
                        kx = min(max(kx + sx, 0), wk - 1)
                        cands.append(ky * wk + kx)
                out[bi, y * wq + x] = torch.tensor(cands)
    return out


def restricted_reference(q, k, v, cands, q_gate=None, k_gate=None, scale=None, gate_scale=1.0,
                         top_k=None, warp_values=None, warp_exclude="kept"):
    """Dense attention restricted to per-query candidate lists (duplicates counted as often as listed)."""
    b, c, hq, wq = q.shape
    scale = math.sqrt(c) if scale is None else scale
    qf, kf, vf = q.flatten(2), k.flatten(2), v.flatten(2)
    outs, confs, tops, weights, warps = [], [], [], [], []
    for bi in range(b):
        kc = kf[bi][:, cands[bi]]                     # (C, N, M)
        logits = torch.einsum("cn,cnm->nm", qf[bi], kc) / scale
        attn = torch.softmax(logits, -1)
        if q_gate is not None:
            g = torch.einsum("dn,dnm->nm", q_gate[bi].flatten(1), k_gate[bi].flatten(1)[:, cands[bi]])
            gate = ste_gate(g / gate_scale)
        else:
            gate = torch.ones_like(attn)
        kept = attn * gate
        outs.append(torch.einsum("nm,cnm->cn", kept, vf[bi][:, cands[bi]]))
        confs.append(kept.sum(-1))
        weights.append(kept)
        if top_k:
            tops.append(cands[bi].gather(-1, torch.topk(attn, top_k, -1).indices))
        if warp_values is not None:
            sel = gate.bool() if warp_exclude == "kept" else ~gate.bool()
            wa = torch.softmax(logits.masked_fill(sel, -1e4), -1)
            warps.append(torch.einsum("nm,cnm->cn", wa, warp_values[bi].flatten(1)[:, cands[bi]]))
    out = torch.stack(outs).reshape(b, -1, hq, wq)
    conf = torch.stack(confs).reshape(b, 1, hq, wq)
    top = torch.stack(tops) if top_k else None
    warped = torch.stack(warps).reshape(b, -1, hq, wq) if warp_values is not None else None
    return out, conf, top, torch.stack(weights), warped
