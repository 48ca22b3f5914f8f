"""Match, Warp, Decode, Generate and the correspondence utilities.

A CORRESPONDENCE travelling between nodes is a dict: ``corr`` (dynast_core Correspondence), ``target_size``
and ``exemplar_size`` (pixels), ``exemplar`` (the exemplar image, ``(B, 3, H, W)``), and ``match`` (the DynaST
match state when a model computed it: Decode continues from it instead of running the network again).
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from . import bridge, convert
from .layout import pose_to_label

CATEGORY = "DynaST"
CORR_TIP = "where each target position takes its appearance from in the exemplar (with confidence)"


@contextmanager
def on_device(model):
    """Move a cached model to the compute device for one run, and back to the offload device after."""
    dev = bridge.torch_device()
    model.to(dev)
    try:
        yield dev
    finally:
        model.to(bridge.offload_device())


def _target_label(target_label, target_pose, size):
    if target_label is not None:
        return target_label.float()
    if target_pose is not None:
        return pose_to_label(target_pose, *size)
    return None


def _chunk(value):
    return None if not value else int(value)


def run_match(exemplar, model=None, target_label=None, target_pose=None, target_image=None, top_k=4,
              query_chunk_size=0, grid_scale=1.0):
    """The Match node's work, reusable by Generate. Returns the CORRESPONDENCE dict."""
    ex_img, ex_label = exemplar["image"], exemplar["label"]
    size = tuple(ex_img.shape[-2:])
    tgt_img = convert.image_in(target_image, "target_image") if target_image is not None else None
    if tgt_img is not None:
        size = tuple(tgt_img.shape[-2:])
    if target_label is not None:
        size = tuple(target_label.shape[-2:])
    label = _target_label(target_label, target_pose, size)
    if label is not None:
        size = tuple(label.shape[-2:])
    progress = bridge.Progress(4, "match")          # one tick per scale (the batch runs together)
    with torch.inference_mode():
        if model is not None:
            if ex_label is None or label is None:
                raise ValueError("matching with a DynaST model needs layouts: give the Exemplar node a pose/label/"
                                 "edges layout, and connect target_label or target_pose")
            nc = model.config.semantic_nc
            if ex_label.shape[1] != nc or label.shape[1] != nc:
                raise ValueError(f"this DynaST model takes {nc}-channel labels; the exemplar label has "
                                 f"{ex_label.shape[1]} and the target label {label.shape[1]} channels")
            with on_device(model) as dev:
                p = next(model.parameters())

                def go(chunk):
                    return model.match(label.to(dev, p.dtype), (ex_img * 2 - 1).to(dev, p.dtype),
                                       ex_label.to(dev, p.dtype), top_k=top_k, query_chunk_size=chunk,
                                       progress=progress.callback())
                m = bridge.with_oom_retry(go, _chunk(query_chunk_size), "DynaST matching")
            corr = m.correspondence
        else:
            m = None
            kw = dict(top_k=top_k, grid_scale=grid_scale, query_chunk_size=_chunk(query_chunk_size),
                      progress=progress.callback())
            from ..dynast_core.weightfree import match_images, match_layouts
            if label is not None and ex_label is not None:
                if label.shape[1] != ex_label.shape[1]:
                    raise ValueError(f"the target label has {label.shape[1]} channels, the exemplar's "
                                     f"{ex_label.shape[1]}: build both the same way")
                el = F.interpolate(ex_label.float(), size=ex_img.shape[-2:], mode="nearest")
                corr = bridge.with_oom_retry(lambda c: match_layouts(label, el, **dict(kw, query_chunk_size=c)),
                                             kw["query_chunk_size"], "weight-free matching")
            elif tgt_img is not None:
                corr = bridge.with_oom_retry(lambda c: match_images(tgt_img, ex_img, **dict(kw, query_chunk_size=c)),
                                             kw["query_chunk_size"], "weight-free matching")
            else:
                raise ValueError("nothing to match against: connect target_image (image matching), or target_label/"
                                 "target_pose with an Exemplar that has a layout")
    progress.close()
    return {"corr": corr.to("cpu"), "target_size": size, "exemplar_size": tuple(ex_img.shape[-2:]),
            "exemplar": ex_img, "match": m}


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

    def run(self, exemplar, top_k, query_chunk_size, grid_scale, model=None, target_label=None, target_pose=None,
            target_image=None):
        c = run_match(exemplar, model, target_label, target_pose, target_image, top_k, query_chunk_size, grid_scale)
        corr, size = c["corr"], c["target_size"]
        return (c, convert.mask_out(corr.confidence_mask(None, size=size)),
                convert.image_out(corr.visualize("flow", size=size)))


def warp_latent(c, latent):
    """Warp a LATENT laid out on the exemplar at its own downscale and channel count."""
    samples = latent["samples"]
    eh, ew = c["exemplar_size"]
    th, tw = c["target_size"]
    sy, sx = eh / samples.shape[-2], ew / samples.shape[-1]
    out_size = (max(1, round(th / sy)), max(1, round(tw / sx)))
    warped = c["corr"].warp(samples.float(), output_size=out_size).to(samples.dtype)
    out = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask")}
    out["samples"] = warped
    if "noise_mask" in latent:
        nm = latent["noise_mask"].float()
        nm = nm.reshape(-1, 1, *nm.shape[-2:])
        out["noise_mask"] = c["corr"].warp(nm, output_size=(th, tw))
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
        c = correspondence
        corr, size = c["corr"], c["target_size"]
        with torch.inference_mode():
            src = convert.image_in(image) if image is not None else c["exemplar"]
            out_img = corr.warp(src.to(corr.weights.device), output_size=size)
            if mask is not None:
                m = mask.float()
                m = m[None] if m.dim() == 2 else m
                out_mask = corr.warp(m[:, None], output_size=size)
            else:
                out_mask = corr.confidence_mask(None, size=size)
            out_latent = warp_latent(c, latent) if latent is not None else None
        return (convert.image_out(out_img), convert.mask_out(out_mask), out_latent)


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
        m = correspondence.get("match")
        if m is None:
            raise ValueError("this correspondence was computed without a DynaST model (weight-free); connect the "
                             "model to Match, or use Warp for a weight-free result")
        with torch.inference_mode(), on_device(model) as dev:
            m = dataclasses.replace(m, features={k: v.to(dev) for k, v in m.features.items()}, label=m.label.to(dev))
            img = model.decode(m)
        return (convert.image_out((img + 1) / 2),)


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
        c = run_match(exemplar, model, target_label, target_pose, None, model.config.top_k, query_chunk_size)
        (img,) = Decode().run(model, c)
        low = c["corr"].confidence_mask(None, size=c["target_size"], low=True)
        return (img, convert.mask_out(low), c)


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
        c = correspondence
        return (convert.image_out(c["corr"].visualize(kind, size=c["target_size"])),)


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
        c = correspondence
        m = c["corr"].confidence_mask(threshold, size=c["target_size"], low=not invert)
        if grow:
            m = F.max_pool2d(m, 2 * grow + 1, stride=1, padding=grow)
        if feather:
            from kornia.filters import gaussian_blur2d
            k = 2 * feather + 1
            m = gaussian_blur2d(m, (k, k), (feather / 2, feather / 2), border_type="replicate")
        return (convert.mask_out(m),)
