import pytest
import torch

from _reference import (inner_candidates_loop, inter_candidates_loop, restricted_reference)
from dynast_core.attention import (inner_scale_candidates, inner_scale_sparse_attention,
                                   inter_scale_sparse_attention)

D64 = torch.float64


def rand(g, *s, dtype=torch.float32):
    return torch.randn(*s, generator=g, dtype=dtype)


def setup(b=2, c=6, d=3, cv=4, hq=6, wq=8, hk=6, wk=4, k=2, dtype=torch.float32, seed=0, inter=True):
    g = torch.Generator().manual_seed(seed)
    t = dict(q=rand(g, b, c, hq, wq, dtype=dtype), k=rand(g, b, c, hk, wk, dtype=dtype),
             v=rand(g, b, cv, hk, wk, dtype=dtype), q_gate=rand(g, b, d, hq, wq, dtype=dtype),
             k_gate=rand(g, b, d, hk, wk, dtype=dtype), warp=rand(g, b, 3, hk, wk, dtype=dtype))
    if inter:
        nq = ((hq + 1) // 2) * ((wq + 1) // 2)
        nk = ((hk + 1) // 2) * ((wk + 1) // 2)
    else:
        nq, nk = hq * wq, hk * wk
    t["topk"] = torch.randint(0, nk, (b, nq, k), generator=g)
    return t


@pytest.mark.parametrize("path", ["inference", "autograd"])
@pytest.mark.parametrize("sizes", [((6, 8), (6, 4)), ((5, 7), (3, 5)), ((4, 4), (8, 2))])
def test_inter_scale_equals_dense_restricted_to_children(sizes, path):
    # "inference": no input needs a gradient (the fused CPU path); "autograd": q does (the gather path)
    (hq, wq), (hk, wk) = sizes
    t = setup(hq=hq, wq=wq, hk=hk, wk=wk, dtype=D64)
    if path == "autograd":
        t["q"].requires_grad_()
    res = inter_scale_sparse_attention(t["q"], t["k"], t["v"], t["topk"], t["q_gate"], t["k_gate"],
                                       scale=0.5, warp_values=t["warp"])
    cands = inter_candidates_loop(t["topk"], (hq, wq), (hk, wk))
    assert torch.equal(res.candidate_indices, cands)
    out, conf, top, weights, warped = restricted_reference(
        t["q"], t["k"], t["v"], cands, t["q_gate"], t["k_gate"], scale=0.5, top_k=2, warp_values=t["warp"])
    assert torch.allclose(res.output, out, atol=1e-12)
    assert torch.allclose(res.confidence, conf, atol=1e-12)
    assert torch.allclose(res.candidate_weights, weights, atol=1e-12)
    assert torch.allclose(res.warped, warped, atol=1e-12)
    assert torch.equal(res.topk_indices, top)
    assert float(conf.detach().min()) < 0.9   # the gate pruned something


@pytest.mark.parametrize("path", ["inference", "autograd"])
@pytest.mark.parametrize("sizes", [((6, 8), (6, 4)), ((5, 3), (4, 7)), ((1, 1), (2, 2))])
def test_inner_scale_equals_dense_restricted_to_neighbourhood(sizes, path):
    (hq, wq), (hk, wk) = sizes
    t = setup(hq=hq, wq=wq, hk=hk, wk=wk, dtype=D64, inter=False, k=3)
    if path == "autograd":
        t["q"].requires_grad_()
    res = inner_scale_sparse_attention(t["q"], t["k"], t["v"], t["topk"], t["q_gate"], t["k_gate"],
                                       scale=0.7, warp_values=t["warp"], warp_exclude="pruned")
    cands = inner_candidates_loop(t["topk"], (hq, wq), (hk, wk))
    assert torch.equal(res.candidate_indices, cands)
    assert torch.equal(inner_scale_candidates(t["topk"], (hq, wq), (hk, wk)), cands)
    out, conf, top, weights, warped = restricted_reference(
        t["q"], t["k"], t["v"], cands, t["q_gate"], t["k_gate"], scale=0.7, top_k=3, warp_values=t["warp"],
        warp_exclude="pruned")
    assert torch.allclose(res.output, out, atol=1e-12)
    assert torch.allclose(res.confidence, conf, atol=1e-12)
    assert torch.allclose(res.warped, warped, atol=1e-12)
    assert torch.equal(res.topk_indices, top)


@pytest.mark.parametrize("op", ["inter", "inner"])
def test_channels_last_zero_values_and_compact_candidates(op):
    t = setup(inter=op == "inter", dtype=D64)
    fn = inter_scale_sparse_attention if op == "inter" else inner_scale_sparse_attention
    args = [t["q"], t["k"], t["v"], t["topk"], t["q_gate"], t["k_gate"]]
    full = fn(*args, scale=0.3)
    cl = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in args]
    other = fn(*cl, scale=0.3)
    assert torch.allclose(full.output, other.output, atol=1e-12)
    assert torch.equal(full.topk_indices, other.topk_indices)
    # zero value channels: only the weights (weight-free matching)
    args[2] = t["v"][:, :0]
    none = fn(*args, scale=0.3)
    assert none.output.shape[1] == 0 and torch.allclose(none.candidate_weights, full.candidate_weights, atol=1e-15)
    # an integer return_candidates keeps the n largest gated weights per query, largest first
    best = fn(*args, scale=0.3, return_candidates=2)
    w, j = torch.topk(full.candidate_weights, 2, dim=-1)
    assert torch.allclose(best.candidate_weights, w, atol=1e-15)
    assert torch.equal(best.candidate_indices, full.candidate_indices.gather(-1, j))


def test_duplicate_candidates_are_counted_as_often_as_listed():
    # every query's top-k is the same key: all 5K candidates of an interior query are that key or its
    # shifted neighbours; with identical keys everywhere, weights are uniform over the listed entries
    b, c, h, w = 1, 4, 4, 4
    q = torch.randn(b, c, h, w, dtype=D64)
    k = torch.ones(b, c, h, w, dtype=D64)
    v = torch.arange(h * w, dtype=D64).view(1, 1, h, w)
    topk = torch.full((1, h * w, 2), 5)          # key (1, 1), listed twice
    res = inner_scale_sparse_attention(q, k, v, topk)
    assert torch.allclose(res.candidate_weights, torch.full_like(res.candidate_weights, 0.1))
    # query (1, 1): candidates 5,5 (own), 9,9 (from above, shifted down), 1,1, 6,6, 4,4
    expected = (5 * 2 + 9 * 2 + 1 * 2 + 6 * 2 + 4 * 2) / 10
    assert float(res.output[0, 0, 1, 1]) == pytest.approx(expected)


@pytest.mark.parametrize("op", ["inter", "inner"])
def test_chunked_equals_unchunked_bit_for_bit(op):
    t = setup(inter=op == "inter", hq=7, wq=6, hk=6, wk=6)
    fn = inter_scale_sparse_attention if op == "inter" else inner_scale_sparse_attention
    args = (t["q"], t["k"], t["v"], t["topk"], t["q_gate"], t["k_gate"])
    full = fn(*args, scale=0.01, warp_values=t["warp"])
    for chunk in (1, 5, 13):
        part = fn(*args, scale=0.01, warp_values=t["warp"], query_chunk_size=chunk)
        for name in ("output", "confidence", "topk_indices", "candidate_indices", "candidate_weights", "warped"):
            assert torch.equal(getattr(full, name), getattr(part, name)), (chunk, name)
    tiny = fn(*args, scale=0.01, memory_budget=1)
    assert torch.equal(full.output, tiny.output)


@pytest.mark.parametrize("op", ["inter", "inner"])
def test_batch_independence(op):
    t = setup(b=3, inter=op == "inter")
    fn = inter_scale_sparse_attention if op == "inter" else inner_scale_sparse_attention
    full = fn(t["q"], t["k"], t["v"], t["topk"], t["q_gate"], t["k_gate"])
    one = fn(t["q"][2:], t["k"][2:], t["v"][2:], t["topk"][2:], t["q_gate"][2:], t["k_gate"][2:])
    assert torch.equal(full.output[2:], one.output)
    assert torch.equal(full.topk_indices[2:], one.topk_indices)


@pytest.mark.parametrize("op", ["inter", "inner"])
def test_gradcheck(op):
    t = setup(b=1, c=3, cv=2, hq=4, wq=2, hk=2, wk=4, dtype=D64, inter=op == "inter")
    fn = inter_scale_sparse_attention if op == "inter" else inner_scale_sparse_attention
    q, k, v = (t[n].requires_grad_() for n in ("q", "k", "v"))

    def f(q, k, v):
        r = fn(q, k, v, t["topk"], t["q_gate"], t["k_gate"], scale=0.9)
        return r.output, r.confidence
    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("op", ["inter", "inner"])
def test_gate_surrogate_gradient(op):
    t = setup(dtype=D64, inter=op == "inter")
    fn = inter_scale_sparse_attention if op == "inter" else inner_scale_sparse_attention
    for n in ("q_gate", "k_gate"):
        t[n].requires_grad_()
    res = fn(t["q"], t["k"], t["v"], t["topk"], t["q_gate"], t["k_gate"])
    w = torch.randn_like(res.output)
    g1 = torch.autograd.grad((res.output * w).sum(), [t["q_gate"], t["k_gate"]])
    out, *_ = restricted_reference(t["q"], t["k"], t["v"], res.candidate_indices, t["q_gate"], t["k_gate"])
    g2 = torch.autograd.grad((out * w).sum(), [t["q_gate"], t["k_gate"]])
    assert g1[0].abs().sum() > 0
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10)


def test_large_grids_never_allocate_nq_by_nk():
    # 256x256 queries against 256x256 keys: a dense score map would need 4.3e9 floats (17 GB).
    g = torch.Generator().manual_seed(0)
    h = w = 256
    q, k, v = rand(g, 1, 4, h, w), rand(g, 1, 4, h, w), rand(g, 1, 2, h, w)
    topk = torch.randint(0, h * w, (1, h * w, 2), generator=g)
    res = inner_scale_sparse_attention(q, k, v, topk, query_chunk_size=8192)
    assert res.output.shape == (1, 2, h, w)
    assert torch.isfinite(res.output).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    t = setup(inter=False, c=8)
    ref = inner_scale_sparse_attention(t["q"], t["k"], t["v"], t["topk"], t["q_gate"], t["k_gate"])
    low = inner_scale_sparse_attention(*(t[n].to(dtype) for n in ("q", "k", "v")), t["topk"],
                                       t["q_gate"].to(dtype), t["k_gate"].to(dtype))
    assert low.output.dtype == dtype and low.candidate_weights.dtype == dtype
    assert (low.output.float() - ref.output).abs().max() < 0.15


def test_errors():
    t = setup(inter=False)
    with pytest.raises(ValueError, match="rows"):
        inner_scale_sparse_attention(t["q"], t["k"], t["v"], t["topk"][:, :5])
    bad = t["topk"].clone()
    bad[0, 0, 0] = 10_000
    with pytest.raises(ValueError, match="outside the 6x4 key grid"):
        inner_scale_sparse_attention(t["q"], t["k"], t["v"], bad)
    with pytest.raises(ValueError, match="integer"):
        inner_scale_sparse_attention(t["q"], t["k"], t["v"], t["topk"].float())
    with pytest.raises(ValueError, match="top_k"):
        inner_scale_sparse_attention(t["q"], t["k"], t["v"], t["topk"], top_k=11)
    ti = setup(inter=True)
    with pytest.raises(ValueError, match="rows"):
        inter_scale_sparse_attention(ti["q"], ti["k"], ti["v"], ti["topk"][:, :-1])
    # no top-k requested: none returned (the last block of the cascade)
    r = inner_scale_sparse_attention(t["q"], t["k"], t["v"], t["topk"], return_topk=False)
    assert r.topk_indices is None
