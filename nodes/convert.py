"""ComfyUI tensor formats <-> dynast_core layouts.

IMAGE ``(B, H, W, C)`` float 0..1 <-> ``(B, C, H, W)`` float32; MASK ``(B, H, W)`` (any size, resized where
used); LATENT ``{"samples": (B, C, h, w), ...}``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import bridge


def image_in(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """IMAGE -> ``(B, 3, H, W)`` float32 (RGBA loses alpha, grey becomes RGB)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise ValueError(f"{name} must be a ComfyUI IMAGE (B, H, W, C), got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    c = image.shape[-1]
    x = image.float().permute(0, 3, 1, 2)
    if c == 4:
        x = x[:, :3]
    elif c == 1:
        x = x.expand(-1, 3, -1, -1)
    elif c != 3:
        raise ValueError(f"{name} has {c} channels; expected RGB (3), RGBA (4) or grey (1)")
    if min(x.shape[-2:]) < 8:
        raise ValueError(f"{name} is {x.shape[-2]}x{x.shape[-1]}: at least 8 pixels per side are needed")
    return x.contiguous()


def image_out(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> IMAGE on ComfyUI's intermediate device, clamped to 0..1."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).contiguous()
            .to(bridge.intermediate_device(), bridge.intermediate_dtype()))


def mask_in(mask: Optional[torch.Tensor], size: Optional[Tuple[int, int]] = None) -> Optional[torch.Tensor]:
    """MASK (``(H, W)`` or ``(B, H, W)``, any size) -> ``(B, 1, H, W)``, resized to ``size`` (bilinear) if given."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a ComfyUI MASK (B, H, W), got {type(mask).__name__}")
    m = mask.float()
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise ValueError(f"mask must be a ComfyUI MASK (B, H, W), got {tuple(mask.shape)}")
    m = m[:, None]
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
    return m.clamp(0, 1)


def mask_out(m: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` -> MASK ``(B, H, W)``."""
    return m.detach().float().clamp(0, 1)[:, 0].contiguous().to(bridge.intermediate_device(),
                                                                bridge.intermediate_dtype())
