"""User-level functions: what the ComfyUI nodes and the command line call, one function per node.

Images are RGB in ``[0, 1]``, ``(B, 3, H, W)``; layout labels ``(B, L, H, W)``; masks ``(B, 1, H, W)``.
Every function takes a model or None (the weight-free path), plus ``device``, ``dtype`` and
``output_device`` resolved by one policy (:mod:`dynast_core.runtime`): the work runs on ``device``, the
results come back on the device the inputs arrived on. Batches are processed in windows of ``window``
frames (default: the whole batch), each window moved to the compute device once, so a long clip needs the
memory of one window, not of the clip.

* :func:`make_exemplar` -> :class:`Exemplar` (an image plus its layout);
* :func:`match` -> :class:`MatchResult` (a :class:`~dynast_core.correspondence.Correspondence` from the target to
  the exemplar, with what :func:`decode` needs when a DynaST model computed it);
* :func:`decode`, :func:`generate` (match + decode), :func:`warp` (anything laid out on the exemplar onto the
  target), :func:`stylize` (StyA2K or weight-free).

Example:
    >>> import torch
    >>> ex = make_exemplar(torch.rand(1, 3, 64, 48))
    >>> result = match(ex, target_image=torch.rand(1, 3, 64, 48))
    >>> warp(result).shape
    torch.Size([1, 3, 64, 48])
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .correspondence import Correspondence
from .runtime import Placement, resolve_placement, to_device

__all__ = ["Exemplar", "MatchResult", "Generated", "LAYOUTS", "make_exemplar", "match", "decode", "generate",
           "warp", "stylize", "estimate_memory", "frame_windows"]

Progress = Optional[Callable[[int, int], None]]
#: what the Exemplar's layout can be made from
LAYOUTS = ("auto", "pose", "label", "edges", "none")


# ---------------------------------------------------------------------------------------------- checks
def _check_image(x, name: str, min_side: int = 8) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be an RGB batch (B, 3, H, W) in [0, 1], got "
                         f"{getattr(x, 'shape', type(x).__name__)}; drop an alpha channel or repeat a grey one")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point in [0, 1], got {x.dtype}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is an empty batch")
    if min(x.shape[-2:]) < min_side:
        raise ValueError(f"{name} is {x.shape[-2]}x{x.shape[-1]}: at least {min_side} pixels per side are needed")


def _check_label(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] < 1:
        raise ValueError(f"{name} must be a layout label (B, L, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got {x.dtype}")


def _check_window(window: Optional[int]) -> None:
    if window is not None and int(window) < 1:
        raise ValueError(f"window must be a positive number of frames (or None for the whole batch), got {window}")


def frame_windows(n: int, window: Optional[int]) -> Iterator[Tuple[int, int]]:
    """``(start, end)`` ranges covering ``n`` frames, ``window`` at a time (None: all at once)."""
    _check_window(window)
    step = n if window is None else max(1, int(window))
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _rows(x: Optional[torch.Tensor], s: int, e: int) -> Optional[torch.Tensor]:
    """Frames ``s:e`` of a batch, or the whole tensor when it has batch 1 (shared by every frame)."""
    if x is None:
        return None
    return x if x.shape[0] == 1 else x[s:e]


def _sub_progress(progress: Progress, start: int, end: int, frames: int) -> Progress:
    """A progress hook for the window of frames ``start:end`` of ``frames``: the inner ``(step, total)`` of the
    window becomes overall ``(step, total)`` in units of ``total`` per frame (so the bar moves per frame)."""
    if progress is None:
        return None

    def hook(step, total):
        progress(start * total + step * (end - start), frames * total)
    return hook


# ---------------------------------------------------------------------------------------------- exemplar
@dataclass
class Exemplar:
    """An exemplar image and, optionally, its layout label.

    Attributes:
        image: ``(B, 3, H, W)`` RGB in [0, 1] (B is 1 for one exemplar serving every target).
        label: ``(B or 1, L, H, W)`` layout label at the image's size, or None (image-only matching).
        layout: how the label was made: ``"pose"``, ``"label"``, ``"edges"`` or ``"none"``.
    """

    image: torch.Tensor
    label: Optional[torch.Tensor] = None
    layout: str = "none"

    def __post_init__(self):
        _check_image(self.image, "exemplar image")
        if self.label is not None:
            _check_label(self.label, "exemplar label")
            if tuple(self.label.shape[-2:]) != tuple(self.image.shape[-2:]):
                raise ValueError(f"the exemplar label is {tuple(self.label.shape[-2:])} but the image "
                                 f"{tuple(self.image.shape[-2:])}: resize the label to the image")
            b, bl = self.image.shape[0], self.label.shape[0]
            if bl != b and 1 not in (b, bl):
                raise ValueError(f"the exemplar layout has {bl} frames but the image batch is {b}")

    @property
    def size(self) -> Tuple[int, int]:
        return tuple(self.image.shape[-2:])

    @property
    def batch_size(self) -> int:
        return max(self.image.shape[0], 0 if self.label is None else self.label.shape[0])

    def frames(self, s: int, e: int) -> "Exemplar":
        """Frames ``s:e`` (a batch-1 exemplar is shared by every frame)."""
        return Exemplar(_rows(self.image, s, e), _rows(self.label, s, e), self.layout)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Exemplar":
        return Exemplar(to_device(self.image, device, dtype), to_device(self.label, device, dtype), self.layout)


def make_exemplar(image: torch.Tensor, *, layout: str = "auto", pose=None,
                  label: Optional[torch.Tensor] = None) -> Exemplar:
    """Bundle an exemplar image with its layout.

    Args:
        image: ``(B, 3, H, W)`` RGB in [0, 1].
        layout: ``"pose"`` (from ``pose``: OpenPose-18 keypoints, e.g. ComfyUI POSE_KEYPOINT frames),
            ``"label"`` (a ready ``label``, resized nearest to the image), ``"edges"`` (the CelebA-HQ edge label
            computed from the image), ``"none"`` (image-only matching) or ``"auto"`` (pose if given, else label,
            else none).
        pose, label: the inputs for those layouts.

    Raises:
        ValueError: a layout whose input is missing, an unknown layout, a label/batch mismatch.
    """
    _check_image(image, "exemplar image")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = "pose" if pose is not None else ("label" if label is not None else "none")
    h, w = image.shape[-2:]
    if layout == "pose":
        if pose is None:
            raise ValueError("layout 'pose' needs the exemplar's pose keypoints (the pose / pose_keypoint input)")
        from .conditioning import pose_frames_to_label
        lab = pose_frames_to_label(pose, h, w).to(image.device)
    elif layout == "label":
        if label is None:
            raise ValueError("layout 'label' needs the exemplar's layout label (the label input)")
        _check_label(label, "exemplar label")
        lab = F.interpolate(label.float(), size=(h, w), mode="nearest")
    elif layout == "edges":
        from .conditioning import image_to_edge_label
        lab = image_to_edge_label(image)
    else:
        lab = None
    return Exemplar(image, lab, layout)


# ---------------------------------------------------------------------------------------------- match
@dataclass
class MatchResult:
    """What :func:`match` found.

    Attributes:
        correspondence: from the target grid to the exemplar grid (candidates, weights, confidence).
        target_size: ``(H, W)`` of the target in pixels.
        exemplar: the exemplar it matched against (what :func:`warp` warps by default).
        method: ``"dynast"`` (a DynaST model), ``"layout"`` (weight-free, on layout labels) or ``"image"``
            (weight-free, on the images).
        state: for ``"dynast"``, what :func:`decode` continues from (per-scale features and the label), or
            None when not kept.
    """

    correspondence: Correspondence
    target_size: Tuple[int, int]
    exemplar: Exemplar
    method: str
    state: Optional[object] = None

    @property
    def batch_size(self) -> int:
        return self.correspondence.batch_size

    @property
    def device(self) -> torch.device:
        return self.correspondence.device

    def to(self, device=None) -> "MatchResult":
        """Every tensor (the decode state included) to ``device``."""
        return MatchResult(self.correspondence.to(device), self.target_size, self.exemplar.to(device), self.method,
                           None if self.state is None else self.state.to(device))

    def tensors(self) -> List[torch.Tensor]:
        """Every tensor this result holds (for checks of where they live)."""
        out = [self.correspondence.indices, self.correspondence.weights, self.correspondence.confidence,
               self.exemplar.image]
        if self.exemplar.label is not None:
            out.append(self.exemplar.label)
        if self.state is not None:
            s = self.state
            out += list(s.features.values()) + list(s.confidence.values()) + [s.label] + list(s.warped)
            for c in s.correspondences.values():
                out += [c.indices, c.weights, c.confidence]
        return out

    def confidence(self, threshold: Optional[float] = None, low: bool = False) -> torch.Tensor:
        """``(B, 1, H, W)`` confidence at the target size (see :meth:`Correspondence.confidence_mask`)."""
        return self.correspondence.confidence_mask(threshold, size=self.target_size, low=low)

    def preview(self, kind: str = "flow") -> torch.Tensor:
        """``(B, 3, H, W)`` flow or source colours at the target size."""
        return self.correspondence.visualize(kind, size=self.target_size)


def _target(target_label, target_pose, target_image, exemplar: Exemplar):
    """Validate the targets, make a label from a pose; returns (label or None, image or None, size, batch)."""
    if target_image is not None:
        _check_image(target_image, "target image")
    if target_label is not None:
        _check_label(target_label, "target label")
    elif target_pose is not None:
        from .conditioning import pose_frames_to_label
        size = tuple(target_image.shape[-2:]) if target_image is not None else exemplar.size
        target_label = pose_frames_to_label(target_pose, *size)
    source = target_label if target_label is not None else target_image
    if source is None:
        return None, None, None, 0
    if target_label is not None and target_image is not None and target_image.shape[0] != target_label.shape[0]:
        raise ValueError(f"the target image batch {target_image.shape[0]} and the target layout batch "
                         f"{target_label.shape[0]} differ: give one layout per frame")
    b = source.shape[0]
    if exemplar.batch_size not in (1, b):
        raise ValueError(f"the exemplar has {exemplar.batch_size} frames and the target {b}: give one exemplar for "
                         "every target, or one per target")
    return target_label, target_image, tuple(source.shape[-2:]), b


def _dynast_inputs(model, exemplar: Exemplar, label) -> None:
    if exemplar.label is None or label is None:
        raise ValueError("matching with a DynaST model needs layouts: give the exemplar a pose / label / edges "
                         "layout, and a target label or pose")
    nc = model.config.semantic_nc
    if exemplar.label.shape[1] != nc or label.shape[1] != nc:
        raise ValueError(f"this DynaST model takes {nc}-channel labels; the exemplar label has "
                         f"{exemplar.label.shape[1]} and the target label {label.shape[1]} channels")


def _method(model, exemplar: Exemplar, label, image) -> str:
    if model is not None:
        _dynast_inputs(model, exemplar, label)
        return "dynast"
    if label is not None and exemplar.label is not None:
        if label.shape[1] != exemplar.label.shape[1]:
            raise ValueError(f"the target label has {label.shape[1]} channels, the exemplar's "
                             f"{exemplar.label.shape[1]}: build both the same way")
        return "layout"
    if image is not None:
        return "image"
    raise ValueError("nothing to match against: give a target image (image matching), or a target label / pose "
                     "with an exemplar that has a layout")


def _match_window(method, model, ex: Exemplar, label, image, *, top_k, grid_scale, query_chunk_size, progress,
                  decode_too: bool, clip: "_ClipState"):
    """One window on the compute device: (correspondence, DynaST state or None, decoded image or None)."""
    if method == "dynast":
        cache = clip.dynast_cache(model, ex, label)
        m = model.match(label, None if cache else ex.image * 2 - 1, None if cache else ex.label, top_k=top_k,
                        query_chunk_size=query_chunk_size, progress=progress, exemplar_cache=cache)
        img = ((model.decode(m) + 1) / 2).clamp(0, 1) if decode_too else None
        return m.correspondence, m.for_decode(), img
    from .weightfree import match_images, match_layouts
    kw = dict(top_k=4 if top_k is None else top_k, grid_scale=grid_scale, query_chunk_size=query_chunk_size)
    n = (label if label is not None else image).shape[0]

    def one(rows, init, hook):
        if method == "layout":
            return match_layouts(_rows(label, *rows), ex.frames(*rows).label, init=init, progress=hook, **kw)
        return match_images(_rows(image, *rows), ex.frames(*rows).image, init=init, progress=hook,
                            exemplar_cache=clip.weight_free, **kw)
    if not clip.temporal:
        return one((0, n), None, progress), None, None
    corrs = []
    for j in range(n):                                # warm start: frame by frame, each from the previous one
        corr = one((j, j + 1), clip.previous, _sub_progress(progress, j, j + 1, n))
        clip.previous = corr.indices
        corrs.append(corr)
    return (corrs[0] if n == 1 else Correspondence.cat(corrs)), None, None


class _ClipState:
    """What one match call keeps from window to window: the exemplar's weight-free descriptor pyramid or DynaST
    exemplar branch (computed once per call when one exemplar serves every frame), and with ``temporal`` the
    previous frame's candidates."""

    def __init__(self, temporal: bool, shared_exemplar: bool):
        self.temporal, self.shared = bool(temporal), shared_exemplar
        self.previous: Optional[torch.Tensor] = None
        self.weight_free: Optional[dict] = {} if shared_exemplar else None   # see match_images(exemplar_cache)
        self._dynast = None

    def dynast_cache(self, model, ex: Exemplar, label):
        """The DynaST exemplar branch, computed at the first window (None: per call, e.g. one exemplar per
        frame, or a model without ``encode_exemplar``)."""
        encode = getattr(model, "encode_exemplar", None)
        if not self.shared or encode is None or torch.is_grad_enabled():
            return None
        if self._dynast is None:
            self._dynast = encode(ex.image * 2 - 1, ex.label, tuple(label.shape[-2:]))
        return self._dynast


class _Batch:
    """The windows' correspondences written into one batch allocated at the first window, so the output is held
    once (a list of windows and a final concatenation would hold it twice at the end). The windows of one call
    share their grids and candidate count."""

    def __init__(self, total: int):
        self.total, self.first, self.buf, self.pos = total, None, None, 0

    def add(self, c: Correspondence) -> None:
        parts = (c.indices, c.weights, c.confidence)
        if self.first is None:
            self.first = c
            if c.indices.shape[0] == self.total:          # one window: nothing to gather
                return
            self.buf = [torch.empty((self.total,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
                        for t in parts]
        for t, b in zip(parts, self.buf):
            b[self.pos:self.pos + t.shape[0]].copy_(t)
        self.pos += c.indices.shape[0]

    def result(self) -> Correspondence:
        if self.buf is None:
            return self.first
        return Correspondence(self.buf[0], self.buf[1], self.first.query_size, self.first.key_size, self.buf[2])


def _run_match(exemplar, target_label, target_pose, target_image, model, *, top_k, grid_scale, query_chunk_size,
               window, keep_state, decode_too, device, dtype, output_device, progress, temporal=False,
               previous=None):
    if not isinstance(exemplar, Exemplar):
        raise ValueError(f"exemplar must be an Exemplar (see make_exemplar), got {type(exemplar).__name__}")
    if not 0 < float(grid_scale) <= 1:
        raise ValueError(f"grid_scale must be in (0, 1], got {grid_scale}")
    if top_k is not None and int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    label, image, size, b = _target(target_label, target_pose, target_image, exemplar)
    method = _method(model, exemplar, label, image)
    pl = resolve_placement(label if label is not None else image, model=model, device=device, dtype=dtype,
                           output_device=output_device)
    ex = pl.put(exemplar)                                           # once per call
    clip = _ClipState((temporal or previous is not None) and method != "dynast", exemplar.batch_size == 1)
    if previous is not None and clip.temporal:
        if not isinstance(previous, MatchResult) or previous.method != method or previous.target_size != size:
            raise ValueError("previous must be the MatchResult of the preceding frame, matched the same way "
                             f"({method}) at the same size {size}")
        clip.previous = pl.put(previous.correspondence.indices[-1:])
    windows = list(frame_windows(b, window))
    corrs, states, images = _Batch(b), [], []
    for i, (s, e) in enumerate(windows):
        with torch.inference_mode():
            corr, state, img = _match_window(method, model, ex.frames(s, e), pl.put(_rows(label, s, e)),
                                             pl.put(_rows(image, s, e)), top_k=top_k, grid_scale=grid_scale,
                                             query_chunk_size=query_chunk_size,
                                             progress=_sub_progress(progress, s, e, b),
                                             decode_too=decode_too, clip=clip)
            corrs.add(pl.out(corr))
            if keep_state and state is not None:
                states.append(pl.out(state, dtype=None))
            if img is not None:
                images.append(pl.out(img))
            del corr, state, img
    corr = corrs.result()
    state = None
    if states:
        state = states[0] if len(states) == 1 else type(states[0]).cat(states)
    result = MatchResult(corr, size, exemplar.to(pl.output_device), method, state)
    return result, (torch.cat(images) if images else None)


def match(exemplar: Exemplar, *, target_label: Optional[torch.Tensor] = None, target_pose=None,
          target_image: Optional[torch.Tensor] = None, model: Optional[nn.Module] = None, top_k: Optional[int] = None,
          grid_scale: float = 1.0, query_chunk_size: Optional[int] = None, window: Optional[int] = None,
          keep_state: bool = True, temporal: bool = False, previous: Optional["MatchResult"] = None, device=None,
          dtype=None, output_device=None, progress: Progress = None) -> MatchResult:
    """For every target position, where in the exemplar it takes its appearance from.

    With a DynaST ``model``: the learned dynamic sparse attention on the layouts (the exemplar needs a
    layout, the target a ``target_label`` or ``target_pose``). Without: the weight-free cascade, on the layout
    labels when both sides have one, else on the images (``target_image``).

    Args:
        exemplar: from :func:`make_exemplar` (batch 1, or one per target).
        target_label: ``(B, L, H, W)``; target_pose: OpenPose-18 keypoints (one per frame), drawn at the target
            image's size (else the exemplar's); target_image: ``(B, 3, H, W)`` RGB in [0, 1].
        model: a :class:`~dynast_core.models.dynast.DynaSTGenerator`, placed where it should run; None for
            weight-free.
        top_k: candidates carried between scales (default: the model's, 4 weight-free).
        grid_scale: weight-free only: match on a grid this fraction of the image.
        query_chunk_size: queries per attention chunk (default: automatic, bounded memory).
        window: frames per window (default: the whole batch).
        keep_state: keep the DynaST features :func:`decode` needs (on the output device).
        temporal: the targets are the frames of a clip, in order: weight-free, each frame is warm-started from
            the previous frame's candidates (see :func:`dynast_core.weightfree.match_descriptors`: the previous
            match is kept where nothing closer is found: fewer outliers, steadier); with a DynaST model it changes
            nothing (the learned model's result is kept exactly: its exemplar branch is computed once per call
            whether or not ``temporal`` is set).
        previous: the result of the frame before these targets (a clip processed piece by piece): the first
            target is warm-started from its last frame, as ``temporal`` does within a call (weight-free only).
        device, dtype, output_device: see :mod:`dynast_core.runtime`.
        progress: ``progress(step, total)`` over all windows.

    A batch-1 exemplar serving several targets is prepared once per call (the weight-free image pyramid, the
    DynaST exemplar branch), not once per window or frame.

    Returns:
        :class:`MatchResult` on the output device.
    """
    result, _ = _run_match(exemplar, target_label, target_pose, target_image, model, top_k=top_k,
                           grid_scale=grid_scale, query_chunk_size=query_chunk_size, window=window,
                           keep_state=keep_state, decode_too=False, device=device, dtype=dtype,
                           output_device=output_device, progress=progress, temporal=temporal,
                           previous=previous)
    return result


def decode(model: nn.Module, result: MatchResult, *, window: Optional[int] = None, device=None, dtype=None,
           output_device=None, progress: Progress = None) -> torch.Tensor:
    """DynaST synthesis from a :class:`MatchResult` computed with ``model`` (only the decoder runs).

    Returns:
        ``(B, 3, H, W)`` float32 RGB in [0, 1] on the output device (default: where ``result`` lives).
    """
    if not isinstance(result, MatchResult):
        raise ValueError(f"decode takes a MatchResult from match(), got {type(result).__name__}")
    if result.state is None:
        raise ValueError("this correspondence was computed without a DynaST model (weight-free) or without keeping "
                         "its features: match with the model (keep_state=True), or warp for a weight-free result")
    state = result.state
    out_dev = result.device if output_device is None else output_device
    pl = resolve_placement(model=model, device=device, dtype=dtype, output_device=out_dev)
    windows = list(frame_windows(state.batch_size, window))
    images = []
    for i, (s, e) in enumerate(windows):
        with torch.inference_mode():
            img = model.decode(pl.put(state.select(s, e)))
            images.append(pl.out(((img + 1) / 2).clamp(0, 1)))
            del img
        if progress is not None:
            progress(i + 1, len(windows))
    return torch.cat(images)


@dataclass
class Generated:
    """:func:`generate`'s result: ``image`` ``(B, 3, H, W)`` in [0, 1] and the ``match`` behind it."""

    image: torch.Tensor
    match: MatchResult


def generate(model: nn.Module, exemplar: Exemplar, *, target_label: Optional[torch.Tensor] = None, target_pose=None,
             top_k: Optional[int] = None, query_chunk_size: Optional[int] = None, window: Optional[int] = None,
             keep_state: bool = False, device=None, dtype=None, output_device=None,
             progress: Progress = None) -> Generated:
    """Match and decode in one pass per window: the target layout rendered with the exemplar's appearance.

    Arguments as :func:`match`; ``keep_state`` keeps the features in the returned match (for a later
    :func:`decode`), off by default so a long clip holds only its images and correspondences.
    """
    if model is None:
        raise ValueError("generate needs a DynaST model; without one, match and warp the exemplar")
    result, images = _run_match(exemplar, target_label, target_pose, None, model, top_k=top_k, grid_scale=1.0,
                                query_chunk_size=query_chunk_size, window=window, keep_state=keep_state,
                                decode_too=True, device=device, dtype=dtype, output_device=output_device,
                                progress=progress)
    return Generated(images, result)


# ---------------------------------------------------------------------------------------------- warp
def warp(result: MatchResult, x: Optional[torch.Tensor] = None, *, mode: str = "bilinear",
         output_size: Optional[Tuple[int, int]] = None, window: Optional[int] = None, device=None,
         output_device=None) -> torch.Tensor:
    """Warp anything laid out on the exemplar onto the target.

    Args:
        result: from :func:`match`.
        x: ``(1 or B, C, h, w)`` on the exemplar, at any resolution and channel count (an image, a mask, a
            latent); default the exemplar image.
        mode: ``"bilinear"`` or ``"nearest"`` (keeps label values).
        output_size: default the target size scaled like ``x`` is to the exemplar (a latent at 1/8 of the
            exemplar comes back at 1/8 of the target).
        window, device, output_device: see :mod:`dynast_core.runtime` (default device: where ``x`` is).

    Returns:
        ``(B, C, Ho, Wo)`` in ``x``'s dtype.
    """
    if not isinstance(result, MatchResult):
        raise ValueError(f"warp takes a MatchResult from match(), got {type(result).__name__}")
    if x is None:
        x = result.exemplar.image
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"what to warp must be (B, C, H, W) laid out on the exemplar, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    corr = result.correspondence
    b = corr.batch_size
    if x.shape[0] not in (1, b) and b != 1:
        raise ValueError(f"what to warp has batch {x.shape[0]} but the match has {b}: give one per target or one "
                         "for all")
    if output_size is None:
        (th, tw), (eh, ew) = result.target_size, result.exemplar.size
        output_size = (max(1, round(th * x.shape[-2] / eh)), max(1, round(tw * x.shape[-1] / ew)))
    pl = resolve_placement(x, device=device, dtype=x.dtype if x.is_floating_point() else None,
                           output_device=output_device)
    n = max(b, x.shape[0])
    outs = []
    for s, e in frame_windows(n, window):
        c = corr if b == 1 else corr.narrow(s, e)
        with torch.inference_mode():
            out = c.to(pl.device).warp(pl.put(_rows(x, s, e)), mode=mode, output_size=output_size)
            outs.append(pl.out(out, dtype=x.dtype))
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------- stylize
def stylize(content: torch.Tensor, style: torch.Tensor, *, model: Optional[nn.Module] = None, strength: float = 1.0,
            preserve_color: bool = False, mask: Optional[torch.Tensor] = None, size: Optional[int] = None,
            temporal: float = 0.0, query_chunk_size: Optional[int] = None, window: Optional[int] = None, device=None,
            dtype=None, output_device=None, progress: Progress = None, weight_free_levels: int = 3) -> torch.Tensor:
    """Paint ``content`` in the manner of ``style``: with a StyA2K ``model``, or weight-free without one.

    Args:
        content: ``(B, 3, H, W)`` RGB in [0, 1]; style: ``(1 or B, 3, Hs, Ws)`` (one style for every content,
            one per content, or with a content batch of 1 one content for every style).
        strength: 0 = the content, 1 = full stylisation; preserve_color: keep the content's colours.
        mask: stylise only inside it (any size; ``(1 or B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)``), soft seam.
        size: longer side to work and return at (default the content's).
        temporal: for a video clip (the content batch as frames in order): how much of the previous stylised
            frame, carried to this frame by the correspondence between the two content frames, is blended in
            where that correspondence is confident (0 = every frame on its own; 0.8 keeps static and slowly
            moving regions steady); the blended frame then gets back its own per-channel colour mean and
            spread, so the look stays the style's. See :func:`dynast_core.video.carry_previous`.
        window: frames per window (default the whole batch).
        device, dtype, output_device: see :mod:`dynast_core.runtime` (the model's by default).
        progress: ``progress(step, total)``.

    Returns:
        ``(B, 3, H, W)`` float32 in [0, 1] on the output device.
    """
    from .stylize import match_batches
    _check_image(content, "content", min_side=4)
    _check_image(style, "style", min_side=4)
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    if not 0.0 <= float(temporal) <= 1.0:
        raise ValueError(f"temporal must be between 0 and 1, got {temporal}")
    content, style = match_batches(content, style)
    b = content.shape[0]
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3, 4):
            raise ValueError(f"mask must be (H, W), (B, H, W) or (B, 1, H, W), got {getattr(mask, 'shape', mask)}")
        mask = mask.reshape(-1, 1, *mask.shape[-2:]) if mask.dim() != 4 else mask
        if mask.shape[0] not in (1, b):
            raise ValueError(f"mask batch {mask.shape[0]} must be 1 or the content batch {b}")
    pl = resolve_placement(content, model=model, device=device, dtype=dtype, output_device=output_device)
    windows = list(frame_windows(b, window))
    outs = []
    carry = None                                  # (previous stylised frame, previous content) for temporal
    shared_style = pl.put(style) if style.shape[0] == 1 else None
    style_cache = {} if shared_style is not None else None       # StyA2K: the style encoded once per call
    for i, (s, e) in enumerate(windows):
        c = pl.put(content[s:e])
        st = shared_style if shared_style is not None else pl.put(style[s:e])
        m = None if mask is None else pl.put(_rows(mask, s, e))
        hook = _sub_progress(progress, s, e, b)
        with torch.inference_mode():
            if model is not None:
                from .stylize import stylize as stylize_stya2k
                out = stylize_stya2k(model, c, st, strength=strength, preserve_color=preserve_color, mask=m,
                                     size=size, query_chunk_size=query_chunk_size, device=pl.device,
                                     style_cache=style_cache)
                if hook is not None:
                    hook(1, 1)
            else:
                from .weightfree import stylize_weight_free
                out = stylize_weight_free(c, st.expand(c.shape[0], -1, -1, -1), strength=strength, preserve_color=preserve_color, mask=m, size=size,
                                          levels=weight_free_levels, query_chunk_size=query_chunk_size,
                                          progress=hook)
            if temporal > 0:
                out, carry = _temporal_blend(out, c, carry, temporal, size, query_chunk_size, pl.dtype)
            outs.append(pl.out(out))
            del out, c
    return torch.cat(outs)


def _same_colour_statistics(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` with each channel's mean and standard deviation set to ``like``'s (blending with the carried
    frame averages colours and flattens their spread; this gives the frame back its own style statistics)."""
    xm, lm = x.mean((-2, -1), keepdim=True), like.mean((-2, -1), keepdim=True)
    xs, ls = x.std((-2, -1), keepdim=True), like.std((-2, -1), keepdim=True)
    return ((x - xm) * (ls / xs.clamp_min(1e-6)) + lm).clamp(0, 1)


def _temporal_blend(out, content, carry, temporal, size, query_chunk_size, dtype):
    """Blend each frame of a window with the previous stylised frame carried onto it (see
    :func:`dynast_core.video.carry_previous`); ``carry`` is ``(previous output, previous content)`` or None."""
    from .stylize import resize_longer_side
    from .video import carry_previous
    content = resize_longer_side(content, size) if tuple(content.shape[-2:]) != tuple(out.shape[-2:]) else content
    if tuple(content.shape[-2:]) != tuple(out.shape[-2:]):
        content = F.interpolate(content, size=out.shape[-2:], mode="bilinear", align_corners=False)
    frames = []
    for j in range(out.shape[0]):
        cur, cj = out[j:j + 1], content[j:j + 1]
        if carry is not None:
            carried, weight = carry_previous(carry[0], carry[1], cj, query_chunk_size=query_chunk_size, dtype=dtype)
            w = float(temporal) * weight.to(cur.dtype)
            cur = _same_colour_statistics((1 - w) * cur + w * carried.to(cur.dtype), cur)
        frames.append(cur)
        carry = (cur, cj)
    return torch.cat(frames), carry


# ---------------------------------------------------------------------------------------------- memory
#: working bytes per pixel per frame in float32, measured on CPU at 512-1024 (benchmarks/): peak RSS of one
#: call over the input size; GPU peaks are of the same order
_BYTES_PER_PIXEL = {"dynast": 5000, "stya2k": 2000, "weightfree_match": 420, "weightfree_stylize": 1300,
                    "warp": 48}


def estimate_memory(kind: str, height: int, width: int, frames: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of working memory one call needs (a planning estimate for a memory manager, not a bound).

    ``kind``: ``"dynast"``, ``"stya2k"``, ``"weightfree_match"``, ``"weightfree_stylize"`` or ``"warp"``. DynaST
    adds the dense 1/8-scale attention, quadratic in the positions but chunked to at most 256 MiB.
    """
    if kind not in _BYTES_PER_PIXEL:
        raise ValueError(f"unknown kind {kind!r}: one of {sorted(_BYTES_PER_PIXEL)}")
    scale = torch.finfo(dtype).bits / 32 if dtype.is_floating_point else 1.0
    px = int(height) * int(width)
    total = _BYTES_PER_PIXEL[kind] * px * scale
    if kind == "dynast":
        total += min(256 * 2 ** 20, (px / 64) ** 2 * 4 * 2)
    return int(total * max(1, int(frames)))
