"""Training data: DeepFashion (official layout), self-supervised layout-to-image from a folder of images, and
unpaired content/style folders for StyA2K.

Every dataset item is addressed by ``(index, seed)`` (plain ``index`` works too, with seed ``index``): all
random augmentation of an item is drawn from a generator seeded with that seed, so a run resumed from a
checkpoint sees exactly the batches the interrupted run would have seen (see :class:`ResumableSampler`).

Bad data (an unreadable image, a missing keypoint file, an image too small, keypoints that do not parse) is
reported with its path as :class:`DataError`. With ``on_error="raise"`` (default) it stops training; with
``on_error="skip"`` the item is replaced by the next good one, a warning names the file and the reason, and the
path is recorded in ``dataset.skipped`` -- bad data is never used silently. Missing files are found when the
dataset is built (cheap existence checks); unreadable ones when they are loaded.

DynaST items are dicts ``label`` ``(C, S, S)``, ``image`` ``(3, S, S)`` in [-1, 1], ``ref`` (exemplar, [-1, 1]),
``label_ref``, ``self_ref`` (float, 1 when the exemplar shows the ground truth), ``path``. StyA2K items are
``content``, ``style`` ``(3, S, S)`` in [0, 1], ``content_path``, ``style_path``.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..conditioning import EDGE_LABEL_CHANNELS, POSE_LABEL_CHANNELS, image_to_edge_label, parse_pose_keypoints, \
    pose_keypoints_to_label
from ..imageio import load_image

__all__ = ["DataError", "IMAGE_EXTENSIONS", "list_images", "DeepFashionDataset", "ImageFolderLayoutDataset",
           "ContentStyleDataset", "ResumableSampler", "is_deepfashion_root", "read_deepfashion_pose",
           "pose_json_for"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PathLike = Union[str, os.PathLike]


class DataError(ValueError):
    """A training sample that cannot be used; the message names the file and what is wrong."""


def list_images(root: PathLike) -> List[Path]:
    """Image files under ``root`` (recursive, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _split(item) -> Tuple[int, int]:
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), int(item)


def _load_rgb(path: Path, min_side: int) -> torch.Tensor:
    try:
        img = load_image(path)[0]
    except Exception as err:  # PIL raises many types
        raise DataError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None
    if min(img.shape[-2:]) < min_side:
        raise DataError(f"{path}: image is {img.shape[-1]}x{img.shape[-2]}, smaller than the minimum side "
                        f"{min_side}")
    return img


def _resize(img: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


class _Base(Dataset):
    on_error = "raise"

    def _init_errors(self, on_error: str):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: Dict[str, str] = {}

    def _report(self, err: DataError, path: str):
        if self.on_error == "raise":
            raise err
        if path not in self.skipped:
            warnings.warn(f"skipping bad training sample: {err}", stacklevel=3)
        self.skipped[path] = str(err)

    def _drop_missing(self, items: list, check) -> list:
        """Cheap up-front checks; ``check(item)`` returns an error string or None."""
        good, bad = [], []
        for it in items:
            msg = check(it)
            (bad if msg else good).append((it, msg))
        if bad:
            if self.on_error == "raise":
                head = "\n  ".join(m for _, m in bad[:10])
                raise DataError(f"{len(bad)} training sample(s) are unusable:\n  {head}"
                                + ("\n  ..." if len(bad) > 10 else "") + "\n(use on_error='skip' to leave them out)")
            for it, m in bad:
                self._report(DataError(m), m.split(":")[0])
        if not good:
            raise DataError("no usable training samples are left")
        return [it for it, _ in good]

    def _load(self, index: int, seed: int):
        raise NotImplementedError

    def item_path(self, index: int) -> str:
        raise NotImplementedError

    def __getitem__(self, item):
        index, seed = _split(item)
        n = len(self)
        for attempt in range(min(n, 50)):
            i = (index + attempt) % n
            try:
                return self._load(i, seed)
            except DataError as err:
                self._report(err, self.item_path(i))
        raise DataError(f"50 consecutive training samples from index {index} are unusable; see the warnings")


# ---------------------------------------------------------------------------------------------- DeepFashion
def is_deepfashion_root(root: PathLike) -> bool:
    """A DeepFashion root as the official code reads it: ``train.txt`` (image paths) beside ``img/`` and
    ``pose/``."""
    root = Path(root)
    return (root / "train.txt").is_file() and (root / "img").is_dir()


def read_deepfashion_pose(candidate_path: PathLike, subset_path: PathLike) -> np.ndarray:
    """OpenPose ``candidate`` (``N x 4``: x, y, score, id) and ``subset`` (``20``: 18 candidate indices, -1 =
    missing, then score and count) text files -> ``(18, 3)`` ``[x, y, 1]`` (missing joints ``[0, 0, 0]``)."""
    for p in (candidate_path, subset_path):
        if not Path(p).is_file():
            raise DataError(f"{p}: keypoint file is missing")
    try:
        cand = np.atleast_2d(np.loadtxt(candidate_path, ndmin=2))
        sub = np.loadtxt(subset_path, ndmin=1)
    except Exception as err:
        raise DataError(f"{candidate_path}: cannot parse the keypoint files ({err})") from None
    if sub.ndim == 2:   # several people: the one with most joints
        sub = sub[int(np.argmax((sub[:, :18] >= 0).sum(1)))]
    if sub.shape[0] < 18 or (cand.size and cand.shape[1] < 2):
        raise DataError(f"{subset_path}: expected 18+ subset entries and candidate rows [x, y, ...], got "
                        f"subset {sub.shape}, candidate {cand.shape}")
    kps = np.zeros((18, 3))
    for j in range(18):
        idx = int(sub[j])
        if idx < 0:
            continue
        if idx >= cand.shape[0]:
            raise DataError(f"{subset_path}: joint {j} refers to candidate {idx}, but {candidate_path} has "
                            f"{cand.shape[0]} rows")
        kps[j] = (cand[idx, 0], cand[idx, 1], 1.0)
    return kps


def _df_pose_paths(root: Path, rel: str) -> Tuple[Path, Path]:
    parts = rel.split("/")
    if parts[0] == "img":
        parts[0] = "pose"          # official: name.replace('img', 'pose') -- only the folder here
    stem = "/".join(parts)
    stem = stem[: stem.rfind(".")] if "." in parts[-1] else stem
    return root / f"{stem}_candidate.txt", root / f"{stem}_subset.txt"


class DeepFashionDataset(_Base):
    """DeepFashion as the official ``data/deepfashion_dataset.py`` reads it.

    Layout under ``root``: ``train.txt`` / ``val.txt`` (one image path per line, relative to ``root``, e.g.
    ``img/WOMEN/.../01_1_front.jpg``; backslashes accepted), ``pose/...<stem>_candidate.txt`` and
    ``_subset.txt`` beside each image's path with ``img`` replaced by ``pose``, and optionally the reference
    lists ``deepfashion_self_pair.txt`` (``key,ref,...``) and ``deepfashion_ref.txt`` (``key,...,ref``).

    Training (official ``--video_like``, real-reference probability 0): the exemplar is the image's partner
    from ``deepfashion_self_pair.txt`` (else the last entry of ``deepfashion_ref.txt``, else the image itself),
    ``self_ref = 1``. The label is :func:`pose_keypoints_to_label` drawn on the image's own canvas and resized
    to ``size`` (the official code resizes to 286 and randomly crops 256; we resize to ``size``, no crop).
    """

    def __init__(self, root: PathLike, phase: str = "train", size: int = 256, on_error: str = "raise",
                 use_pairs: bool = True):
        self.root = Path(root)
        self._init_errors(on_error)
        lst = self.root / ("train.txt" if phase == "train" else "val.txt")
        if not lst.is_file():
            raise ValueError(f"{self.root} is not a DeepFashion root: {lst.name} is missing (expected the "
                             "official layout: train.txt, val.txt, img/, pose/)")
        if size % 8 or size < 16:
            raise ValueError(f"size must be a multiple of 8 and at least 16, got {size}")
        self.size = size
        names = [ln.strip().replace("\\", "/") for ln in lst.read_text().splitlines() if ln.strip()]
        self.refs: Dict[str, str] = {}
        if use_pairs:
            ref_file = self.root / ("deepfashion_ref.txt" if phase == "train" else "deepfashion_ref_test.txt")
            if ref_file.is_file():
                for ln in ref_file.read_text().splitlines():
                    items = [x.strip().replace("\\", "/") for x in ln.split(",") if x.strip()]
                    if len(items) >= 2:
                        self.refs[items[0]] = items[-1]
            pair_file = self.root / "deepfashion_self_pair.txt"
            if pair_file.is_file():
                for ln in pair_file.read_text().splitlines():
                    items = [x.strip().replace("\\", "/") for x in ln.split(",") if x.strip()]
                    if len(items) >= 2:
                        self.refs[items[0]] = items[1]

        def check(name):
            for p in (self.root / name, *_df_pose_paths(self.root, name)):
                if not p.is_file():
                    kind = "image" if p.suffix.lower() in IMAGE_EXTENSIONS else "keypoint file"
                    return f"{p}: {kind} is missing"
            ref = self.refs.get(name)
            if ref is not None:
                for p in (self.root / ref, *_df_pose_paths(self.root, ref)):
                    if not p.is_file():
                        return f"{p}: reference of {name} is missing"
            return None

        self.names = self._drop_missing(names, check)

    def __len__(self):
        return len(self.names)

    def item_path(self, index: int) -> str:
        return str(self.root / self.names[index])

    def _label_image(self, rel: str):
        path = self.root / rel
        img = _load_rgb(path, 16)
        h0, w0 = img.shape[-2:]
        kps = read_deepfashion_pose(*_df_pose_paths(self.root, rel))
        if np.any(kps[:, 2] > 0) and (kps[kps[:, 2] > 0, :2].max() > 4 * max(h0, w0)):
            raise DataError(f"{path}: keypoints lie far outside the {w0}x{h0} image; wrong keypoint file?")
        try:
            label = pose_keypoints_to_label(kps, self.size, self.size, canvas_size=(h0, w0))
        except ValueError as err:
            raise DataError(f"{path}: {err}") from None
        return label, _resize(img, (self.size, self.size)) * 2 - 1

    def _load(self, index: int, seed: int):
        name = self.names[index]
        label, image = self._label_image(name)
        ref_name = self.refs.get(name)
        if ref_name is None:
            label_ref, ref = label, image
        else:
            label_ref, ref = self._label_image(ref_name)
        return {"label": label, "image": image, "ref": ref, "label_ref": label_ref,
                "self_ref": torch.tensor(1.0), "path": str(self.root / name)}


# ---------------------------------------------------------------------------------------------- folders
def pose_json_for(image_path: Path) -> Optional[Path]:
    """A pose keypoint JSON beside an image: ``<stem>.json`` or ``<stem>_keypoints.json``."""
    for cand in (image_path.with_suffix(".json"), image_path.with_name(image_path.stem + "_keypoints.json")):
        if cand.is_file():
            return cand
    return None


def _center_square(img: torch.Tensor, size: int) -> Tuple[torch.Tensor, float, float, float]:
    """Resize the shorter side to ``size`` and centre-crop; returns the crop and (scale, x0, y0) to map
    original pixel coordinates ``x' = x * scale - x0``."""
    h, w = img.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    img = _resize(img, (nh, nw))
    y0, x0 = (nh - size) // 2, (nw - size) // 2
    return img[:, y0:y0 + size, x0:x0 + size], s, float(x0), float(y0)


def _color_jitter(img: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness, contrast, saturation jitter (``img`` in [0, 1])."""
    if strength <= 0:
        return img
    r = (torch.rand(3, generator=g) * 2 - 1) * strength
    img = img * (1 + r[0])
    mean = img.mean()
    img = (img - mean) * (1 + r[1]) + mean
    grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
    img = (img - grey) * (1 + r[2]) + grey
    return img.clamp(0, 1)


def _random_affine(g: torch.Generator, rotate: float, scale: float, shift: float, flip: bool) -> torch.Tensor:
    """A 2x3 matrix mapping output normalised coordinates to input ones (for ``F.affine_grid``)."""
    u = torch.rand(5, generator=g)
    a = math.radians((u[0].item() * 2 - 1) * rotate)
    s = 1 + (u[1].item() * 2 - 1) * scale
    tx, ty = (u[2].item() * 2 - 1) * shift * 2, (u[3].item() * 2 - 1) * shift * 2
    fx = -1.0 if (flip and u[4].item() < 0.5) else 1.0
    c, si = math.cos(a) / s, math.sin(a) / s
    return torch.tensor([[c * fx, -si, tx], [si * fx, c, ty]], dtype=torch.float32)


def _warp(img: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta[None], [1, *img.shape], align_corners=False)
    return F.grid_sample(img[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


def _warp_points(kps: np.ndarray, theta: torch.Tensor, size: int) -> np.ndarray:
    """Move keypoints (pixels of a ``size`` square) as :func:`_warp` moves the image."""
    out = kps.copy()
    m = theta.double().numpy()
    a, t = m[:, :2], m[:, 2]
    inv = np.linalg.inv(a)
    present = kps[:, 2] > 0
    xn = (2 * kps[present, :2] + 1) / size - 1                    # align_corners=False normalisation
    src = (xn - t) @ inv.T
    out[present, :2] = ((src + 1) * size - 1) / 2
    inside = (out[:, 0] >= 0) & (out[:, 0] < size) & (out[:, 1] >= 0) & (out[:, 1] < size)
    out[~inside] = 0.0
    return out


class ImageFolderLayoutDataset(_Base):
    """Self-supervised layout-to-image training from any folder of images (CoCosNet/DynaST-style pseudo pairs).

    The target is the image (shorter side resized to ``size``, centre crop, photometric jitter); the label is
    its layout: ``"edge"`` = :func:`image_to_edge_label` (15 channels, celebahq_edge preset) or ``"pose"`` =
    OpenPose-18 keypoints from a JSON beside each image (``<stem>.json`` / ``<stem>_keypoints.json``, anything
    :func:`parse_pose_keypoints` reads; 20 channels, deepfashion preset); ``"auto"`` = pose when every image has
    a JSON. The exemplar is a geometrically augmented copy of the (jittered) target -- random rotation, scale,
    shift, horizontal flip -- with its own label (edges recomputed, keypoints moved), ``self_ref = 1``.
    ``exemplar_jitter`` adds an independent photometric jitter to the exemplar only (default 0: the exemplar's
    colours are the ones the network is asked to reproduce).

    With ``style_prob > 0`` an item's exemplar is, with that probability, another image (from ``style_root``
    if given, else from the same folder) and ``self_ref = 0``: the unsupervised style-transfer mode of
    :class:`~dynast_core.training.losses.DynaSTCriterion` (content layout in, style image as exemplar).
    """

    def __init__(self, root: PathLike, size: int = 256, label_mode: str = "auto", on_error: str = "raise",
                 rotate: float = 10.0, scale: float = 0.1, shift: float = 0.08, flip: bool = True,
                 jitter: float = 0.1, exemplar_jitter: float = 0.0, style_prob: float = 0.0,
                 style_root: Optional[PathLike] = None):
        self.root = Path(root)
        self._init_errors(on_error)
        if size % 8 or size < 16:
            raise ValueError(f"size must be a multiple of 8 and at least 16, got {size}")
        if not 0 <= style_prob <= 1:
            raise ValueError(f"style_prob must be in [0, 1], got {style_prob}")
        paths = list_images(self.root)
        if not paths:
            raise ValueError(f"{self.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
        if label_mode == "auto":
            label_mode = "pose" if all(pose_json_for(p) is not None for p in paths) else "edge"
        if label_mode not in ("edge", "pose"):
            raise ValueError(f"label_mode must be 'edge', 'pose' or 'auto', got {label_mode!r}")
        self.label_mode = label_mode
        self.label_nc = POSE_LABEL_CHANNELS if label_mode == "pose" else EDGE_LABEL_CHANNELS
        self.size, self.rotate, self.scale, self.shift, self.flip = size, rotate, scale, shift, flip
        self.jitter, self.exemplar_jitter, self.style_prob = jitter, exemplar_jitter, style_prob

        def check(p):
            if label_mode == "pose" and pose_json_for(p) is None:
                return f"{p}: keypoint file is missing (expected {p.with_suffix('.json').name} beside the image)"
            return None

        self.paths = self._drop_missing(paths, check)
        self.style_paths = list_images(style_root) if style_root is not None else None
        if self.style_paths is not None and not self.style_paths:
            raise ValueError(f"{style_root}: no style images found")

    def __len__(self):
        return len(self.paths)

    def item_path(self, index: int) -> str:
        return str(self.paths[index])

    def _keypoints(self, path: Path, h0: int, w0: int) -> np.ndarray:
        jp = pose_json_for(path)
        if jp is None:
            raise DataError(f"{path}: keypoint file is missing")
        try:
            return parse_pose_keypoints(str(jp), width=w0, height=h0)[0]
        except (ValueError, OSError) as err:
            raise DataError(f"{jp}: {err}") from None

    def _edge(self, img01: torch.Tensor) -> torch.Tensor:
        return image_to_edge_label(img01[None])[0]

    def _target(self, path: Path, g: torch.Generator):
        img = _load_rgb(path, 16)
        h0, w0 = img.shape[-2:]
        kps = self._keypoints(path, h0, w0) if self.label_mode == "pose" else None
        img, s, x0, y0 = _center_square(img, self.size)
        img = _color_jitter(img, g, self.jitter)
        if kps is not None:
            kps = kps.copy()
            pr = kps[:, 2] > 0
            kps[pr, 0] = kps[pr, 0] * s - x0
            kps[pr, 1] = kps[pr, 1] * s - y0
            inside = (kps[:, 0] >= 0) & (kps[:, 0] < self.size) & (kps[:, 1] >= 0) & (kps[:, 1] < self.size)
            kps[~inside] = 0.0
        return img, kps

    def _label(self, img: torch.Tensor, kps: Optional[np.ndarray]) -> torch.Tensor:
        if self.label_mode == "pose":
            return pose_keypoints_to_label(kps, self.size, self.size)
        return self._edge(img)

    def _load(self, index: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        path = self.paths[index]
        img, kps = self._target(path, g)
        label = self._label(img, kps)
        if self.style_prob > 0 and torch.rand(1, generator=g).item() < self.style_prob:
            pool = self.style_paths or self.paths
            j = int(torch.randint(len(pool), (1,), generator=g))
            if pool is self.paths and len(pool) > 1 and j == index:
                j = (j + 1) % len(pool)
            try:
                ref, rkps = self._target(pool[j], g)
            except DataError as err:
                raise DataError(f"{err} (style exemplar for {path})") from None
            label_ref, self_ref = self._label(ref, rkps), 0.0
        else:
            theta = _random_affine(g, self.rotate, self.scale, self.shift, self.flip)
            ref = _color_jitter(_warp(img, theta), g, self.exemplar_jitter)
            if self.label_mode == "pose":
                label_ref = pose_keypoints_to_label(_warp_points(kps, theta, self.size), self.size, self.size)
            else:
                label_ref = self._edge(ref)
            self_ref = 1.0
        return {"label": label, "image": img * 2 - 1, "ref": ref * 2 - 1, "label_ref": label_ref,
                "self_ref": torch.tensor(self_ref), "path": str(path)}


class ContentStyleDataset(_Base):
    """Unpaired content and style folders for StyA2K: item ``i`` is content image ``i`` with a style image drawn
    from the item's seed. Both are resized (shorter side to ``load_size``, default ``size``) and randomly
    cropped to ``size`` x ``size`` (official: load 512, crop 256). Values in [0, 1]."""

    def __init__(self, content_root: PathLike, style_root: PathLike, size: int = 256,
                 load_size: Optional[int] = None, on_error: str = "raise"):
        self._init_errors(on_error)
        if size % 16 or size < 64:
            raise ValueError(f"size must be a multiple of 16 and at least 64 for StyA2K training, got {size}")
        self.size, self.load_size = size, load_size or size
        if self.load_size < size:
            raise ValueError(f"load_size {self.load_size} must be at least size {size}")
        self.content = list_images(content_root)
        self.style = list_images(style_root)
        for name, lst, root in (("content", self.content, content_root), ("style", self.style, style_root)):
            if not lst:
                raise ValueError(f"{root}: no {name} images found (extensions {', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self):
        return len(self.content)

    def item_path(self, index: int) -> str:
        return str(self.content[index])

    def _crop(self, path: Path, g: torch.Generator) -> torch.Tensor:
        img = _load_rgb(path, 16)
        h, w = img.shape[-2:]
        s = self.load_size / min(h, w)
        nh, nw = max(self.size, round(h * s)), max(self.size, round(w * s))
        img = _resize(img, (nh, nw))
        y0 = int(torch.randint(nh - self.size + 1, (1,), generator=g))
        x0 = int(torch.randint(nw - self.size + 1, (1,), generator=g))
        return img[:, y0:y0 + self.size, x0:x0 + self.size].contiguous()

    def _load(self, index: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        c = self._crop(self.content[index], g)
        j = int(torch.randint(len(self.style), (1,), generator=g))
        try:
            s = self._crop(self.style[j], g)
        except DataError as err:
            if self.on_error == "raise":
                raise
            self._report(err, str(self.style[j]))
            for k in range(1, len(self.style)):
                try:
                    s = self._crop(self.style[(j + k) % len(self.style)], g)
                    j = (j + k) % len(self.style)
                    break
                except DataError as err2:
                    self._report(err2, str(self.style[(j + k) % len(self.style)]))
            else:
                raise DataError("no readable style image is left") from None
        return {"content": c, "style": s, "content_path": str(self.content[index]),
                "style_path": str(self.style[j])}


# ---------------------------------------------------------------------------------------------- sampler
class ResumableSampler(Sampler):
    """Yields ``(index, seed)`` for one process of ``world_size``: a permutation per epoch drawn from
    ``(seed, epoch)`` (like ``DistributedSampler``, padded by repetition so every rank gets the same count),
    and a per-item augmentation seed, starting at ``start`` items into the rank's stream. Infinite: epochs
    follow each other, so training is counted in steps."""

    def __init__(self, length: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0):
        if length <= 0:
            raise ValueError("the dataset is empty")
        self.length, self.seed, self.rank, self.world, self.start = length, seed, rank, world_size, start
        self.per_rank = math.ceil(length / world_size)

    def __iter__(self):
        epoch, pos = divmod(self.start, self.per_rank)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.length, generator=g).tolist()
            total = self.per_rank * self.world
            perm = (perm * math.ceil(total / self.length))[:total]
            mine = perm[self.rank:total:self.world]
            for k in range(pos, self.per_rank):
                item_seed = (self.seed * 7919 + epoch * 104729 + k * self.world + self.rank) % (2 ** 63 - 1)
                yield (mine[k], item_seed)
            epoch, pos = epoch + 1, 0

    def __len__(self):   # nominal: one epoch
        return self.per_rank
