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

Inference (no autograd: ``torch.no_grad`` or ``torch.inference_mode``) runs the same layers with fewer passes
over memory and the same values: each ReLU (and nearest x2 upsampling) is applied while its result is written
into the reflection-padded buffer the next convolution reads, pools are taken without indices, the decoder's
skip concatenation is written into that buffer too, and only the three features StyA2K uses (relu3_1,
relu4_1, relu5_1) are kept. Every convolution sees the same input as in the module-by-module path, so the
encoder features and the progressive attention's region choices are identical bit for bit. With autograd
the modules run one by one as before (training). All weights stay in their ``nn.Conv2d`` modules, which are
always called as modules. A model runs in one dtype (float32, float16 or bfloat16: weights and inputs);
statistics and attention logits are computed in float32 inside (see :func:`mean_variance_norm` and
:mod:`dynast_core.attention.all_to_key`).
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

from ..attention.all_to_key import (all_to_key_attention, distributed_attention, pad_to_multiple,
                                   progressive_attention)
from .._heap import cpu_inference_heap
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

    Returns:
        ``(B, C, H, W)`` in the dtype of ``feat``; for float16/bfloat16 the statistics and the normalisation
        are computed in float32 (``eps`` would vanish, squares overflow) and the result is cast back.
    """
    b, c = feat.shape[:2]
    dtype = torch.float32 if feat.dtype in (torch.float16, torch.bfloat16) else feat.dtype
    work = feat.to(dtype)
    flat = work.reshape(b, c, -1)
    mean = flat.mean(-1).view(b, c, 1, 1)
    std = (flat.var(-1) + eps).sqrt().view(b, c, 1, 1)
    if torch.is_grad_enabled() and feat.requires_grad:
        return ((work - mean) / std).to(feat.dtype)
    return torch.sub(work, mean).div_(std).to(feat.dtype)


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


def _inference() -> bool:
    """True when autograd is off (``torch.no_grad`` / ``torch.inference_mode``): the fused path may run."""
    return not torch.is_grad_enabled()


def _reflect_border(buf: torch.Tensor) -> torch.Tensor:
    """Fill the 1-pixel border of ``(B, C, H+2, W+2)`` from its interior as reflection padding does
    (``H, W >= 2``): columns ``0, W+1`` from ``2, W-1``, then rows ``0, H+1`` from ``2, H-1`` (corners too)."""
    h, w = buf.shape[-2] - 2, buf.shape[-1] - 2
    if w >= 4:
        buf[..., 1:-1, 0::w + 1] = buf[..., 1:-1, 2:w:w - 3]
    else:
        buf[..., 1:-1, 0] = buf[..., 1:-1, 2]
        buf[..., 1:-1, -1] = buf[..., 1:-1, -3]
    if h >= 4:
        buf[..., 0::h + 1, :] = buf[..., 2:h:h - 3, :]
    else:
        buf[..., 0, :] = buf[..., 2, :]
        buf[..., -1, :] = buf[..., -3, :]
    return buf


class _Buffers:
    """Padded buffers of one pass that their convolution has read, by shape: a later padding of the same shape
    reuses one instead of allocating fresh memory (whose pages the system would fault in again)."""

    def __init__(self):
        self.free: Dict[tuple, torch.Tensor] = {}

    def get(self, shape, like: torch.Tensor) -> torch.Tensor:
        t = self.free.pop((tuple(shape), like.dtype, like.device), None)
        return torch.empty(shape, dtype=like.dtype, device=like.device) if t is None else t

    def put(self, t: torch.Tensor) -> None:
        self.free[(tuple(t.shape), t.dtype, t.device)] = t


def _pad_fused(x: torch.Tensor, relu: bool, up: bool, skip: Optional[torch.Tensor] = None,
               buffers: Optional[_Buffers] = None, pool: bool = False) -> torch.Tensor:
    """``reflection_pad1(cat([up2(relu(pool2(x))), skip]))`` written in one pass into a fresh (or reused) buffer.

    Args:
        x: ``(B, C, H, W)``; relu: apply a ReLU; up: nearest x2 upsampling; skip: optional ``(B, Cs, H', W')``
            concatenated after ``x`` on the channels (``(H', W')`` the size after upsampling).
        buffers: where to take the buffer from (default: a new one).
        pool: 2x2 max pooling first (``H``, ``W`` even; ``x`` is overwritten: a temporary of the caller's).

    Returns:
        ``(B, C + Cs, H'+2, W'+2)``, equal element for element to the module-by-module result.
    """
    if pool:
        if up or skip is not None or min(x.shape[-2:]) < 4:
            x, pool = _max_pool2(x), False
        else:
            rows = x[..., 0::2, :]
            torch.maximum(rows, x[..., 1::2, :], out=rows)                     # row pairs, in place
            x = rows
    b, c, h, w = x.shape
    if pool:
        w //= 2
    ho, wo = (2 * h, 2 * w) if up else (h, w)
    if min(ho, wo) < 2:     # reflection needs 2 pixels: let the library raise its own error
        y = F.interpolate(x, scale_factor=2, mode="nearest") if up else x
        y = torch.relu(y) if relu else y
        return F.pad(y if skip is None else torch.cat([y, skip], 1), (1, 1, 1, 1), mode="reflect")
    cs = 0 if skip is None else skip.shape[1]
    if skip is not None and (skip.shape[0] != b or tuple(skip.shape[-2:]) != (ho, wo)):
        raise ValueError(f"the decoder's relu3_1 skip input {tuple(skip.shape)} does not fit its upsampled "
                         f"features {(b, c, ho, wo)}")
    shape = (b, c + cs, ho + 2, wo + 2)
    buf = torch.empty(shape, dtype=x.dtype, device=x.device) if buffers is None else buffers.get(shape, x)
    main = buf[:, :c]
    if up:
        # even interior rows take x's rows, each pixel twice; odd interior rows copy the row above
        rows = main[..., 1:-1:2, 1:-1].unflatten(-1, (w, 2))
        src = x[..., None].expand(b, c, h, w, 2)
        torch.clamp_min(src, 0, out=rows) if relu else rows.copy_(src)
        main[..., 2:-1:2, 1:-1] = main[..., 1:-1:2, 1:-1]
    elif pool:
        inner = main[..., 1:-1, 1:-1]
        torch.maximum(x[..., 0::2], x[..., 1::2], out=inner)                    # column pairs
        if relu:
            inner.clamp_min_(0)
    else:
        inner = main[..., 1:-1, 1:-1]
        torch.clamp_min(x, 0, out=inner) if relu else inner.copy_(x)
    if skip is not None:
        buf[:, c:, 1:-1, 1:-1] = skip
    return _reflect_border(buf)


def _max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling, stride 2, of a map with even sides, without indices (same values as max_pool2d)."""
    a = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(a[..., 0::2], a[..., 1::2])


def _is_pool2(m: nn.Module, x: torch.Tensor) -> bool:
    def two(v):
        return v in (2, (2, 2))
    return (two(m.kernel_size) and two(m.stride) and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1))
            and not m.return_indices and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0)


class _Pending:
    """A map with a ReLU and/or a nearest x2 upsampling still to apply (fused into the next padding)."""

    def __init__(self, x: torch.Tensor, owned: bool = False):
        self.x, self.owned, self.relu, self.up, self.pool = x, owned, False, False, False
        self.padded = False                 # x is a padded buffer of ours, free once a convolution read it
        self.buffers = _Buffers()

    def value(self) -> torch.Tensor:
        """The map with the pending operations applied (in place where the map is a temporary of ours)."""
        x = self.x
        if self.pool:
            x, self.owned, self.pool = _max_pool2(x), True, False
        if self.up:
            x, self.owned = F.interpolate(x, scale_factor=2, mode="nearest"), True
        if self.relu:
            x = x.relu_() if self.owned else torch.relu(x)
            self.owned = True
        self.x, self.relu, self.up = x, False, False
        return x

    def pad(self, skip: Optional[torch.Tensor] = None) -> None:
        """Reflection-pad by 1 (after the pending operations, with ``skip`` concatenated on the channels)."""
        self.x = _pad_fused(self.x, self.relu, self.up, skip, self.buffers, self.pool)
        self.owned, self.relu, self.up, self.pool, self.padded = True, False, False, False, True

    def run(self, layers) -> "_Pending":
        """Run ``layers`` (pads, convs, ReLUs, pools, upsamplings; anything else as a plain module call)."""
        for m in layers:
            if isinstance(m, nn.ReLU):
                self.relu = True
            elif isinstance(m, nn.Upsample) and m.mode == "nearest" and m.size is None \
                    and m.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)) and not self.up:
                self.up = True
            elif isinstance(m, nn.MaxPool2d) and not (self.up or self.pool) and _is_pool2(m, self.x):
                if self.owned and not self.padded:
                    self.pool = True            # fused into the next padding (commutes with the ReLU)
                else:
                    self.x, self.owned, self.padded = _max_pool2(self.x), True, False
            elif isinstance(m, nn.ReflectionPad2d) and tuple(m.padding) == (1, 1, 1, 1):
                self.pad()
            else:
                x, padded = self.value(), self.padded
                self.x, self.owned, self.padded = m(x), True, False
                if padded and isinstance(m, nn.Conv2d) and self.x is not x:
                    self.buffers.put(x)
        return self


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
        if _inference():
            return self.encode(x, tuple(range(1, upto + 1)))
        feats = []
        for start, end in self.SLICES[:upto]:
            for i in range(start, end):
                x = self[i](x)
            feats.append(x)
        return feats

    def encode(self, x: torch.Tensor, levels=(3, 4, 5)) -> List[torch.Tensor]:
        """The features ``relu{l}_1`` for ``l`` in ``levels`` (1..5, ascending), as :meth:`forward` computes them.

        Without autograd only these are kept (StyA2K needs relu3_1..relu5_1; relu1_1 and relu2_1 of a 2048
        image are 1.5 GB); each ReLU is fused into the padding of the next convolution and the pools keep no
        indices. With autograd it is :meth:`forward`'s module-by-module loop.
        """
        levels = tuple(levels)
        if not levels or list(levels) != sorted(set(levels)) or levels[0] < 1 or levels[-1] > 5:
            raise ValueError(f"levels must be ascending VGG levels between 1 and 5, got {levels}")
        if not _inference():
            feats = self.forward(x, levels[-1])
            return [feats[lv - 1] for lv in levels]
        state = _Pending(x)
        feats = []
        for lv, (start, end) in enumerate(self.SLICES[:levels[-1]], 1):
            state.run(self[i] for i in range(start, end))
            if lv in levels:
                feats.append(state.value())
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
        """The attention output ``fusion1(DA) + fusion2(PA)`` without the residual content.

        ``content`` ``(B, C, Hc, Wc)``, ``style`` ``(B, C, Hs, Ws)`` -> ``(B, C, Hc, Wc)``. ``sim_alpha`` and
        ``sim_beta`` are moved to the input's device where they are used (a module may have been left on
        another device); the attention computes with them in float32 for half-precision inputs.
        """
        nc, ns = mean_variance_norm(content), mean_variance_norm(style)
        dev = content.device
        alpha, beta = self.sim_alpha.to(device=dev), self.sim_beta.to(device=dev)
        if not _inference():
            r = all_to_key_attention(self.q(nc), self.k(ns), self.v(style), region=region, heads=HEADS,
                                     sim_alpha=alpha, sim_beta=beta, q_local=self.q2(nc), k_local=self.k2(ns),
                                     v_local=self.v2(style), query_chunk_size=query_chunk_size)
            return self.fusion1(r.distributed) + self.fusion2(r.progressive)
        # one part at a time, each freed once projected: the peak holds one part's maps
        out = self.fusion1(distributed_attention(self.q(nc), self.k(ns), self.v(style), region=region, heads=HEADS,
                                                 sim_alpha=alpha, sim_beta=beta, query_chunk_size=query_chunk_size))
        out += self.fusion2(progressive_attention(self.q2(nc), self.k2(ns), self.v2(style), region=region,
                                                  heads=HEADS, query_chunk_size=query_chunk_size))
        return out

    def forward(self, content: torch.Tensor, style: torch.Tensor, region: int,
                query_chunk_size: Optional[int] = None) -> torch.Tensor:
        out = self.attend(content, style, region, query_chunk_size)
        if not _inference():
            return out + content
        out += content
        return out


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
        if not _inference() or up.shape != feats4.shape or min(up.shape[-2:]) < 2:
            return self.merge_conv(self.merge_conv_pad(feats4 + up))
        b, c, h, w = feats4.shape
        buf = torch.empty(b, c, h + 2, w + 2, dtype=up.dtype, device=up.device)
        torch.add(feats4, up, out=buf[..., 1:-1, 1:-1])                         # the sum, padded in place
        del up
        return self.merge_conv(_reflect_border(buf))

    def forward(self, content4_1, style4_1, content5_1, style5_1, query_chunk_size=None):
        """relu4_1 ``(B, 512, H, W)`` and relu5_1 ``(B, 512, H/2, W/2)`` features -> ``(B, 512, H, W)``."""
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
        """``cs`` ``(B, 512, H, W)`` (relu4_1 grid), ``skip3`` ``(B, 256, 2H, 2W)`` -> ``(B, 3, 8H, 8W)``."""
        if self.skip and skip3 is None:
            raise ValueError("this decoder was built with the relu3_1 skip input: pass skip3")
        if not _inference():
            x = self.decoder_layer_1(cs)
            if self.skip:
                x = torch.cat([x, skip3], 1)
            return self.decoder_layer_2(x)
        state = _Pending(cs).run(self.decoder_layer_1)
        layers = list(self.decoder_layer_2)
        if self.skip:
            # the concatenation is written into the padded buffer of decoder_layer_2's first convolution
            if not isinstance(layers[0], nn.ReflectionPad2d) or tuple(layers[0].padding) != (1, 1, 1, 1):
                state.x, state.owned = torch.cat([state.value(), skip3], 1), True
            else:
                state.pad(skip3)
                layers = layers[1:]
        return state.run(layers).value()


@dataclass
class StyA2KConfig:
    """Architecture switches (the official release: skip_connection_3 on)."""

    skip3: bool = True


def stya2k_features(model: "StyA2K", content: torch.Tensor, style: torch.Tensor,
                    query_chunk_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Encode, attend and merge: the features the decoder turns into the stylised image.

    ``content`` and ``style`` must already be padded to multiples of 16 (``StyA2K.forward`` does it).
    Returns ``{"cs": (B, 512, H/8, W/8), "skip3": (B, 256, H/4, W/4)}`` (``skip3`` with the skip decoder).
    """
    return model.attend_features(model.encode(content), model.encode(style), query_chunk_size)


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

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """relu3_1, relu4_1, relu5_1 of a padded ``(B, 3, H, W)`` image (multiples of 16): the encoder
        features the attention uses (see :meth:`VGGEncoder.encode`)."""
        return self.vgg.encode(x, (3, 4, 5))

    def attend_features(self, content_feats: List[torch.Tensor], style_feats: List[torch.Tensor],
                        query_chunk_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Decoder inputs from :meth:`encode` results (a style batch of 1 serves every content item).

        Returns ``{"cs": (B, 512, H/8, W/8), "skip3": (B, 256, H/4, W/4)}`` (``skip3`` with the skip decoder).
        """
        c3, c4, c5 = content_feats
        s3, s4, s5 = style_feats
        if s3.shape[0] == 1 and c3.shape[0] > 1:
            s3, s4, s5 = (t.expand(c3.shape[0], -1, -1, -1) for t in (s3, s4, s5))
        out = {"cs": self.transform(c4, s4, c5, s5, query_chunk_size)}
        if self.config.skip3:
            out["skip3"] = self.a2k(c3, s3, REGIONS[3], query_chunk_size)
        return out

    def features(self, content: torch.Tensor, style: torch.Tensor,
                 query_chunk_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Decoder inputs for padded inputs (see :func:`stya2k_features`); a style batch of 1 is encoded once."""
        return stya2k_features(self, content, style, query_chunk_size)

    def decode(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.decoder(feats["cs"], feats.get("skip3"))

    def forward(self, content: torch.Tensor, style: torch.Tensor,
                query_chunk_size: Optional[int] = None) -> torch.Tensor:
        with cpu_inference_heap(content):               # CPU inference reuses freed memory (see .._heap)
            return self._forward(content, style, query_chunk_size)

    def _forward(self, content, style, query_chunk_size):
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
