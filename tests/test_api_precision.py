"""Half precision holds on every user-level path: finite, and close to float32 (small sizes: half precision
is slow on CPUs without bfloat16 matrix units). The adversarial inputs are the ones that broke it: a layout
with a one-pixel channel (weight-free logits (2q.k - |k|^2)/T overflowed float16), constant images (zero
variance in the norms), and DynaST's sparse logits scaled by 1/smooth = 100."""
import pytest
import torch

from dynast_core import api
from dynast_core.models.dynast import DynaSTConfig, DynaSTGenerator
from dynast_core.models.stya2k import StyA2K

HALF = [torch.float16, torch.bfloat16]


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _close(half, full, mean_tol, name):
    assert torch.isfinite(half).all(), f"{name}: non-finite values in half precision"
    diff = (half.float() - full.float()).abs()
    assert float(diff.mean()) < mean_tol, f"{name}: mean abs diff {float(diff.mean()):.4f} >= {mean_tol}"


def _top1(corr):
    return corr.indices.gather(-1, corr.weights.argmax(-1, keepdim=True))


@pytest.mark.parametrize("dtype", HALF)
def test_weight_free_match_and_warp_in_half(dtype):
    ex_img = _rand(1, 3, 40, 32, seed=1)
    target = torch.roll(ex_img, 2, dims=3)
    ex = api.make_exemplar(ex_img)
    full = api.match(ex, target_image=target)
    half = api.match(ex, target_image=target, dtype=dtype)
    assert torch.isfinite(half.correspondence.weights).all() and torch.isfinite(half.correspondence.confidence).all()
    agree = float((_top1(full.correspondence) == _top1(half.correspondence)).float().mean())
    assert agree > 0.6, f"top-1 agreement {agree:.2f}"
    _close(api.warp(half), api.warp(full), 0.05, "warp")
    # a layout whose one channel is a single pixel: large squared norms in the logits
    label = torch.zeros(1, 4, 40, 32)
    label[:, 0, 10, 10] = 1.0
    label[:, 1] = _rand(1, 40, 32, seed=2)
    ex_l = api.make_exemplar(ex_img, label=label)
    r = api.match(ex_l, target_label=label, dtype=dtype)
    assert torch.isfinite(r.correspondence.weights).all() and torch.isfinite(r.correspondence.confidence).all()
    flat = api.match(api.make_exemplar(torch.full((1, 3, 32, 32), 0.5)), target_image=torch.full((1, 3, 32, 32), 0.5),
                     dtype=dtype)
    assert torch.isfinite(flat.correspondence.weights).all()


@pytest.mark.parametrize("dtype", HALF)
def test_dynast_in_half(dtype):
    torch.manual_seed(0)
    model = DynaSTGenerator(DynaSTConfig(semantic_nc=4, ngf=8, pos_dim=4, prune_dim=4, crop_size=32)).eval()
    ex = api.make_exemplar(_rand(1, 3, 32, 32, seed=3), label=_rand(1, 4, 32, 32, seed=4))
    label = _rand(1, 4, 32, 32, seed=5)
    full = api.generate(model, ex, target_label=label)
    half_model = DynaSTGenerator(model.config).eval()
    half_model.load_state_dict(model.state_dict())
    half_model.to(dtype)
    half = api.generate(half_model, ex, target_label=label)
    _close(half.image, full.image, 0.08, f"DynaST {dtype}")
    const = api.make_exemplar(torch.full((1, 3, 32, 32), 0.5), label=torch.full((1, 4, 32, 32), 0.25))
    out = api.generate(half_model, const, target_label=torch.full((1, 4, 32, 32), 0.25))
    assert torch.isfinite(out.image).all(), "constant inputs (zero variance) must stay finite"


@pytest.mark.parametrize("dtype", HALF)
def test_stylize_in_half(dtype):
    content, style = _rand(1, 3, 40, 40, seed=6), _rand(1, 3, 48, 48, seed=7)
    full = api.stylize(content, style)
    _close(api.stylize(content, style, dtype=dtype), full, 0.05, f"weight-free {dtype}")
    flat = api.stylize(torch.full((1, 3, 32, 32), 0.3), torch.full((1, 3, 32, 32), 0.7), dtype=dtype)
    assert torch.isfinite(flat).all()
    torch.manual_seed(0)
    model = StyA2K().eval()
    ref = api.stylize(content, style, model=model)
    half_model = StyA2K().eval()
    half_model.load_state_dict(model.state_dict())
    half_model.to(dtype)
    _close(api.stylize(content, style, model=half_model), ref, 0.08, f"StyA2K {dtype}")
    assert torch.isfinite(api.stylize(torch.full((1, 3, 32, 32), 0.5), style, model=half_model)).all()
