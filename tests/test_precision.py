"""The precision contract: float16/bfloat16 inputs run, stay finite, return their dtype and stay close to
float32. Attention logits (scaled by 1/T or 1/smooth = 100), softmax, gates, norms and statistics are computed
in float32 inside; the cases that overflowed or divided by a zero eps in half precision are here.

Tolerances are the measured errors with some margin (CPU, these seeds); sizes are tiny because this CPU has
no native half-precision arithmetic (30-50x slower than float32)."""
import pytest
import torch

from dynast_core.attention import dynamic_attention, inner_scale_sparse_attention, inter_scale_sparse_attention
from dynast_core.models.blocks import feature_normalize, instance_norm2d, positional_norm2d
from dynast_core.models.dynast import DynaSTConfig, DynaSTGenerator, load_dynast
from dynast_core.weightfree import match_images, match_layouts

HALF = [torch.float16, torch.bfloat16]


def _qkv(c=16, h=8, w=8, d=4, cv=6, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * scale  # noqa: E731
    return r(1, c, h, w), r(1, c, h, w), r(1, cv, h, w), r(1, d, h, w), r(1, d, h, w)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("grad", [False, True])
def test_dense_attention_half(dtype, grad):
    q, k, v, qg, kg = _qkv(scale=3.0)        # logits up to some hundreds before the 1/T = 20 scaling
    ref = dynamic_attention(q, k, v, qg, kg, scale=0.05, top_k=2)
    args = [x.to(dtype).requires_grad_(grad) for x in (q, k, v, qg, kg)]
    low = dynamic_attention(*args, scale=0.05, top_k=2)
    assert low.output.dtype == dtype and low.confidence.dtype == dtype and low.topk_weights.dtype == dtype
    assert torch.isfinite(low.output).all() and torch.isfinite(low.confidence).all()
    # near-ties of the random inputs flip a few argmaxes at T = 0.05: compare where the top-1 agrees
    same = (low.topk_indices[..., 0] == ref.topk_indices[..., 0]).view(1, 1, 8, 8)
    assert same.float().mean() > 0.8
    err = (low.output.detach().float() - ref.output).abs() * same
    # measured: float16 0.005, bfloat16 0.05 (outputs up to 9)
    assert float(err.max()) < (0.02 if dtype == torch.float16 else 0.2)
    # the gate (a sign) and the confidence agree
    assert (low.confidence.detach().float() - ref.confidence).abs()[same].max() < 0.05


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("op", ["inter", "inner"])
def test_sparse_attention_half_with_smooth_001(dtype, op):
    q, k, v, qg, kg = _qkv(c=32)
    g = torch.Generator().manual_seed(3)
    if op == "inter":
        fn, topk = inter_scale_sparse_attention, torch.randint(0, 16, (1, 16, 4), generator=g)
    else:
        fn, topk = inner_scale_sparse_attention, torch.randint(0, 64, (1, 64, 4), generator=g)
    # unit-norm features as in DynaST, logits x 100 (smooth 0.01) before the softmax
    q, k = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    ref = fn(q, k, v, topk, qg, kg, scale=0.01)
    for grad in (False, True):
        args = [x.to(dtype).requires_grad_(grad) for x in (q, k, v)]
        low = fn(*args, topk, qg.to(dtype), kg.to(dtype), scale=0.01)
        assert low.output.dtype == dtype and low.candidate_weights.dtype == dtype
        assert torch.isfinite(low.output).all() and torch.isfinite(low.candidate_weights).all()
        err = (low.candidate_weights.detach().float() - ref.candidate_weights).abs()
        # measured mean: float16 1.5e-5, bfloat16 1.3e-4 (bfloat16 inputs carry 3 significant digits, and
        # the logits are 100 * q.k)
        assert float(err.mean()) < (1e-4 if dtype == torch.float16 else 1e-3)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("grad", [False, True])
def test_norms_of_constant_input_are_finite(dtype, grad):
    # eps 1e-8 and 1e-10 are zero in float16: var + eps = 0 gave 0/0
    x = torch.full((1, 8, 4, 4), 0.5, dtype=dtype, requires_grad=grad)
    for fn in (positional_norm2d, feature_normalize, instance_norm2d):
        y = fn(x)
        assert y.dtype == dtype and torch.isfinite(y).all(), fn.__name__
    assert torch.equal(positional_norm2d(x), torch.zeros_like(x))
    z = torch.zeros((1, 8, 4, 4), dtype=dtype)
    assert torch.isfinite(feature_normalize(z)).all()


def _tiny_model_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 5, 48, 48, generator=g), torch.rand(1, 3, 48, 48, generator=g) * 2 - 1,
            torch.rand(1, 5, 48, 48, generator=g))


@pytest.mark.parametrize("dtype", HALF)
def test_tiny_dynast_half_is_finite_and_close_to_float32(dtype):
    cfg = DynaSTConfig(semantic_nc=5, ngf=8, max_multi=8, n_layers=1, pos_dim=4, prune_dim=4, crop_size=48)
    torch.manual_seed(0)
    sd = DynaSTGenerator(cfg).state_dict()
    lab, ex, exl = _tiny_model_inputs()
    model = load_dynast(sd, dtype=dtype)
    with torch.no_grad():
        ref = load_dynast(sd)(lab, ex, exl).image
        low = model(lab.to(dtype), ex.to(dtype), exl.to(dtype))
        const = model(torch.zeros_like(lab, dtype=dtype), ex.to(dtype), torch.zeros_like(exl, dtype=dtype)).image
    assert low.image.dtype == dtype and low.image.shape == ref.shape
    assert torch.isfinite(low.image).all() and torch.isfinite(const).all()
    assert all(torch.isfinite(c).all() for c in low.confidence.values())
    err = (low.image.float() - ref).abs()
    # measured on this seed: mean float16 4e-4, bfloat16 4e-3 (its 8-bit mantissa in the convolutions)
    assert float(err.mean()) < (2e-3 if dtype == torch.float16 else 2e-2)


def _one_pixel_layout(size=48):
    lab = torch.zeros(1, 3, size, size)
    lab[0, 0, 10, 10] = 1                                    # a one-pixel channel: standardises to ~size
    lab[0, 1] = torch.linspace(0, 1, size)[None]
    lab[0, 2] = torch.linspace(0, 1, size)[:, None]
    return lab


@pytest.mark.parametrize("dtype", HALF)
def test_weight_free_matching_half(dtype):
    lab = _one_pixel_layout()
    shifted = torch.roll(lab, (2, 3), (2, 3))
    ref = match_layouts(shifted, lab)
    low = match_layouts(shifted.to(dtype), lab.to(dtype))    # float16 overflowed here: +inf, then NaN weights
    assert low.weights.dtype == dtype and low.confidence.dtype == dtype
    assert torch.isfinite(low.weights).all() and torch.isfinite(low.confidence).all()
    # the integer matches are the same; the sub-pixel positions move by the half-precision input's rounding
    assert torch.equal(match_layouts(shifted.to(dtype), lab.to(dtype), subpixel=False).indices,
                       match_layouts(shifted, lab, subpixel=False).indices)
    assert float((low.source_coordinates() - ref.source_coordinates()).abs().max()) < 0.15
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 48, 40, generator=g)
    ref = match_images(img, img)
    low = match_images(img.to(dtype), img.to(dtype))
    assert torch.isfinite(low.weights).all()
    assert (low.indices[..., 0] == ref.indices[..., 0]).float().mean() > 0.99
    assert float((low.confidence.float() - ref.confidence).abs().max()) < 0.01
