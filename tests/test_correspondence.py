import pytest
import torch

from dynast_core.attention import inner_scale_sparse_attention
from dynast_core.checkpoints import CheckpointError, save_safetensors
from dynast_core.correspondence import Correspondence


def shift_corr(h, w, dy, dx, b=1, hk=None, wk=None):
    """Query (y, x) draws from exemplar (y + dy, x + dx), clamped."""
    hk, wk = hk or h, wk or w
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    idx = ((ys + dy).clamp(0, hk - 1) * wk + (xs + dx).clamp(0, wk - 1)).reshape(1, -1, 1).repeat(b, 1, 1)
    return Correspondence(idx, torch.ones(b, h * w, 1), (h, w), (hk, wk))


def test_identity_warp_at_any_resolution():
    c = shift_corr(4, 6, 0, 0)
    for size in [(4, 6), (8, 12), (32, 48)]:
        img = torch.rand(1, 3, *size)
        assert torch.allclose(c.warp(img), img, atol=1e-5), size
    # a latent coarser than the grid (e.g. 1/8 of an image whose grid is the full size)
    lat = torch.rand(1, 5, 2, 3)
    assert torch.allclose(c.warp(lat), lat, atol=1e-5)


def test_shift_warp_moves_detail_finer_than_the_grid():
    c = shift_corr(4, 4, 0, 1)                   # every query takes the cell to its right
    img = torch.rand(1, 3, 16, 16)               # 4x finer than the grid
    out = c.warp(img)
    assert out.shape == (1, 3, 16, 16)
    # columns 0..11 of the output are columns 4..15 of the image, pixel for pixel
    assert torch.allclose(out[..., :12], img[..., 4:], atol=1e-5)


def test_warp_equals_attention_output_on_the_exemplar_grid():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 5, 6, generator=g) for _ in range(3))
    gates = torch.randn(1, 2, 5, 6, generator=g), torch.randn(1, 2, 5, 6, generator=g)
    topk = torch.randint(0, 30, (1, 30, 2), generator=g)
    r = inner_scale_sparse_attention(q, k, v, topk, *gates)
    c = Correspondence.from_attention(r, (5, 6), (5, 6))
    assert torch.allclose(c.warp(v, normalize=False), r.output, atol=1e-5)
    assert torch.allclose(c.confidence, r.confidence)
    # normalised warp divides by the kept mass (uniform where everything was pruned)
    norm = c.warp(v)
    kept = r.confidence > 1e-6
    assert torch.allclose((norm * r.confidence)[kept.expand_as(norm)], r.output[kept.expand_as(norm)], atol=1e-5)


def test_batch_broadcasting_one_exemplar_many_targets_and_back():
    c = Correspondence.cat([shift_corr(4, 4, 0, 1), shift_corr(4, 4, 1, 0)])
    img = torch.rand(1, 3, 8, 8)
    out = c.warp(img)
    assert out.shape == (2, 3, 8, 8)
    assert not torch.allclose(out[0], out[1])
    single = shift_corr(4, 4, 0, 0)
    many = torch.rand(3, 1, 4, 4)
    assert torch.allclose(single.warp(many), many, atol=1e-6)
    with pytest.raises(ValueError, match="batch size"):
        c.warp(torch.rand(3, 3, 8, 8))


def test_output_size_and_downsampling():
    c = shift_corr(8, 8, 0, 0)
    img = torch.rand(1, 1, 8, 8)
    small = c.warp(img, output_size=(2, 2))
    assert torch.allclose(small, torch.nn.functional.adaptive_avg_pool2d(img, 2), atol=1e-6)


def test_flow_and_visualisation():
    c = shift_corr(6, 6, 0, 2)
    fl = c.flow()
    assert torch.allclose(fl[0, 0, :, :4], torch.full((6, 4), 2.0))   # interior: dx = 2
    assert torch.allclose(fl[0, 1], torch.zeros(6, 6))
    ident = shift_corr(5, 5, 0, 0)
    vis = ident.visualize()
    assert vis.shape == (1, 3, 5, 5)
    assert torch.allclose(vis, torch.ones_like(vis))                     # no motion is white
    vis = c.visualize(size=(12, 12))
    assert vis.shape == (1, 3, 12, 12) and 0 <= float(vis.min()) and float(vis.max()) <= 1
    src = ident.visualize(kind="source")
    assert src[0, 0, 0, 0] < src[0, 0, 0, -1] and src[0, 1, 0, 0] < src[0, 1, -1, 0]
    # identity between grids of different sizes has no flow
    idx = torch.arange(16).view(1, 16, 1)
    up = Correspondence(idx, torch.ones(1, 16, 1), (4, 4), (4, 4)).upsample(2)
    assert up.flow().abs().max() < 1e-6


def test_confidence_mask():
    idx = torch.zeros(1, 4, 1, dtype=torch.long)
    conf = torch.tensor([[[[0.2, 0.9], [0.6, 0.4]]]])
    c = Correspondence(idx, torch.ones(1, 4, 1), (2, 2), (1, 1), confidence=conf)
    assert c.confidence_mask(0.5).flatten().tolist() == [0, 1, 1, 0]
    assert c.confidence_mask(0.5, low=True).flatten().tolist() == [1, 0, 0, 1]
    assert torch.allclose(c.confidence_mask(None), conf)
    assert c.confidence_mask(0.5, size=(8, 8)).shape == (1, 1, 8, 8)


def test_upsample_matches_warp_semantics():
    c = shift_corr(4, 4, 1, -1)
    img = torch.rand(1, 3, 8, 8)
    assert torch.allclose(c.upsample(2).warp(img), c.warp(img), atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    c = Correspondence.cat([shift_corr(3, 5, 1, 1, hk=4, wk=6), shift_corr(3, 5, 0, 2, hk=4, wk=6)])
    path = c.save(tmp_path / "corr.safetensors")
    back = Correspondence.load(path)
    assert back.query_size == (3, 5) and back.key_size == (4, 6)
    assert torch.equal(back.indices, c.indices) and torch.equal(back.weights, c.weights)
    save_safetensors(tmp_path / "model.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="not a correspondence file"):
        Correspondence.load(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        Correspondence.load(tmp_path / "x.pth")


def test_validation_messages():
    with pytest.raises(ValueError, match="query grid 2x2 has 4"):
        Correspondence(torch.zeros(1, 3, 1, dtype=torch.long), torch.ones(1, 3, 1), (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        Correspondence(torch.full((1, 4, 1), 9), torch.ones(1, 4, 1), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="integers"):
        Correspondence(torch.zeros(1, 4, 1), torch.ones(1, 4, 1), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="shape of indices"):
        Correspondence(torch.zeros(1, 4, 1, dtype=torch.long), torch.ones(1, 4, 2), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="query_size"):
        Correspondence(torch.zeros(1, 4, 1, dtype=torch.long), torch.ones(1, 4, 1), (0, 4), (2, 2))
    c = shift_corr(2, 2, 0, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        c.warp(torch.rand(3, 4, 4))



def test_crop_undoes_reflection_padding():
    import torch.nn.functional as F
    h, w = 5, 7
    img = torch.rand(1, 3, h, w)
    padded = F.pad(img, (0, 1, 0, 3), mode="reflect")                 # 8 x 8 grid
    hp, wp = padded.shape[-2:]
    # identity on the padded grid: every padded position takes itself
    idx = torch.arange(hp * wp).view(1, -1, 1)
    corr = Correspondence(idx, torch.ones(1, hp * wp, 1), (hp, wp), (hp, wp))
    assert torch.allclose(corr.warp(padded), padded)
    cropped = corr.crop((h, w), (h, w))
    assert cropped.query_size == (h, w) and cropped.key_size == (h, w)
    assert torch.allclose(cropped.warp(img), img)
    # a query pointing into the padded border maps to the mirrored exemplar position
    idx2 = torch.full((1, hp * wp, 1), (h + 1) * wp + (w - 1))      # row h+1 -> row h-3, col w-1 stays
    c2 = Correspondence(idx2, torch.ones(1, hp * wp, 1), (hp, wp), (hp, wp)).crop((h, w), (h, w))
    assert int(c2.indices[0, 0, 0]) == (h - 3) * w + (w - 1)
    with pytest.raises(ValueError, match="exceed"):
        corr.crop((9, 9), (h, w))
