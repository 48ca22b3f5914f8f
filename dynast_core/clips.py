"""Synthetic video clips with known motion, and the flicker measure of video stylisation.

:func:`synthetic_clip` renders a clip from a still image (or a procedural one) with a known motion: a pan, a
zoom, a smooth thin-plate-like wobble, or a textured object moving over the background (which occludes and
disoccludes it). For every pair of frames it knows where each pixel of frame ``t`` was in frame ``s`` and
whether it was visible there (:meth:`SyntheticClip.flow`), so temporal consistency can be measured exactly.
A deterministic stylisation can be rendered along (the same motion applied to a stylised copy of the scene),
which is the ground truth of keyframe propagation.

:func:`warping_error` is the flicker measure of Lai et al. (ECCV 2018, "Learning Blind Video Temporal
Consistency"): the mean squared difference between output frame ``t`` and output frame ``t - 1`` warped by
the true flow, over the pixels visible in both, averaged over the frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["KINDS", "SyntheticClip", "synthetic_clip", "toon_stylise", "warp_by_flow", "warping_error",
           "psnr"]

#: the motions :func:`synthetic_clip` renders
KINDS = ("pan", "zoom", "wobble", "object")


def _sample(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``img`` ``(1, C, H, W)`` at pixel positions ``xy`` ``(2, h, w)`` (x, y), border clamp."""
    h, w = img.shape[-2:]
    gx = (xy[0] + 0.5) / w * 2 - 1
    gy = (xy[1] + 0.5) / h * 2 - 1
    return F.grid_sample(img, torch.stack([gx, gy], -1)[None], mode="bilinear", padding_mode="border",
                         align_corners=False)


def toon_stylise(img: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """A deterministic local stylisation ``(B, 3, H, W)`` -> same: smoothed colours quantised to ``levels``
    per channel, hue rotated, with dark Sobel edges (only 3x3/5x5 neighbourhoods: moving the stylised scene
    equals stylising the moved scene away from borders)."""
    from kornia.filters import gaussian_blur2d, sobel
    smooth = gaussian_blur2d(img, (5, 5), (1.0, 1.0), border_type="replicate")
    q = torch.round(smooth * (levels - 1)) / (levels - 1)
    rotated = torch.stack([q[:, 1], q[:, 2], q[:, 0]], 1) * 0.8 + 0.2 * q
    edges = sobel(smooth.mean(1, keepdim=True)).clamp(0, 0.25) / 0.25
    return (rotated * (1 - 0.8 * edges)).clamp(0, 1)


@dataclass
class SyntheticClip:
    """A rendered clip and its ground truth.

    Attributes:
        frames: ``(N, 3, H, W)`` in [0, 1].
        stylised: ``(N, 3, H, W)`` the same motion applied to the stylised scene (None if not rendered).
        kind: the motion.
    """

    frames: torch.Tensor
    stylised: Optional[torch.Tensor]
    kind: str
    _position: Callable[[int, int], Tuple[torch.Tensor, torch.Tensor]] = field(repr=False, default=None)

    def __len__(self) -> int:
        return self.frames.shape[0]

    def flow(self, t: int, s: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Where each pixel of frame ``t`` lies in frame ``s``: ``(flow (2, H, W) (dx, dy) in pixels, valid
        (1, H, W))``, valid = inside frame ``s``, showing the same surface (not occluded), and away from the
        object's anti-aliased outline."""
        return self._position(t, s)


def warp_by_flow(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` ``(B, C, H, W)`` at each pixel plus ``flow`` ``(2, H, W)`` or ``(B, 2, H, W)`` (bilinear)."""
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device),
                            torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij")
    fl = flow if flow.dim() == 4 else flow[None].expand(x.shape[0], -1, -1, -1)
    gx = (xs + fl[:, 0] + 0.5) / w * 2 - 1
    gy = (ys + fl[:, 1] + 0.5) / h * 2 - 1
    return F.grid_sample(x, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=False)


def warping_error(outputs: torch.Tensor, clip: SyntheticClip) -> float:
    """Lai et al.'s warping error of ``outputs`` ``(N, C, H, W)`` (a processed clip, values in [0, 1]) against
    the clip's true motion: mean over frames ``t >= 1`` of the mean squared difference between output ``t``
    and output ``t - 1`` warped into frame ``t``, over the pixels visible in both."""
    if outputs.shape[0] != len(clip) or outputs.shape[0] < 2:
        raise ValueError(f"outputs must have the clip's {len(clip)} frames (at least 2), got {outputs.shape[0]}")
    errs = []
    for t in range(1, outputs.shape[0]):
        flow, valid = clip.flow(t, t - 1)
        prev = warp_by_flow(outputs[t - 1:t].float(), flow)
        d = ((outputs[t:t + 1].float() - prev) ** 2).mean(1)[0]
        errs.append(float((d * valid[0]).sum() / valid.sum().clamp_min(1)))
    return sum(errs) / len(errs)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1], over ``mask`` (``(1, H, W)``) where given."""
    d = ((a.float() - b.float()) ** 2).mean(-3)
    if mask is not None:
        mse = float((d * mask).sum() / (mask.sum() * d.shape[0] / mask.shape[0]).clamp_min(1))
    else:
        mse = float(d.mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _grid(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys])


def _smooth_field(h: int, w: int, gen: torch.Generator, cells: int = 4) -> torch.Tensor:
    """A smooth random displacement direction field ``(2, h, w)`` with values in about [-1, 1]."""
    coarse = torch.rand(1, 2, cells, cells, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]


def synthetic_clip(kind: str = "pan", frames: int = 8, size: int = 256, image: Optional[torch.Tensor] = None,
                   seed: int = 0, speed: float = 2.0, stylise: Optional[Callable] = toon_stylise) -> SyntheticClip:
    """Render a clip of ``frames`` frames, ``size`` x ``size``, with a known motion.

    Args:
        kind: ``"pan"`` (the view slides ``speed`` px per frame, diagonally), ``"zoom"`` (zooms in by
            ``speed`` / size per frame around the centre), ``"wobble"`` (a smooth non-rigid wobble of amplitude
            ``2 * speed`` px), ``"object"`` (a textured disc crosses a slowly panning background at ``2 * speed``
            px per frame: occlusions and disocclusions).
        image: the scene ``(1, 3, H, W)`` in [0, 1] (resized to the canvas); default a procedural textured image.
        stylise: a deterministic stylisation rendered along (None: skip).

    Returns:
        :class:`SyntheticClip`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown motion {kind!r}: one of {', '.join(KINDS)}")
    if frames < 1 or size < 16:
        raise ValueError(f"need at least 1 frame of at least 16 px, got {frames} frames of {size} px")
    gen = torch.Generator().manual_seed(seed)
    margin = int(math.ceil(speed * frames * 1.5)) + 8
    canvas_side = size + 2 * margin
    if image is None:
        from .demo import textured_image
        canvas = textured_image(canvas_side, canvas_side, seed=seed)
    else:
        canvas = F.interpolate(image.float(), size=(canvas_side, canvas_side), mode="bicubic", align_corners=False,
                               antialias=True).clamp(0, 1)
    styled_canvas = stylise(canvas) if stylise is not None else None
    base = _grid(size, size)
    centre = torch.tensor([(size - 1) / 2, (size - 1) / 2]).view(2, 1, 1)
    direction = torch.tensor([1.0, 0.6]).view(2, 1, 1) / math.hypot(1.0, 0.6)
    wobble = _smooth_field(size, size, gen)
    phase = float(torch.rand(1, generator=gen)) * 2 * math.pi

    # to_canvas(t, x): frame-t pixel -> canvas pixel (background); from_canvas(s, c): inverse
    if kind == "pan" or kind == "object":
        v = (speed if kind == "pan" else speed * 0.25) * direction

        def to_canvas(t, x):
            return x + margin + t * v

        def from_canvas(s, c):
            return c - margin - s * v
    elif kind == "zoom":
        rate = 1 + speed / size

        def to_canvas(t, x):
            return centre + margin + (x - centre) / rate ** t

        def from_canvas(s, c):
            return centre + (c - margin - centre) * rate ** s
    else:  # wobble: x + a(t) D(x), inverted by fixed-point iteration
        def amp(t):
            return 2 * speed * math.sin(0.6 * t + phase)

        def to_canvas(t, x):
            return x + margin + amp(t) * _bilinear_field(wobble, x)

        def from_canvas(s, c):
            x = c - margin
            for _ in range(20):
                x = c - margin - amp(s) * _bilinear_field(wobble, x)
            return x

    # the object: a textured disc of radius ~size/6 moving at 2*speed px per frame across the frame
    radius = size / 6
    obj_tex = None
    if kind == "object":
        from .demo import textured_image
        obj_side = int(2 * radius) + 4
        obj_tex = textured_image(obj_side, obj_side, seed=seed + 101)
        start = torch.tensor([size * 0.2, size * 0.35]).view(2, 1, 1)
        vel = 2 * speed * torch.tensor([1.0, 0.25]).view(2, 1, 1)
        styled_obj = stylise(obj_tex) if stylise is not None else None

    def obj_centre(t):
        return start + t * vel

    def obj_alpha(t, x):
        d = ((x - obj_centre(t)) ** 2).sum(0, keepdim=True).sqrt()
        return (radius + 0.5 - d).clamp(0, 1)                      # anti-aliased disc

    def render(t, scene, obj):
        img = _sample(scene, to_canvas(t, base))
        if kind == "object":
            local = base - obj_centre(t) + (obj.shape[-1] - 1) / 2
            a = obj_alpha(t, base)
            img = a * _sample(obj, local) + (1 - a) * img
        return img

    frames_t = torch.cat([render(t, canvas, obj_tex) for t in range(frames)])
    styled = torch.cat([render(t, styled_canvas, styled_obj if kind == "object" else None) for t in range(frames)]) \
        if stylise is not None else None

    def position(t: int, s: int):
        bg = from_canvas(s, to_canvas(t, base))
        inside = lambda p: ((p[0] >= 0) & (p[0] <= size - 1) & (p[1] >= 0) & (p[1] <= size - 1))  # noqa: E731
        if kind != "object":
            return bg - base, inside(bg)[None].float()
        a_t = obj_alpha(t, base)[0]
        on_obj = a_t >= 1
        obj_pos = base - obj_centre(t) + obj_centre(s)
        pos = torch.where(on_obj[None], obj_pos, bg)
        a_s = obj_alpha(s, pos)[0]
        # visible in s: object pixels stay object pixels; background pixels must not be under the object in s;
        # pixels on the anti-aliased outline at either time are left out
        valid = inside(pos) & torch.where(on_obj, a_s >= 1, a_s <= 0) & ((a_t >= 1) | (a_t <= 0))
        return pos - base, valid[None].float()

    return SyntheticClip(frames_t, styled, kind, position)


def _bilinear_field(field: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sample a ``(2, h, w)`` field at pixel positions ``x`` ``(2, h, w)``."""
    return _sample(field[None], x)[0]
