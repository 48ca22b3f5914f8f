"""Procedural test images and the weight-free demo (``python -m dynast_core demo -o DIR``).

Everything is generated from a seed: the project ships no third-party images. The same generators serve
the benchmarks and tests (textured images, known affine and thin-plate-spline warps).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ["textured_image", "scene_image", "brush_texture", "affine_grid", "tps_grid", "warp_with_grid",
           "grid_to_pixels", "run_demo", "contact_sheet"]


def _noise(h: int, w: int, octaves: int, gen: torch.Generator, channels: int = 1) -> torch.Tensor:
    """Smooth value noise in [0, 1]: ``(1, channels, h, w)``, a sum of upsampled random grids."""
    out = torch.zeros(1, channels, h, w)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = torch.rand(1, channels, cells, cells, generator=gen)
        out += amp * F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        total += amp
        amp *= 0.55
    out = out / total
    lo, hi = out.amin((2, 3), keepdim=True), out.amax((2, 3), keepdim=True)
    return (out - lo) / (hi - lo + 1e-8)


def textured_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A colourful, richly textured image ``(1, 3, h, w)`` in [0, 1] (multi-octave colour noise, stripes,
    discs): every region is distinctive, as needed to measure correspondence accuracy."""
    gen = torch.Generator().manual_seed(seed)
    img = _noise(h, w, 6, gen, 3)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    freq = 6 + 10 * torch.rand(2, generator=gen)
    img = 0.75 * img + 0.25 * (0.5 + 0.5 * torch.sin(2 * math.pi * (freq[0] * xs + freq[1] * ys)))[None, None]
    for _ in range(12):
        cy, cx, r = torch.rand(3, generator=gen)
        colour = torch.rand(3, 1, 1, generator=gen)
        disc = (((ys - cy) ** 2 + (xs - cx) ** 2).sqrt() < 0.03 + 0.08 * r).float()
        img = img * (1 - disc) + colour * disc
    return img.clamp(0, 1)


def scene_image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    """A simple landscape-like content image: sky gradient, sun, hills, a house; ``(1, 3, h, w)``."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    sky = torch.stack([0.35 + 0.4 * ys, 0.55 + 0.3 * ys, 0.95 - 0.2 * ys])
    img = sky.clone()
    sun = (((ys - 0.22) ** 2 + (xs - 0.75) ** 2).sqrt() < 0.08).float()
    img = img * (1 - sun) + torch.tensor([1.0, 0.85, 0.3]).view(3, 1, 1) * sun
    n = _noise(1, w, 4, gen)[0, 0, 0]
    for level, colour in ((0.55, (0.25, 0.5, 0.25)), (0.7, (0.15, 0.38, 0.12))):
        ridge = level + 0.12 * (n - 0.5) + 0.05 * torch.sin(xs[0] * 7 + level * 10)
        hill = (ys > ridge[None, :]).float()
        shade = 0.85 + 0.3 * _noise(h, w, 5, gen)[0, 0]
        img = img * (1 - hill) + torch.tensor(colour).view(3, 1, 1) * shade * hill
    house = ((xs > 0.2) & (xs < 0.38) & (ys > 0.62) & (ys < 0.8)).float()
    roof = ((ys < 0.62) & (ys > 0.5) & ((xs - 0.29).abs() < (ys - 0.5) * 0.9)).float()
    door = ((xs > 0.27) & (xs < 0.31) & (ys > 0.7) & (ys < 0.8)).float()
    for mask, colour in ((house, (0.9, 0.85, 0.7)), (roof, (0.6, 0.15, 0.1)), (door, (0.3, 0.2, 0.1))):
        img = img * (1 - mask) + torch.tensor(colour).view(3, 1, 1) * mask
    return img[None].clamp(0, 1)


def brush_texture(h: int, w: int, seed: int = 2) -> torch.Tensor:
    """A painterly style image: oriented strokes of a limited palette over coloured noise."""
    gen = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[0.95, 0.75, 0.2], [0.85, 0.3, 0.2], [0.2, 0.3, 0.6], [0.1, 0.55, 0.6],
                            [0.95, 0.92, 0.8]])
    base = _noise(h, w, 3, gen, 1)[0, 0]
    idx = (base * (len(palette) - 0.01)).long()
    img = palette[idx].permute(2, 0, 1).clone()
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    for _ in range(160):
        cy, cx, ang, length, col = torch.rand(5, generator=gen)
        a = ang * math.pi
        u = (xs - cx) * math.cos(a) + (ys - cy) * math.sin(a)
        v = -(xs - cx) * math.sin(a) + (ys - cy) * math.cos(a)
        stroke = ((u.abs() < 0.04 + 0.08 * length) & (v.abs() < 0.008)).float()
        colour = palette[int(col * (len(palette) - 0.01))].view(3, 1, 1) * 0.8
        img = img * (1 - stroke) + colour * stroke
    grain = 0.9 + 0.2 * _noise(h, w, 6, gen)[0]
    return (img * grain)[None].clamp(0, 1)


# ---------------------------------------------------------------------------------------------- warps
def affine_grid(h: int, w: int, angle: float = 8.0, scale: float = 1.05, shift: Tuple[float, float] = (0.04, -0.03)
                ) -> torch.Tensor:
    """Sampling grid ``(1, h, w, 2)`` (``grid_sample`` convention) of a rotation/scale/shift."""
    a = math.radians(angle)
    theta = torch.tensor([[[math.cos(a) / scale, -math.sin(a) / scale, shift[0]],
                           [math.sin(a) / scale, math.cos(a) / scale, shift[1]]]])
    return F.affine_grid(theta, (1, 1, h, w), align_corners=False)


def tps_grid(h: int, w: int, seed: int = 0, points: int = 4, strength: float = 0.06) -> torch.Tensor:
    """Sampling grid of a random thin-plate-spline warp (control points on a ``points x points`` lattice
    displaced by up to ``strength`` of the image)."""
    gen = torch.Generator().manual_seed(seed)
    lin = torch.linspace(-0.8, 0.8, points)
    cy, cx = torch.meshgrid(lin, lin, indexing="ij")
    ctrl = torch.stack([cx.flatten(), cy.flatten()], 1)                    # (P, 2)
    disp = (torch.rand(ctrl.shape, generator=gen) * 2 - 1) * strength * 2
    n = ctrl.shape[0]

    def u(r2):
        return torch.where(r2 > 0, r2 * torch.log(r2.clamp_min(1e-12)), torch.zeros_like(r2))

    k = u(((ctrl[:, None] - ctrl[None]) ** 2).sum(-1))
    p = torch.cat([torch.ones(n, 1), ctrl], 1)
    system = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    system[:n, :n], system[:n, n:], system[n:, :n] = k.double(), p.double(), p.t().double()
    rhs = torch.zeros(n + 3, 2, dtype=torch.float64)
    rhs[:n] = disp.double()
    coef = torch.linalg.solve(system, rhs).float()
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h), torch.linspace(-1 + 1 / w, 1 - 1 / w, w),
                            indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten()], 1)
    kk = u(((pts[:, None] - ctrl[None]) ** 2).sum(-1))
    offset = kk @ coef[:n] + torch.cat([torch.ones(len(pts), 1), pts], 1) @ coef[n:]
    return (pts + offset).view(1, h, w, 2)


def warp_with_grid(img: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(img, grid.expand(img.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border",
                         align_corners=False)


def grid_to_pixels(grid: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(1, h, w, 2)`` normalised sampling grid -> ``(1, 2, h, w)`` source ``(x, y)`` in pixels of an image of
    ``size``."""
    h, w = size
    x = (grid[..., 0] + 1) * w / 2 - 0.5
    y = (grid[..., 1] + 1) * h / 2 - 0.5
    return torch.stack([x, y], 1)


# ---------------------------------------------------------------------------------------------- demo
def contact_sheet(items: Dict[str, torch.Tensor], columns: int = 4, cell: int = 256) -> torch.Tensor:
    """Tile labelled images ``(1, 3|1, H, W)`` into one ``(1, 3, H, W)`` sheet (labels drawn with PIL)."""
    from PIL import Image, ImageDraw
    import numpy as np
    from .imageio import thumbnail
    rows = math.ceil(len(items) / columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 18)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (name, img) in enumerate(items.items()):
        x0, y0 = (i % columns) * cell, (i // columns) * (cell + 18)
        sheet.paste(thumbnail(img, cell), (x0, y0 + 18))
        draw.text((x0 + 4, y0 + 3), name, fill=(0, 0, 0))
    arr = np.asarray(sheet, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def run_demo(out_dir, size: int = 384, seed: int = 0, log=print) -> Dict[str, Path]:
    """Make procedural images, run weight-free stylisation and match + warp, write PNGs and a contact sheet.

    Returns the written paths by name.
    """
    from .imageio import save_image
    from .weightfree import match_images, stylize_weight_free
    if size < 64 or size > 2048:
        raise ValueError(f"demo size must be between 64 and 2048, got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: Dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    images["content"] = scene_image(size, size, seed + 1)
    images["style"] = brush_texture(size, size, seed + 2)
    images["stylized"] = stylize_weight_free(images["content"], images["style"])
    images["stylized (strength 0.5, colours kept)"] = stylize_weight_free(
        images["content"], images["style"], strength=0.5, preserve_color=True)
    t1 = time.perf_counter()
    exemplar = textured_image(size, size, seed + 3)
    grid = tps_grid(size, size, seed + 4)
    target = warp_with_grid(exemplar, grid)
    corr = match_images(target, exemplar)
    warped = corr.warp(exemplar)
    t2 = time.perf_counter()
    images["exemplar"] = exemplar
    images["target"] = target
    images["exemplar warped onto target"] = warped
    images["flow"] = corr.visualize("flow")
    images["confidence"] = corr.confidence
    truth = grid_to_pixels(grid, (size, size))
    epe = (corr.source_coordinates() - truth).norm(dim=1).mean().item()
    psnr = -10 * math.log10(max(F.mse_loss(warped, target).item(), 1e-12))
    paths = {}
    for name, img in images.items():
        key = name.split(" (")[0].replace(" ", "_") + ("_half" if "0.5" in name else "")
        paths[key] = save_image(img[0], out / f"{key}.png")
    paths["contact_sheet"] = save_image(contact_sheet(images)[0], out / "contact_sheet.png")
    log(f"weight-free style transfer: {t1 - t0:.1f} s for two {size}x{size} results")
    log(f"weight-free match + warp: {t2 - t1:.1f} s; mean end-point error {epe:.2f} px, warped PSNR {psnr:.1f} dB")
    return paths
