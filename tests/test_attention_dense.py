import math

import pytest
import torch

from _reference import dense_reference
from dynast_core.attention import dynamic_attention, hard_gate

D64 = torch.float64


def make(b=2, c=6, d=3, cv=4, hq=5, wq=4, hk=3, wk=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(q=r(b, c, hq, wq), k=r(b, c, hk, wk), v=r(b, cv, hk, wk), q_gate=r(b, d, hq, wq),
                k_gate=r(b, d, hk, wk), warp=r(b, 2, hk, wk))


@pytest.mark.parametrize("path", ["inference", "autograd"])
@pytest.mark.parametrize("exclude", ["kept", "pruned"])
def test_matches_naive_reference_non_square(exclude, path):
    # "inference": no input needs a gradient (the fused path); "autograd": q does
    t = make(dtype=D64)
    if path == "autograd":
        t["q"].requires_grad_()
    res = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"], top_k=3,
                            warp_values=t["warp"], warp_exclude=exclude, return_scores=True)
    out, conf, logits, kept, warped = dense_reference(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"],
                                                      warp_values=t["warp"], warp_exclude=exclude)
    assert torch.allclose(res.output, out, atol=1e-12)
    assert torch.allclose(res.confidence, conf, atol=1e-12)
    assert torch.allclose(res.scores, logits, atol=1e-12)
    assert torch.allclose(res.warped, warped, atol=1e-12)
    top = torch.topk(logits, 3, -1).indices
    assert torch.equal(res.topk_indices, top)
    assert torch.allclose(res.topk_weights, kept.gather(-1, top))
    # some keys were pruned, so the confidence is below one somewhere and the output is not plain softmax
    assert float(conf.detach().min()) < 0.9


def test_without_gate_confidence_is_one_and_scale_default_is_sqrt_c():
    t = make(dtype=D64)
    res = dynamic_attention(t["q"], t["k"], t["v"], top_k=0)
    assert torch.allclose(res.confidence, torch.ones_like(res.confidence))
    assert res.topk_indices is None
    explicit = dynamic_attention(t["q"], t["k"], t["v"], scale=math.sqrt(6), top_k=0)
    assert torch.allclose(res.output, explicit.output)
    other = dynamic_attention(t["q"], t["k"], t["v"], scale=0.5, top_k=0)
    assert not torch.allclose(res.output, other.output)


def test_channels_last_inputs_and_zero_value_channels():
    t = make(dtype=D64)
    cl = {n: x.contiguous(memory_format=torch.channels_last) for n, x in t.items()}
    a = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"], top_k=2)
    b = dynamic_attention(cl["q"], cl["k"], cl["v"], cl["q_gate"], cl["k_gate"], top_k=2)
    assert torch.allclose(a.output, b.output, atol=1e-12) and torch.equal(a.topk_indices, b.topk_indices)
    # no values (weight-free matching wants only the weights): an empty output, the same weights
    none = dynamic_attention(t["q"], t["k"], t["v"][:, :0], t["q_gate"], t["k_gate"], top_k=2)
    assert none.output.shape == (2, 0, 5, 4)
    assert torch.equal(none.topk_weights, a.topk_weights) and torch.equal(none.confidence, a.confidence)


@pytest.mark.parametrize("chunk", [1, 7, 19])
def test_chunk_invariance(chunk):
    t = make()
    full = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"], top_k=4, warp_values=t["warp"])
    part = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"], top_k=4, warp_values=t["warp"],
                             query_chunk_size=chunk)
    assert torch.allclose(full.output, part.output, atol=1e-6)
    assert torch.allclose(full.confidence, part.confidence, atol=1e-6)
    assert torch.equal(full.topk_indices, part.topk_indices)
    # a tiny memory budget forces chunks of one query and gives the same answer
    tiny = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"], top_k=4, memory_budget=1)
    assert torch.allclose(full.output, tiny.output, atol=1e-6)


def test_batch_independence():
    t = make(b=3)
    res = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"])
    one = dynamic_attention(t["q"][1:2], t["k"][1:2], t["v"][1:2], t["q_gate"][1:2], t["k_gate"][1:2])
    assert torch.allclose(res.output[1:2], one.output, atol=1e-6)
    assert torch.equal(res.topk_indices[1:2], one.topk_indices)


def test_gradcheck_softmax_path():
    t = make(b=1, c=3, d=2, cv=2, hq=2, wq=3, hk=3, wk=2, dtype=D64)
    q, k, v = (t[n].requires_grad_() for n in ("q", "k", "v"))
    qg, kg = t["q_gate"], t["k_gate"]          # the hard gate is piecewise constant: no gradcheck there

    def f(q, k, v):
        r = dynamic_attention(q, k, v, qg, kg, top_k=1)
        return r.output, r.confidence
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_gate_surrogate_gradient_matches_straight_through_reference():
    t = make(dtype=D64)
    for name in ("q", "k", "v", "q_gate", "k_gate"):
        t[name].requires_grad_()
    res = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"], top_k=0)
    w = torch.randn_like(res.output)
    g1 = torch.autograd.grad((res.output * w).sum() + res.confidence.sum(), [t["q_gate"], t["k_gate"]])
    out, conf, *_ = dense_reference(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"])
    g2 = torch.autograd.grad((out * w).sum() + conf.sum(), [t["q_gate"], t["k_gate"]])
    assert g1[0].abs().sum() > 0
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10)
    # the dense unit divides gate logits by the gate width: the surrogate gradient depends on it
    res1 = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"], top_k=0, gate_scale=1.0)
    assert torch.allclose(res1.output, res.output)
    g3 = torch.autograd.grad((res1.output * w).sum() + res1.confidence.sum(), [t["q_gate"]])
    assert not torch.allclose(g3[0], g1[0])


def test_hard_gate_forward_and_backward():
    x = torch.tensor([-2.0, -0.0, 0.0, 0.5, 3.0], dtype=D64, requires_grad=True)
    y = hard_gate(x)
    assert y.tolist() == [0, 0, 0, 1, 1]
    y.backward(torch.ones_like(y))
    s = torch.sigmoid(x.detach())
    assert torch.allclose(x.grad, s * (1 - s))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_dtype_and_is_close(dtype):
    t = make(c=8)
    ref = dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"])
    low = dynamic_attention(*(t[n].to(dtype) for n in ("q", "k", "v", "q_gate", "k_gate")))
    assert low.output.dtype == dtype and low.confidence.dtype == dtype
    tol = 0.05 if dtype == torch.float16 else 0.15
    assert (low.output.float() - ref.output).abs().max() < tol


def test_errors_say_what_is_wrong():
    t = make()
    with pytest.raises(ValueError, match="same channel count"):
        dynamic_attention(t["q"], t["k"][:, :3], t["v"])
    with pytest.raises(ValueError, match="batch sizes"):
        dynamic_attention(t["q"], t["k"][:1], t["v"][:1])
    with pytest.raises(ValueError, match="both q_gate and k_gate"):
        dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"])
    with pytest.raises(ValueError, match="top_k"):
        dynamic_attention(t["q"], t["k"], t["v"], top_k=1000)
    with pytest.raises(ValueError, match="warp_exclude"):
        dynamic_attention(t["q"], t["k"], t["v"], t["q_gate"], t["k_gate"], warp_values=t["warp"],
                          warp_exclude="nope")
    with pytest.raises(ValueError, match=r"\(B,C,Hq,Wq\)"):
        dynamic_attention(t["q"][0], t["k"], t["v"])
    with pytest.raises(ValueError, match="key grid"):
        dynamic_attention(t["q"], t["k"], t["v"][..., :2])


def test_cancel_check_stops_a_run_between_chunks():
    from dynast_core.attention._common import set_cancel_check

    class Cancelled(BaseException):
        pass
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled()
    set_cancel_check(check)
    try:
        with pytest.raises(Cancelled):
            dynamic_attention(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8),
                              query_chunk_size=8)
    finally:
        set_cancel_check(None)
    assert len(calls) == 3
    dynamic_attention(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8))
