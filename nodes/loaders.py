"""Loader nodes: DynaST generator and StyA2K weights from ComfyUI's models folders (cached)."""
from __future__ import annotations

import os
from typing import Dict, Tuple

from . import bridge

CATEGORY = "DynaST/loaders"
#: one cached model per loader kind: kind -> (key, ModelHandle)
_CACHE: Dict[str, Tuple[Tuple, bridge.ModelHandle]] = {}
NONE = "(none)"


def _cached(kind: str, paths, dtype, build) -> bridge.ModelHandle:
    """The cached handle of ``kind`` when the same files (same modification times) and dtype are asked for;
    else build a new one (replacing that kind's cached model only: checkpoints are large)."""
    stamp = tuple(os.path.getmtime(p) if p and os.path.exists(p) else 0 for p in paths)
    key = (tuple(paths), stamp, str(dtype))
    hit = _CACHE.get(kind)
    if hit is None or hit[0] != key:
        _CACHE.pop(kind, None)
        _CACHE[kind] = (key, build())
    return _CACHE[kind][1]


class DynaSTModelLoader:
    DESCRIPTION = ("Loads a DynaST generator (official latest_net_G.pth or a converted .safetensors) from "
                   "models/dynast. Needed by Decode and Generate; Match can also run without a model.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (bridge.list_models("dynast") or ["(put a checkpoint in models/dynast)"],
                                           {"tooltip": "checkpoint file in models/dynast"})},
                "optional": {"precision": bridge.PRECISION_INPUT}}

    RETURN_TYPES = ("DYNAST_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("the DynaST generator, handed to ComfyUI's model management (loaded to the GPU when a node "
                       "runs it, unloaded when other models need the room)",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, ckpt_name, precision="auto"):
        from ..dynast_core.models.dynast import load_dynast
        path = bridge.model_path("dynast", ckpt_name)
        dtype = bridge.precision_dtype(precision)
        return (_cached("dynast", [path], dtype, lambda: bridge.ModelHandle(
            load_dynast(path, device=bridge.offload_device(), dtype=dtype), "dynast", ckpt_name)),)


class StyA2KModelLoader:
    DESCRIPTION = ("Loads StyA2K: either one packed .safetensors (from `python -m dynast_core convert --stya2k`), "
                   "or the four official files: vgg_normalised.pth (models/vgg) and latest_net_A2K.pth, "
                   "latest_net_transform.pth, latest_net_decoder.pth (models/stya2k).")

    @classmethod
    def INPUT_TYPES(cls):
        st = bridge.list_models("stya2k")
        vgg = bridge.list_models("vgg")
        packed = [NONE] + [n for n in st if n.endswith(".safetensors")]
        pths = [NONE] + st

        def pick(names, default):
            return (names, {"default": default if default in names else names[0],
                            "tooltip": f"default file name: {default}"})
        return {"required": {
            "packed": (packed, {"tooltip": "a packed StyA2K .safetensors; when set, the four files below are ignored"}),
            "vgg": pick([NONE] + vgg, "vgg_normalised.pth"),
            "a2k": pick(pths, "latest_net_A2K.pth"),
            "transform": pick(pths, "latest_net_transform.pth"),
            "decoder": pick(pths, "latest_net_decoder.pth"),
        }, "optional": {"precision": bridge.PRECISION_INPUT}}

    RETURN_TYPES = ("STYA2K_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("the StyA2K network for the Stylize node",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, packed, vgg, a2k, transform, decoder, precision="auto"):
        from ..dynast_core.models.stya2k import OFFICIAL_FILES, load_stya2k
        dev = bridge.offload_device()
        dtype = bridge.precision_dtype(precision)
        if packed != NONE:
            path = bridge.model_path("stya2k", packed)
            return (_cached("stya2k", [path], dtype, lambda: bridge.ModelHandle(
                load_stya2k(path, device=dev, dtype=dtype), "stya2k", packed)),)
        paths = {}
        for slot, name, kind in (("vgg", vgg, "vgg"), ("a2k", a2k, "stya2k"), ("transform", transform, "stya2k"),
                                 ("decoder", decoder, "stya2k")):
            if name == NONE:
                raise FileNotFoundError(f"choose the StyA2K '{slot}' file ({OFFICIAL_FILES[slot][0]}, from "
                                        f"{OFFICIAL_FILES[slot][1]}) in models/{kind}, or a packed file")
            paths[slot] = bridge.model_path(kind, name)
        files = [paths[s] for s in ("vgg", "a2k", "transform", "decoder")]
        return (_cached("stya2k", files, dtype, lambda: bridge.ModelHandle(
            load_stya2k(device=dev, dtype=dtype, **paths), "stya2k", a2k)),)
