"""Conditioning labels for DynaST: the DeepFashion pose label and the CelebA-HQ edge label.

DynaST (like CoCosNet before it) is conditioned on a dense *label* tensor built by the dataset class,
not on a plain image. This module rebuilds those labels from what a user has, without OpenCV:

* **DeepFashion pose label** ``(20, H, W)`` float32 in ``[0, 1]`` from 18 OpenPose (COCO-18) keypoints,
  as ``data/deepfashion_dataset.py::get_label_tensor`` of the official code builds it:

  - channels 0-2: an RGB skeleton render. A filled circle of radius 4 on every detected joint, then
    the first 17 limbs of ``limbSeq`` as filled ellipses (``cv2.ellipse2Poly`` with half-axes
    ``(int(length / 2), 4)``, 1-degree steps, filled with ``cv2.fillConvexPoly``), each limb blended
    into the canvas as ``0.4 * canvas + 0.6 * canvas_with_limb``. The official code draws the colours
    into an OpenCV *BGR* canvas and then converts to RGB, so joint/limb ``i`` appears with the colour
    ``OPENPOSE_COLORS[i]`` reversed (``[255, 0, 0]`` shows as blue). Reproduced here.
  - channels 3-19: one distance map per limb: the L1 (city-block) distance of every pixel to the filled
    limb polygon (``cv2.distanceTransform(255 - limb, DIST_L1, 3)``), divided by 3, clipped to 255,
    truncated to ``uint8`` and divided by 255. On the limb it is 0; 765 px or more away it is 1. A limb
    with a missing end point is never drawn, so its map is **all ones**.

  The official dataset then resizes (nearest for the render, bilinear for the distance maps) to
  ``load_size`` (256 at test time) and applies ``ToTensor`` **without** normalisation: the model
  (``dataset_mode='deepfashion'``, ``label_nc=20``) takes the ``[0, 1]`` label as it is, at 256x256.

* **CelebA-HQ edge label** ``(15, H, W)`` float32 in ``[0, 1]``, as
  ``data/celebahqedge_dataset.py::get_label_tensor`` builds it from the CelebAMask-HQ part masks:
  channel 0 all edges (part boundaries, plus Canny edges of the photo outside the inner face parts),
  channels 1-13 one distance map per part of ``CELEBAHQ_INNER_PARTS`` (distance to that part's
  boundary, same ``/3``, clip, ``/255`` recipe; all ones when the part is absent), channel 14 the part
  boundaries alone. :func:`celebahq_edge_label` implements it from a segmentation;
  :func:`image_to_edge_label` is a reduced version from a photo alone.

The rasterisers (:func:`ellipse2poly`, :func:`fill_convex_poly`, :func:`fill_circle`) are numpy
re-implementations of OpenCV's integer drawing (same fixed-point scan conversion and 8-connected
outline), and :func:`l1_distance_transform` is an exact city-block distance transform. Runtime needs
torch and numpy only (kornia, lazily, for :func:`image_to_edge_label`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "OPENPOSE_KEYPOINT_NAMES", "OPENPOSE_LIMB_SEQ", "OPENPOSE_LIMBS", "OPENPOSE_COLORS",
    "CELEBAHQ_INNER_PARTS", "POSE_LABEL_CHANNELS", "EDGE_LABEL_CHANNELS", "MIN_LABEL_SIZE",
    "parse_pose_keypoints", "pose_keypoints_to_label", "pose_keypoints_to_label_batch", "pose_frames_to_label",
    "render_pose_rgb", "limb_distance_maps", "ellipse2poly", "fill_convex_poly", "fill_circle",
    "l1_distance_transform", "distance_map_uint8", "celebahq_edge_label", "image_to_edge_label",
    "label_preview",
]

#: OpenPose COCO-18 keypoint order (the order of ``pose_keypoints_2d`` and of the official ``subset``).
OPENPOSE_KEYPOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
#: ``limbSeq`` of the official DeepFashion dataset, 1-based as written there (19 pairs).
OPENPOSE_LIMB_SEQ = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
    (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18),
)
#: The 17 limbs the official label actually draws (the first 17 of ``limbSeq``), 0-based joint indices.
OPENPOSE_LIMBS = tuple((a - 1, b - 1) for a, b in OPENPOSE_LIMB_SEQ[:17])
#: Official colour list (joint ``i`` and limb ``i`` use entry ``i``). OpenCV draws them into a BGR
#: canvas, so in the RGB label entry ``i`` appears reversed.
OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
#: Face parts of the official CelebA-HQ edge label, in channel order (channels 1-13).
CELEBAHQ_INNER_PARTS = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "l_ear", "r_ear", "nose", "u_lip",
                        "mouth", "l_lip", "eye_g", "hair")
POSE_LABEL_CHANNELS = 20
EDGE_LABEL_CHANNELS = 15
#: Smallest label height/width accepted.
MIN_LABEL_SIZE = 8

_STICK_WIDTH = 4
_JOINT_RADIUS = 4
_XY_SHIFT = 16
_XY_ONE = 1 << _XY_SHIFT
# OpenCV's drawing.cpp sine table: sin of every whole degree 0..450, written with 7 decimals, as float32.
_SIN_TABLE = np.array(["%.7f" % math.sin(math.radians(d)) for d in range(451)], dtype=np.float64).astype(np.float32)
# ComfyUI/OpenPose BODY_25 -> COCO-18 (drop MidHip and the feet).
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


# ------------------------------------------------------------------------------------------------
# Rasterisation (numpy re-implementations of OpenCV's integer drawing)
# ------------------------------------------------------------------------------------------------

def ellipse2poly(center: Tuple[int, int], axes: Tuple[int, int], angle: int, arc_start: int = 0,
                 arc_end: int = 360, delta: int = 1) -> np.ndarray:
    """Integer polygon approximating an elliptic arc, like ``cv2.ellipse2Poly``.

    Same algorithm as OpenCV: the angle is folded into ``[0, 360]``, sines and cosines come from a
    7-decimal float32 table of whole degrees, points are generated every ``delta`` degrees from
    ``arc_start`` to ``arc_end`` (inclusive, last step clamped), rounded half-to-even, and consecutive
    duplicates are dropped (a single remaining point is doubled).

    Args:
        center: ``(x, y)`` integers. axes: ``(half_width, half_height)`` integers. angle: rotation in
        whole degrees. delta: step in degrees, ``1..180``.

    Returns:
        ``(N, 2)`` int64 array of ``(x, y)`` vertices.
    """
    cx, cy = (int(v) for v in center)
    aw, ah = (int(v) for v in axes)
    angle, arc_start, arc_end, delta = int(angle), int(arc_start), int(arc_end), int(delta)
    if not 0 < delta <= 180:
        raise ValueError(f"delta must be in 1..180 degrees, got {delta}")
    while angle < 0:
        angle += 360
    while angle > 360:
        angle -= 360
    if arc_start > arc_end:
        arc_start, arc_end = arc_end, arc_start
    while arc_start < 0:
        arc_start += 360
        arc_end += 360
    while arc_end > 360:
        arc_end -= 360
        arc_start -= 360
    if arc_end - arc_start > 360:
        arc_start, arc_end = 0, 360
    alpha = float(_SIN_TABLE[450 - angle])  # cos
    beta = float(_SIN_TABLE[angle])  # sin
    pts = []
    prev = None
    for i in range(arc_start, arc_end + delta, delta):
        a = min(i, arc_end)
        if a < 0:
            a += 360
        x = aw * float(_SIN_TABLE[450 - a])
        y = ah * float(_SIN_TABLE[a])
        px = int(np.rint(cx + x * alpha - y * beta))
        py = int(np.rint(cy + x * beta + y * alpha))
        if (px, py) != prev:
            pts.append((px, py))
            prev = (px, py)
    if len(pts) == 1:
        pts = [(cx, cy), (cx, cy)]
    return np.asarray(pts, dtype=np.int64).reshape(-1, 2)


def _line_points(x0: int, y0: int, x1: int, y1: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixels of OpenCV's 8-connected line (``LineIterator``, left to right), unclipped."""
    if x1 < x0:
        x0, y0, x1, y1 = x1, y1, x0, y0
    dx, dy = x1 - x0, y1 - y0
    sy = 1
    if dy < 0:
        dy, sy = -dy, -1
    vert = dy > dx
    major, minor = (dy, dx) if vert else (dx, dy)
    k = np.arange(major + 1, dtype=np.int64)
    # Bresenham with err0 = major - 2*minor: the minor coordinate has advanced ceil((2*minor*k - major) / (2*major)) times.
    m = -((major - 2 * minor * k) // (2 * major)) if major > 0 else np.zeros_like(k)
    if vert:
        return x0 + m, y0 + sy * k
    return x0 + k, y0 + sy * m


def _clip_line(w: int, h: int, x1: int, y1: int, x2: int, y2: int):
    """Cohen-Sutherland-style clipping of OpenCV's ``clipLine`` (truncating divisions); None if outside."""
    right, bottom = w - 1, h - 1

    def code(x, y, with_y=True):
        c = (x < 0) + (x > right) * 2
        return c + ((y < 0) * 4 + (y > bottom) * 8 if with_y else 0)

    c1, c2 = code(x1, y1), code(x2, y2)
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += int((a - y1) * (x2 - x1) / (y2 - y1))
            y1 = a
            c1 = code(x1, y1, False)
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += int((a - y2) * (x2 - x1) / (y2 - y1))
            y2 = a
            c2 = code(x2, y2, False)
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += int((a - x1) * (y2 - y1) / (x2 - x1))
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += int((a - x2) * (y2 - y1) / (x2 - x1))
                x2 = a
                c2 = 0
    if c1 | c2:
        return None
    return x1, y1, x2, y2


def _draw_line(img: np.ndarray, p0, p1, color) -> None:
    """OpenCV ``Line`` (LINE_8): clip to the image as ``clipLine`` does, then walk the 8-connected line."""
    h, w = img.shape[:2]
    clipped = _clip_line(w, h, int(p0[0]), int(p0[1]), int(p1[0]), int(p1[1]))
    if clipped is None:
        return
    xs, ys = _line_points(*clipped)
    keep = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    img[ys[keep], xs[keep]] = color


def fill_convex_poly(img: np.ndarray, points: ArrayLike, color) -> np.ndarray:
    """Fill a convex polygon in place like ``cv2.fillConvexPoly(img, points, color)`` (LINE_8, shift 0).

    The outline is drawn as 8-connected Bresenham lines, then the inside is scan-converted with the same
    16.16 fixed-point edge walk as OpenCV (edge slopes rounded, span ends rounded half up).

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` array, modified in place. points: ``(N, 2)`` integer ``(x, y)``.
        color: scalar or length-``C`` sequence.

    Returns:
        ``img``.
    """
    v = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    n = len(v)
    if n == 0:
        return img
    color = np.asarray(color, dtype=img.dtype) if img.ndim == 3 else color
    h, w = img.shape[:2]
    for i in range(n):
        _draw_line(img, v[i - 1], v[i], color)
    xsv = [int(a) for a in v[:, 0]]
    ysv = [int(a) for a in v[:, 1]]
    ymin, ymax, xmin, xmax = min(ysv), max(ysv), min(xsv), max(xsv)
    imin = ysv.index(ymin)
    if n < 3 or xmax < 0 or ymax < 0 or xmin >= w or ymin >= h:
        return img
    ymax = min(ymax, h - 1)
    edges = n
    # per edge: [idx, di, x, dx, ye]
    edge = [[imin, 1, -_XY_ONE, 0, ymin], [imin, n - 1, -_XY_ONE, 0, ymin]]
    half = _XY_ONE >> 1
    y = ymin
    while True:
        for e in edge:
            if y >= e[4]:
                idx0, di = e[0], e[1]
                idx = idx0 + di
                if idx >= n:
                    idx -= n
                while True:
                    go = edges > 0
                    edges -= 1
                    if not go:
                        break
                    ty = ysv[idx]
                    if ty > y:
                        xs0 = xsv[idx0] << _XY_SHIFT
                        xe = xsv[idx] << _XY_SHIFT
                        num, den = (xe - xs0) * 2 + (ty - y), 2 * (ty - y)
                        q = abs(num) // den  # C integer division truncates toward zero
                        e[4], e[3], e[2], e[0] = ty, (q if num >= 0 else -q), xs0, idx
                        break
                    idx0 = idx
                    idx += di
                    if idx >= n:
                        idx -= n
        if edges < 0:
            break
        if y >= 0:
            left, right = (1, 0) if edge[0][2] > edge[1][2] else (0, 1)
            x1 = (edge[left][2] + half) >> _XY_SHIFT
            x2 = (edge[right][2] + half) >> _XY_SHIFT
            if x2 >= 0 and x1 < w:
                img[y, max(x1, 0):min(x2, w - 1) + 1] = color
        edge[0][2] += edge[0][3]
        edge[1][2] += edge[1][3]
        y += 1
        if y > ymax:
            break
    return img


def fill_circle(img: np.ndarray, center: Tuple[int, int], radius: int, color) -> np.ndarray:
    """Filled circle in place like ``cv2.circle(img, center, radius, color, thickness=-1)`` (LINE_8).

    OpenCV's midpoint-circle walk: for each octant step ``(dx, dy)`` it fills the rows ``cy +- dy`` over
    ``cx +- dx`` and the rows ``cy +- dx`` over ``cx +- dy``; pixels off the image are clipped.
    """
    cx, cy, r = int(center[0]), int(center[1]), int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {r}")
    color = np.asarray(color, dtype=img.dtype) if img.ndim == 3 else color
    h, w = img.shape[:2]

    def hline(y, xa, xb):
        if 0 <= y < h and xb >= 0 and xa < w:
            img[y, max(xa, 0):min(xb, w - 1) + 1] = color

    err, dx, dy, plus, minus = 0, r, 0, 1, 2 * r - 1
    while dx >= dy:
        hline(cy - dy, cx - dx, cx + dx)
        hline(cy + dy, cx - dx, cx + dx)
        hline(cy - dx, cx - dy, cx + dy)
        hline(cy + dx, cx - dy, cx + dy)
        dy += 1
        err += plus
        plus += 2
        if err > 0:
            err -= minus
            dx -= 1
            minus -= 2
    return img


def l1_distance_transform(zero_mask: ArrayLike) -> np.ndarray:
    """Exact city-block distance from every pixel to the nearest ``True`` pixel of ``zero_mask``.

    Equals ``cv2.distanceTransform(src, cv2.DIST_L1, 3)`` where ``src`` is zero exactly on the mask
    (OpenCV's 3x3 L1 chamfer with weights 1/2 is exact for L1; the image border is not a zero).

    Args:
        zero_mask: ``(..., H, W)`` boolean.

    Returns:
        float64 array of the same shape; ``inf`` everywhere when the mask is empty.
    """
    m = np.asarray(zero_mask, dtype=bool)
    if m.ndim < 2:
        raise ValueError(f"l1_distance_transform needs a (..., H, W) mask, got shape {m.shape}")
    big = np.int64(1) << 40
    d = np.where(m, np.int64(0), big)
    for axis in (-1, -2):
        n = d.shape[axis]
        shape = [1] * d.ndim
        shape[axis] = n
        i = np.arange(n, dtype=np.int64).reshape(shape)
        fwd = np.minimum.accumulate(d - i, axis=axis) + i
        bwd = np.flip(np.minimum.accumulate(np.flip(d + i, axis=axis), axis=axis), axis=axis) - i
        d = np.minimum(fwd, bwd)
    out = d.astype(np.float64)
    out[d >= big // 2] = np.inf
    return out


def distance_map_uint8(zero_mask: ArrayLike) -> np.ndarray:
    """The official distance channel before ``ToTensor``: ``uint8(clip(L1 distance / 3, 0, 255))``
    (truncation), so 0 on the mask, 255 at 765 px and beyond or when the mask is empty."""
    d = l1_distance_transform(zero_mask)
    return np.floor(np.minimum(d / 3.0, 255.0)).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Pose keypoints
# ------------------------------------------------------------------------------------------------

def _load_json_like(obj):
    if isinstance(obj, (os.PathLike,)):
        p = Path(obj)
        if not p.is_file():
            raise ValueError(f"pose keypoint file not found: {p}")
        obj = p.read_text(encoding="utf-8")
    if isinstance(obj, (bytes, bytearray)):
        obj = obj.decode("utf-8")
    if isinstance(obj, str):
        s = obj.strip()
        if not s:
            raise ValueError("pose keypoints: got an empty string; pass POSE_KEYPOINT data, a JSON string or a path")
        if s[0] not in "[{":
            p = Path(s)
            if not p.is_file():
                raise ValueError(f"pose keypoints: {s[:80]!r} is neither JSON nor an existing file")
            s = p.read_text(encoding="utf-8")
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as err:
            raise ValueError(f"pose keypoints: invalid JSON ({err})") from None
    return obj


def _person_array(person, where: str) -> np.ndarray:
    if isinstance(person, dict):
        if "pose_keypoints_2d" not in person:
            raise ValueError(f"{where}: a person needs a 'pose_keypoints_2d' list (OpenPose JSON), "
                             f"got keys {sorted(person)[:8]}")
        flat = person["pose_keypoints_2d"]
        if flat is None:
            return np.zeros((18, 3))
        try:
            a = np.asarray(flat, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: 'pose_keypoints_2d' must be a flat list of numbers") from None
        if a.size == 75:
            a = a.reshape(25, 3)[list(_BODY25_TO_COCO18)]
        elif a.size == 54:
            a = a.reshape(18, 3)
        else:
            raise ValueError(f"{where}: 'pose_keypoints_2d' has {a.size} numbers; expected 54 "
                             "(18 OpenPose COCO keypoints x (x, y, confidence)) or 75 (BODY_25)")
        return a
    return _plain_array(person, where)


def _plain_array(obj, where: str) -> np.ndarray:
    try:
        a = obj.detach().cpu().double().numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: keypoints must be numbers shaped (18, 3) or (18, 2)") from None
    if a.ndim == 1 and a.size in (54, 36):
        a = a.reshape(18, -1)
    if a.ndim != 2 or a.shape[0] != 18 or a.shape[1] not in (2, 3):
        raise ValueError(f"{where}: keypoints must have shape (18, 3) [x, y, confidence] or (18, 2) [x, y] "
                         f"(OpenPose COCO-18 order), got shape {tuple(a.shape)}")
    if a.shape[1] == 2:
        # No confidence column: (-1, -1) (official convention) and (0, 0) (ComfyUI) mark a missing joint.
        missing = np.all(a == -1, axis=1) | np.all(a == 0, axis=1)
        a = np.concatenate([a, (~missing).astype(np.float64)[:, None]], axis=1)
    return a


def _finish(a: np.ndarray, width, height, where: str) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: keypoints contain NaN or infinity")
    a = a.copy()
    present = a[:, 2] > 0
    if present.any() and np.abs(a[present, :2]).max() <= 1.5:
        # Normalised coordinates (comfyui_controlnet_aux emits x, y in 0..1); 1.5 leaves room for
        # joints slightly off the canvas.
        if width is None or height is None:
            raise ValueError(f"{where}: keypoints look normalised (all within 0..1) but the canvas size is "
                             "unknown; pass width= and height= (the size of the image the pose was detected on)")
        a[:, 0] *= float(width)
        a[:, 1] *= float(height)
    a[~present] = 0.0
    a[present, 2] = np.maximum(a[present, 2], 1e-6)
    return a


def _check_size(height, width, name="label"):
    try:
        h, w = int(height), int(width)
    except (TypeError, ValueError):
        raise ValueError(f"{name} height and width must be integers, got {height!r}, {width!r}") from None
    if h < MIN_LABEL_SIZE or w < MIN_LABEL_SIZE:
        raise ValueError(f"{name} size {h}x{w} is too small: height and width must be at least {MIN_LABEL_SIZE} px")
    return h, w


def parse_pose_keypoints(obj, width: Optional[int] = None, height: Optional[int] = None, *,
                         person: Optional[int] = None) -> List[np.ndarray]:
    """Read OpenPose-18 keypoints from the usual containers; one ``(18, 3)`` pose per frame.

    Accepts:

    * ComfyUI ``POSE_KEYPOINT`` (from the comfyui_controlnet_aux OpenPose/DWPose nodes): a list of frames
      ``{"people": [{"pose_keypoints_2d": [x, y, c] * 18, ...}], "canvas_width": W, "canvas_height": H}``;
      a single such frame dict; a single person dict;
    * a plain ``(18, 3)`` ``[x, y, confidence]`` or ``(18, 2)`` ``[x, y]`` array/list/tensor (or a flat
      54/36 list), or a ``(B, 18, 3|2)`` stack;
    * a JSON string or a path to a JSON file holding any of the above.

    BODY_25 (75 numbers) is converted to COCO-18. Coordinates are either normalised (every present
    coordinate within ``[-0.5, 1.5]``, the DWPose node's default) or pixels; normalised ones are scaled by
    the frame's ``canvas_width``/``canvas_height``, else by ``width``/``height``.

    Args:
        person: which person of a frame to take; default: the one with most detected joints (the official
            DeepFashion label holds one person).

    Returns:
        list of float64 ``(18, 3)`` arrays ``[x, y, confidence]`` in pixels of the canvas. A missing joint
        (confidence 0, ``[0, 0, 0]`` in OpenPose JSON, ``(-1, -1)`` or ``(0, 0)`` in a 2-column array) is
        returned as ``[0, 0, 0]``; present joints have confidence > 0.

    Raises:
        ValueError: empty input, a frame without people, wrong key or number counts, NaN, normalised
            coordinates with no known canvas size.
    """
    obj = _load_json_like(obj)
    if obj is None:
        raise ValueError("pose keypoints: got None; connect a POSE_KEYPOINT output or pass an (18, 3) array")
    if isinstance(obj, dict):
        frames = [obj]
    elif isinstance(obj, (list, tuple)) and len(obj) > 0 and all(isinstance(f, dict) for f in obj):
        frames = list(obj)
    else:
        if isinstance(obj, (list, tuple)) and len(obj) == 0:
            raise ValueError("pose keypoints: got an empty list; no frames or keypoints to read")
        arr = obj
        if not isinstance(arr, (np.ndarray, torch.Tensor)):
            try:
                arr = np.asarray(arr, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError("pose keypoints: expected POSE_KEYPOINT frames (dicts with 'people') or numbers "
                                 "shaped (18, 3) / (18, 2)") from None
        if arr.ndim == 3:
            if arr.shape[0] == 0:
                raise ValueError("pose keypoints: got an empty batch")
            return [_finish(_plain_array(a, f"pose {i}"), width, height, f"pose {i}") for i, a in enumerate(arr)]
        return [_finish(_plain_array(arr, "pose"), width, height, "pose")]

    out = []
    for fi, frame in enumerate(frames):
        where = f"pose frame {fi}"
        if "people" not in frame:
            if "pose_keypoints_2d" in frame:
                frame = {"people": [frame]}
            else:
                raise ValueError(f"{where}: expected a dict with a 'people' list (ComfyUI POSE_KEYPOINT), "
                                 f"got keys {sorted(frame)[:8]}")
        people = frame["people"]
        if not isinstance(people, (list, tuple)) or len(people) == 0:
            raise ValueError(f"{where}: no people were detected; use an image where the pose detector finds a "
                             "person, or pass keypoints directly")
        cw, ch = frame.get("canvas_width", width), frame.get("canvas_height", height)
        arrays = [_person_array(p, f"{where}, person {pi}") for pi, p in enumerate(people)]
        if person is not None:
            if not -len(arrays) <= person < len(arrays):
                raise ValueError(f"{where}: person={person} but the frame has {len(arrays)} people")
            a = arrays[person]
        else:
            a = max(arrays, key=lambda q: int(np.sum(np.nan_to_num(q[:, 2]) > 0)))
        out.append(_finish(a, cw, ch, where))
    return out


def _pose_array(keypoints, where="keypoints") -> np.ndarray:
    if isinstance(keypoints, (dict, str, os.PathLike)):
        poses = parse_pose_keypoints(keypoints)
        if len(poses) != 1:
            raise ValueError(f"{where}: expected one pose, got {len(poses)} frames; use the batched variant")
        return poses[0]
    a = _plain_array(keypoints, where)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: keypoints contain NaN or infinity")
    return a


def _render(kps: np.ndarray, height: int, width: int):
    """Official drawing: BGR canvas (uint8) and 17 boolean limb masks."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    present = kps[:, 2] > 0
    # A joint more than a canvas size away from the canvas cannot touch it; skipping it keeps the
    # scan conversion bounded (OpenPose never produces such points).
    far = (np.abs(kps[:, 0] - width / 2) > 1.5 * width + 8) | (np.abs(kps[:, 1] - height / 2) > 1.5 * height + 8)
    present &= ~far
    for i in range(18):
        if present[i]:
            fill_circle(canvas, (int(kps[i, 0]), int(kps[i, 1])), _JOINT_RADIUS, OPENPOSE_COLORS[i])
    masks = np.zeros((17, height, width), dtype=bool)
    for i, (a, b) in enumerate(OPENPOSE_LIMBS):
        if not (present[a] and present[b]):
            continue
        xs, ys = kps[[a, b], 0], kps[[a, b], 1]
        mx, my = float(np.mean(xs)), float(np.mean(ys))
        length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        poly = ellipse2poly((int(mx), int(my)), (int(length / 2), _STICK_WIDTH), int(angle), 0, 360, 1)
        m = masks[i].view(np.uint8)
        fill_convex_poly(m, poly, 1)
        sel = masks[i]
        col = np.asarray(OPENPOSE_COLORS[i], dtype=np.float64)
        # addWeighted(canvas, 0.4, canvas_with_limb, 0.6, 0): unchanged outside the limb.
        canvas[sel] = np.rint(0.4 * canvas[sel].astype(np.float64) + 0.6 * col).astype(np.uint8)
    return canvas, masks


def render_pose_rgb(keypoints: ArrayLike, height: int, width: int) -> np.ndarray:
    """Official skeleton render (label channels 0-2 before ``ToTensor``) at ``height x width``.

    Args:
        keypoints: ``(18, 3)`` / ``(18, 2)`` pixel coordinates (see :func:`parse_pose_keypoints`).

    Returns:
        ``(H, W, 3)`` uint8 RGB, as ``cv2.cvtColor(canvas, COLOR_BGR2RGB)`` of the official code.
    """
    h, w = _check_size(height, width)
    canvas, _ = _render(_pose_array(keypoints), h, w)
    return np.ascontiguousarray(canvas[:, :, ::-1])


def limb_distance_maps(keypoints: ArrayLike, height: int, width: int) -> np.ndarray:
    """Official per-limb distance maps (label channels 3-19 before ``ToTensor``).

    Returns:
        ``(17, H, W)`` uint8: ``clip(L1 distance to the filled limb / 3, 0, 255)``; 255 everywhere for a
        limb with a missing end point.
    """
    h, w = _check_size(height, width)
    _, masks = _render(_pose_array(keypoints), h, w)
    return distance_map_uint8(masks)


def _resize_u8(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    x = x.float().unsqueeze(0)
    if mode == "nearest":
        y = F.interpolate(x, size=size, mode="nearest-exact")
    else:
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255)[0]


def pose_keypoints_to_label(keypoints, height: int, width: int, *, canvas_size=None) -> torch.Tensor:
    """The DeepFashion pose label of the official dataset.

    Draws at ``canvas_size`` (the size of the image the keypoints refer to; default ``(height, width)``)
    and, if that differs, resizes to ``(height, width)`` as the official transform does (nearest for the
    render, antialiased bilinear, like PIL's, for the distance maps, each rounded to 8 bits).

    Args:
        keypoints: ``(18, 3)`` / ``(18, 2)`` pixel keypoints, or anything :func:`parse_pose_keypoints`
            reads. A list of poses or a ``(B, 18, 3)`` stack gives a batch.
        height, width: label size, at least 8; the official model was trained at 256x256.
        canvas_size: ``(H0, W0)`` the keypoints' pixel frame, a single pair or one per pose.

    Returns:
        float32 ``(20, H, W)`` (``(B, 20, H, W)`` for a batch) in ``[0, 1]``: channels 0-2 the RGB render
        ``/ 255``, channels 3-19 the limb distance maps ``/ 255`` (all ones for a missing limb). This is
        exactly what the official model receives: the dataset does **not** normalise the label to
        ``[-1, 1]``.
    """
    if _is_batch(keypoints):
        return pose_keypoints_to_label_batch(keypoints, height, width, canvas_size=canvas_size)
    h, w = _check_size(height, width)
    if canvas_size is None and isinstance(keypoints, dict) and "canvas_height" in keypoints:
        canvas_size = (keypoints["canvas_height"], keypoints.get("canvas_width"))
    ch, cw = (h, w) if canvas_size is None else _check_size(*canvas_size, name="canvas")
    if isinstance(keypoints, dict):
        keypoints = parse_pose_keypoints(keypoints, width=cw, height=ch)[0]
    kps = _pose_array(keypoints)
    canvas, masks = _render(kps, ch, cw)
    rgb = torch.from_numpy(np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1)))
    dist = torch.from_numpy(distance_map_uint8(masks))
    rgb = _resize_u8(rgb, (h, w), "nearest")
    dist = _resize_u8(dist, (h, w), "bilinear")
    return (torch.cat([rgb.float(), dist.float()], 0) / 255.0).contiguous()


def _is_batch(keypoints) -> bool:
    if isinstance(keypoints, (np.ndarray, torch.Tensor)):
        return keypoints.ndim == 3
    if isinstance(keypoints, (list, tuple)) and len(keypoints) > 0:
        first = keypoints[0]
        if isinstance(first, (np.ndarray, torch.Tensor)):
            return first.ndim == 2
        if isinstance(first, dict):
            return len(keypoints) > 1 or "people" in first
        if isinstance(first, (list, tuple)) and len(first) > 0 and isinstance(first[0], (list, tuple)):
            return True
    return False


def pose_keypoints_to_label_batch(poses, height: int, width: int, *, canvas_size=None) -> torch.Tensor:
    """Batched :func:`pose_keypoints_to_label`: a list of poses (or POSE_KEYPOINT frames, or a
    ``(B, 18, 3)`` stack) -> float32 ``(B, 20, H, W)`` in ``[0, 1]``. ``canvas_size`` is one ``(H0, W0)``
    for all or a list with one per pose."""
    if isinstance(poses, (list, tuple)) and len(poses) > 0 and all(isinstance(p, dict) for p in poses):
        if canvas_size is None:
            canvas_size = [(int(f.get("canvas_height", height)), int(f.get("canvas_width", width)))
                           if isinstance(f, dict) and "people" in f else None for f in poses]
        poses = parse_pose_keypoints(list(poses), width=width, height=height)
    if isinstance(poses, (np.ndarray, torch.Tensor)):
        poses = list(poses)
    if not isinstance(poses, (list, tuple)) or len(poses) == 0:
        raise ValueError("pose batch is empty: pass a non-empty list of (18, 3) keypoint arrays")
    n = len(poses)
    if canvas_size is None or (len(canvas_size) == 2 and not isinstance(canvas_size[0], (list, tuple))
                               and canvas_size[0] is not None):
        sizes = [canvas_size] * n
    else:
        sizes = list(canvas_size)
        if len(sizes) != n:
            raise ValueError(f"canvas_size has {len(sizes)} entries for {n} poses")
    return torch.stack([pose_keypoints_to_label(p, height, width, canvas_size=s)
                        for p, s in zip(poses, sizes)])


def _no_people(frame) -> bool:
    return isinstance(frame, dict) and "people" in frame and not frame["people"]


def pose_frames_to_label(pose, height: int = 0, width: int = 0, *, missing: str = "hold") -> torch.Tensor:
    """POSE_KEYPOINT frames (one or a list, as the OpenPose/DWPose nodes emit them) -> ``(B, 20, H, W)``.

    ``height``/``width`` 0 take each frame's ``canvas_height``/``canvas_width`` (every frame must then give
    the same size); keypoints are drawn on their own canvas and resized, as :func:`pose_keypoints_to_label`
    does.

    Args:
        pose: POSE_KEYPOINT frames, a JSON text or file holding them, or one plain ``(18, 3)`` pose.
        missing: what a frame in which the pose detector found nobody becomes (a clip often has a few):
            ``"hold"`` the nearest frame's pose that has a person (the previous one first), ``"empty"`` a label
            without a skeleton, ``"error"`` a ValueError.

    Raises:
        ValueError: no canvas size known and none given, frames whose canvases give different sizes, or no
            frame with a person at all.
    """
    if missing not in ("hold", "empty", "error"):
        raise ValueError(f"missing must be 'hold', 'empty' or 'error', got {missing!r}")
    pose = _load_json_like(pose)                                 # a JSON text or file holding the frames
    if isinstance(pose, (list, tuple)) and pose and not isinstance(pose[0], dict):
        pose = [pose]                                            # one plain (18, 3) pose
    frames = [pose] if isinstance(pose, dict) else (list(pose) if isinstance(pose, (list, tuple)) else [pose])
    if not frames:
        raise ValueError("pose keypoints: got an empty list of frames")
    empty = [_no_people(f) for f in frames]
    if all(empty):
        raise ValueError(f"the pose detector found no person in any of the {len(frames)} frames; use frames where it "
                         "finds one, or give keypoints directly")
    if any(empty) and missing == "error":
        raise ValueError(f"no person was detected in pose frame(s) {[i for i, e in enumerate(empty) if e][:10]}")
    if any(empty) and missing == "hold":
        have = [i for i, e in enumerate(empty) if not e]
        resolved = []
        for i, f in enumerate(frames):
            if not empty[i]:
                resolved.append(f)
                continue
            j = min(have, key=lambda k: (abs(k - i), k > i))     # nearest, the previous one on ties
            donor = dict(frames[j])
            for key in ("canvas_width", "canvas_height"):        # keep this frame's canvas
                if isinstance(f, dict) and key in f:
                    donor[key] = f[key]
            resolved.append(donor)
        frames = resolved
    labels = []
    for i, frame in enumerate(frames):
        canvas = None
        if isinstance(frame, dict) and frame.get("canvas_height") and frame.get("canvas_width"):
            canvas = (int(frame["canvas_height"]), int(frame["canvas_width"]))
        h = height or (canvas[0] if canvas else 0)
        w = width or (canvas[1] if canvas else 0)
        if not h or not w:
            raise ValueError(f"pose frame {i} carries no canvas size: set the label width and height")
        if labels and tuple(labels[0].shape[-2:]) != (h, w):
            raise ValueError(f"pose frame {i} has a {canvas[1]}x{canvas[0]} canvas but frame 0 gave "
                             f"{labels[0].shape[-1]}x{labels[0].shape[-2]}: set the label width and height so "
                             "every frame is drawn at one size")
        if _no_people(frame):                                    # missing="empty"
            kp = [np.zeros((18, 3))]
        elif not isinstance(frame, dict):                        # a plain pose: pixels of a (h, w) canvas
            kp = parse_pose_keypoints(frame, width=w, height=h)
        else:
            kp = parse_pose_keypoints(frame, width=canvas[1] if canvas else w, height=canvas[0] if canvas else h)
        labels.append(pose_keypoints_to_label(kp[:1], h, w, canvas_size=canvas))
    return torch.cat(labels, 0)


# ------------------------------------------------------------------------------------------------
# CelebA-HQ edge label
# ------------------------------------------------------------------------------------------------

def _boundaries(t: torch.Tensor) -> torch.Tensor:
    """Official ``get_edges``: mark both pixels of every horizontal/vertical label change. (..., H, W)."""
    e = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    dh = t[..., :, 1:] != t[..., :, :-1]
    e[..., :, 1:] |= dh
    e[..., :, :-1] |= dh
    dv = t[..., 1:, :] != t[..., :-1, :]
    e[..., 1:, :] |= dv
    e[..., :-1, :] |= dv
    return e


def _as_tensor(x, name) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    return x


def celebahq_edge_label(parts_segmentation, edges=None, *, layout: str = "auto") -> torch.Tensor:
    """The official 15-channel CelebA-HQ edge label from face-part masks and background edges.

    Reproduces ``CelebAHQEdgeDataset.get_label_tensor``: for every part of :data:`CELEBAHQ_INNER_PARTS`
    its boundary pixels (both sides of each 4-neighbour change of the part mask) give a distance map
    (``uint8(clip(L1 / 3, 0, 255)) / 255``; all ones for an absent part). ``inner`` is the region outside
    every inner part except hair (hair counts as outside); the background ``edges`` (the official code
    uses ``skimage.feature.canny`` of the grey 256x256 photo) are kept only there.

    Args:
        parts_segmentation: either masks ``(13, H, W)`` / ``(B, 13, H, W)`` (bool or 0/1, channel order
            :data:`CELEBAHQ_INNER_PARTS`; CelebAMask-HQ masks may overlap), or an index map ``(H, W)`` /
            ``(B, H, W)`` with 0 = none and ``k`` = ``CELEBAHQ_INNER_PARTS[k - 1]``. ``layout`` =
            ``"masks"``/``"index"`` forces the reading; ``"auto"`` takes a 3-D input with 13 channels of
            0/1 values as masks.
        edges: background edges ``(H, W)``, ``(1, H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``, > 0.5 is an
            edge; ``None`` for none.

    Returns:
        float32 ``(15, H, W)`` (``(B, 15, H, W)`` for batched input) in ``[0, 1]``: channel 0 all edges
        (0/1), 1-13 part distance maps, 14 part boundaries (0/1). Not normalised, as in the official code.
    """
    seg = _as_tensor(parts_segmentation, "parts_segmentation")
    n_parts = len(CELEBAHQ_INNER_PARTS)
    if layout not in ("auto", "masks", "index"):
        raise ValueError(f"layout must be 'auto', 'masks' or 'index', got {layout!r}")
    if layout == "auto":
        if seg.dim() == 4:
            layout = "masks"
        elif seg.dim() == 3 and seg.shape[0] == n_parts and (seg.dtype == torch.bool or seg.max() <= 1):
            layout = "masks"
        else:
            layout = "index"
    if layout == "masks":
        if seg.dim() == 3:
            seg, batched = seg.unsqueeze(0), False
        elif seg.dim() == 4:
            batched = True
        else:
            raise ValueError(f"part masks must be (13, H, W) or (B, 13, H, W), got {tuple(seg.shape)}")
        if seg.shape[1] != n_parts:
            raise ValueError(f"part masks need {n_parts} channels ({', '.join(CELEBAHQ_INNER_PARTS)}), "
                             f"got {seg.shape[1]}")
        masks = seg > 0.5 if seg.is_floating_point() else seg != 0
    else:
        if seg.dim() == 2:
            seg, batched = seg.unsqueeze(0), False
        elif seg.dim() == 3:
            batched = True
        else:
            raise ValueError(f"a part index map must be (H, W) or (B, H, W), got {tuple(seg.shape)}")
        if seg.is_floating_point():
            if (seg != seg.round()).any():
                raise ValueError("a part index map must hold integers 0..13")
        seg = seg.long()
        if seg.min() < 0 or seg.max() > n_parts:
            raise ValueError(f"part index map values must be in 0..{n_parts}, got {int(seg.min())}..{int(seg.max())}")
        masks = torch.stack([seg == k + 1 for k in range(n_parts)], 1)
    b, _, h, w = masks.shape
    _check_size(h, w)
    masks = masks.cpu()
    part_edges = _boundaries(masks)  # (B, 13, H, W)
    boundaries = part_edges.any(1)
    inner = torch.ones(b, h, w, dtype=torch.bool)
    inner &= ~masks[:, :-1].any(1)  # every inner part except hair is inside the face ...
    inner |= masks[:, -1]  # ... hair (processed last officially) counts as outside again
    if edges is None:
        bg = torch.zeros(b, h, w, dtype=torch.bool)
    else:
        e = _as_tensor(edges, "edges").cpu()
        if e.dim() == 4 and e.shape[1] == 1:
            e = e[:, 0]
        elif e.dim() == 3 and e.shape[0] == 1 and b != 1:
            e = e.expand(b, h, w)
        elif e.dim() == 2:
            e = e.unsqueeze(0).expand(b, h, w)
        if tuple(e.shape) != (b, h, w):
            raise ValueError(f"edges must be (H, W), (B, H, W) or (B, 1, H, W) matching the segmentation "
                             f"{(b, h, w)}, got {tuple(edges.shape)}")
        bg = e > 0.5 if e.is_floating_point() else e != 0
    edges_all = boundaries | (bg & inner)
    dist = torch.from_numpy(distance_map_uint8(part_edges.numpy())).float() / 255.0
    out = torch.cat([edges_all[:, None].float(), dist, boundaries[:, None].float()], 1)
    return out if batched else out[0]


def image_to_edge_label(image: torch.Tensor, *, parts_segmentation=None, low_threshold: float = 0.1,
                        high_threshold: float = 0.2, sigma: float = 1.0) -> torch.Tensor:
    """A CelebA-HQ-style 15-channel edge label from a photo, with kornia's Canny.

    Without ``parts_segmentation`` this is a **reduced** label: the official one needs the
    CelebAMask-HQ face-part masks, which a photo alone does not give. Here channel 0 holds the Canny
    edges of the whole image (officially: part boundaries plus Canny edges outside the inner face),
    channels 1-13 are all ones (officially: distance to each part's boundary; all ones means "part
    absent") and channel 14 is zero (no part boundaries). The official model has seen such labels only
    for faces without parts, so expect weaker results than with a segmentation. With
    ``parts_segmentation`` (see :func:`celebahq_edge_label`) the full official layout is built, kornia's
    Canny standing in for ``skimage.feature.canny`` (same sigma and grey conversion, thresholds on the
    [0, 1] scale; edges can differ by a pixel).

    Args:
        image: ``(B, 3, H, W)`` (or ``(3, H, W)``) RGB in ``[0, 1]``; the official model works at 256x256.

    Returns:
        float32 ``(B, 15, H, W)`` in ``[0, 1]``.
    """
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch tensor (B, 3, H, W) in [0, 1], got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W) RGB, got shape {tuple(image.shape)}")
    if image.numel() == 0:
        raise ValueError("image is empty")
    b, _, h, w = image.shape
    _check_size(h, w, "image")
    image = image.float()
    if torch.isnan(image).any():
        raise ValueError("image contains NaN")
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise ValueError(f"image values must be in [0, 1], got {float(image.min()):.3g}..{float(image.max()):.3g}")
    from kornia.color import rgb_to_grayscale
    from kornia.filters import canny

    grey = rgb_to_grayscale(image.clamp(0, 1))  # 0.299 R + 0.587 G + 0.114 B, as PIL's convert('L')
    k = 2 * int(math.ceil(3 * sigma)) + 1
    _, edges = canny(grey, low_threshold=low_threshold, high_threshold=high_threshold, kernel_size=(k, k),
                     sigma=(sigma, sigma))
    edges = edges[:, 0] > 0.5
    if parts_segmentation is not None:
        lab = celebahq_edge_label(parts_segmentation, edges.cpu())
        return (lab if lab.dim() == 4 else lab.unsqueeze(0)).to(image.device)
    out = torch.ones(b, EDGE_LABEL_CHANNELS, h, w, device=image.device)
    out[:, 0] = edges.float()
    out[:, -1] = 0.0
    return out


# ------------------------------------------------------------------------------------------------
# Preview
# ------------------------------------------------------------------------------------------------

def _palette(n: int) -> torch.Tensor:
    hues = torch.arange(n, dtype=torch.float32) / max(n, 1)
    k = (torch.tensor([5.0, 3.0, 1.0])[None] + hues[:, None] * 6) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)  # HSV -> RGB, s = v = 1; (n, 3)


def label_preview(label: torch.Tensor) -> torch.Tensor:
    """An RGB picture of a label tensor, ``(B, 3, H, W)`` in ``[0, 1]``.

    * 20 channels (pose label): channels 0-2, the skeleton render, as they are;
    * 15 channels (edge label): part proximity (``1 - distance map``) colour-coded per part, with the
      edges of channel 0 in white on top;
    * 3 channels: as they are; 1 channel: grey;
    * anything else: colour-coded argmax, shaded by the winning channel's value.

    Args:
        label: ``(C, H, W)`` or ``(B, C, H, W)``.
    """
    if not isinstance(label, torch.Tensor):
        raise ValueError(f"label must be a torch tensor, got {type(label).__name__}")
    if label.dim() == 3:
        label = label.unsqueeze(0)
    if label.dim() != 4 or label.numel() == 0:
        raise ValueError(f"label must be a non-empty (C, H, W) or (B, C, H, W) tensor, got {tuple(label.shape)}")
    x = label.float()
    if torch.isnan(x).any():
        raise ValueError("label contains NaN")
    c = x.shape[1]
    if c == POSE_LABEL_CHANNELS or c == 3:
        return x[:, :3].clamp(0, 1)
    if c == 1:
        return x.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    pal = _palette(c - 2 if c == EDGE_LABEL_CHANNELS else c).to(x.device)
    if c == EDGE_LABEL_CHANNELS:
        near = (1 - x[:, 1:-1].clamp(0, 1)) ** 8  # sharpen: close to a part boundary
        rgb = torch.einsum("bkhw,kc->bchw", near, pal) / near.sum(1, keepdim=True).clamp_min(1.0)
        return torch.maximum(rgb, x[:, :1].clamp(0, 1)).clamp(0, 1)
    val, idx = x.max(1)
    return (pal[idx].permute(0, 3, 1, 2) * val.clamp(0, 1)[:, None]).clamp(0, 1)
