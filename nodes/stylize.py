"""Stylize node: StyA2K with weights, or the weight-free all-to-key path."""
from __future__ import annotations

import torch

from . import bridge, convert
from .correspondence import on_device


class Stylize:
    DESCRIPTION = ("Paint the content in the manner of the style. With a StyA2K model: the trained network. "
                   "Without: weight-free all-to-key attention over style patches (no download needed).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "content": ("IMAGE", {"tooltip": "the image to stylise (a batch is stylised item by item)"}),
                "style": ("IMAGE", {"tooltip": "one style for every content, or one per content"}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "0 = the content, 1 = full stylisation"}),
                "preserve_color": ("BOOLEAN", {"default": False, "tooltip": "keep the content's colours"}),
                "size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                 "tooltip": "longer side to work and return at; 0 = the content's size"}),
            },
            "optional": {
                "model": ("STYA2K_MODEL", {"tooltip": "StyA2K weights; leave empty for the weight-free path"}),
                "mask": ("MASK", {"tooltip": "stylise only where the mask is 1 (any size; soft seam)"}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("the stylised image",)
    FUNCTION = "run"
    CATEGORY = "DynaST/style"

    def run(self, content, style, strength, preserve_color, size, model=None, mask=None):
        c, s = convert.image_in(content, "content"), convert.image_in(style, "style")
        if s.shape[0] not in (1, c.shape[0]):
            raise ValueError(f"style batch {s.shape[0]} must be 1 or the content batch {c.shape[0]}")
        m = convert.mask_in(mask, c.shape[-2:])
        if m is not None and m.shape[0] not in (1, c.shape[0]):
            raise ValueError(f"mask batch {m.shape[0]} must be 1 or the content batch {c.shape[0]}")
        levels = 3
        progress = bridge.Progress(c.shape[0] * (1 if model is not None else levels), "stylize")
        outs = []
        with torch.inference_mode():
            for i in range(c.shape[0]):
                ci, si = c[i:i + 1], s[i:i + 1] if s.shape[0] > 1 else s
                mi = None if m is None else (m[i:i + 1] if m.shape[0] > 1 else m)
                kw = dict(strength=strength, preserve_color=preserve_color, mask=mi, size=size or None)
                if model is not None:
                    from ..dynast_core.stylize import stylize
                    with on_device(model) as dev:
                        out = bridge.with_oom_retry(
                            lambda q: stylize(model, ci.to(dev), si.to(dev), query_chunk_size=q, **kw), None,
                            "StyA2K stylisation")
                    progress.tick()
                else:
                    from ..dynast_core.weightfree import stylize_weight_free
                    out = bridge.with_oom_retry(
                        lambda q: stylize_weight_free(ci, si, levels=levels, query_chunk_size=q,
                                                      progress=progress.callback(), **kw), None,
                        "weight-free stylisation")
                outs.append(out.cpu())
        progress.close()
        return (convert.image_out(torch.cat(outs, 0)),)
