"""Video: temporally coherent stylisation and keyframe propagation, built on the correspondence engine.

* :func:`carry_previous`: the previous output frame carried to the current frame by the weight-free
  correspondence between the two *content* frames, with a per-pixel weight that is high only where that
  correspondence is not a poor match (confidence above 0.3; it fades out below) and the carried content agrees
  with the current content (so occluded, newly revealed and changed regions take the new frame).
  :func:`dynast_core.api.stylize` blends it in with its ``temporal`` strength: static and slowly moving regions
  stop flickering.
* :func:`propagate_keyframes`: the EbSynth use inside ComfyUI. Restyled keyframes (from any source: Stylize,
  a diffusion img2img, a painted frame) are carried to every frame of the clip by the correspondence from the
  frame to each keyframe's original frame, and blended by confidence and distance in time. Where no keyframe
  matches well, a mask says so, for a diffusion inpainting pass.

All images are ``(B, 3, H, W)`` RGB in [0, 1]; frames of a clip are a batch.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["carry_previous", "propagate_keyframes", "parse_keyframe_indices"]

Progress = Optional[Callable[[int, int], None]]

#: colour difference (mean absolute, [0, 1] scale) at which carried content stops counting as the same
AGREEMENT_SCALE = 0.06
#: match confidence below which a carried pixel is not trusted at all / above which fully (linear between)
CONFIDENCE_RAMP = (0.1, 0.3)


def _agreement(carried: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` in [0, 1]: 1 where the carried content looks like the current content."""
    d = (carried.float() - current.float()).abs().mean(1, keepdim=True)
    return torch.exp(-(d / AGREEMENT_SCALE) ** 2)


def _weight_map(conf: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    """Where to trust carried content: the colour agreement, faded out where the match is poor. The
    confidence is a gate, not a factor: a moving surface matches with a confidence of about 0.7 (its resampled
    descriptors differ a little), and multiplying by it left a third of the flicker in pans."""
    from .masks import feather
    lo, hi = CONFIDENCE_RAMP
    return feather(agree * ((conf - lo) / (hi - lo)).clamp(0, 1), 2.0).clamp(0, 1)


def carry_previous(prev_output: torch.Tensor, prev_content: torch.Tensor, content: torch.Tensor, *,
                   grid_scale: float = 1.0, query_chunk_size: Optional[int] = None,
                   dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The previous output carried onto the current frame, and where to trust it.

    Args:
        prev_output: ``(1, C, H, W)`` the previous processed frame; prev_content, content: ``(1, 3, H, W)`` the
            previous and current input frames (all on one device).
        grid_scale: match on a grid this fraction of the frame (the warp still resamples at full resolution;
            the full grid, the default, steadies pans most: about 0.3 s per frame at 512 px on two CPU cores).
        dtype: the matching precision (default float32).

    Returns:
        ``(carried (1, C, H, W), weight (1, 1, H, W) in [0, 1])``.
    """
    from .api import make_exemplar, match, warp
    r = match(make_exemplar(prev_content), target_image=content, grid_scale=grid_scale,
              query_chunk_size=query_chunk_size, dtype=dtype)
    carried = warp(r, prev_output)
    agree = _agreement(warp(r, prev_content), content)
    return carried, _weight_map(r.confidence(), agree)


def parse_keyframe_indices(indices, frames: int) -> List[int]:
    """Keyframe indices from a list or a text like ``"0, 24, 48"`` (negative counts from the end), checked
    against a clip of ``frames`` frames.

    Raises:
        ValueError: not integers, outside the clip, or repeated.
    """
    if isinstance(indices, str):
        parts = [p for p in indices.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
        try:
            indices = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"keyframe indices must be whole numbers separated by commas (e.g. '0, 24'), got "
                             f"{indices!r}") from None
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("give at least one keyframe index")
    out = []
    for i in idx:
        j = i + frames if i < 0 else i
        if not 0 <= j < frames:
            raise ValueError(f"keyframe index {i} is outside the clip of {frames} frames (0 to {frames - 1})")
        out.append(j)
    if len(set(out)) != len(out):
        raise ValueError(f"keyframe indices repeat: {idx}")
    return out


def _time_weights(t: int, keys: Sequence[int]) -> List[float]:
    """Weight of each keyframe for frame ``t``: between two keyframes a linear ramp from one to the other (the
    others 0); before the first or after the last, the nearest one alone (others decay with distance)."""
    keys = list(keys)
    before = [k for k in keys if k <= t]
    after = [k for k in keys if k >= t]
    w = [0.0] * len(keys)
    if before and after:
        a, b = max(before), min(after)
        if a == b:
            w[keys.index(a)] = 1.0
        else:
            w[keys.index(a)] = (b - t) / (b - a)
            w[keys.index(b)] = (t - a) / (b - a)
    else:
        near = max(before) if before else min(after)
        for i, k in enumerate(keys):
            w[i] = 1.0 if k == near else 0.05 / (1 + abs(k - t))     # a little help where the nearest fails
    return w


@torch.no_grad()
def propagate_keyframes(frames: torch.Tensor, keyframe_indices, keyframes: torch.Tensor, *, threshold: float = 0.5,
                        grid_scale: float = 1.0, query_chunk_size: Optional[int] = None, device=None, dtype=None,
                        output_device=None, progress: Progress = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Carry restyled keyframes to every frame of a clip.

    Args:
        frames: ``(N, 3, H, W)`` the original clip.
        keyframe_indices: which frames were restyled (a list or ``"0, 24"``), one per keyframe image.
        keyframes: ``(K, 3, h, w)`` the restyled keyframes, in the order of the indices (resized to the frames'
            size if they differ).
        threshold: confidence below which a pixel is marked in the returned mask (1 = repaint here).
        grid_scale: match on a grid this fraction of the frame (faster; the warp resamples at full size).
        device, dtype, output_device: see :mod:`dynast_core.runtime`.

    Returns:
        ``(images (N, 3, H, W), low_confidence (N, 1, H, W))`` on the output device; a keyframe's own frame (and
        any frame identical to it) gets the keyframe exactly, with a zero mask.
    """
    from .api import _check_image, make_exemplar, match, warp
    from .runtime import resolve_placement
    _check_image(frames, "frames")
    _check_image(keyframes, "keyframes")
    n = frames.shape[0]
    keys = parse_keyframe_indices(keyframe_indices, n)
    if keyframes.shape[0] != len(keys):
        raise ValueError(f"{len(keys)} keyframe indices but {keyframes.shape[0]} keyframe images: give one restyled "
                         "image per index, in the same order")
    if not 0 <= float(threshold) <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    pl = resolve_placement(frames, device=device, dtype=dtype, output_device=output_device)
    size = tuple(frames.shape[-2:])
    styled = keyframes
    if tuple(keyframes.shape[-2:]) != size:
        styled = F.interpolate(keyframes.float(), size=size, mode="bicubic", align_corners=False,
                               antialias=keyframes.shape[-2] > size[0]).clamp(0, 1)
    styled = pl.put(styled)
    originals = [pl.put(frames[k:k + 1]) for k in keys]
    exemplars = [make_exemplar(o) for o in originals]
    images, masks = [], []
    last = [None] * len(keys)                        # each keyframe's previous match: the warm start of the next
    for t in range(n):
        frame = pl.put(frames[t:t + 1])
        w_time = _time_weights(t, keys)
        acc = torch.zeros_like(styled[:1], dtype=torch.float32)
        total = torch.zeros_like(frame[:, :1], dtype=torch.float32)
        best = torch.zeros_like(total)
        exact = None
        for i, k in enumerate(keys):
            if torch.equal(frame, originals[i]):
                exact = styled[i:i + 1].float()
                break
            if w_time[i] <= 0:
                continue
            r = match(exemplars[i], target_image=frame, grid_scale=grid_scale, query_chunk_size=query_chunk_size,
                      dtype=pl.dtype, previous=last[i])
            last[i] = r
            conf = r.confidence() * _agreement(warp(r, originals[i]), frame)
            carried = warp(r, styled[i:i + 1]).float()
            weight = w_time[i] * conf + 1e-6 * w_time[i]
            acc += weight * carried
            total += weight
            best = torch.maximum(best, conf)
        if exact is not None:
            images.append(pl.out(exact))
            masks.append(pl.out(torch.zeros_like(frame[:, :1], dtype=torch.float32)))
        else:
            images.append(pl.out((acc / total.clamp_min(1e-12)).clamp(0, 1)))
            masks.append(pl.out((best < threshold).float()))
        if progress is not None:
            progress(t + 1, n)
    return torch.cat(images), torch.cat(masks)
