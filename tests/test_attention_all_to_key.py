import pytest
import torch

from dynast_core.attention import (all_to_key_attention, distributed_attention, parameter_free_all_to_key,
                                   progressive_attention)

D64 = torch.float64


def blocks(x, region):
    """(B, C, H, W) -> (B, C, n, r) by explicit loops (raster regions, raster positions inside)."""
    b, c, h, w = x.shape
    out = []
    for by in range(h // region):
        for bx in range(w // region):
            out.append(x[:, :, by * region:(by + 1) * region, bx * region:(bx + 1) * region].reshape(b, c, -1))
    return torch.stack(out, 2)


def reference(q, k, v, region, heads, alpha=1.0, beta=0.0):
    """Direct transcription of the A2K semantics on sizes that are multiples of the region."""
    b, c, hq, wq = q.shape
    cv = v.shape[1]
    Q, K, V = blocks(q, region), blocks(k, region), blocks(v, region)
    n_q, r = Q.shape[2:]
    n_k = K.shape[2]
    Q = Q.view(b, heads, c // heads, n_q, r)
    K = K.view(b, heads, c // heads, n_k, r)
    V = V.view(b, heads, cv // heads, n_k, r)
    kc, vc = K.mean(-1), V.mean(-1)
    sim = torch.sigmoid(beta + alpha * torch.einsum("bhcx,bhcxy->bhxy", kc, K))
    ka = (torch.einsum("bhxy,bhcxy->bhcx", sim, K) + kc) / (r + 1)
    va = (torch.einsum("bhxy,bhcxy->bhcx", sim, V) + vc) / (r + 1)
    da = torch.einsum("bhyxz,bhcz->bhcxy", torch.softmax(torch.einsum("bhcxy,bhcz->bhyxz", Q, ka), -1), va)
    match = torch.einsum("bhcxy,bhczy->bhxz", Q, K).argmax(-1)
    pa = torch.zeros(b, heads, cv // heads, n_q, r, dtype=q.dtype)
    for bi in range(b):
        for hi in range(heads):
            for x in range(n_q):
                z = match[bi, hi, x]
                att = torch.softmax(Q[bi, hi, :, x].t() @ K[bi, hi, :, z], -1)      # (r, r)
                pa[bi, hi, :, x] = (att @ V[bi, hi, :, z].t()).t()

    def unblock(t):
        t = t.reshape(b, cv, n_q, r)
        out = torch.zeros(b, cv, hq, wq, dtype=q.dtype)
        i = 0
        for by in range(hq // region):
            for bx in range(wq // region):
                out[:, :, by * region:(by + 1) * region, bx * region:(bx + 1) * region] = \
                    t[:, :, i].view(b, cv, region, region)
                i += 1
        return out
    return unblock(da), unblock(pa)


def make(b=2, c=8, cv=4, hq=8, wq=12, hk=12, wk=8, dtype=D64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, hq, wq, generator=g, dtype=dtype), torch.randn(b, c, hk, wk, generator=g, dtype=dtype),
            torch.randn(b, cv, hk, wk, generator=g, dtype=dtype))


def test_matches_reference_with_different_content_and_style_sizes():
    q, k, v = make()
    ref_da, ref_pa = reference(q, k, v, region=4, heads=2, alpha=1.3, beta=0.2)
    res = all_to_key_attention(q, k, v, region=4, heads=2, sim_alpha=1.3, sim_beta=0.2)
    assert torch.allclose(res.distributed, ref_da, atol=1e-12)
    assert torch.allclose(res.progressive, ref_pa, atol=1e-12)
    assert torch.allclose(parameter_free_all_to_key(q, k, v, region=4, heads=2),
                          sum(reference(q, k, v, region=4, heads=2)), atol=1e-12)


def test_learned_alpha_beta_as_tensors_carry_gradients():
    q, k, v = make(b=1)
    alpha = torch.tensor([1.2], dtype=D64, requires_grad=True)
    beta = torch.tensor([0.1], dtype=D64, requires_grad=True)
    distributed_attention(q, k, v, region=4, heads=2, sim_alpha=alpha, sim_beta=beta).sum().backward()
    assert alpha.grad is not None and alpha.grad.abs() > 0 and beta.grad.abs() > 0


def test_separate_local_inputs_feed_only_the_progressive_part():
    q, k, v = make()
    q2, k2, v2 = make(seed=1)
    res = all_to_key_attention(q, k, v, region=4, heads=2, q_local=q2, k_local=k2, v_local=v2)
    assert torch.allclose(res.distributed, distributed_attention(q, k, v, region=4, heads=2))
    assert torch.allclose(res.progressive, progressive_attention(q2, k2, v2, region=4, heads=2))


@pytest.mark.parametrize("size", [(7, 10), (3, 3), (1, 5)])
def test_sizes_not_multiple_of_region_leave_no_border_untouched(size):
    q, k, v = make(hq=size[0], wq=size[1], hk=9, wk=6)
    res = all_to_key_attention(q, k, v, region=4, heads=2)
    for out in res:
        assert out.shape == (2, 4, *size)
        assert (out.abs().sum(1) > 1e-6).all()      # every position computed (official: zero strips)
    # the padded computation equals the reference on the explicitly padded maps, cropped
    ph, pw = (-size[0]) % 4, (-size[1]) % 4
    qp = torch.nn.functional.pad(q, (0, pw, 0, ph),
                                 mode="reflect" if ph < size[0] and pw < size[1] else "replicate")
    kp = torch.nn.functional.pad(k, (0, 2, 0, 3), mode="reflect")
    vp = torch.nn.functional.pad(v, (0, 2, 0, 3), mode="reflect")
    ref_da, ref_pa = reference(qp, kp, vp, 4, 2)
    assert torch.allclose(res.distributed, ref_da[..., :size[0], :size[1]], atol=1e-12)
    assert torch.allclose(res.progressive, ref_pa[..., :size[0], :size[1]], atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 37])
def test_chunk_invariance(chunk):
    q, k, v = make(dtype=torch.float32)
    full = all_to_key_attention(q, k, v, region=4, heads=2)
    part = all_to_key_attention(q, k, v, region=4, heads=2, query_chunk_size=chunk)
    assert torch.allclose(full.distributed, part.distributed, atol=1e-6)
    assert torch.equal(full.progressive, part.progressive) or torch.allclose(full.progressive, part.progressive,
                                                                             atol=1e-6)


def test_batch_independence():
    q, k, v = make(b=3, dtype=torch.float32)
    full = all_to_key_attention(q, k, v, region=4, heads=2)
    one = all_to_key_attention(q[1:2], k[1:2], v[1:2], region=4, heads=2)
    assert torch.allclose(full.distributed[1:2], one.distributed, atol=1e-6)
    assert torch.allclose(full.progressive[1:2], one.progressive, atol=1e-6)


def test_gradcheck():
    q, k, v = make(b=1, c=4, cv=2, hq=4, wq=4, hk=4, wk=4)
    for t in (q, k, v):
        t.requires_grad_()

    def f(q, k, v):
        r = all_to_key_attention(q, k, v, region=2, heads=2)
        return r.distributed, r.progressive
    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    q, k, v = make(dtype=torch.float32)
    ref = all_to_key_attention(q * 0.3, k * 0.3, v, region=4, heads=2)
    low = all_to_key_attention((q * 0.3).to(dtype), (k * 0.3).to(dtype), v.to(dtype), region=4, heads=2)
    assert low.distributed.dtype == dtype and low.progressive.dtype == dtype
    assert (low.distributed.float() - ref.distributed).abs().max() < 0.1


def test_errors():
    q, k, v = make()
    with pytest.raises(ValueError, match="heads"):
        all_to_key_attention(q, k, v, region=4, heads=3)
    with pytest.raises(ValueError, match="same channel count"):
        distributed_attention(q, k[:, :4], v, region=4, heads=2)
    with pytest.raises(ValueError, match="style grid"):
        progressive_attention(q, k, v[..., :3], region=4, heads=2)
    with pytest.raises(ValueError, match="region"):
        distributed_attention(q, k, v, region=0, heads=2)


def test_inference_path_equals_reference_path():
    """Without autograd the fused path runs; with it the reference path: the same function (float64), for
    head widths d != dv, a logit scale and sizes that are not multiples of the region."""
    q, k, v = make(c=8, cv=12, hq=7, wq=10, hk=9, wk=6)
    alpha, beta = torch.tensor([1.3], dtype=D64), torch.tensor([0.2], dtype=D64)
    with torch.no_grad():
        fast = all_to_key_attention(q, k, v, region=4, heads=2, sim_alpha=alpha, sim_beta=beta, scale=0.7)
    ref = all_to_key_attention(q.clone().requires_grad_(), k, v, region=4, heads=2, sim_alpha=alpha,
                               sim_beta=beta, scale=0.7)
    assert ref.distributed.requires_grad and not fast.distributed.requires_grad
    for a, b in zip(fast, ref):
        assert a.shape == (2, 12, 7, 10)
        assert torch.allclose(a, b.detach(), atol=1e-12)


def test_inference_path_picks_the_same_regions_in_float32():
    """The progressive match is the reference path's product of the same rows: same regions, so the two paths
    agree to rounding (a different region would differ by O(1))."""
    q, k, v = make(b=1, c=16, cv=16, hq=24, wq=32, hk=32, wk=24, dtype=torch.float32, seed=3)
    with torch.no_grad():
        fast = progressive_attention(q, k, v, region=4, heads=4)
    ref = progressive_attention(q.clone().requires_grad_(), k, v, region=4, heads=4).detach()
    assert (fast - ref).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["random", "large_logits", "constant_style"])
def test_half_precision_close_to_float32(dtype, case):
    """float16/bfloat16 inputs: logits, softmax, region choice and aggregation run in float32 inside, so the
    result is finite and close to the float32 result on the same (rounded) inputs, also where the logits
    exceed the float16 range (|logit| ~ 1e5 here: float16 logits would be inf) or the style is constant
    (zero variance). Measured over 5 seeds, max |diff| / max |v|: float16 <= 4.2e-4 in every case; bfloat16
    <= 2.9e-3 (random, constant); with the huge logits the aggregated keys' bfloat16 rounding (relative 2^-9,
    i.e. logit errors of ~100) flips near-tied softmax weights at a few positions: max 0.064, mean <= 1.8e-4.
    """
    q, k, v = make(b=1, c=16, cv=8, hq=12, wq=20, hk=16, wk=8, dtype=torch.float32, seed=5)
    if case == "large_logits":
        q, k = q * 70, k * 70
    elif case == "constant_style":
        k, v = torch.full_like(k, 0.5), torch.full_like(v, -0.25)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    alpha = torch.nn.Parameter(torch.tensor([1.3]))          # a float32 parameter left beside half inputs
    beta = torch.nn.Parameter(torch.tensor([0.1]))
    with torch.no_grad():
        ref = all_to_key_attention(q.float(), k.float(), v.float(), region=4, heads=2, sim_alpha=alpha,
                                   sim_beta=beta)
        low = all_to_key_attention(q, k, v, region=4, heads=2, sim_alpha=alpha, sim_beta=beta)
    # the reference (autograd) path keeps the same precision contract
    grad = all_to_key_attention(q.clone().requires_grad_(), k, v, region=4, heads=2, sim_alpha=alpha,
                                sim_beta=beta)
    scale = v.float().abs().max().item()
    for result in (low, grad):
        for a, b in zip(result, ref):
            err = (a.detach().float() - b).abs()
            assert a.dtype == dtype and torch.isfinite(a).all()
            if dtype == torch.bfloat16 and case == "large_logits":
                assert err.mean() <= 1e-3 * scale
            else:
                assert err.max() <= (1e-3 if dtype == torch.float16 else 6e-3) * scale
