"""Match, Warp, Decode, Generate and the correspondence utilities: each converts ComfyUI tensors, runs one
:mod:`dynast_core.api` function through :func:`bridge.run` (device, precision, memory, progress, OOM), and
converts back.

A CORRESPONDENCE travelling between nodes is a :class:`dynast_core.api.MatchResult` (the correspondence, the
target size, the exemplar, and the DynaST features Decode continues from), held on ComfyUI's intermediate
device; an EXEMPLAR is a :class:`dynast_core.api.Exemplar`.
"""
from __future__ import annotations

from . import bridge, convert
from ..dynast_core import api
from ..dynast_core.masks import confidence_to_mask

CATEGORY = "DynaST"
CORR_TIP = "where each target position takes its appearance from in the exemplar (with confidence)"


def _chunk(value):
    return None if not value else int(value)


def _target_shape(exemplar, target_label, target_pose, target_image):
    """(work size, frames) of a match, for the memory estimate and the frame window."""
    if target_label is not None:
        return tuple(target_label.shape[-2:]), target_label.shape[0]
    if target_image is not None:
        return tuple(target_image.shape[-2:]), target_image.shape[0]
    frames = len(target_pose) if isinstance(target_pose, (list, tuple)) else 1
    return exemplar.size, max(frames, exemplar.batch_size)


class Match:
    DESCRIPTION = ("Find, for every position of the target layout, where in the exemplar it should take its "
                   "appearance from. With a DynaST model: the learned dynamic sparse attention. Without: the "
                   "weight-free cascade on colour/structure features (images) or on the layout labels.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "exemplar": ("DYNAST_EXEMPLAR", {"tooltip": "from the Exemplar node"}),
                "top_k": ("INT", {"default": 4, "min": 1, "max": 16,
                                  "tooltip": "candidates carried from scale to scale (DynaST: 4)"}),
                "query_chunk_size": ("INT", {"default": 0, "min": 0, "max": 1 << 20, "step": 256,
                                             "tooltip": "queries per attention chunk; 0 = automatic. Lower it if "
                                                        "memory runs out (it is lowered automatically on OOM)"}),
                "grid_scale": ("FLOAT", {"default": 1.0, "min": 0.125, "max": 1.0, "step": 0.125,
                                         "tooltip": "weight-free only: match on a grid this fraction of the image "
                                                    "(faster; warps still resample at full resolution)"}),
            },
            "optional": {
                "precision": (bridge.PRECISION_INPUT[0], dict(bridge.PRECISION_INPUT[1], tooltip=(
                    "weight-free matching precision (auto = ComfyUI's choice for the device); with a model, the "
                    "precision chosen in its loader is used"))),
                "temporal": ("BOOLEAN", {"default": False, "tooltip": (
                    "the targets are a video clip's frames in order: weight-free, each frame starts from the "
                    "previous frame's match (fewer outliers, steadier); with a model it changes nothing (the exemplar is "
                    "encoded once per clip either way)")}),
                "model": ("DYNAST_MODEL", {"tooltip": "a DynaST generator; leave empty for weight-free matching"}),
                "target_label": ("DYNAST_LABEL", {"tooltip": "the target layout label"}),
                "target_pose": ("POSE_KEYPOINT", {"tooltip": "the target pose (made into a label)"}),
                "target_image": ("IMAGE", {"tooltip": "weight-free image matching: the image to match"}),
            },
        }

    RETURN_TYPES = ("DYNAST_CORRESPONDENCE", "MASK", "IMAGE")
    RETURN_NAMES = ("correspondence", "confidence", "flow_preview")
    OUTPUT_TOOLTIPS = (CORR_TIP, "confidence of the match at the target size (1 = sure)",
                       "flow colours: hue = direction, saturation = distance")
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, exemplar, top_k, query_chunk_size, grid_scale, precision="auto", temporal=False, model=None,
            target_label=None, target_pose=None, target_image=None):
        image = convert.image_in(target_image, "target_image") if target_image is not None else None
        size, frames = _target_shape(exemplar, target_label, target_pose, image)
        result = bridge.run(api.match, exemplar, kind="dynast" if model is not None else "weightfree_match",
                            work_size=size, frames=frames, model=model, precision=precision,
                            query_chunk_size=_chunk(query_chunk_size), what="matching", target_label=target_label,
                            target_pose=target_pose, target_image=image, top_k=top_k, grid_scale=grid_scale,
                            temporal=bool(temporal))
        return (result, convert.mask_out(result.confidence()), convert.image_out(result.preview("flow")))


def _warp(result, x, **kwargs):
    return bridge.run(api.warp, result, x, kind="warp", work_size=result.target_size, frames=result.batch_size,
                      what="warping", **kwargs)


def warp_latent(result, latent):
    """Warp a LATENT laid out on the exemplar (its downscale and channel count are read from its shape)."""
    samples = latent["samples"]
    out = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask")}
    out["samples"] = _warp(result, samples)
    if "noise_mask" in latent:
        nm = latent["noise_mask"]
        out["noise_mask"] = _warp(result, nm.reshape(-1, 1, *nm.shape[-2:]).float(), output_size=result.target_size)
    return out


class Warp:
    DESCRIPTION = ("Warp anything laid out on the exemplar (IMAGE, MASK, LATENT at any resolution and channel "
                   "count) onto the target layout. Unconnected: the image output warps the exemplar itself and "
                   "the mask output is the match confidence.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"correspondence": ("DYNAST_CORRESPONDENCE", {"tooltip": CORR_TIP})},
            "optional": {
                "image": ("IMAGE", {"tooltip": "an image on the exemplar (default: the exemplar itself)"}),
                "mask": ("MASK", {"tooltip": "a mask on the exemplar"}),
                "latent": ("LATENT", {"tooltip": "a latent of the exemplar (any VAE: channels and downscale "
                                                 "are read from it)"}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "LATENT")
    RETURN_NAMES = ("image", "mask", "latent")
    OUTPUT_TOOLTIPS = ("the warped image at the target size", "the warped mask (or the confidence)",
                       "the warped latent at the target's latent size (None when no latent is connected)")
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, correspondence, image=None, mask=None, latent=None):
        r = correspondence
        img = _warp(r, convert.image_in(image) if image is not None else None)
        out_mask = r.confidence() if mask is None else _warp(r, convert.mask_in(mask), output_size=r.target_size)
        out_latent = warp_latent(r, latent) if latent is not None else None
        return (convert.image_out(img), convert.mask_out(out_mask), out_latent)


class Decode:
    DESCRIPTION = ("DynaST synthesis: turn a Match computed WITH a DynaST model into the output image. It reuses "
                   "the match's features (only the decoder runs).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("DYNAST_MODEL", {"tooltip": "the same DynaST model the Match used"}),
            "correspondence": ("DYNAST_CORRESPONDENCE", {"tooltip": "from Match with the model connected"}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("the generated image: the target layout with the exemplar's appearance",)
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, model, correspondence):
        r = correspondence
        image = bridge.run(api.decode, kind="dynast", work_size=r.target_size, frames=r.batch_size, model=model,
                           what="DynaST decoding", result=r)
        return (convert.image_out(image),)


class Generate:
    DESCRIPTION = "Match + Decode in one node: the target layout rendered with the exemplar's appearance."

    @classmethod
    def INPUT_TYPES(cls):
        req = Match.INPUT_TYPES()
        return {
            "required": {"model": ("DYNAST_MODEL", {"tooltip": "the DynaST generator"}),
                         "exemplar": req["required"]["exemplar"],
                         "query_chunk_size": req["required"]["query_chunk_size"]},
            "optional": {"target_label": req["optional"]["target_label"],
                         "target_pose": req["optional"]["target_pose"]},
        }

    RETURN_TYPES = ("IMAGE", "MASK", "DYNAST_CORRESPONDENCE")
    RETURN_NAMES = ("image", "low_confidence", "correspondence")
    OUTPUT_TOOLTIPS = ("the generated image", "1 where the match is unsure (inpaint these)", CORR_TIP)
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, model, exemplar, query_chunk_size, target_label=None, target_pose=None):
        size, frames = _target_shape(exemplar, target_label, target_pose, None)
        out = bridge.run(api.generate, kind="dynast", work_size=size, frames=frames, model=model,
                         query_chunk_size=_chunk(query_chunk_size), what="DynaST generation", exemplar=exemplar,
                         target_label=target_label, target_pose=target_pose)
        return (convert.image_out(out.image), convert.mask_out(out.match.confidence(low=True)), out.match)


class CorrespondencePreview:
    DESCRIPTION = "Show a correspondence: flow colours, or each target position painted with its exemplar colour."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "correspondence": ("DYNAST_CORRESPONDENCE", {"tooltip": CORR_TIP}),
            "kind": (["flow", "source"], {"tooltip": "flow: direction/distance colours; source: exemplar-grid "
                                                     "position colours"}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)
    OUTPUT_TOOLTIPS = ("the picture at the target size",)
    FUNCTION = "run"
    CATEGORY = CATEGORY + "/utils"

    def run(self, correspondence, kind):
        return (convert.image_out(correspondence.preview(kind)),)


class ConfidenceToMask:
    DESCRIPTION = ("Turn the match confidence into a mask for inpainting: low-confidence regions = 1, thresholded, "
                   "grown and feathered.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "correspondence": ("DYNAST_CORRESPONDENCE", {"tooltip": CORR_TIP}),
            "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "confidence below this is marked"}),
            "grow": ("INT", {"default": 4, "min": 0, "max": 256, "tooltip": "dilate the mask by this many pixels"}),
            "feather": ("INT", {"default": 4, "min": 0, "max": 256, "tooltip": "blur the edge by this many pixels"}),
            "invert": ("BOOLEAN", {"default": False, "tooltip": "mark the confident regions instead"}),
        }}

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("1 = redo here (low confidence), at the target size",)
    FUNCTION = "run"
    CATEGORY = CATEGORY + "/utils"

    def run(self, correspondence, threshold, grow, feather, invert):
        return (convert.mask_out(confidence_to_mask(correspondence, threshold, grow, feather, invert)),)
