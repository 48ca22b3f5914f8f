"""Video nodes: carry restyled keyframes through a clip (the EbSynth use, inside ComfyUI)."""
from __future__ import annotations

from . import bridge, convert
from ..dynast_core.video import propagate_keyframes


class PropagateKeyframes:
    DESCRIPTION = ("Carry restyled keyframes (from Stylize, a diffusion img2img, a painted frame...) to every frame "
                   "of the clip, following the correspondence from each frame to the keyframes' original frames, "
                   "blended by confidence and distance in time. Where no keyframe matches well, the mask is 1: "
                   "inpaint it with a diffusion model.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "the original clip (a batch of frames, in order)"}),
                "keyframes": ("IMAGE", {"tooltip": "the restyled keyframes, one per index below, in the same order "
                                                   "(resized to the frames if their size differs)"}),
                "keyframe_indices": ("STRING", {"default": "0", "tooltip": "which frames the keyframes are, e.g. "
                                                "'0' or '0, 24, 48' (negative counts from the end)"}),
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "confidence below this is marked in the mask (to repaint)"}),
                "grid_scale": ("FLOAT", {"default": 1.0, "min": 0.125, "max": 1.0, "step": 0.125,
                                         "tooltip": "match on a grid this fraction of the frame (faster; the warp "
                                                    "still resamples at full size)"}),
            },
            "optional": {"precision": bridge.PRECISION_INPUT},
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "low_confidence")
    OUTPUT_TOOLTIPS = ("every frame in the keyframes' look", "1 where no keyframe matched well (inpaint these)")
    FUNCTION = "run"
    CATEGORY = "DynaST/video"

    def run(self, frames, keyframes, keyframe_indices, threshold, grid_scale, precision="auto"):
        f = convert.image_in(frames, "frames")
        images, low = bridge.run(propagate_keyframes, f, keyframe_indices, convert.image_in(keyframes, "keyframes"),
                                 kind="weightfree_match", work_size=tuple(f.shape[-2:]), frames=f.shape[0],
                                 precision=precision, what="keyframe propagation", threshold=threshold,
                                 grid_scale=grid_scale)
        return (convert.image_out(images), convert.mask_out(low))
