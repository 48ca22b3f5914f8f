"""User-facing style transfer with StyA2K weights: sizes, strength, colour preservation, masks.

Images are RGB in ``[0, 1]``, ``(B, 3, H, W)``; the output has the content's size (or ``size``) and is
clamped to ``[0, 1]``. For the weight-free path (no checkpoint) see :mod:`dynast_core.weightfree`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ._heap import on_cpu_heap

from .models.stya2k import MIN_SIDE, StyA2K

__all__ = ["stylize", "stylize_multi", "resize_longer_side", "match_shorter_side", "preserve_content_color", "prepare_mask",
           "blend_with_mask", "match_batches"]

_HALF = (torch.float16, torch.bfloat16)


def _interpolate(img: torch.Tensor, **kwargs) -> torch.Tensor:
    """``F.interpolate`` of an image in any floating dtype. Half precision is resampled in float32 and cast
    back: the CPU has no antialiased kernels for it, and half-precision filter weights do not sum to one (a
    flat image would come back with a faint texture, which the attention's normalisation then amplifies)."""
    if img.dtype in _HALF:
        return F.interpolate(img.float(), **kwargs).to(img.dtype)
    return F.interpolate(img, **kwargs)


def resize_longer_side(img: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` so that its longer side is ``size`` (aspect kept); None keeps it."""
    if size is None:
        return img
    size = int(size)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    h, w = img.shape[-2:]
    scale = size / max(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    if new == (h, w):
        return img
    return _interpolate(img, size=new, mode="bicubic", align_corners=False, antialias=scale < 1).clamp(0, 1)


def match_shorter_side(style: torch.Tensor, size, minimum: int = 4) -> torch.Tensor:
    """Resize ``style`` (aspect kept) so that its shorter side equals the shorter side of ``size`` (the
    official test resizes both images' shorter side to the same length); each side at least ``minimum``."""
    hs, ws = style.shape[-2:]
    scale = min(size) / min(hs, ws)
    if abs(scale - 1) <= 1e-3:
        return style
    return _interpolate(style, size=(max(minimum, round(hs * scale)), max(minimum, round(ws * scale))),
                        mode="bicubic", align_corners=False, antialias=scale < 1).clamp(0, 1)


def _at_least(img: torch.Tensor, side: int) -> torch.Tensor:
    """Upscale ``(B, C, H, W)`` (aspect kept) so that its shorter side is at least ``side``."""
    h, w = img.shape[-2:]
    if min(h, w) >= side:
        return img
    scale = side / min(h, w)
    return _interpolate(img, size=(max(side, round(h * scale)), max(side, round(w * scale))), mode="bicubic",
                        align_corners=False).clamp(0, 1)


def _rgb_to_yuv(x):
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.492 * (b - y), 0.877 * (r - y)], 1)


def _yuv_to_rgb(x):
    y, u, v = x[:, 0], x[:, 1], x[:, 2]
    r = y + v / 0.877
    b = y + u / 0.492
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b], 1)


def preserve_content_color(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Keep the content's colours: the stylised luminance with the content's chroma (YUV).

    Luminance-only transfer (Gatys et al., "Preserving color in neural artistic style transfer"): the
    strokes and texture come from the style, the hues from the content. Both ``(B, 3, H, W)`` in [0, 1].
    """
    dtype = torch.promote_types(stylized.dtype, torch.float32)
    s, c = _rgb_to_yuv(stylized.to(dtype)), _rgb_to_yuv(content.to(dtype))
    return _yuv_to_rgb(torch.cat([s[:, :1], c[:, 1:]], 1)).clamp(0, 1).to(stylized.dtype)


def prepare_mask(mask: torch.Tensor, batch: int, size, feather: Optional[float] = None) -> torch.Tensor:
    """Bring a mask to ``(batch, 1, H, W)`` in [0, 1]: any input size (resized), ``(H, W)``, ``(B, H, W)``
    or ``(B, 1, H, W)``; feathered with a Gaussian of ``feather`` pixels (default 1% of the image
    diagonal) so the seam is smooth."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a tensor, got {type(mask).__name__}")
    m = mask.float()
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    elif m.dim() != 4 or m.shape[1] != 1:
        raise ValueError(f"mask must be (H, W), (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    if m.shape[0] not in (1, batch):
        raise ValueError(f"mask batch {m.shape[0]} must be 1 or the image batch {batch}")
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
    m = m.clamp(0, 1).expand(batch, -1, -1, -1)
    h, w = size
    sigma = (0.01 * (h * h + w * w) ** 0.5) if feather is None else float(feather)
    if sigma > 0:
        from kornia.filters import gaussian_blur2d
        k = int(2 * round(3 * sigma) + 1)
        k = min(k, 2 * (min(h, w) // 2) - 1) if min(h, w) > 2 else 1
        if k >= 3:
            m = gaussian_blur2d(m, (k, k), (sigma, sigma), border_type="replicate")
    return m


def blend_with_mask(stylized: torch.Tensor, content: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``mask * stylized + (1 - mask) * content`` with a prepared ``(B, 1, H, W)`` mask (None: stylized)."""
    if mask is None:
        return stylized
    mask = mask.to(stylized.dtype)
    return mask * stylized + (1 - mask) * content.to(stylized.dtype)


def match_batches(content: torch.Tensor, style: torch.Tensor):
    """One style for every content (style batch 1), or pairs (equal batches); anything else is an error."""
    for name, t in (("content", content), ("style", style)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"{name} must be an RGB batch (B, 3, H, W) in [0, 1], got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if style.shape[0] not in (1, content.shape[0]):
        if content.shape[0] == 1:
            return content.expand(style.shape[0], -1, -1, -1), style
        raise ValueError(f"content batch {content.shape[0]} and style batch {style.shape[0]} do not pair up: give "
                         "one style for all contents, one content for all styles, or equal batches")
    return content, style


@torch.no_grad()
@on_cpu_heap
def stylize(model: StyA2K, content: torch.Tensor, style: torch.Tensor, *, strength: float = 1.0,
            preserve_color: bool = False, mask: Optional[torch.Tensor] = None, size: Optional[int] = None,
            style_size: Optional[int] = None, query_chunk_size: Optional[int] = None,
            device=None, style_cache: Optional[dict] = None) -> torch.Tensor:
    """Stylise ``content`` with ``style`` using a loaded StyA2K model.

    Args:
        model: from :func:`dynast_core.load_stya2k`.
        content: ``(B, 3, H, W)`` RGB in [0, 1].
        style: ``(1 or B, 3, Hs, Ws)`` RGB in [0, 1]; any size and aspect.
        strength: 0 returns the content, 1 the full stylisation; in between, the decoder input is the
            blend ``s * F(content, style) + (1 - s) * F(content, content)`` of the stylised features and the
            content's self-stylised features (interpolation in feature space, as AdaIN-style methods do).
        preserve_color: keep the content's colours (luminance transfer, see :func:`preserve_content_color`).
        mask: optional content mask (any size; ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``): stylise inside it
            only, with a feathered seam.
        size: process (and return) the content at this longer side; default its own size.
        style_size: longer side of the style; default: scaled so its shorter side equals the content's
            shorter side (the official test resizes both images' shorter side to 512).
        query_chunk_size: bounds the attention's working memory.
        device: where to compute (default: the model's device; the model's small modules may live elsewhere
            when a memory manager offloads them).
        style_cache: a dict the caller keeps for one style over several calls (the windows of a clip): the
            style's encoder features are computed at the first call and reused.

    Returns:
        ``(B, 3, H, W)`` in [0, 1], in the model's dtype (the inputs are cast to the model's device and dtype;
        resampling that the CPU cannot do in half precision runs in float32).
    """
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    content, style = match_batches(content, style)
    p = next(model.parameters())
    dev = p.device if device is None else torch.device(device)
    content = resize_longer_side(content.to(dev, p.dtype), size)
    style = style.to(dev, p.dtype)
    if style_size is not None:
        style = resize_longer_side(style, style_size)
    else:
        style = match_shorter_side(style, content.shape[-2:], minimum=16)
    if strength == 0:
        out = content
    else:
        # the network needs MIN_SIDE pixels per side: upscale tiny images, and bring the result back
        c_in, s_in = _at_least(content, MIN_SIDE), _at_least(style, MIN_SIDE)
        model.check_inputs(c_in, s_in)
        cp, (h, w) = model.pad_input(c_in)
        sp, _ = model.pad_input(s_in)
        # each image is encoded once (strength < 1 reuses the content's features for F(content, content))
        c_feats = model.encode(cp)
        key = (tuple(sp.shape), sp.device, sp.dtype)
        if style_cache is not None and key in style_cache:
            s_feats = style_cache[key]
        else:
            s_feats = model.encode(sp)
            if style_cache is not None:
                style_cache[key] = s_feats
        feats = model.attend_features(c_feats, s_feats, query_chunk_size)
        del s_feats
        if strength < 1:
            own = model.attend_features(c_feats, c_feats, query_chunk_size)
            feats = {k: strength * feats[k] + (1 - strength) * own[k] for k in feats}
            del own
        del c_feats
        out = model.decode(feats)[..., :h, :w].clamp(0, 1)
        del feats
        if out.shape[-2:] != content.shape[-2:]:
            out = _interpolate(out, size=content.shape[-2:], mode="bilinear", align_corners=False,
                               antialias=True)
    if preserve_color:
        out = preserve_content_color(out, content)
    if mask is not None:
        out = blend_with_mask(out, content, prepare_mask(mask.to(out.device), out.shape[0], out.shape[-2:]))
    return out.clamp(0, 1).to(p.dtype)


@torch.no_grad()
def stylize_multi(model: StyA2K, content: torch.Tensor, styles: Sequence[torch.Tensor],
                  masks: Sequence[torch.Tensor], **kwargs) -> torch.Tensor:
    """Several styles, each inside its own region of the content.

    Each style is applied to the whole content, then the results are composited with the (feathered)
    masks; where the masks overlap they are normalised, where none covers the content stays.

    Args:
        content: ``(B, 3, H, W)``; styles: list of ``(1 or B, 3, Hs, Ws)``; masks: one per style, any size.
        kwargs: passed to :func:`stylize` (strength, preserve_color, size, ...; not ``mask``).
    """
    if len(styles) != len(masks) or not styles:
        raise ValueError(f"give one mask per style (got {len(styles)} styles and {len(masks)} masks)")
    if "mask" in kwargs:
        raise ValueError("stylize_multi takes per-style masks; do not pass mask=")
    size = kwargs.get("size")
    base = resize_longer_side(content, size)
    results, weights = [], []
    for style, mask in zip(styles, masks):
        out = stylize(model, content, style, **kwargs)
        results.append(out)
        weights.append(prepare_mask(mask.to(out.device), out.shape[0], out.shape[-2:]))
    total = torch.stack(weights).sum(0)
    norm = total.clamp_min(1.0)
    out = sum(w / norm * r.float() for w, r in zip(weights, results))
    out = out + (1 - total.clamp(max=1.0)) * base.to(out)
    return out.clamp(0, 1).to(results[0].dtype)
