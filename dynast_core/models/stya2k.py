"""StyA2K: arbitrary style transfer with all-to-key attention (Zhu et al., ICCV 2023).

Modules and state-dict keys follow the official release (github LearningHx/StyA2K) so its four files load:

* ``vgg_normalised.pth``: the VGG-19 encoder as a 53-layer ``nn.Sequential`` whose first 1x1 conv does the
  preprocessing (RGB in [0, 1] in, BGR mean-subtracted *255 inside); layers ``[:44]`` (up to relu5_1) are
  used, the three later convs are ignored;
* ``latest_net_A2K.pth``: the A2K module at relu3_1 (256 channels), whose output feeds the decoder's skip;
* ``latest_net_transform.pth``: A2K at relu4_1 and relu5_1 (512 channels), nearest x2 upsampling of the
  relu5_1 branch, a reflection-padded 3x3 merge conv;
* ``latest_net_decoder.pth``: the decoder with the relu3_1 skip input.

Beyond the official code (square inputs whose side is a multiple of 64, content and style of one size):
inputs of any size and aspect ratio are reflection-padded to a multiple of 16 (so the relu5_1 branch,
upsampled by 2, lands exactly on the relu4_1 grid) and the output is cropped back; the attention operators
pad their own maps to whole regions (see :mod:`dynast_core.attention.all_to_key`), so no border strip is left
untouched; the style may have another size and aspect than the content.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention.all_to_key import all_to_key_attention, pad_to_multiple
from ..checkpoints import (CheckpointError, check_shapes, describe_state_dict, read_state_dict,
                           save_safetensors)

__all__ = [
    "mean_variance_norm", "VGGEncoder", "A2K", "Transform", "Decoder", "StyA2K", "StyA2KConfig",
    "load_stya2k", "save_stya2k_safetensors", "OFFICIAL_FILES", "stya2k_features",
]

#: Official file name of each slot, and where users get it.
OFFICIAL_FILES = {
    "vgg": ("vgg_normalised.pth", "the VGG-19 encoder used by AdaIN/SANet/StyA2K (vgg_normalised.pth, linked from "
                                  "the StyA2K README)"),
    "a2k": ("latest_net_A2K.pth", "the StyA2K release (github LearningHx/StyA2K, checkpoints/A2K/)"),
    "transform": ("latest_net_transform.pth", "the StyA2K release (github LearningHx/StyA2K, checkpoints/A2K/)"),
    "decoder": ("latest_net_decoder.pth", "the StyA2K release (github LearningHx/StyA2K, checkpoints/A2K/)"),
}

#: Region side of the A2K attention at relu3_1, relu4_1, relu5_1 (official values).
REGIONS = {3: 8, 4: 8, 5: 4}
HEADS = 8
PAD_MULTIPLE = 16
#: smallest input side: the relu5_1 map must be at least 2x2 for its reflection padding
MIN_SIDE = 32


def mean_variance_norm(feat: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel instance normalisation as StyA2K computes it: unbiased variance plus ``eps``.

    Args:
        feat: ``(B, C, H, W)`` with ``H * W > 1``.
    """
    b, c = feat.shape[:2]
    flat = feat.reshape(b, c, -1)
    mean = flat.mean(-1).view(b, c, 1, 1)
    std = (flat.var(-1) + eps).sqrt().view(b, c, 1, 1)
    return (feat - mean) / std


def _conv(cin, cout, k=3):
    return nn.Conv2d(cin, cout, (k, k))


def _vgg_layers() -> List[nn.Module]:
    """The first 44 layers of the official 53-layer encoder (up to relu5_1), in order."""
    pad = lambda: nn.ReflectionPad2d((1, 1, 1, 1))  # noqa: E731
    pool = lambda: nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)  # noqa: E731
    layers: List[nn.Module] = [nn.Conv2d(3, 3, (1, 1)), pad(), _conv(3, 64), nn.ReLU()]          # 0-3 relu1_1
    layers += [pad(), _conv(64, 64), nn.ReLU(), pool(), pad(), _conv(64, 128), nn.ReLU()]       # 4-10 relu2_1
    layers += [pad(), _conv(128, 128), nn.ReLU(), pool(), pad(), _conv(128, 256), nn.ReLU()]    # 11-17 relu3_1
    for _ in range(3):
        layers += [pad(), _conv(256, 256), nn.ReLU()]                                           # 18-26
    layers += [pool(), pad(), _conv(256, 512), nn.ReLU()]                                       # 27-30 relu4_1
    for _ in range(3):
        layers += [pad(), _conv(512, 512), nn.ReLU()]                                           # 31-39
    layers += [pool(), pad(), _conv(512, 512), nn.ReLU()]                                       # 40-43 relu5_1
    return layers


class VGGEncoder(nn.Sequential):
    """VGG-19 up to relu5_1 in the ``vgg_normalised.pth`` layout (keys ``0.weight``, ``2.weight``, ...).

    ``forward(x)`` takes RGB in ``[0, 1]``, ``(B, 3, H, W)``, and returns the list
    ``[relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]`` (strides 1, 2, 4, 8, 16; pooling rounds up).
    """

    SLICES = ((0, 4), (4, 11), (11, 18), (18, 31), (31, 44))
    #: keys of the official file beyond relu5_1, not used
    UNUSED_KEYS = ("45.weight", "45.bias", "48.weight", "48.bias", "51.weight", "51.bias")

    def __init__(self):
        super().__init__(*_vgg_layers())

    def forward(self, x: torch.Tensor, upto: int = 5) -> List[torch.Tensor]:  # type: ignore[override]
        feats = []
        for start, end in self.SLICES[:upto]:
            for i in range(start, end):
                x = self[i](x)
            feats.append(x)
        return feats


class A2K(nn.Module):
    """The learned all-to-key attention module (keys ``q``, ``k``, ``v``, ``q2``, ``k2``, ``v2``, ``fusion1``,
    ``fusion2``, ``sim_alpha``, ``sim_beta``).

    ``forward(content, style, region)``: ``(B, C, Hc, Wc)`` and ``(B, C, Hs, Ws)`` features ->
    ``fusion1(distributed) + fusion2(progressive) + content``. Queries and keys are projections of the
    mean-variance-normalised features, values of the raw style features.
    """

    def __init__(self, channels: int):
        super().__init__()
        for name in ("q", "k", "v", "q2", "k2", "v2", "fusion1", "fusion2"):
            setattr(self, name, nn.Conv2d(channels, channels, (1, 1)))
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))

    def attend(self, content: torch.Tensor, style: torch.Tensor, region: int,
               query_chunk_size: Optional[int] = None) -> torch.Tensor:
        """The attention output ``fusion1(DA) + fusion2(PA)`` without the residual content."""
        nc, ns = mean_variance_norm(content), mean_variance_norm(style)
        r = all_to_key_attention(self.q(nc), self.k(ns), self.v(style), region=region, heads=HEADS,
                                 sim_alpha=self.sim_alpha, sim_beta=self.sim_beta, q_local=self.q2(nc),
                                 k_local=self.k2(ns), v_local=self.v2(style), query_chunk_size=query_chunk_size)
        return self.fusion1(r.distributed) + self.fusion2(r.progressive)

    def forward(self, content: torch.Tensor, style: torch.Tensor, region: int,
                query_chunk_size: Optional[int] = None) -> torch.Tensor:
        return self.attend(content, style, region, query_chunk_size) + content


class Transform(nn.Module):
    """A2K at relu4_1 and relu5_1, merged at relu4_1 resolution (keys ``attn_adain_4_1.*``,
    ``attn_adain_5_1.*``, ``merge_conv.*``)."""

    def __init__(self, channels: int = 512):
        super().__init__()
        self.attn_adain_4_1 = A2K(channels)
        self.attn_adain_5_1 = A2K(channels)
        self.merge_conv_pad = nn.ReflectionPad2d((1, 1, 1, 1))
        self.merge_conv = nn.Conv2d(channels, channels, (3, 3))

    def merge(self, feats4: torch.Tensor, feats5: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(feats5, scale_factor=2, mode="nearest")
        return self.merge_conv(self.merge_conv_pad(feats4 + up))

    def forward(self, content4_1, style4_1, content5_1, style5_1, query_chunk_size=None):
        f5 = self.attn_adain_5_1(content5_1, style5_1, REGIONS[5], query_chunk_size)
        f4 = self.attn_adain_4_1(content4_1, style4_1, REGIONS[4], query_chunk_size)
        return self.merge(f4, f5)


class Decoder(nn.Module):
    """The official decoder (keys ``decoder_layer_1.*``, ``decoder_layer_2.*``); with ``skip=True`` the
    relu3_1 A2K features are concatenated after the first upsampling."""

    def __init__(self, skip: bool = True):
        super().__init__()
        pad = lambda: nn.ReflectionPad2d((1, 1, 1, 1))  # noqa: E731
        up = lambda: nn.Upsample(scale_factor=2, mode="nearest")  # noqa: E731
        self.skip = skip
        self.decoder_layer_1 = nn.Sequential(pad(), _conv(512, 256), nn.ReLU(), up())
        self.decoder_layer_2 = nn.Sequential(
            pad(), _conv(512 if skip else 256, 256), nn.ReLU(),
            pad(), _conv(256, 256), nn.ReLU(),
            pad(), _conv(256, 256), nn.ReLU(),
            pad(), _conv(256, 128), nn.ReLU(), up(),
            pad(), _conv(128, 128), nn.ReLU(),
            pad(), _conv(128, 64), nn.ReLU(), up(),
            pad(), _conv(64, 64), nn.ReLU(),
            pad(), _conv(64, 3))

    def forward(self, cs: torch.Tensor, skip3: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.decoder_layer_1(cs)
        if self.skip:
            if skip3 is None:
                raise ValueError("this decoder was built with the relu3_1 skip input: pass skip3")
            x = torch.cat([x, skip3], 1)
        return self.decoder_layer_2(x)


@dataclass
class StyA2KConfig:
    """Architecture switches (the official release: skip_connection_3 on)."""

    skip3: bool = True


def stya2k_features(model: "StyA2K", content: torch.Tensor, style: torch.Tensor,
                    query_chunk_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Encode, attend and merge: the features the decoder turns into the stylised image.

    ``content`` and ``style`` must already be padded to multiples of 16 (``StyA2K.forward`` does it).
    """
    c = model.vgg(content)
    s = model.vgg(style)
    out = {"cs": model.transform(c[3], s[3], c[4], s[4], query_chunk_size)}
    if model.config.skip3:
        out["skip3"] = model.a2k(c[2], s[2], REGIONS[3], query_chunk_size)
    return out


class StyA2K(nn.Module):
    """The whole StyA2K network: encoder, relu3_1 A2K, Transform, decoder.

    ``forward(content, style)``: RGB in ``[0, 1]``, ``(B, 3, Hc, Wc)`` and ``(B or 1, 3, Hs, Ws)`` ->
    ``(B, 3, Hc, Wc)`` decoder output, *unclamped* (as the official test code saves it). For the user-facing
    version with strength, colour preservation and masks see :func:`dynast_core.stylize.stylize`.
    """

    def __init__(self, config: Optional[StyA2KConfig] = None):
        super().__init__()
        self.config = config or StyA2KConfig()
        self.vgg = VGGEncoder()
        self.a2k = A2K(256)
        self.transform = Transform(512)
        self.decoder = Decoder(self.config.skip3)
        for p in self.vgg.parameters():
            p.requires_grad_(False)

    @staticmethod
    def pad_input(x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Reflection-pad ``(B, 3, H, W)`` to multiples of 16 (replicate where too small to reflect)."""
        return pad_to_multiple(x, PAD_MULTIPLE)

    def check_inputs(self, content: torch.Tensor, style: torch.Tensor) -> None:
        for name, t in (("content", content), ("style", style)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3:
                raise ValueError(f"{name} must be an RGB batch (B, 3, H, W) in [0, 1], got "
                                 f"{getattr(t, 'shape', type(t).__name__)}")
            if min(t.shape[-2:]) < MIN_SIDE:
                raise ValueError(f"{name} is {t.shape[-2]}x{t.shape[-1]}: StyA2K needs at least {MIN_SIDE} pixels "
                                 "per side (its encoder downsamples by 16 and pads the 1/16 map); upscale it first")
        if style.shape[0] not in (1, content.shape[0]):
            raise ValueError(f"style batch {style.shape[0]} must be 1 (one style for every content) or equal to "
                             f"the content batch {content.shape[0]} (pairs)")

    def features(self, content: torch.Tensor, style: torch.Tensor,
                 query_chunk_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Decoder inputs for padded inputs (see :func:`stya2k_features`)."""
        if style.shape[0] == 1 and content.shape[0] > 1:
            style = style.expand(content.shape[0], -1, -1, -1)
        return stya2k_features(self, content, style, query_chunk_size)

    def decode(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.decoder(feats["cs"], feats.get("skip3"))

    def forward(self, content: torch.Tensor, style: torch.Tensor,
                query_chunk_size: Optional[int] = None) -> torch.Tensor:
        self.check_inputs(content, style)
        cp, (h, w) = self.pad_input(content)
        sp, _ = self.pad_input(style)
        return self.decode(self.features(cp, sp, query_chunk_size))[..., :h, :w]


# ---------------------------------------------------------------------------------------------- loading
SLOTS = ("vgg", "a2k", "transform", "decoder")


def _slot_module(model: StyA2K, slot: str) -> nn.Module:
    return {"vgg": model.vgg, "a2k": model.a2k, "transform": model.transform, "decoder": model.decoder}[slot]


def _load_slot(module: nn.Module, sd: Mapping[str, torch.Tensor], slot: str, source: str) -> None:
    want = module.state_dict()
    extra_ok = set(VGGEncoder.UNUSED_KEYS) if slot == "vgg" else set()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want and k not in extra_ok]
    if missing or unexpected:
        file_name = OFFICIAL_FILES[slot][0]
        raise CheckpointError(
            f"{source} does not fit the StyA2K '{slot}' slot (expected {file_name}): it looks like "
            f"{describe_state_dict(sd)}; {len(missing)} expected keys are missing"
            + (f" (e.g. {missing[0]})" if missing else "")
            + (f", {len(unexpected)} keys are unexpected (e.g. {unexpected[0]})" if unexpected else ""))
    check_shapes(want, sd, f"{source}, slot '{slot}'")
    module.load_state_dict({k: sd[k] for k in want}, strict=True)


def load_stya2k(path: Union[str, os.PathLike, None] = None, *, vgg=None, a2k=None, transform=None, decoder=None,
                device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None) -> StyA2K:
    """Load StyA2K weights.

    Accepts either the four official files by slot (``vgg=``, ``a2k=``, ``transform=``, ``decoder=``), a
    directory holding them under their official names (``vgg_normalised.pth``, ``latest_net_A2K.pth``,
    ``latest_net_transform.pth``, ``latest_net_decoder.pth``; slot arguments override single files), or one
    ``.safetensors`` written by :func:`save_stya2k_safetensors` / ``python -m dynast_core convert``.

    Returns:
        an eval-mode :class:`StyA2K` on ``device`` (default cpu) in ``dtype`` (default float32).

    Raises:
        CheckpointError: a file is missing (the message names the expected file and where to get it), is of
            the wrong kind for its slot (the message says what it looks like), or does not match in shape.
    """
    model = StyA2K()
    slots = {"vgg": vgg, "a2k": a2k, "transform": transform, "decoder": decoder}
    if path is not None:
        p = Path(path)
        if p.is_file() and p.suffix.lower() == ".safetensors":
            sd, meta = read_state_dict(p)
            if meta.get("format") not in (None, "dynast_core.StyA2K") and "vgg.0.weight" not in sd:
                raise CheckpointError(f"{p} is not a packed StyA2K file: it looks like {describe_state_dict(sd)}")
            if "vgg.0.weight" not in sd:
                raise CheckpointError(f"{p} is not a packed StyA2K file: it looks like {describe_state_dict(sd)}; "
                                      "pack the four official files with `python -m dynast_core convert --stya2k DIR "
                                      "OUT.safetensors`")
            config = StyA2KConfig(**json.loads(meta["config"])) if "config" in meta else StyA2KConfig()
            model = StyA2K(config)
            for slot in SLOTS:
                prefix = slot + "."
                _load_slot(_slot_module(model, slot), {k[len(prefix):]: v for k, v in sd.items()
                                                       if k.startswith(prefix)}, slot, str(p))
            return model.eval().to(device=device or "cpu", dtype=dtype)
        if p.is_dir():
            for slot in SLOTS:
                if slots[slot] is None:
                    slots[slot] = p / OFFICIAL_FILES[slot][0]
        elif not p.exists():
            raise CheckpointError(f"StyA2K weights not found: {p} is neither a folder holding the four official "
                                  "files nor a packed .safetensors file")
        else:
            raise CheckpointError(f"{p}: give a folder with the four official StyA2K files, a packed .safetensors, "
                                  "or the four files by slot (vgg=, a2k=, transform=, decoder=)")
    problems = []
    for slot in SLOTS:
        name, where = OFFICIAL_FILES[slot]
        if slots[slot] is None:
            problems.append(f"no file given for the '{slot}' slot: expected {name}, from {where}")
        elif not Path(slots[slot]).exists():
            problems.append(f"'{slot}' weights not found at {slots[slot]}: expected the file {name}, from {where}")
    if problems:
        raise CheckpointError("StyA2K weights are incomplete:\n  " + "\n  ".join(problems))
    for slot in SLOTS:
        f = Path(slots[slot])
        sd, _ = read_state_dict(f)
        _load_slot(_slot_module(model, slot), sd, slot, str(f))
    return model.eval().to(device=device or "cpu", dtype=dtype)


def save_stya2k_safetensors(model: StyA2K, path: Union[str, os.PathLike]) -> Path:
    """Pack a :class:`StyA2K` into one ``.safetensors`` (keys ``vgg.*``, ``a2k.*``, ``transform.*``,
    ``decoder.*``; the config in the metadata)."""
    meta = {"format": "dynast_core.StyA2K", "config": json.dumps(asdict(model.config))}
    return save_safetensors(path, model.state_dict(), meta)
