"""Stylize node: StyA2K with weights, or the weight-free all-to-key path."""
from __future__ import annotations

from . import bridge, convert
from ..dynast_core import api


class Stylize:
    DESCRIPTION = ("Paint the content in the manner of the style. With a StyA2K model: the trained network. "
                   "Without: weight-free all-to-key attention over style patches (no download needed).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "content": ("IMAGE", {"tooltip": "the image to stylise (a batch or a video clip: one style for every frame)"}),
                "style": ("IMAGE", {"tooltip": "one style for every content, or one per content"}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "0 = the content, 1 = full stylisation"}),
                "preserve_color": ("BOOLEAN", {"default": False, "tooltip": "keep the content's colours"}),
                "size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                 "tooltip": "longer side to work and return at; 0 = the content's size"}),
            },
            "optional": {
                "precision": (bridge.PRECISION_INPUT[0], dict(bridge.PRECISION_INPUT[1], tooltip=(
                    "weight-free precision (auto = ComfyUI's choice for the device); with a model, the precision "
                    "chosen in its loader is used"))),
                "temporal": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "video clips: blend in the previous stylised frame, carried along "
                                                  "the motion, where the match is sure (0 = every frame on its own; "
                                                  "0.8 steadies static and slowly moving regions)"}),
                "model": ("STYA2K_MODEL", {"tooltip": "StyA2K weights; leave empty for the weight-free path"}),
                "mask": ("MASK", {"tooltip": "stylise only where the mask is 1 (any size; soft seam)"}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("the stylised image",)
    FUNCTION = "run"
    CATEGORY = "DynaST/style"

    def run(self, content, style, strength, preserve_color, size, precision="auto", temporal=0.0, model=None,
            mask=None):
        c, s = convert.image_in(content, "content"), convert.image_in(style, "style")
        work = c.shape[-2:] if not size else (size, size)
        out = bridge.run(api.stylize, c, s, kind="stya2k" if model is not None else "weightfree_stylize",
                         work_size=tuple(work), frames=max(c.shape[0], s.shape[0]), model=model, precision=precision,
                         what="StyA2K stylisation" if model is not None else "weight-free stylisation",
                         strength=strength, preserve_color=preserve_color, mask=convert.mask_in(mask),
                         size=size or None, temporal=temporal)
        return (convert.image_out(out),)
