"""Training: losses, discriminator keys, data, trainers (tiny configs on synthetic data), resume, torchrun."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dynast_core.models.dynast import DynaSTConfig, load_dynast
from dynast_core.models.stya2k import load_stya2k
from dynast_core.training import (ContentStyleDataset, DataError, DeepFashionDataset, DynaSTCriterion,
                                  DynaSTLossWeights, DynaSTTrainer, ImageFolderLayoutDataset, MultiscaleDiscriminator,
                                  StyA2KTrainer, TrainOptions, VGG19Features, add_train_command, contextual_loss,
                                  load_vgg19)
from dynast_core.training.losses import warp_loss

ROOT = Path(__file__).resolve().parent.parent
KEYS_JSON = ROOT.parent / "shared" / "reference" / "keys" / "dynast_discriminator_deepfashion.json"
TINY = dict(semantic_nc=15, ngf=8, pos_dim=4, prune_dim=4, crop_size=64, n_layers=2)


def _write_images(folder: Path, n: int, size=64, seed=0):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.zeros((size, size + 8 * i, 3), np.uint8)
        a[:] = rng.integers(0, 255, 3)
        y0, x0 = rng.integers(4, size // 3, 2)
        a[y0:y0 + size // 2, x0:x0 + size // 2] = rng.integers(0, 255, 3)
        a[size // 2:, : size // 4] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("vgg") / "vgg19_conv.pth"
    torch.save(VGG19Features("cocosnet").state_dict(), p)
    return p


@pytest.fixture(scope="module")
def vggn_file(tmp_path_factory):
    torch.manual_seed(1)
    p = tmp_path_factory.mktemp("vggn") / "vgg_normalised.pth"
    vgg = VGG19Features("normalised")
    for m in vgg.modules():   # variance-preserving random weights: features of a useful magnitude
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    torch.save(vgg.state_dict_official(), p)
    return p


def _dynast_trainer(out, vgg_file, steps, lr=1e-3, **kw):
    opts = TrainOptions(out_dir=str(out), steps=steps, lr=lr, progress=False, seed=0,
                        sample_every=kw.pop("sample_every", 0), save_every=kw.pop("save_every", 0),
                        resume=kw.pop("resume", False))
    return DynaSTTrainer(DynaSTConfig(**TINY), load_vgg19(vgg_file), opts, ndf=8, **kw)


# ---------------------------------------------------------------------------------------------- modules
def test_discriminator_keys_match_official():
    if not KEYS_JSON.is_file():
        pytest.skip(f"{KEYS_JSON} not present")
    ref = json.loads(KEYS_JSON.read_text())["tensors"]
    sd = MultiscaleDiscriminator(label_nc=20).state_dict()
    assert sorted(sd) == sorted(ref)
    for k, v in ref.items():
        assert list(sd[k].shape) == v["shape"], k


def test_vgg_loads_both_layouts(tmp_path, vgg_file, vggn_file):
    x = torch.rand(1, 3, 32, 32)
    a, b = VGG19Features("cocosnet"), load_vgg19(vgg_file)
    assert not torch.equal(a(x, ["r12"])[0], b(x, ["r12"])[0])
    ref = torch.load(vgg_file, weights_only=True)
    assert torch.equal(b.conv5_2.weight, ref["conv5_2.weight"])
    n = load_vgg19(vggn_file)
    assert n.layout == "normalised"
    feats = n(x, ["r11", "r21", "r31", "r41", "r51", "r52"])
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512, 512]
    # relu1_1..relu5_1 agree with the StyA2K encoder given the same file
    from dynast_core.models.stya2k import VGGEncoder
    enc = VGGEncoder()
    sd = torch.load(vggn_file, weights_only=True)
    enc.load_state_dict({k: sd[k] for k in enc.state_dict()})
    for f, g in zip(feats[:5], enc(x)):
        torch.testing.assert_close(f, g)
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a VGG-19"):
        load_vgg19(bad)


def test_loss_pieces():
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    warps = [torch.nn.functional.avg_pool2d(real, 4), real.clone()]
    from dynast_core.training.losses import self_ref_weights
    assert float(warp_loss(warps, real, self_ref_weights(torch.ones(2)))) < 1e-6
    noisy = [w + 0.5 for w in warps]
    assert float(warp_loss(noisy, real, self_ref_weights(torch.zeros(2)))) == 0.0
    # official weighting: mean over everything of l1 * self_ref / (sum + 1e-5)
    exp = 2 * 0.5 * (1 / (2 + 1e-5))
    assert abs(float(warp_loss(noisy, real, self_ref_weights(torch.ones(2)))) - exp) < 1e-4
    f = torch.rand(1, 16, 8, 8)
    same = contextual_loss(f, f)
    other = contextual_loss(f, torch.rand(1, 16, 8, 8))
    assert float(same) < float(other)


def test_unsupervised_losses_finite():
    torch.manual_seed(0)
    crit = DynaSTCriterion(VGG19Features(), DynaSTLossWeights(mode="unsupervised"))
    disc = MultiscaleDiscriminator(label_nc=15, ndf=8)
    batch = {"label": torch.rand(2, 15, 48, 48), "image": torch.rand(2, 3, 48, 48) * 2 - 1,
             "ref": torch.rand(2, 3, 48, 48) * 2 - 1, "self_ref": torch.tensor([1.0, 0.0])}
    fake = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_()
    losses = crit.generator_losses(fake, [fake], batch, disc)
    assert {"warp", "gan", "gan_feat", "vgg", "perc", "content", "style", "contextual"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(fake.grad).all()
    with pytest.raises(ValueError, match="warp_exclude"):
        DynaSTLossWeights(warp_exclude="nope")


# ---------------------------------------------------------------------------------------------- data
def test_image_folder_dataset_and_errors(tmp_path):
    root = _write_images(tmp_path / "imgs", 3)
    ds = ImageFolderLayoutDataset(root, size=32)
    item = ds[(1, 123)]
    assert item["label"].shape == (15, 32, 32) and item["ref"].shape == (3, 32, 32)
    assert float(item["self_ref"]) == 1.0 and item["image"].min() >= -1 and item["image"].max() <= 1
    again = ds[(1, 123)]
    assert torch.equal(item["ref"], again["ref"])         # augmentation drawn from the item seed
    (root / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        _load_all(ImageFolderLayoutDataset(root, size=32))
    skip = ImageFolderLayoutDataset(root, size=32, on_error="skip")
    with pytest.warns(UserWarning, match="broken.png"):
        _load_all(skip)
    assert any("broken.png" in p for p in skip.skipped)
    with pytest.raises(DataError, match="keypoint file is missing"):
        ImageFolderLayoutDataset(_write_images(tmp_path / "p", 1), size=32, label_mode="pose")
    pose_dir = _write_images(tmp_path / "pose", 1)
    kps = [[10 + (j % 4) * 8, 6 + j * 3, 1.0] for j in range(18)]
    (pose_dir / "img0.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": sum(kps, [])}],
                                                    "canvas_width": 64, "canvas_height": 64}))
    pds = ImageFolderLayoutDataset(pose_dir, size=32)
    assert pds.label_mode == "pose" and pds.label_nc == 20
    it = pds[(0, 3)]
    assert it["label"].shape == (20, 32, 32) and it["label_ref"].shape == (20, 32, 32)
    assert it["label"][3:].min() == 0 and it["label_ref"][3:].min() == 0
    style = ImageFolderLayoutDataset(_write_images(tmp_path / "c", 2), size=32, style_prob=1.0,
                                     style_root=_write_images(tmp_path / "s", 2, seed=3))
    assert float(style[(0, 5)]["self_ref"]) == 0.0


def _load_all(ds):
    return [ds[(i, i)] for i in range(len(ds))]


def _write_deepfashion(root: Path, names, missing_pose=()):
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in names:
        img = root / "img" / name
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)).save(img)
        if name in missing_pose:
            continue
        pose = root / "pose" / name
        pose.parent.mkdir(parents=True, exist_ok=True)
        cand = np.array([[4 + (j % 5) * 5, 4 + j * 2, 0.9, j] for j in range(17)], float)
        sub = np.array(list(range(17)) + [-1, 20.0, 17])
        np.savetxt(str(pose)[:-4] + "_candidate.txt", cand)
        np.savetxt(str(pose)[:-4] + "_subset.txt", sub)
    (root / "train.txt").write_text("\n".join("img\\" + n.replace("/", "\\") for n in names) + "\n")


def test_deepfashion_dataset(tmp_path):
    names = ["MEN/id_1/01_front.jpg", "MEN/id_1/02_side.jpg", "WOMEN/id_2/01_front.jpg"]
    _write_deepfashion(tmp_path, names)
    (tmp_path / "deepfashion_self_pair.txt").write_text("img/MEN/id_1/01_front.jpg,img/MEN/id_1/02_side.jpg\n")
    ds = DeepFashionDataset(tmp_path, size=32)
    assert len(ds) == 3
    it = ds[0]
    assert it["label"].shape == (20, 32, 32) and it["label_ref"].shape == (20, 32, 32)
    assert not torch.equal(it["image"], it["ref"])          # the pair partner
    assert torch.equal(ds[2]["image"], ds[2]["ref"])        # no partner: the image itself
    assert it["label"][3:].min() == 0                       # limb distance maps were drawn
    _write_deepfashion(tmp_path / "bad", names, missing_pose={"MEN/id_1/02_side.jpg"})
    with pytest.raises(DataError, match="02_side_candidate.txt"):
        DeepFashionDataset(tmp_path / "bad", size=32)
    with pytest.warns(UserWarning, match="02_side"):
        assert len(DeepFashionDataset(tmp_path / "bad", size=32, on_error="skip")) == 2
    with pytest.raises(ValueError, match="train.txt"):
        DeepFashionDataset(tmp_path / "img", size=32)


def test_dynast_pose_mode_step(tmp_path, vgg_file):
    names = ["MEN/id_1/01_front.jpg", "MEN/id_1/02_side.jpg"]
    _write_deepfashion(tmp_path, names)
    ds = DeepFashionDataset(tmp_path, size=48)
    cfg = DynaSTConfig(**dict(TINY, semantic_nc=20, crop_size=48))
    opts = TrainOptions(out_dir=str(tmp_path / "run"), steps=2, batch_size=2, progress=False, save_every=0,
                        sample_every=2)
    hist = DynaSTTrainer(cfg, load_vgg19(vgg_file), opts, ndf=8).train(ds)
    assert len(hist) == 2 and all(np.isfinite(list(h.values())).all() for h in hist)
    assert load_dynast(tmp_path / "run" / "checkpoints" / "step_0000002" / "generator.safetensors").config == cfg
    with pytest.raises(ValueError, match="at least 48 pixels"):
        DynaSTTrainer(cfg, load_vgg19(vgg_file), TrainOptions(out_dir=str(tmp_path / "r2"), steps=1,
                                                              progress=False), ndf=8).train(
            DeepFashionDataset(tmp_path, size=32))


# ---------------------------------------------------------------------------------------------- DynaST
def test_dynast_overfits_one_sample_and_checkpoint_loads(tmp_path, vgg_file):
    root = _write_images(tmp_path / "one", 1)
    ds = ImageFolderLayoutDataset(root, size=64, rotate=0, scale=0, shift=0, flip=False, jitter=0)
    torch.manual_seed(0)
    tr = _dynast_trainer(tmp_path / "run", vgg_file, steps=30, sample_every=30)
    hist = tr.train(ds)
    g = [h["g_total"] for h in hist]
    assert all(np.isfinite(list(h.values())).all() for h in hist)
    assert np.mean(g[-5:]) < 0.7 * g[0], g
    ck = tmp_path / "run" / "checkpoints" / "step_0000030"
    assert (tmp_path / "run" / "samples" / "step_0000030.png").is_file()
    model = load_dynast(ck / "generator.safetensors")
    assert model.config == DynaSTConfig(**TINY)
    b = ds[(0, 0)]
    args = (b["label"][None], b["ref"][None], b["label_ref"][None])
    tr.gen.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*args).image, tr.gen(*args).image, atol=1e-5, rtol=1e-4)


def test_dynast_resume_is_exact(tmp_path, vgg_file):
    root = _write_images(tmp_path / "imgs", 3)
    ds = ImageFolderLayoutDataset(root, size=64)
    full = _dynast_trainer(tmp_path / "a", vgg_file, steps=4, save_every=2).train(ds)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step_0000002", tmp_path / "b" / "checkpoints" / "step_0000002")
    resumed_trainer = _dynast_trainer(tmp_path / "b", vgg_file, steps=4, resume=True)
    resumed = resumed_trainer.train(ds)
    assert len(resumed) == 2
    for a, b in zip(full[2:], resumed):
        for k in a:
            if k != "sec":
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


# ---------------------------------------------------------------------------------------------- StyA2K
def test_stya2k_trains_resumes_and_loads(tmp_path, vggn_file):
    c, s = _write_images(tmp_path / "c", 1), _write_images(tmp_path / "s", 1, seed=5)
    ds = ContentStyleDataset(c, s, size=64)
    opts = dict(steps=14, lr=3e-4, progress=False, sample_every=14)
    torch.manual_seed(0)
    hist = StyA2KTrainer(vggn_file, TrainOptions(out_dir=str(tmp_path / "a"), save_every=10, **opts)).train(ds)
    tot = [h["total"] for h in hist]
    assert np.isfinite(tot).all() and np.mean(tot[-4:]) < 0.7 * tot[0], tot
    assert (tmp_path / "a" / "samples" / "step_0000014.png").is_file()
    model = load_stya2k(tmp_path / "a" / "checkpoints" / "step_0000014" / "stya2k.safetensors")
    assert model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    res = StyA2KTrainer(vggn_file, TrainOptions(out_dir=str(tmp_path / "a"), resume=str(
        tmp_path / "a" / "checkpoints" / "step_0000010"), save_every=0, **opts)).train(ds)
    assert [h["total"] for h in res] == pytest.approx(tot[10:], rel=1e-5)
    with pytest.raises(ValueError, match="vgg_normalised"):
        StyA2KTrainer({"conv1_1.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_validates_and_runs_stya2k(tmp_path, vggn_file):
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_train_command(sub)
    args = parser.parse_args(["train", "dynast", "--data", str(tmp_path / "nope"), "--vgg", str(vggn_file)])
    with pytest.raises(ValueError, match="not a folder"):
        args.func(args)
    imgs = _write_images(tmp_path / "imgs", 2)
    args = parser.parse_args(["train", "dynast", "--data", str(imgs), "--vgg", str(tmp_path / "missing.pth")])
    with pytest.raises(ValueError, match="--vgg weights not found"):
        args.func(args)
    args = parser.parse_args(["train", "dynast", "--data", str(imgs), "--vgg", str(vggn_file), "--preset",
                              "deepfashion", "--size", "64"])
    with pytest.raises(ValueError, match="--preset celebahq_edge"):
        args.func(args)
    args = parser.parse_args(["train", "stya2k", "--content", str(imgs), "--style", str(imgs), "--vgg",
                              str(vggn_file), "--size", "64", "--steps", "2", "--out", str(tmp_path / "out"),
                              "--workers", "0", "--no-progress"])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "checkpoints" / "step_0000002" / "stya2k.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- torchrun
WORKER = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from dynast_core.models.dynast import DynaSTConfig
from dynast_core.training import DynaSTTrainer, ImageFolderLayoutDataset, TrainOptions, load_vgg19
dist.init_process_group("gloo")
ds = ImageFolderLayoutDataset({data!r}, size=48)
opts = TrainOptions(out_dir={out!r}, steps=3, batch_size=1, lr=1e-3, progress=False, save_every=0,
                    sample_every=0, write_checksums=True)
tr = DynaSTTrainer(DynaSTConfig(**{tiny!r}), load_vgg19({vgg!r}), opts, ndf=8)
tr.train(ds)
dist.destroy_process_group()
"""


def test_torchrun_two_processes_agree(tmp_path, vgg_file):
    data = _write_images(tmp_path / "imgs", 4)
    out = tmp_path / "run"
    tiny = dict(TINY, crop_size=48)
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(root=str(ROOT), data=str(data), out=str(out), tiny=tiny,
                                                    vgg=str(vgg_file))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((out / "checksums" / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 3
    assert ranks[0]["generator"] == ranks[1]["generator"]
    assert ranks[0]["discriminator"] == ranks[1]["discriminator"]
    model = load_dynast(out / "checkpoints" / "step_0000003" / "generator.safetensors")
    assert model.config.crop_size == 48


def test_dynast_unsupervised_style_mode_step(tmp_path, vgg_file):
    ds = ImageFolderLayoutDataset(_write_images(tmp_path / "c", 2), size=48, style_prob=0.5,
                                  style_root=_write_images(tmp_path / "s", 2, seed=4))
    cfg = DynaSTConfig(**dict(TINY, crop_size=48))
    opts = TrainOptions(out_dir=str(tmp_path / "run"), steps=2, batch_size=2, progress=False, save_every=0,
                        sample_every=0)
    hist = DynaSTTrainer(cfg, load_vgg19(vgg_file), opts, DynaSTLossWeights(mode="unsupervised"), ndf=8).train(ds)
    assert all(np.isfinite(list(h.values())).all() for h in hist)
    assert any("contextual" in h for h in hist)
