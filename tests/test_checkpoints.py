import json
import pickle

import pytest
import torch

from dynast_core.checkpoints import (CheckpointError, describe_state_dict, fold_spectral_norm,
                                     read_state_dict, save_safetensors)


def test_pth_roundtrip_strips_module_prefix(tmp_path):
    sd = {"module.a.weight": torch.randn(2, 3), "module.b": torch.arange(4)}
    torch.save(sd, tmp_path / "m.pth")
    back, meta = read_state_dict(tmp_path / "m.pth")
    assert set(back) == {"a.weight", "b"} and meta == {}
    assert torch.equal(back["a.weight"], sd["module.a.weight"])


def test_safetensors_roundtrip_with_metadata(tmp_path):
    path = save_safetensors(tmp_path / "m.safetensors", {"x": torch.ones(3)}, {"config": {"a": 1}, "k": "v"})
    sd, meta = read_state_dict(path)
    assert json.loads(meta["config"]) == {"a": 1} and meta["k"] == "v"
    assert torch.equal(sd["x"], torch.ones(3))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_pickled_code(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    torch.save({"w": torch.ones(1), "obj": Evil()}, tmp_path / "evil2.pth")
    for name in ("evil.pth", "evil2.pth"):
        with pytest.raises(CheckpointError):
            read_state_dict(tmp_path / name)


def test_truncated_missing_empty_and_wrong_extension(tmp_path):
    torch.save({"w": torch.randn(1000)}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupted"):
        read_state_dict(tmp_path / "cut.pth")
    save_safetensors(tmp_path / "ok.safetensors", {"w": torch.randn(1000)})
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="extension"):
        read_state_dict(tmp_path / "m.onnx")


def test_fold_spectral_norm_equals_eval_mode_spectral_norm():
    torch.manual_seed(0)
    conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 5, 3))
    for _ in range(3):
        conv(torch.randn(1, 3, 8, 8))          # a few power iterations in training mode
    conv.eval()
    sd = conv.state_dict()
    assert "weight_orig" in sd
    folded = fold_spectral_norm({f"c.{k}": v for k, v in sd.items()})
    assert set(folded) == {"c.weight", "c.bias"}
    plain = torch.nn.Conv2d(3, 5, 3)
    plain.load_state_dict({"weight": folded["c.weight"], "bias": folded["c.bias"]})
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(plain(x), conv(x), atol=1e-6)


def _zeros_from_listing(path):
    listing = json.loads(path.read_text())
    return {k: torch.zeros(v["shape"]) for k, v in listing["tensors"].items()}


@pytest.mark.parametrize("name, words", [
    ("dynast_generator_deepfashion.json", "DynaST generator"),
    ("dynast_discriminator_deepfashion.json", "discriminator"),
    ("stya2k_A2K_256.json", "A2K module with 256"),
    ("stya2k_Transform_512.json", "Transform"),
    ("stya2k_Decoder_skip3.json", "decoder with the relu3_1 skip"),
    ("stya2k_vgg_encoder.json", "vgg_normalised"),
])
def test_describe_recognises_official_files(shared_dir, name, words):
    sd = _zeros_from_listing(shared_dir / "reference" / "keys" / name)
    assert words in describe_state_dict(sd)


def test_describe_unknown():
    assert "unrecognised" in describe_state_dict({"foo": torch.zeros(1)})
