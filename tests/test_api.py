"""dynast_core.api: the user-level calls the nodes and the CLI share (windows, typed results, devices)."""
import copy

import pytest
import torch

from dynast_core import api
from dynast_core.models.dynast import DynaSTConfig, DynaSTGenerator
from dynast_core.models.stya2k import StyA2K
from device_guard import DeviceGuard

TINY = DynaSTConfig(semantic_nc=6, ngf=8, pos_dim=4, prune_dim=4, crop_size=64)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dynast():
    torch.manual_seed(0)
    return DynaSTGenerator(TINY).eval()


@pytest.fixture(scope="module")
def stya2k():
    torch.manual_seed(0)
    return StyA2K().eval()


def _layout_exemplar(seed=1):
    return api.make_exemplar(_rand(1, 3, 48, 40, seed=seed), label=_rand(1, 6, 48, 40, seed=seed + 1))


def test_exemplar_validates_and_moves():
    with pytest.raises(ValueError, match="resize the label"):
        api.Exemplar(torch.rand(1, 3, 32, 32), torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="3 frames but the image batch is 2"):
        api.Exemplar(torch.rand(2, 3, 32, 32), torch.rand(3, 2, 32, 32))
    with pytest.raises(ValueError, match="RGB batch"):
        api.make_exemplar(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="unknown layout"):
        api.make_exemplar(torch.rand(1, 3, 32, 32), layout="depth")
    ex = api.make_exemplar(torch.rand(1, 3, 32, 32), label=torch.rand(1, 2, 8, 8))   # label resized nearest
    assert ex.label.shape == (1, 2, 32, 32) and ex.layout == "label"
    moved = ex.to("meta", torch.float16)
    assert moved.image.device.type == "meta" and moved.label.dtype == torch.float16


def test_match_errors_say_what_to_do(dynast):
    ex = api.make_exemplar(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="nothing to match against"):
        api.match(ex)
    with pytest.raises(ValueError, match="needs layouts"):
        api.match(ex, target_label=torch.rand(1, 6, 32, 32), model=dynast)
    with pytest.raises(ValueError, match="6-channel labels"):
        api.match(api.make_exemplar(torch.rand(1, 3, 32, 32), label=torch.rand(1, 3, 32, 32)),
                  target_label=torch.rand(1, 3, 32, 32), model=dynast)
    with pytest.raises(ValueError, match="exemplar has 2 frames and the target 3"):
        api.match(api.make_exemplar(torch.rand(2, 3, 32, 32)), target_image=torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="grid_scale"):
        api.match(ex, target_image=torch.rand(1, 3, 32, 32), grid_scale=0)
    with pytest.raises(ValueError, match="window"):
        api.match(ex, target_image=torch.rand(1, 3, 32, 32), window=0)
    r = api.match(ex, target_image=torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="without a DynaST model"):
        api.decode(dynast, r)


def test_windows_give_the_whole_batch_result(dynast):
    # float64: the random model's hard gates sit near zero, and float32 batch-size-dependent rounding flips some
    model = copy.deepcopy(dynast).double()
    ex = _layout_exemplar()
    labels = _rand(3, 6, 48, 40, seed=5)
    whole = api.match(ex, target_label=labels, model=model)
    windowed = api.match(ex, target_label=labels, model=model, window=2)
    assert whole.state.features[1].dtype == torch.float64          # the state keeps the model's precision
    assert torch.equal(whole.correspondence.indices, windowed.correspondence.indices)
    assert torch.allclose(whole.correspondence.weights, windowed.correspondence.weights, atol=1e-6)
    img_whole = api.decode(model, whole)
    img_windowed = api.decode(model, windowed, window=1)
    assert img_whole.shape == (3, 3, 48, 40) and torch.allclose(img_whole, img_windowed, atol=1e-6)
    gen = api.generate(model, ex, target_label=labels, window=2)
    assert torch.allclose(gen.image, img_whole, atol=1e-6) and gen.match.state is None
    # weight-free image matching and warping
    ex_img = api.make_exemplar(_rand(1, 3, 40, 40, seed=7))
    targets = _rand(3, 3, 40, 40, seed=8)
    a = api.match(ex_img, target_image=targets)
    b = api.match(ex_img, target_image=targets, window=1)
    assert torch.equal(a.correspondence.indices, b.correspondence.indices)
    assert torch.allclose(api.warp(a), api.warp(b, window=2), atol=1e-6)


def test_match_result_moves_every_tensor(dynast):
    r = api.match(_layout_exemplar(), target_label=_rand(2, 6, 48, 40, seed=3), model=dynast)
    assert r.method == "dynast" and r.state is not None and len(r.state.correspondences) == 1
    moved = r.to("meta")
    tensors = moved.tensors()
    assert len(tensors) > 8 and all(t.device.type == "meta" for t in tensors)
    assert r.correspondence.weights.dtype == torch.float32 and r.exemplar.image.device.type == "cpu"


def test_generate_equals_match_then_decode(dynast):
    ex = _layout_exemplar(seed=11)
    label = _rand(1, 6, 48, 40, seed=12)
    gen = api.generate(dynast, ex, target_label=label, keep_state=True)
    r = api.match(ex, target_label=label, model=dynast)
    assert torch.allclose(gen.image, api.decode(dynast, r), atol=1e-6)
    assert gen.image.min() >= 0 and gen.image.max() <= 1 and gen.image.dtype == torch.float32
    with pytest.raises(ValueError, match="needs a DynaST model"):
        api.generate(None, ex, target_label=label)


def test_warp_scales_latents_and_keeps_labels():
    img = _rand(1, 3, 64, 48, seed=2)
    r = api.match(api.make_exemplar(img), target_image=img)
    latent = _rand(1, 4, 8, 6, seed=3)
    assert api.warp(r, latent).shape == (1, 4, 8, 6)
    labels = (torch.rand(1, 1, 64, 48) * 5).floor()
    out = api.warp(r, labels, mode="nearest")
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    assert api.warp(r, img, output_size=(32, 24)).shape == (1, 3, 32, 24)
    with pytest.raises(ValueError, match="laid out on the exemplar"):
        api.warp(r, torch.rand(3, 64, 48))
    many = api.match(api.make_exemplar(img), target_image=_rand(3, 3, 64, 48))
    with pytest.raises(ValueError, match="batch 2 but the match has 3"):
        api.warp(many, torch.rand(2, 3, 64, 48))


def test_stylize_batches_windows_and_model(stya2k):
    content, style = _rand(3, 3, 40, 32, seed=1), _rand(1, 3, 48, 48, seed=2)
    whole = api.stylize(content, style)
    per_frame = api.stylize(content, style, window=1)
    assert whole.shape == (3, 3, 40, 32) and torch.allclose(whole, per_frame, atol=1e-5)
    assert torch.allclose(api.stylize(content, style, strength=0.0), content, atol=1e-6)
    a = api.stylize(content[:2], style, model=stya2k)
    b = api.stylize(content[:2], style, model=stya2k, window=1)
    assert a.shape == (2, 3, 40, 32) and torch.allclose(a, b, atol=1e-4)
    # one style for a clip: encoded once per call, not once per window (content frames are encoded once each)
    encoded, orig = [], stya2k.vgg.encode
    stya2k.vgg.encode = lambda x, levels=(3, 4, 5): encoded.append(x.shape[0]) or orig(x, levels)
    try:
        api.stylize(content, style, model=stya2k, window=1)
    finally:
        del stya2k.vgg.encode
    assert encoded == [1, 1, 1, 1]                    # three content windows + the style, once
    with pytest.raises(ValueError, match="do not pair up"):
        api.stylize(content, _rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="mask batch"):
        api.stylize(content, style, mask=torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="strength"):
        api.stylize(content, style, strength=2)


def test_user_calls_create_nothing_off_device(dynast, stya2k):
    """Every tensor the API makes is made on its inputs' device, and no call mixes devices."""
    ex_edges = api.make_exemplar(_rand(1, 3, 48, 40), layout="edges")
    ex = _layout_exemplar()
    from dynast_core.masks import confidence_to_mask
    with DeviceGuard() as guard:
        r = api.match(api.make_exemplar(_rand(1, 3, 48, 40)), target_image=_rand(2, 3, 48, 40), window=1)
        api.warp(r)
        api.warp(r, _rand(1, 4, 6, 5))
        confidence_to_mask(r, 0.5, 3, 3)
        r.preview("flow"), r.preview("source")
        api.match(ex_edges, target_label=_rand(1, 15, 48, 40))
        rd = api.match(ex, target_label=_rand(1, 6, 48, 40), model=dynast)
        api.decode(dynast, rd)
        api.stylize(_rand(1, 3, 32, 32), _rand(1, 3, 40, 40))
        api.stylize(_rand(1, 3, 40, 40), _rand(1, 3, 40, 40), model=stya2k, strength=0.5, preserve_color=True,
                    mask=torch.ones(1, 1, 8, 8))
    assert guard.problems == []


def test_estimate_memory_grows_with_size_and_shrinks_with_half():
    small = api.estimate_memory("dynast", 256, 256)
    big = api.estimate_memory("dynast", 1024, 1024)
    assert big > 16 * small * 0.9
    assert api.estimate_memory("stya2k", 512, 512, dtype=torch.float16) < api.estimate_memory("stya2k", 512, 512)
    assert api.estimate_memory("warp", 64, 64, frames=4) == 4 * api.estimate_memory("warp", 64, 64)
    with pytest.raises(ValueError, match="unknown kind"):
        api.estimate_memory("upscale", 64, 64)
