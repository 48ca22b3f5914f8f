"""Weight-free matching and style transfer on procedural images with known ground truth."""
import math

import pytest
import torch
import torch.nn.functional as F

from dynast_core.demo import (affine_grid, brush_texture, grid_to_pixels, scene_image, textured_image, tps_grid,
                              warp_with_grid)
from dynast_core.weightfree import (image_descriptors, match_descriptors, match_images, match_latents,
                                    match_layouts, pyramid_sizes, stylize_weight_free)


@pytest.fixture(autouse=True)
def _no_flush_denormal():
    """The trainer turns on flush-to-zero for the whole process (``torch.set_flush_denormal``) and earlier tests
    leave it on; it takes effect only on the thread that set it (MXCSR is per thread), so softmax weights
    that underflow are zero on one OpenMP thread and denormal on the other, and top-k ties among them break
    depending on how rows are split between threads. The exact-index comparisons here need it off."""
    torch.set_flush_denormal(False)
    yield


def _epe(corr, grid, size, margin=6):
    truth = grid_to_pixels(grid, size)
    err = (corr.source_coordinates() - truth).norm(dim=1)[0]
    inside = ((truth[0, 0] > margin) & (truth[0, 0] < size[1] - margin)
              & (truth[0, 1] > margin) & (truth[0, 1] < size[0] - margin))
    return err[inside].mean().item(), err[inside].median().item()


def test_pyramid_sizes_halve_rounding_up():
    assert pyramid_sizes((100, 60), 32) == [(100, 60), (50, 30), (25, 15)]
    assert pyramid_sizes((16, 16), 32) == [(16, 16)]
    assert len(pyramid_sizes((16, 16), 32, min_levels=3)) == 3


@pytest.mark.parametrize("warp", ["affine", "tps"])
def test_cascade_recovers_known_warps_and_beats_coarse_dense(warp):
    h, w = 128, 160
    ex = textured_image(h, w, seed=3)
    grid = affine_grid(h, w) if warp == "affine" else tps_grid(h, w, seed=5)
    target = warp_with_grid(ex, grid)
    corr = match_images(target, ex)
    assert corr.query_size == (h, w) and corr.key_size == (h, w)
    mean_epe, median_epe = _epe(corr, grid, (h, w))
    assert median_epe < 1.0 and mean_epe < 4.0
    warped = corr.warp(ex)
    psnr = -10 * math.log10(F.mse_loss(warped[..., 8:-8, 8:-8], target[..., 8:-8, 8:-8]).item())
    assert psnr > 25
    # the 1/8 dense baseline (one level), upsampled, is clearly worse
    sizes = [(h // 8, w // 8)]
    coarse = match_descriptors(image_descriptors(target, sizes), image_descriptors(ex, sizes))
    src = coarse.source_coordinates() * 8 + 3.5
    src = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False)
    base_err = (src - grid_to_pixels(grid, (h, w))).norm(dim=1)[0, 8:-8, 8:-8].mean().item()
    assert mean_epe < base_err


@pytest.mark.parametrize("shift", [(0.3, -0.4), (0.5, 0.0), (-0.1, 0.45)])
def test_subpixel_matches_recover_fractional_shifts(shift):
    from kornia.filters import gaussian_blur2d
    from dynast_core.clips import warp_by_flow
    g = torch.Generator().manual_seed(0)
    ex = gaussian_blur2d(torch.rand(1, 3, 80, 80, generator=g), (9, 9), (1.5, 1.5))
    ex = (ex - ex.amin()) / (ex.amax() - ex.amin())
    true = torch.tensor(shift).view(1, 2, 1, 1)
    target = warp_by_flow(ex, true[0].expand(2, 80, 80))

    def error(corr):
        return (corr.flow() - true).norm(dim=1)[0, 8:-8, 8:-8].median().item()
    fine, whole = match_images(target, ex), match_images(target, ex, subpixel=False)
    assert error(whole) > 0.3                          # integer matches: off by the fraction
    assert error(fine) < 0.15
    # four corners with bilinear weights, the largest first
    assert fine.num_candidates == 4 and torch.all(fine.weights[..., :1] >= fine.weights[..., 1:])
    torch.testing.assert_close(fine.weights.sum(-1), torch.ones(1, 80 * 80))
    # an image against itself: exact integer positions (one corner of weight 1)
    same = match_images(ex, ex)
    assert float(same.weights[0, 8 * 80:-8 * 80, 0].min()) == 1.0


def test_weights_normalised_and_confidence_lower_where_content_is_missing():
    h = w = 96
    ex = textured_image(h, w, seed=1)
    target = ex.clone()
    target[..., 30:70, 30:70] = textured_image(40, 40, seed=9)     # content absent from the exemplar
    corr = match_images(target, ex)
    torch.testing.assert_close(corr.weights.sum(-1), torch.ones(1, h * w))
    conf = corr.confidence[0, 0]
    assert conf[38:62, 38:62].mean() < 0.6 * conf[:20, :].mean()


def test_different_sizes_batch_and_exemplar_broadcast():
    ex = textured_image(80, 64, seed=2)
    targets = torch.cat([warp_with_grid(F.interpolate(ex, size=(60, 90), mode="bilinear"), affine_grid(60, 90)),
                         F.interpolate(ex, size=(60, 90), mode="bilinear")])
    corr = match_images(targets, ex)
    assert corr.batch_size == 2 and corr.query_size == (60, 90) and corr.key_size == (80, 64)
    single = match_images(targets[1:], ex)
    assert torch.equal(corr.indices[1:], single.indices)
    assert corr.warp(ex).shape == (2, 3, 60, 90)


def test_grid_scale_and_errors():
    img = textured_image(64, 64)
    corr = match_images(img, img, grid_scale=0.5)
    assert corr.query_size == (32, 32)
    assert corr.warp(img).shape[-2:] == (64, 64)
    with pytest.raises(ValueError, match="RGB"):
        match_images(torch.rand(1, 4, 32, 32), img)
    with pytest.raises(ValueError, match="grid_scale"):
        match_images(img, img, grid_scale=2)
    with pytest.raises(ValueError, match="at least 4"):
        match_images(torch.rand(1, 3, 2, 32), img)


def test_layouts_and_latents():
    lab = torch.zeros(1, 5, 64, 64)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    for c, (cy, cx) in enumerate([(10, 10), (10, 50), (50, 10), (50, 50), (32, 32)]):
        lab[0, c] = ((ys - cy) ** 2 + (xs - cx) ** 2).sqrt() / 64
    shifted = torch.roll(lab, shifts=(4, 6), dims=(2, 3))
    corr = match_layouts(shifted, lab)
    flow = corr.flow()[0, :, 16:48, 16:48]
    assert (flow[0].median() + 6).abs() < 1.5 and (flow[1].median() + 4).abs() < 1.5
    lat = torch.randn(1, 16, 24, 24)
    corr = match_latents(torch.roll(lat, 2, 3), lat)
    assert corr.query_size == (24, 24)
    assert (corr.flow()[0, 0, :, 4:].median() + 2).abs() < 0.5
    with pytest.raises(ValueError, match="same C"):
        match_layouts(torch.rand(1, 3, 32, 32), torch.rand(1, 4, 32, 32))


def test_stylize_weight_free_controls():
    c, s = scene_image(64, 96), brush_texture(80, 80)
    out = stylize_weight_free(c, s)
    assert out.shape == c.shape and out.min() >= 0 and out.max() <= 1
    # the output takes the style's colour statistics
    def dist(a, b):
        return ((a.mean((2, 3)) - b.mean((2, 3))).abs().sum() + (a.std((2, 3)) - b.std((2, 3))).abs().sum()).item()
    assert dist(out, s) < 0.75 * dist(c, s)      # (10x closer on the 512 samples; small, extreme palette here)
    assert torch.equal(stylize_weight_free(c, s, strength=0.0), c)
    half = stylize_weight_free(c, s, strength=0.5)
    torch.testing.assert_close(half, (0.5 * out + 0.5 * c).clamp(0, 1), atol=1e-5, rtol=0)
    mask = torch.zeros(64, 96)
    mask[:, 60:] = 1
    masked = stylize_weight_free(c, s, mask=mask)
    torch.testing.assert_close(masked[..., :40], c[..., :40], atol=1e-3, rtol=0)
    assert stylize_weight_free(c, s, size=48).shape[-2:] == (32, 48)
    with pytest.raises(ValueError, match="strength"):
        stylize_weight_free(c, s, strength=-1)


def test_demo_writes_real_files(tmp_path):
    from PIL import Image
    from dynast_core.cli import main
    assert main(["demo", "-o", str(tmp_path), "--size", "96"]) == 0
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size[0] >= 4 * 96
    for name in ("stylized", "exemplar_warped_onto_target", "flow", "confidence"):
        assert (tmp_path / f"{name}.png").stat().st_size > 500


def test_fold_patches_averages_the_covering_patches():
    """The overlap count is computed in closed form; it equals folding a map of ones."""
    from dynast_core.weightfree import _fold_patches
    for h, w in ((1, 5), (2, 3), (7, 9)):
        values = torch.rand(2, 27, h, w)
        summed = F.fold(values.flatten(2), (h + 2, w + 2), 3)
        count = F.fold(torch.ones(2, 9, h * w), (h + 2, w + 2), 3)
        expected = (summed / count)[..., 1:-1, 1:-1]
        torch.testing.assert_close(_fold_patches(values, (h, w)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stylize_weight_free_half_precision(dtype):
    """Half-precision images: processed in float32 inside (descriptor norms would lose their resolution),
    returned in their dtype; equal to the float32 run on the same values up to the final rounding (measured
    max |diff| 2.4e-4 float16, 2.0e-3 bfloat16), also for a constant content or style."""
    c, s = scene_image(40, 56).to(dtype), brush_texture(48, 48).to(dtype)
    flat_c, flat_s = torch.full_like(c, 0.3), torch.full_like(s, 0.6)
    for ci, si in ((c, s), (flat_c, s), (c, flat_s)):
        out = stylize_weight_free(ci, si, strength=0.8)
        ref = stylize_weight_free(ci.float(), si.float(), strength=0.8)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert (out.float() - ref).abs().max() <= (1e-3 if dtype == torch.float16 else 4e-3)


def test_distributed_part_runs_on_a_coarser_grid_only_beyond_twice_the_style_grid():
    from dynast_core.weightfree import _distributed_factor
    assert _distributed_factor((256, 256), (256, 256)) == 1
    assert _distributed_factor((512, 512), (256, 256)) == 1          # 512 px: the full-resolution algorithm
    assert _distributed_factor((1024, 768), (256, 192)) == 2
    assert _distributed_factor((2048, 2048), (256, 256)) == 4
    # a capped style (few regions) exercises the coarser grid at a small size
    c, s = scene_image(64, 80), brush_texture(64, 64)
    out = stylize_weight_free(c, s, max_style_regions=16)
    assert out.shape == c.shape and torch.isfinite(out).all()
