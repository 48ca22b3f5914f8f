"""The ComfyUI pack loaded the way ComfyUI loads it (the repo root as a package by path), every node called
with ComfyUI-format tensors, and the weight-free workflows run node by node from their JSON."""
import json
import sys
from pathlib import Path

import pytest
from _pack import load_pack
import torch

ROOT = Path(__file__).resolve().parents[1]
CORE_TYPES = {"IMAGE", "MASK", "LATENT", "INT", "FLOAT", "STRING", "BOOLEAN", "POSE_KEYPOINT", "MODEL", "CLIP", "VIDEO",
              "VAE", "CONDITIONING"}


@pytest.fixture(scope="module")
def pack():
    """The pack imported as ComfyUI imports it (the repository root as a package, by path)."""
    return load_pack("dynast_pack_under_test")


def _img(b=1, h=64, w=48, seed=0):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _pose(w=48, h=64, shift=0.0):
    pts = []
    for i in range(18):
        pts += [0.3 + 0.02 * i + shift, 0.1 + 0.045 * i, 1.0]
    return [{"people": [{"pose_keypoints_2d": pts}], "canvas_width": w, "canvas_height": h}]


def test_mappings_and_node_shapes(pack):
    nodes = pack.NODE_CLASS_MAPPINGS
    assert len(nodes) >= 12 and set(nodes) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in nodes.items():
        assert name.startswith("DynaST_")
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
        for group in ("required", "optional"):
            for inp, val in spec.get(group, {}).items():
                assert isinstance(val, tuple) and val[1].get("tooltip"), f"{name}.{inp} needs a tooltip"
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        assert callable(getattr(cls, cls.FUNCTION)) and cls.CATEGORY.startswith("DynaST")
        assert cls.DESCRIPTION


def test_weight_free_match_warp_and_utilities(pack):
    N = pack.NODE_CLASS_MAPPINGS
    from dynast_core.demo import textured_image
    ex_img = textured_image(64, 48, seed=4).permute(0, 2, 3, 1)
    (exemplar, prev) = N["DynaST_Exemplar"]().run(ex_img, "auto")
    assert prev.shape == (1, 64, 48, 3)
    target = torch.roll(ex_img, 3, dims=2)
    corr, conf, flow = N["DynaST_Match"]().run(exemplar, 4, 0, 1.0, target_image=target)
    assert conf.shape == (1, 64, 48) and flow.shape == (1, 64, 48, 3)
    latent = {"samples": torch.randn(1, 16, 8, 6), "downscale_ratio_spacial": 8}
    img, mask, lat = N["DynaST_Warp"]().run(corr, mask=torch.ones(1, 32, 32), latent=latent)
    assert img.shape == (1, 64, 48, 3) and mask.shape == (1, 64, 48)
    assert lat["samples"].shape == (1, 16, 8, 6) and lat["downscale_ratio_spacial"] == 8
    # the warp of the exemplar reproduces the shifted target away from the border
    assert (img[0, :, 6:-6] - target[0, :, 6:-6]).abs().mean() < 0.05
    (m,) = N["DynaST_ConfidenceToMask"]().run(corr, 0.5, 2, 2, False)
    assert m.shape == (1, 64, 48) and 0 <= m.min() and m.max() <= 1
    (p,) = N["DynaST_CorrespondencePreview"]().run(corr, "source")
    assert p.shape == (1, 64, 48, 3)
    from dynast_core.models.dynast import DynaSTConfig, DynaSTGenerator
    tiny = pack.nodes.bridge.ModelHandle(DynaSTGenerator(DynaSTConfig(semantic_nc=20, ngf=8, pos_dim=4, prune_dim=4)),
                                         "dynast")
    with pytest.raises(ValueError, match="without a DynaST model"):
        N["DynaST_Decode"]().run(tiny, corr)


def test_pose_layouts_batch_and_label_matching(pack):
    N = pack.NODE_CLASS_MAPPINGS
    label, prev = N["DynaST_PoseToLabel"]().run(_pose(), 0, 0)
    assert label.shape == (1, 20, 64, 48) and prev.shape == (1, 64, 48, 3)
    exemplar, _ = N["DynaST_Exemplar"]().run(_img(), "pose", pose_keypoint=_pose())
    targets = _pose(shift=0.05) + _pose(shift=-0.05)          # two frames: one exemplar, two targets
    corr, conf, _ = N["DynaST_Match"]().run(exemplar, 4, 0, 1.0, target_pose=targets)
    assert conf.shape == (2, 64, 48)
    img, _, _ = N["DynaST_Warp"]().run(corr)
    assert img.shape == (2, 64, 48, 3)
    with pytest.raises(ValueError, match="pose_keypoint"):
        N["DynaST_Exemplar"]().run(_img(), "pose")
    edge, _ = N["DynaST_ImageToEdgeLabel"]().run(_img())
    assert edge.shape == (1, 15, 64, 48)


def test_dynast_model_match_decode_generate(pack):
    from dynast_core.models.dynast import DynaSTConfig, DynaSTGenerator
    N = pack.NODE_CLASS_MAPPINGS
    torch.manual_seed(0)
    model = pack.nodes.bridge.ModelHandle(
        DynaSTGenerator(DynaSTConfig(semantic_nc=20, ngf=8, pos_dim=4, prune_dim=4, crop_size=64)), "dynast")
    exemplar, _ = N["DynaST_Exemplar"]().run(_img(), "pose", pose_keypoint=_pose())
    corr, conf, _ = N["DynaST_Match"]().run(exemplar, 4, 0, 1.0, model=model, target_pose=_pose(shift=0.05))
    assert corr.state is not None and conf.shape == (1, 64, 48)
    (img,) = N["DynaST_Decode"]().run(model, corr)
    img2, low, _ = N["DynaST_Generate"]().run(model, exemplar, 0, target_pose=_pose(shift=0.05))
    assert img.shape == (1, 64, 48, 3) and torch.allclose(img, img2, atol=1e-5)
    assert low.shape == (1, 64, 48)
    exemplar_edges, _ = N["DynaST_Exemplar"]().run(_img(), "edges")
    with pytest.raises(ValueError, match="20-channel"):
        N["DynaST_Match"]().run(exemplar_edges, 4, 0, 1.0, model=model, target_pose=_pose())


def test_stylize_weight_free_batch_mask_and_float16(pack):
    N = pack.NODE_CLASS_MAPPINGS
    content = _img(2, 48, 64).half()                     # float16 intermediates are cast
    (out,) = N["DynaST_Stylize"]().run(content, _img(1, 40, 40, seed=3), 1.0, False, 0,
                                       mask=torch.ones(1, 10, 10))
    assert out.shape == (2, 48, 64, 3) and out.dtype == torch.float32
    (same,) = N["DynaST_Stylize"]().run(content, _img(1, 40, 40, seed=3), 0.0, False, 0)
    assert torch.allclose(same, content.float(), atol=1e-3)
    with pytest.raises(ValueError, match="style batch"):
        N["DynaST_Stylize"]().run(content, _img(3, 40, 40), 1.0, False, 0)


def test_loaders_report_missing_files(pack, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAST_MODELS_DIR", str(tmp_path))
    N = pack.NODE_CLASS_MAPPINGS
    with pytest.raises(FileNotFoundError, match="not found in") as err:
        N["DynaST_ModelLoader"]().load("latest_net_G.pth")
    assert "Huage001/DynaST" in str(err.value)
    with pytest.raises(FileNotFoundError, match="vgg_normalised.pth"):
        N["DynaST_StyA2KLoader"]().load("(none)", "(none)", "(none)", "(none)", "(none)")


def test_stya2k_loader_and_stylize_with_weights(pack, tmp_path, monkeypatch):
    from dynast_core.models.stya2k import StyA2K, save_stya2k_safetensors
    (tmp_path / "stya2k").mkdir()
    torch.manual_seed(0)
    save_stya2k_safetensors(StyA2K(), tmp_path / "stya2k" / "packed.safetensors")
    monkeypatch.setenv("DYNAST_MODELS_DIR", str(tmp_path))
    N = pack.NODE_CLASS_MAPPINGS
    assert "packed.safetensors" in N["DynaST_StyA2KLoader"].INPUT_TYPES()["required"]["packed"][0]
    (model,) = N["DynaST_StyA2KLoader"]().load("packed.safetensors", "(none)", "(none)", "(none)", "(none)")
    (out,) = N["DynaST_Stylize"]().run(_img(1, 48, 64), _img(1, 64, 64, seed=2), 1.0, True, 0, model=model)
    assert out.shape == (1, 48, 64, 3)


# ------------------------------------------------------------------------------------------- workflows
def _run_workflow(pack, wf, inputs):
    """Execute a UI-format workflow's pack nodes in dependency order; core nodes are stood in for by
    ``inputs`` (LoadImage -> given images) or skipped when only consuming (SaveImage/PreviewImage)."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}
    results = {}

    def value(node_id, slot):
        if node_id not in results:
            run(node_id)
        return results[node_id][slot]

    def run(node_id):
        n = nodes[node_id]
        t = n["type"]
        if t == "LoadImage":
            results[node_id] = (inputs[n["widgets_values"][0]], torch.zeros(1, 64, 64))
            return
        cls = pack.NODE_CLASS_MAPPINGS[t]
        spec = cls.INPUT_TYPES()
        kwargs = {}
        widgets = list(n.get("widgets_values", []))
        for group in ("required", "optional"):
            for name, val in spec.get(group, {}).items():
                inp = next((i for i in n.get("inputs", []) if i["name"] == name), None)
                if inp is not None and inp.get("link") is not None:
                    l = links[inp["link"]]
                    kwargs[name] = value(l[1], l[2])
                elif isinstance(val[0], list) or val[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                    kwargs[name] = widgets.pop(0)
        results[node_id] = getattr(cls(), cls.FUNCTION)(**kwargs)

    for n in wf["nodes"]:
        if n["type"] in pack.NODE_CLASS_MAPPINGS:
            run(n["id"])
    return results


@pytest.mark.parametrize("name", ["weightfree_style_transfer.json", "weightfree_match_warp.json"])
def test_weight_free_workflows_run(pack, name):
    wf = json.loads((ROOT / "workflows" / name).read_text())
    assert wf.get("extra", {}).get("description")
    for n in wf["nodes"]:
        assert n["type"] in pack.NODE_CLASS_MAPPINGS or n["type"] in ("LoadImage", "SaveImage", "PreviewImage",
                                                                       "Note", "MaskToImage")
    loads = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "LoadImage"]
    results = _run_workflow(pack, wf, {f: _img(1, 64, 64, seed=i) for i, f in enumerate(loads)})
    assert results


def test_all_workflows_link_types_are_consistent(pack):
    for path in sorted((ROOT / "workflows").glob("*.json")):
        wf = json.loads(path.read_text())
        assert wf.get("extra", {}).get("description"), path.name
        nodes = {n["id"]: n for n in wf["nodes"]}
        for l in wf["links"]:
            _, src, src_slot, dst, dst_slot, typ = l
            assert nodes[src]["outputs"][src_slot]["type"] == typ, (path.name, l)
            assert nodes[dst]["inputs"][dst_slot]["type"] == typ, (path.name, l)
            if nodes[src]["type"] in pack.NODE_CLASS_MAPPINGS:
                assert pack.NODE_CLASS_MAPPINGS[nodes[src]["type"]].RETURN_TYPES[src_slot] == typ, (path.name, l)
            if typ not in CORE_TYPES:
                assert typ.startswith("DYNAST_") or typ == "STYA2K_MODEL", (path.name, typ)
