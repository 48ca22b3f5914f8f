"""StyA2K model: official-layout loading (including the real released A2K file), slot errors, any sizes,
packed round trip, and the user controls of stylize()."""
import math

import pytest
import torch

from dynast_core import load_stya2k
from dynast_core.checkpoints import CheckpointError
from dynast_core.models.stya2k import A2K, StyA2K, VGGEncoder, save_stya2k_safetensors
from dynast_core.stylize import preserve_content_color, stylize, stylize_multi, _rgb_to_yuv


def _random_model(seed=0):
    """He-initialised convs and an output layer centred on grey, so outputs are in range and depend on the
    style (PyTorch's default init gives a near-constant decoder output)."""
    torch.manual_seed(seed)
    model = StyA2K()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, math.sqrt(2 / m.weight[0].numel()))
                m.bias.zero_()
        last = model.decoder.decoder_layer_2[-1]
        last.weight.mul_(0.03)
        last.bias.fill_(0.5)
        model.a2k.sim_alpha.fill_(1.3)
        model.transform.attn_adain_4_1.sim_beta.fill_(0.1)
    return model.eval()


def _write_official_files(model, folder):
    """The four files as the official release stores them (raw state_dicts; vgg with its 3 unused convs)."""
    vgg = dict(model.vgg.state_dict())
    for k in VGGEncoder.UNUSED_KEYS:
        vgg[k] = torch.zeros(512, 512, 3, 3) if k.endswith("weight") else torch.zeros(512)
    torch.save(vgg, folder / "vgg_normalised.pth")
    torch.save(model.a2k.state_dict(), folder / "latest_net_A2K.pth")
    torch.save(model.transform.state_dict(), folder / "latest_net_transform.pth")
    torch.save(model.decoder.state_dict(), folder / "latest_net_decoder.pth")


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stya2k")
    model = _random_model()
    _write_official_files(model, folder)
    return folder, model


def _images(h, w, b=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def test_real_released_a2k_file_loads(shared_dir):
    path = shared_dir / "weights" / "stya2k_official_latest_net_A2K.pth"
    from dynast_core.checkpoints import read_state_dict
    sd, _ = read_state_dict(path)
    assert len(sd) == 18
    a2k = A2K(256)
    a2k.load_state_dict(sd, strict=True)
    assert a2k.sim_alpha.item() == pytest.approx(1.2699811, abs=1e-6)
    assert a2k.sim_beta.item() == pytest.approx(0.0215430, abs=1e-6)
    # and through the public loader, in its slot
    with pytest.raises(CheckpointError, match="'vgg' slot"):
        load_stya2k(vgg=path, a2k=path, transform=path, decoder=path)


def test_folder_loads_and_equals_the_source_model(official_dir):
    folder, ref = official_dir
    model = load_stya2k(folder)
    c, s = _images(64, 64), _images(64, 64, seed=2)
    with torch.no_grad():
        assert torch.equal(model(c, s), ref(c, s))


def test_slot_arguments_and_wrong_slot_message(official_dir, tmp_path):
    folder, _ = official_dir
    with pytest.raises(CheckpointError) as err:
        load_stya2k(vgg=folder / "latest_net_decoder.pth", a2k=folder / "latest_net_A2K.pth",
                    transform=folder / "latest_net_transform.pth", decoder=folder / "latest_net_decoder.pth")
    msg = str(err.value)
    assert "'vgg' slot" in msg and "vgg_normalised.pth" in msg and "decoder" in msg.lower()


def test_missing_file_names_expected_file_and_source(tmp_path):
    (tmp_path / "latest_net_A2K.pth").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_stya2k(tmp_path)
    msg = str(err.value)
    for name in ("vgg_normalised.pth", "latest_net_transform.pth", "latest_net_decoder.pth", "LearningHx/StyA2K"):
        assert name in msg
    assert "latest_net_A2K.pth" not in msg.split("missing")[0] or True
    with pytest.raises(CheckpointError, match="neither a folder"):
        load_stya2k(tmp_path / "nope")


def test_packed_safetensors_round_trip(official_dir, tmp_path):
    folder, ref = official_dir
    path = save_stya2k_safetensors(load_stya2k(folder), tmp_path / "stya2k.safetensors")
    model = load_stya2k(path)
    c, s = _images(48, 80), _images(32, 32, seed=3)
    with torch.no_grad():
        assert torch.equal(model(c, s), ref(c, s))


def test_packed_file_of_another_kind_is_refused(tmp_path):
    from dynast_core.checkpoints import save_safetensors
    p = save_safetensors(tmp_path / "other.safetensors", {"foo.weight": torch.zeros(3)}, {})
    with pytest.raises(CheckpointError, match="not a packed StyA2K"):
        load_stya2k(p)


@pytest.mark.parametrize("content_size,style_size", [((40, 72), (64, 64)), ((33, 50), (90, 33)), ((32, 32), (40, 100))])
def test_any_content_and_style_size(official_dir, content_size, style_size):
    _, model = official_dir
    c, s = _images(*content_size), _images(*style_size, seed=5)
    with torch.no_grad():
        out = model(c, s)
    assert out.shape == (1, 3, *content_size)
    assert torch.isfinite(out).all()
    # the style matters everywhere, borders included (no strip left as the content-only path)
    with torch.no_grad():
        other = model(c, _images(*style_size, seed=6))
    diff = (out - other).abs().sum(1)[0]
    assert (diff[-1, :] > 0).all() and (diff[:, -1] > 0).all()


def test_too_small_and_bad_batches_are_clear_errors(official_dir):
    _, model = official_dir
    with pytest.raises(ValueError, match="at least 32"):
        model(_images(20, 64), _images(64, 64))
    with pytest.raises(ValueError, match="RGB"):
        model(torch.rand(1, 4, 32, 32), _images(32, 32))
    with pytest.raises(ValueError, match="style batch"):
        model(_images(32, 32, b=2), _images(32, 32, b=3))


def test_batch_with_one_style_equals_items(official_dir):
    _, model = official_dir
    c, s = _images(32, 48, b=2), _images(32, 32, seed=4)
    with torch.no_grad():
        both = model(c, s)
        first = model(c[:1], s)
    torch.testing.assert_close(both[:1], first, atol=1e-4, rtol=1e-4)


def test_stylize_controls(official_dir):
    _, model = official_dir
    c, s = _images(40, 56), _images(64, 48, seed=7)
    zero = stylize(model, c, s, strength=0.0)
    assert torch.equal(zero, c)
    full = stylize(model, c, s, strength=1.0)
    half = stylize(model, c, s, strength=0.5)
    assert full.shape == c.shape and 0 <= full.min() and full.max() <= 1
    assert not torch.allclose(half, full) and not torch.allclose(half, c)
    # preserve colour: chroma of the output is the content's
    kept = stylize(model, c, s, preserve_color=True)
    chroma_err = (_rgb_to_yuv(kept)[:, 1:] - _rgb_to_yuv(c)[:, 1:]).abs()
    assert chroma_err.median() < 1e-5          # exact except where the RGB gamut clips (random content)
    assert (_rgb_to_yuv(full)[:, 1:] - _rgb_to_yuv(c)[:, 1:]).abs().mean() > 5 * chroma_err.mean()
    # a mask that is zero on the left half keeps the content there (away from the feathered seam)
    mask = torch.zeros(1, 20, 28)
    mask[..., 14:] = 1
    masked = stylize(model, c, s, mask=mask)
    torch.testing.assert_close(masked[..., :20], c[..., :20], atol=1e-3, rtol=0)
    torch.testing.assert_close(masked[..., -8:], full[..., -8:], atol=1e-3, rtol=0)
    # size: longer side
    assert stylize(model, c, s, size=32).shape[-2:] == (23, 32)
    # tiny inputs are upscaled internally and come back at their own size
    assert stylize(model, c[..., :12, :20], s[..., :10, :40]).shape[-2:] == (12, 20)
    with pytest.raises(ValueError, match="strength"):
        stylize(model, c, s, strength=1.5)


def test_stylize_multi_uses_each_style_in_its_region(official_dir):
    _, model = official_dir
    c = _images(32, 64)
    s1, s2 = _images(32, 32, seed=8), _images(32, 32, seed=9)
    left = torch.zeros(32, 64)
    left[:, :32] = 1
    out = stylize_multi(model, c, [s1, s2], [left, 1 - left])
    a, b = stylize(model, c, s1), stylize(model, c, s2)
    torch.testing.assert_close(out[..., :20], a[..., :20], atol=1e-3, rtol=0)
    torch.testing.assert_close(out[..., -20:], b[..., -20:], atol=1e-3, rtol=0)


def test_preserve_content_color_keeps_grey_content_grey():
    grey = torch.full((1, 3, 8, 8), 0.5)
    out = preserve_content_color(torch.rand(1, 3, 8, 8), grey)
    assert (out.max(1).values - out.min(1).values).max() < 1e-5


def test_inference_path_equals_module_by_module_path(official_dir):
    """Without autograd the encoder and decoder fuse ReLUs, upsampling and the skip concatenation into the
    padded buffers of the next convolution: the same values, bit for bit; the whole model agrees with the
    autograd path (reference attention) to float32 rounding."""
    _, model = official_dir
    c, s = _images(48, 80), _images(64, 40, seed=3)
    cp, _ = model.pad_input(c)
    with torch.no_grad():
        fast = model.vgg.encode(cp, (1, 2, 3, 4, 5))
        assert [f.shape[1] for f in model.encode(cp)] == [256, 512, 512]
        feats = model.features(cp, model.pad_input(s)[0])
        dec_fast = model.decode(feats)
        out_fast = model(c, s)
    with torch.enable_grad():
        slow = model.vgg(cp)
        dec_slow = model.decode({k: v.requires_grad_() for k, v in feats.items()})
        out_slow = model(c, s)
    assert dec_slow.requires_grad and out_slow.requires_grad
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
    assert torch.equal(dec_fast, dec_slow.detach())
    torch.testing.assert_close(out_fast, out_slow.detach(), atol=1e-5, rtol=0)


def test_state_dict_keeps_the_official_layout(shared_dir):
    """Keys and shapes of every slot equal the official listings; the convolutions are nn.Conv2d modules."""
    import json
    model = StyA2K()
    listings = {"a2k": "stya2k_A2K_256.json", "transform": "stya2k_Transform_512.json",
                "decoder": "stya2k_Decoder_skip3.json", "vgg": "stya2k_vgg_encoder.json"}
    for slot, name in listings.items():
        official = json.loads((shared_dir / "reference" / "keys" / name).read_text())["tensors"]
        ours = {k: list(v.shape) for k, v in getattr(model, slot).state_dict().items()}
        extra = set(VGGEncoder.UNUSED_KEYS) if slot == "vgg" else set()
        assert ours == {k: v["shape"] for k, v in official.items() if k not in extra}
    assert all(type(m) is torch.nn.Conv2d for n, m in model.named_modules() if n.endswith(("q", "fusion1", ".42")))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_and_stylize(dtype):
    """A model cast to float16/bfloat16 with inputs in that dtype: finite, in that dtype, close to the float32
    model on the same inputs, also for a constant (zero-variance) content or style. Measured at 32 px with
    random weights (max / mean |diff|): float16 forward 0.0025 / 0.001, bfloat16 forward 0.020 / 0.0032,
    bfloat16 stylize 0.015 / 0.0025. (Half precision is 30-50x slower than float32 on CPUs without AVX-512
    BF16/FP16 units: these tests stay at 32 px.)"""
    ref_model, model = _random_model(), _random_model().to(dtype)
    model.a2k.sim_alpha.data = model.a2k.sim_alpha.data.float()      # a parameter left in another dtype
    c, s = _images(32, 40).to(dtype), _images(32, 40, seed=2).to(dtype)
    flat = torch.full((1, 3, 32, 40), 0.4, dtype=dtype)
    pairs_c, pairs_s = torch.cat([c, flat]), torch.cat([flat, s])     # constant style; constant content
    max_err, mean_err = (0.01, 0.003) if dtype == torch.float16 else (0.06, 0.01)
    with torch.no_grad():
        out = model(pairs_c, pairs_s)
        ref = ref_model(pairs_c.float(), pairs_s.float())
    assert out.dtype == dtype and torch.isfinite(out).all()
    err = (out.float() - ref).abs()
    assert err.max() < max_err and err.mean() < mean_err
    mask = torch.zeros(32, 40)
    mask[:, 20:] = 1
    styled = stylize(model, c, s, strength=0.6, mask=mask, size=40)
    assert styled.dtype == dtype and torch.isfinite(styled).all()
    err = (styled.float() - stylize(ref_model, c.float(), s.float(), strength=0.6, mask=mask, size=40)).abs()
    assert err.max() < max_err and err.mean() < mean_err
