"""Reading and writing images for the command line (PIL; RGB in [0, 1] as ``(1, 3, H, W)`` tensors)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

__all__ = ["load_image", "load_mask", "save_image", "to_pil"]

PathLike = Union[str, os.PathLike]
MAX_PIXELS = 64_000_000


def _open(path: PathLike):
    from PIL import Image, UnidentifiedImageError
    p = Path(path)
    if not p.exists():
        raise ValueError(f"image not found: {p}")
    try:
        img = Image.open(p)
        img.load()
    except UnidentifiedImageError as err:
        raise ValueError(f"{p} is not an image PIL can read (PNG, JPEG, WebP, ...)") from err
    except OSError as err:
        raise ValueError(f"{p} could not be read ({err}); it may be truncated") from err
    if img.width * img.height > MAX_PIXELS:
        raise ValueError(f"{p} is {img.width}x{img.height}: larger than {MAX_PIXELS // 1_000_000} megapixels; "
                         "downscale it first (or pass --size)")
    return img


def load_image(path: PathLike) -> torch.Tensor:
    """RGB ``(1, 3, H, W)`` float in [0, 1]. Grey and palette images become RGB; an alpha channel is
    composited over white (transparent regions would otherwise be black)."""
    from PIL import Image
    img = _open(path)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode in ("I;16", "I;16B", "I"):
        arr = np.asarray(img, dtype=np.float32)
        arr = arr / (65535.0 if arr.max() > 255 else 255.0)
        t = torch.from_numpy(np.ascontiguousarray(arr)).clamp(0, 1)[None, None].expand(1, 3, -1, -1).clone()
        return t
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]


def load_mask(path: PathLike) -> torch.Tensor:
    """``(1, 1, H, W)`` in [0, 1]: the alpha channel if the image has one, else its luminance."""
    img = _open(path)
    if img.mode in ("RGBA", "LA"):
        arr = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
    else:
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr))[None, None]


def to_pil(img: torch.Tensor):
    """``(3, H, W)``/``(1, 3, H, W)``/``(1, H, W)`` in [0, 1] -> PIL image."""
    from PIL import Image
    t = img.detach().float().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"to_pil takes one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() == 2:
        t = t[None]
    arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], mode="L")
    return Image.fromarray(arr, mode="RGB")


def thumbnail(img: torch.Tensor, side: int):
    """``(1, C, H, W)`` in [0, 1] (C = 1 or 3) -> an RGB PIL image whose longer side is ``side`` (antialiased)."""
    import torch.nn.functional as F
    t = img[0].detach().float().cpu().clamp(0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    h, w = t.shape[-2:]
    s = side / max(h, w)
    t = F.interpolate(t[None], size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                      align_corners=False, antialias=True)
    return to_pil(t)


def save_image(img: torch.Tensor, path: PathLike) -> Path:
    """Write an image tensor in [0, 1] (PNG unless the extension says otherwise); creates the folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    to_pil(img).save(p)
    return p
