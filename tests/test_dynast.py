"""DynaST generator: official key layout (spectral norm folded exactly), any size, match/decode split, errors."""
import json

import pytest
import torch
import torch.nn as nn

from dynast_core.checkpoints import CheckpointError
from dynast_core.models.dynast import (DynaSTConfig, DynaSTGenerator, convert_dynast_checkpoint, dynast_config,
                                       generate, infer_dynast_config, load_dynast)

SMALL = DynaSTConfig(semantic_nc=5, ngf=8, max_multi=8, n_layers=2, pos_dim=4, prune_dim=4, crop_size=64)


def _official_like(seed=0):
    """Our module with spectral norm applied where the official one has it, eval mode: its state dict has
    the official weight_orig/weight_u/weight_v layout."""
    torch.manual_seed(seed)
    model = DynaSTGenerator(SMALL)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Conv2d) and (name.endswith("conv_0") or name.endswith("conv_1")
                                         or (name.startswith("encoder_") and name.endswith(".0")
                                             and ".layer" in name and name.count(".") == 2)):
            nn.utils.spectral_norm(m)
    model.train()
    with torch.no_grad():          # a few power iterations so u, v are not the initial ones
        model.match(torch.rand(1, 5, 64, 64), torch.rand(1, 3, 64, 64), torch.rand(1, 5, 64, 64))
    return model.eval()


def _inputs(b=1, h=64, w=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 5, h, w, generator=g), torch.rand(b, 3, h, w, generator=g) * 2 - 1,
            torch.rand(b, 5, h, w, generator=g))


def test_official_layout_loads_and_equals_eval_spectral_norm():
    sn_model = _official_like()
    sd = sn_model.state_dict()
    assert any(k.endswith("weight_orig") for k in sd) and "embed_1.conv_0.weight_u" in sd
    assert "encoder_q.layer1.2.relu.weight" in sd and "encoder_q.layer1.2.model.2.weight" in sd
    model = load_dynast({"module." + k: v for k, v in sd.items()})      # DataParallel prefix too
    lab, ex, exl = _inputs()
    with torch.no_grad():
        ref = sn_model(lab, ex, exl).image
        out = model(lab, ex, exl).image
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert out.shape == (1, 3, 64, 64) and out.abs().max() <= 1


def test_deepfashion_preset_has_the_official_keys_and_shapes(shared_dir):
    ref = json.loads((shared_dir / "reference" / "keys" / "dynast_generator_deepfashion.json").read_text())["tensors"]
    want = {}
    for k, v in ref.items():
        if k.endswith(".weight_u") or k.endswith(".weight_v"):
            continue
        want[k.replace(".weight_orig", ".weight")] = tuple(v["shape"])
    ours = {k: tuple(v.shape) for k, v in DynaSTGenerator(dynast_config("deepfashion")).state_dict().items()}
    assert ours == want


def test_infer_config_and_safetensors_round_trip(tmp_path):
    sd = _official_like().state_dict()
    assert infer_dynast_config(sd) == SMALL
    torch.save(sd, tmp_path / "latest_net_G.pth")
    out = convert_dynast_checkpoint(tmp_path / "latest_net_G.pth", tmp_path / "g.safetensors")
    a, b = load_dynast(tmp_path / "latest_net_G.pth"), load_dynast(out)
    assert b.config == SMALL
    lab, ex, exl = _inputs()
    with torch.no_grad():
        assert torch.equal(a(lab, ex, exl).image, b(lab, ex, exl).image)


def test_any_size_batch_and_exemplar_broadcast():
    model = load_dynast(_official_like().state_dict())
    lab, ex, exl = _inputs(b=2, h=44, w=70)
    with torch.no_grad():
        out = model(lab, ex[:1], exl[:1])
        single = model(lab[1:], ex[:1], exl[:1])
    assert out.image.shape == (2, 3, 44, 70)
    torch.testing.assert_close(out.image[1:], single.image, atol=1e-5, rtol=0)
    corr = out.correspondence
    assert corr.query_size == (44, 70) and corr.key_size == (44, 70) and corr.batch_size == 2  # padding undone
    assert out.match.correspondences[4].query_size == (6, 9)
    assert set(out.confidence) == {1, 2, 3, 4}
    assert out.confidence[4].shape == (2, 1, 6, 9)


def test_decode_reuses_match_without_running_the_encoders():
    model = load_dynast(_official_like().state_dict())
    lab, ex, exl = _inputs()
    calls = []
    model.encoder_q.register_forward_hook(lambda *a: calls.append("q"))
    with torch.no_grad():
        m = model.match(lab, ex, exl)
        n = len(calls)
        img = model.decode(m)
        assert len(calls) == n
        torch.testing.assert_close(img, model(lab, ex, exl).image, atol=0, rtol=0)


def test_generate_works_in_unit_range():
    model = load_dynast(_official_like().state_dict())
    lab, ex, exl = _inputs()
    out = generate(model, lab, (ex + 1) / 2, exl)
    assert out.image.min() >= 0 and out.image.max() <= 1


def test_errors_name_the_problem(tmp_path, shared_dir):
    with pytest.raises(CheckpointError, match="not a DynaST generator"):
        load_dynast(shared_dir / "weights" / "stya2k_official_latest_net_A2K.pth")
    sd = _official_like().state_dict()
    sd["transformer_1.0.h.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(CheckpointError, match=r"transformer_1\.0\.h\.weight has shape \(3, 3, 1, 1\)"):
        load_dynast(sd, config=SMALL)
    p = tmp_path / "cut.pth"
    torch.save(_official_like().state_dict(), p)
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_dynast(p)
    model = load_dynast(_official_like().state_dict())
    with pytest.raises(ValueError, match=r"\(B, 5, H, W\)"):
        model(torch.rand(1, 4, 64, 64), torch.rand(1, 3, 64, 64), torch.rand(1, 5, 64, 64))
    with pytest.raises(ValueError, match="at least 16"):
        model(torch.rand(1, 5, 8, 64), torch.rand(1, 3, 8, 64), torch.rand(1, 5, 8, 64))


def test_cli_generate_from_pose_json(tmp_path):
    from PIL import Image
    from dynast_core.cli import main
    cfg = DynaSTConfig(semantic_nc=20, ngf=8, max_multi=8, n_layers=2, pos_dim=4, prune_dim=4, crop_size=64)
    torch.manual_seed(0)
    torch.save(DynaSTGenerator(cfg).state_dict(), tmp_path / "g.pth")
    Image.new("RGB", (48, 64), (200, 30, 30)).save(tmp_path / "ex.png")
    pose = [[0.5, 0.1 + 0.04 * i, 1.0] for i in range(18)]
    frame = [{"people": [{"pose_keypoints_2d": sum(pose, [])}], "canvas_width": 48, "canvas_height": 64}]
    (tmp_path / "pose.json").write_text(json.dumps(frame))
    rc = main(["generate", "--model", str(tmp_path / "g.pth"), "--exemplar", str(tmp_path / "ex.png"),
               "--exemplar-pose", str(tmp_path / "pose.json"), "--pose", str(tmp_path / "pose.json"),
               "-o", str(tmp_path / "out.png")])
    assert rc == 0 and Image.open(tmp_path / "out.png").size == (48, 64)
    assert main(["generate", "--model", str(tmp_path / "g.pth"), "--exemplar", str(tmp_path / "ex.png"),
                 "-o", str(tmp_path / "x.png")]) == 1


def test_bfloat16_runs_and_stays_close():
    model = load_dynast(_official_like().state_dict())
    lab, ex, exl = _inputs()
    with torch.no_grad():
        ref = model(lab, ex, exl).image
        low = load_dynast(_official_like().state_dict(), dtype=torch.bfloat16)(
            lab.bfloat16(), ex.bfloat16(), exl.bfloat16()).image
    assert low.dtype == torch.bfloat16 and low.shape == ref.shape
    assert (low.float() - ref).abs().mean() < 0.1


def _randomised(seed=0, dtype=torch.float64):
    """A folded model with non-trivial BatchNorm statistics and PReLU slopes, in ``dtype``."""
    model = load_dynast(_official_like(seed).state_dict(), dtype=dtype)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.3 + 0.1)
    return model


def test_inference_path_equals_autograd_path():
    # no_grad takes the in-place, fused, channels-last path; with autograd on, the official operation order
    model = _randomised()
    lab, ex, exl = (x.double() for x in _inputs(b=2, h=44, w=70))
    with torch.no_grad():
        fast = model(lab, ex[:1], exl[:1])
    slow = model(lab, ex[:1], exl[:1])
    assert slow.image.requires_grad and not fast.image.requires_grad
    torch.testing.assert_close(fast.image, slow.image.detach(), atol=1e-10, rtol=0)
    for s in (1, 2, 3, 4):
        torch.testing.assert_close(fast.match.features[s], slow.match.features[s].detach(), atol=1e-10, rtol=0)
        torch.testing.assert_close(fast.confidence[s], slow.confidence[s].detach(), atol=1e-10, rtol=0)
        a, b = fast.match.correspondences[s], slow.match.correspondences[s]
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a.weights, b.weights.detach(), atol=1e-10, rtol=0)
    assert fast.image.is_contiguous()


def test_loaded_model_keeps_keys_values_and_runs_with_parameters_left_in_another_dtype():
    sd = _official_like().state_dict()
    model = load_dynast(sd)
    ref = DynaSTGenerator(SMALL)
    ref.load_state_dict(load_dynast(sd).state_dict())
    assert list(model.state_dict()) == list(ref.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    assert model.encoder_q.layer1[0].weight.is_contiguous(memory_format=torch.channels_last)
    # ComfyUI low-VRAM: parameters used outside convolutions (PReLU weights, the position embedding) may be
    # left behind when the convolutions move; they are cast where used (here: another dtype)
    lab, ex, exl = _inputs()
    with torch.no_grad():
        want = _randomised(dtype=torch.float64)(lab.double(), ex.double(), exl.double()).image
        mixed = _randomised(dtype=torch.float64)
        for m in mixed.modules():
            if isinstance(m, nn.PReLU):
                m.float()
        mixed.pos_embed.data = mixed.pos_embed.data.float()
        got = mixed(lab.double(), ex.double(), exl.double()).image
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
