"""DynaST generator (Liu et al., ECCV 2022), key-compatible with Huage001/DynaST ``generator.py``.

Structure (written once, looped over the scales 1/8 -> 1): two feature pyramids (the target label, and
the exemplar image + its label), SPADE residual embeddings, ``n_layers`` transformer blocks per scale
(dense at 1/8; at finer scales the first block inter-scale sparse, the others inner-scale sparse), and a
synthesis path that upsamples and merges the per-scale outputs into the image.

Official quirks reproduced (each changes outputs):

* the dense blocks divide logits by sqrt(C) (``smooth=None``), the sparse blocks by ``smooth`` (0.01); the
  dense gate logits are divided by the gate width, the sparse ones are not;
* ``embed_1`` is built and saved but the last stage calls ``embed_q1`` again: we keep ``embed_1`` for key
  compatibility and call ``embed_q1``;
* each ResidualBlock registers one PReLU twice (``relu`` and ``model.2``): both keys load, into one module;
* positional norm uses the unbiased variance; feature normalisation adds eps 1e-10 to the norm;
* the top-k after the 1/8 scale comes from the *last* dense block's logits; the last block of the finest
  scale computes no top-k.

Beyond the official code (which runs only at exactly ``crop_size``): any size and aspect. Inputs are
reflection-padded to a multiple of 8 and the output cropped back; the 32x32 position embedding is resampled
bilinearly to the 1/8 grid (at the training size it is used as stored). The exemplar is resized to the
target's size (the official code uses equal sizes).

Matching and decoding are split: :meth:`DynaSTGenerator.match` runs the encoders and transformers and
returns a :class:`DynaSTMatch` (per-scale features and correspondences); :meth:`DynaSTGenerator.decode`
runs only the synthesis path on it. The exemplar branch (everything that does not read the target label) can
be computed once with :meth:`DynaSTGenerator.encode_exemplar` and passed to ``match`` as ``exemplar_cache``
for every frame of a clip (inference only).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import (CheckpointError, describe_state_dict, fold_spectral_norm, read_state_dict,
                           save_safetensors, strip_prefix, check_shapes)
from .._heap import cpu_inference_heap
from ..attention._inference import work_dtype
from ..correspondence import Correspondence
from .blocks import DenseTransformerBlock, FeatureGenerator, SPADEResnetBlock, SparseTransformerBlock, reflect_pad1

__all__ = ["DynaSTConfig", "DYNAST_PRESETS", "dynast_config", "infer_dynast_config", "DynaSTGenerator",
           "DynaSTMatch", "DynaSTExemplarCache", "DynaSTOutput", "load_dynast", "convert_dynast_checkpoint",
           "save_dynast_safetensors", "generate"]

FORMAT = "dynast_core.DynaSTGenerator"


@dataclass
class DynaSTConfig:
    """Architecture hyper-parameters (names as the official options)."""

    semantic_nc: int = 20
    ngf: int = 64
    max_multi: int = 8
    n_layers: int = 2
    top_k: int = 4
    smooth: float = 0.01
    pos_dim: int = 16
    prune_dim: int = 16
    crop_size: int = 256

    def width(self, scale: int) -> int:
        """Feature width at scale index ``scale`` (1 = full, 2 = 1/2, 3 = 1/4, 4 = 1/8)."""
        return self.ngf * min(self.max_multi, 2 ** (scale - 1))

    def mult(self, scale: int) -> int:
        return min(self.max_multi, 2 ** (scale - 1))


#: The official test scripts' values (note n_layers 2, not the argparse default 3).
DYNAST_PRESETS: Dict[str, DynaSTConfig] = {
    "deepfashion": DynaSTConfig(semantic_nc=20),
    "celebahq_edge": DynaSTConfig(semantic_nc=15),
}


def dynast_config(name: str) -> DynaSTConfig:
    if name not in DYNAST_PRESETS:
        raise ValueError(f"unknown DynaST preset {name!r}; choose one of {sorted(DYNAST_PRESETS)}")
    return replace(DYNAST_PRESETS[name])


def infer_dynast_config(sd: Mapping[str, torch.Tensor]) -> DynaSTConfig:
    """Recover the config from generator tensors (official or folded)."""
    try:
        w1 = sd["encoder_q.layer1.0.weight_orig"] if "encoder_q.layer1.0.weight_orig" in sd \
            else sd["encoder_q.layer1.0.weight"]
        ngf, semantic_nc = int(w1.shape[0]), int(w1.shape[1])
        w4 = sd["encoder_q.layer4.0.weight_orig"] if "encoder_q.layer4.0.weight_orig" in sd \
            else sd["encoder_q.layer4.0.weight"]
        max_multi = int(w4.shape[0]) // ngf
        pos = sd["pos_embed"]
        pos_dim = int(pos.shape[1]) // min(max_multi, 8)
        crop = int(pos.shape[-1]) * 8
        prune_dim = int(sd["transformer_1.0.f_prune.weight"].shape[0])
        n_layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_4.")})
    except KeyError as err:
        raise CheckpointError(f"not a DynaST generator: key {err} is missing; it looks like "
                              f"{describe_state_dict(sd)}") from None
    return DynaSTConfig(semantic_nc=semantic_nc, ngf=ngf, max_multi=max_multi, n_layers=n_layers,
                        pos_dim=pos_dim, prune_dim=prune_dim, crop_size=crop)


@dataclass
class DynaSTMatch:
    """What :meth:`DynaSTGenerator.match` computed: everything :meth:`DynaSTGenerator.decode` needs.

    ``features[s]``: the transformer output at scale ``s`` (4 = 1/8 ... 1 = full), on the padded grid;
    ``correspondences[s]``: :class:`Correspondence` of the last block of each scale, cropped to the unpadded
    input (candidates in the exemplar's padded border mapped back to the positions they mirror); ``confidence[s]``: ``(B, 1, h, w)``; ``label``: the padded target label;
    ``size``: the unpadded ``(H, W)``; ``warped``: per-block warped exemplars (training only).
    """

    features: Dict[int, torch.Tensor]
    correspondences: Dict[int, Correspondence]
    confidence: Dict[int, torch.Tensor]
    label: torch.Tensor
    size: tuple
    warped: List[torch.Tensor] = field(default_factory=list)

    @property
    def correspondence(self) -> Correspondence:
        """The finest-scale correspondence."""
        return self.correspondences[1]

    @property
    def batch_size(self) -> int:
        return self.label.shape[0]

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "DynaSTMatch":
        """Move every tensor to ``device``; ``dtype`` applies to the floating tensors (features, label,
        confidence, correspondence weights), not to the candidate indices."""
        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return DynaSTMatch({k: move(v) for k, v in self.features.items()},
                           {k: c.to(device, dtype) for k, c in self.correspondences.items()},
                           {k: move(v) for k, v in self.confidence.items()}, move(self.label), self.size,
                           [move(w) for w in self.warped])

    def for_decode(self) -> "DynaSTMatch":
        """Only what :meth:`DynaSTGenerator.decode` and a warp need: the per-scale features, the label and
        the finest correspondence (the coarser scales' candidates and the training warps are dropped)."""
        return DynaSTMatch(dict(self.features), {1: self.correspondences[1]}, dict(self.confidence), self.label,
                           self.size)

    def select(self, start: int, end: int) -> "DynaSTMatch":
        """Batch items ``start:end``."""
        return DynaSTMatch({k: v[start:end] for k, v in self.features.items()},
                           {k: c.narrow(start, end) for k, c in self.correspondences.items()},
                           {k: v[start:end] for k, v in self.confidence.items()}, self.label[start:end],
                           self.size, [w[start:end] for w in self.warped])

    @staticmethod
    def cat(items: List["DynaSTMatch"]) -> "DynaSTMatch":
        """Concatenate along the batch (same size; the scales kept by every item)."""
        first = items[0]
        if any(m.size != first.size for m in items):
            raise ValueError("DynaST match states to concatenate must share one image size")
        scales = [s for s in first.correspondences if all(s in m.correspondences for m in items)]
        return DynaSTMatch({k: torch.cat([m.features[k] for m in items]) for k in first.features},
                           {s: Correspondence.cat([m.correspondences[s] for m in items]) for s in scales},
                           {k: torch.cat([m.confidence[k] for m in items]) for k in first.confidence},
                           torch.cat([m.label for m in items]), first.size)


@dataclass(frozen=True, eq=False)
class DynaSTExemplarCache:
    """The exemplar branch of :meth:`DynaSTGenerator.match`, computed once by
    :meth:`DynaSTGenerator.encode_exemplar` for targets of one size (e.g. every frame of a clip).

    Per scale ``s`` (4 = 1/8 ... 1 = full, on the padded grid): ``kv[s]`` the exemplar features (after
    ``embed_kv{s}``, the attention values), ``key[s]`` their key embedding (``feature_normalize(kv[s])`` and the
    position embedding, shared by every block of the scale), ``pos[s]`` the position embedding ``(1, P, h, w)``
    (it depends only on the grid; the target branch reads it too). ``exemplar``: the exemplar resized to
    ``size`` and reflection-padded to a multiple of 8 (the values of the warp branch); ``size``: the unpadded
    target ``(H, W)`` it was made for. Its batch is 1 (one exemplar shared by every target) or the target batch.

    Made without autograd, for inference; it belongs to the model (and weights) that made it. Read-only.
    """

    kv: Mapping[int, torch.Tensor]
    key: Mapping[int, torch.Tensor]
    pos: Mapping[int, torch.Tensor]
    exemplar: torch.Tensor
    size: Tuple[int, int]

    @property
    def batch_size(self) -> int:
        return self.exemplar.shape[0]

    @property
    def device(self) -> torch.device:
        return self.kv[4].device

    @property
    def dtype(self) -> torch.dtype:
        return self.kv[4].dtype

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "DynaSTExemplarCache":
        """A copy on ``device`` / in ``dtype`` (the memory format is kept)."""
        def move(d):
            return {k: v.to(device=device, dtype=dtype) for k, v in d.items()}
        return DynaSTExemplarCache(move(self.kv), move(self.key), move(self.pos),
                                   self.exemplar.to(device=device, dtype=dtype), self.size)

    def _scales(self) -> Iterator[tuple]:
        for s in (4, 3, 2, 1):
            yield s, self.kv[s], self.key[s], self.pos[s]


def _batched(t: Optional[torch.Tensor], b: int) -> Optional[torch.Tensor]:
    """``t`` (batch 1) repeated to batch ``b`` in its own memory format (a real tensor, as the exemplar branch
    computed at batch ``b`` would give: the convolutions that read it see the same layout)."""
    if t is None or t.shape[0] == b:
        return t
    cl = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return t.expand(b, *t.shape[1:]).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@dataclass
class DynaSTOutput:
    """``image``: ``(B, 3, H, W)`` in [-1, 1]; ``correspondence``: finest scale; ``confidence``: per scale."""

    image: torch.Tensor
    correspondence: Correspondence
    confidence: Dict[int, torch.Tensor]
    match: DynaSTMatch


def _up_conv(cin, cout, act):
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                         nn.Conv2d(cin, cout, (3, 3), (1, 1), 1, padding_mode="reflect"), act)


class DynaSTGenerator(nn.Module):
    """The DynaST generator. ``forward(label, exemplar, exemplar_label)``: official value ranges (exemplar RGB
    in [-1, 1], labels as the official datasets build them), any size; returns :class:`DynaSTOutput`."""

    def __init__(self, config: Optional[DynaSTConfig] = None):
        super().__init__()
        cfg = self.config = config or DynaSTConfig()
        nc, kvc = cfg.semantic_nc, cfg.semantic_nc + 3
        self.encoder_q = FeatureGenerator(nc, cfg.ngf, cfg.max_multi)
        self.encoder_kv = FeatureGenerator(kvc, cfg.ngf, cfg.max_multi)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.pos_dim * cfg.mult(4), cfg.crop_size // 8,
                                                  cfg.crop_size // 8))
        for s in (4, 3, 2, 1):
            w, m = cfg.width(s), cfg.mult(s)
            setattr(self, f"embed_q{s}", SPADEResnetBlock(w, nc))
            setattr(self, f"embed_kv{s}", SPADEResnetBlock(w, kvc))
            dims = ((cfg.ngf + cfg.pos_dim) * m, w, cfg.prune_dim * m, nc)
            if s == 4:
                blocks = [DenseTransformerBlock(*dims) for _ in range(cfg.n_layers)]
            else:
                blocks = [SparseTransformerBlock(*dims, smooth=cfg.smooth, inter_scale=i == 0)
                          for i in range(cfg.n_layers)]
            setattr(self, f"transformer_{s}", nn.ModuleList(blocks))
            if s < 4:
                wp = cfg.width(s + 1)
                for name in ("decoder_", "decoder_q", "decoder_kv"):
                    setattr(self, f"{name}{s + 1}{s}", _up_conv(wp, w, nn.ReLU()))
                setattr(self, f"pos_{s + 1}{s}", _up_conv(cfg.pos_dim * cfg.mult(s + 1), cfg.pos_dim * m,
                                                          nn.LeakyReLU()))
                # embed_1 exists in the official checkpoint but is never called (embed_q1 is used instead)
                setattr(self, f"embed_{s}", SPADEResnetBlock(w, nc))
        self.decoder_10 = nn.Sequential(nn.Conv2d(cfg.ngf, 3, (3, 3), (1, 1), 1, padding_mode="reflect"),
                                        nn.Tanh())

    # ------------------------------------------------------------------ inputs
    def _check_tensor(self, name, t, c):
        nc = self.config.semantic_nc
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != c:
            raise ValueError(f"{name} must be (B, {c}, H, W) for this model (semantic_nc={nc}), got "
                             f"{getattr(t, 'shape', type(t).__name__)}")

    @staticmethod
    def _check_size(size, what="label"):
        if min(size) < 16:
            raise ValueError(f"{what} is {size[0]}x{size[1]}: at least 16 pixels per side are needed")

    def _check_exemplar(self, exemplar, exemplar_label):
        self._check_tensor("exemplar", exemplar, 3)
        self._check_tensor("exemplar_label", exemplar_label, self.config.semantic_nc)
        if exemplar.shape[0] != exemplar_label.shape[0]:
            raise ValueError(f"exemplar batch {exemplar.shape[0]} and exemplar_label batch "
                             f"{exemplar_label.shape[0]} must agree")
        if exemplar.shape[-2:] != exemplar_label.shape[-2:]:
            raise ValueError(f"exemplar {tuple(exemplar.shape[-2:])} and exemplar_label "
                             f"{tuple(exemplar_label.shape[-2:])} must have the same size")

    def _check(self, label, exemplar, exemplar_label):
        nc = self.config.semantic_nc
        for name, t, c in (("label", label, nc), ("exemplar", exemplar, 3), ("exemplar_label", exemplar_label, nc)):
            self._check_tensor(name, t, c)
        self._check_size(tuple(label.shape[-2:]))
        b = label.shape[0]
        if exemplar.shape[0] != exemplar_label.shape[0] or exemplar.shape[0] not in (1, b):
            raise ValueError(f"exemplar batch {exemplar.shape[0]} and exemplar_label batch "
                             f"{exemplar_label.shape[0]} must agree and be 1 or the label batch {b}")
        self._check_exemplar(exemplar, exemplar_label)

    @staticmethod
    def _pad8(x: torch.Tensor) -> torch.Tensor:
        """Reflection padding at the bottom and right to a multiple of 8."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        return F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x

    def _prepare_exemplar(self, exemplar, exemplar_label, size):
        """The exemplar (any batch) resized to the target ``size`` and padded to x8 (no validation)."""
        h, w = size
        if exemplar.shape[-2:] != (h, w):
            # antialiased resampling has no half-precision CPU kernel: resample in float32
            exemplar = F.interpolate(exemplar.to(work_dtype(exemplar)), size=(h, w), mode="bilinear",
                                     align_corners=False, antialias=True).to(exemplar.dtype)
            exemplar_label = F.interpolate(exemplar_label, size=(h, w), mode="nearest")
        return self._pad8(exemplar), self._pad8(exemplar_label)

    def prepare(self, label, exemplar, exemplar_label):
        """Validate, broadcast the exemplar batch, resize the exemplar to the label's size and pad to x8."""
        self._check(label, exemplar, exemplar_label)
        b, (h, w) = label.shape[0], label.shape[-2:]
        exemplar, exemplar_label = self._prepare_exemplar(exemplar, exemplar_label, (h, w))
        if exemplar.shape[0] == 1 and b > 1:
            exemplar, exemplar_label = exemplar.expand(b, -1, -1, -1), exemplar_label.expand(b, -1, -1, -1)
        return self._pad8(label), exemplar, exemplar_label, (h, w)

    def position_embedding(self, size, like: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The position embedding ``(1, P, h, w)`` on a ``size`` 1/8 grid (resampled when it differs from the
        stored one), on the device and in the dtype of ``like`` when given (the parameter itself may have
        been left elsewhere by a low-VRAM host)."""
        pos = self.pos_embed if like is None else self.pos_embed.to(like)
        if tuple(pos.shape[-2:]) != tuple(size):
            pos = F.interpolate(pos, size=tuple(size), mode="bilinear", align_corners=False)
        if like is not None and like.is_contiguous(memory_format=torch.channels_last):
            pos = pos.contiguous(memory_format=torch.channels_last)
        return pos

    @staticmethod
    def _resized(cache: dict, seg: torch.Tensor, size) -> torch.Tensor:
        """``seg`` resized (nearest, as SPADE does) to ``size``, computed once per size."""
        size = tuple(size)
        if size not in cache:
            cache[size] = seg if tuple(seg.shape[-2:]) == size else F.interpolate(seg, size)
        return cache[size]

    @staticmethod
    def _segs(cache: dict, seg: torch.Tensor, size, fast: bool):
        """``(seg at size, its reflection padding or None)``: inference pads the label once per scale for all
        the SPADE convolutions that read it."""
        resized = DynaSTGenerator._resized(cache, seg, size)
        if not fast:
            return resized, None
        key = ("padded",) + tuple(size)
        if key not in cache:
            cache[key] = reflect_pad1(resized)
        return resized, cache[key]

    # ------------------------------------------------------------------ exemplar branch
    def _exemplar_branch(self, ref: torch.Tensor, fast: bool,
                         like: Optional[torch.Tensor] = None) -> Iterator[tuple]:
        """The exemplar branch, one scale at a time: yields ``(s, kv, key, pos)`` for s = 4, 3, 2, 1.

        ``ref``: the prepared exemplar and its label, concatenated (channels-last in inference); ``kv``: the
        features after ``embed_kv{s}``; ``key``: ``blocks[0].embed(kv, pos)`` in inference (the same for every
        block of the scale), else None; ``pos``: the position embedding on the grid, in the dtype, device and
        memory format of ``like`` (default: the 1/8 exemplar features). Lazy, so a caller that consumes one
        scale at a time holds one scale of it at a time."""
        kv_prev = dict(zip((4, 3, 2, 1), self.encoder_kv(ref)))
        segs: dict = {}
        kv = pos = None
        for s in (4, 3, 2, 1):
            if s == 4:
                grid = kv_prev[4].shape[-2:]
                kv = self.embed_kv4(kv_prev.pop(4), *self._segs(segs, ref, grid, fast))
                pos = self.position_embedding(grid, kv if like is None else like)
                like = None
            else:
                dkv = getattr(self, f"decoder_kv{s + 1}{s}")(kv)
                dkv = dkv.add_(kv_prev.pop(s)) if fast else dkv + kv_prev.pop(s)
                kv = getattr(self, f"embed_kv{s}")(dkv, *self._segs(segs, ref, dkv.shape[-2:], fast))
                del dkv
                pos = getattr(self, f"pos_{s + 1}{s}")(pos)
            segs.clear()                                      # the exemplar's label is read once per scale
            # the key is not kept here: the caller frees it after the scale's blocks
            yield s, kv, (getattr(self, f"transformer_{s}")[0].embed(kv, pos) if fast else None), pos

    def encode_exemplar(self, exemplar: torch.Tensor, exemplar_label: torch.Tensor, size) -> DynaSTExemplarCache:
        """The exemplar branch of :meth:`match` for targets of ``size`` ``(H, W)`` (unpadded), computed once.

        ``exemplar`` ``(N, 3, h, w)`` in [-1, 1] and ``exemplar_label`` ``(N, L, h, w)`` are resized to ``size``
        and padded to a multiple of 8 exactly as :meth:`match` does; ``N`` is 1 (one exemplar shared by every
        target: the cache serves any target batch) or the target batch. Pass the result as
        ``match(label, exemplar_cache=cache)`` for every label of that size (e.g. each frame or batch of frames
        of a clip): the results equal ``match(label, exemplar, exemplar_label)`` exactly (``match`` without a
        cache runs this same branch, at the exemplar's batch). Runs without autograd (the cache is for
        inference). It holds every scale at once: about 300 MiB for a 512x512 target in float32 with the
        official widths (ngf 64).
        """
        self._check_exemplar(exemplar, exemplar_label)
        try:
            size = (int(size[0]), int(size[1]))
        except (TypeError, IndexError, ValueError):
            raise ValueError(f"size must be the target (H, W), got {size!r}") from None
        self._check_size(size, "the target size")
        with torch.no_grad(), cpu_inference_heap(exemplar):
            exemplar, exemplar_label = self._prepare_exemplar(exemplar, exemplar_label, size)
            ref = torch.cat([exemplar, exemplar_label], 1).contiguous(memory_format=torch.channels_last)
            del exemplar_label
            kv, key, pos = {}, {}, {}
            for s, kv[s], key[s], pos[s] in self._exemplar_branch(ref, fast=True):
                pass
        return DynaSTExemplarCache(kv, key, pos, exemplar, size)

    def _check_cache(self, cache, label, exemplar, exemplar_label):
        if not isinstance(cache, DynaSTExemplarCache):
            raise ValueError(f"exemplar_cache must be a DynaSTExemplarCache from encode_exemplar, got "
                             f"{type(cache).__name__}")
        if exemplar is not None or exemplar_label is not None:
            raise ValueError("pass either exemplar and exemplar_label or exemplar_cache, not both")
        if torch.is_grad_enabled():
            raise ValueError("an exemplar cache is for inference (it holds no autograd graph): call match under "
                             "torch.no_grad() or torch.inference_mode(), or pass exemplar and exemplar_label")
        self._check_tensor("label", label, self.config.semantic_nc)
        size, want = tuple(label.shape[-2:]), tuple(cache.size)
        self._check_size(size)
        if size != want:
            raise ValueError(f"this exemplar cache was made for {want[0]}x{want[1]} targets and the label is "
                             f"{size[0]}x{size[1]}; call encode_exemplar with the target size {size}")
        b = label.shape[0]
        if cache.batch_size not in (1, b):
            raise ValueError(f"this exemplar cache holds {cache.batch_size} exemplars and the label batch is {b}: "
                             f"call encode_exemplar with one exemplar (shared by every target) or with {b}")
        if cache.device != label.device or cache.dtype != label.dtype:
            raise ValueError(f"this exemplar cache is {cache.dtype} on {cache.device} and the label {label.dtype} on "
                             f"{label.device}: call encode_exemplar with the exemplar on the label's device and "
                             f"dtype, or move the cache with cache.to(device, dtype)")
        if any(cache.kv[s].shape[1] != self.config.width(s) for s in (4, 3, 2, 1)):
            raise ValueError("this exemplar cache was made by a model with another configuration: call "
                             "encode_exemplar on this model")

    # ------------------------------------------------------------------ match / decode
    def match(self, label: torch.Tensor, exemplar: Optional[torch.Tensor] = None,
              exemplar_label: Optional[torch.Tensor] = None, *,
              exemplar_cache: Optional[DynaSTExemplarCache] = None, warp_exemplar: bool = False,
              warp_exclude: str = "kept", query_chunk_size: Optional[int] = None, top_k: Optional[int] = None,
              progress=None) -> DynaSTMatch:
        """Encoders and transformer blocks of every scale: the correspondence part of the network.

        The exemplar branch is computed from ``exemplar`` and ``exemplar_label``, or taken from
        ``exemplar_cache`` (:meth:`encode_exemplar`, inference only; then leave both None): the same results,
        without recomputing the exemplar for every call. ``warp_exemplar`` also computes the warp branch of the
        training loss (the exemplar, average-pooled to each scale, warped by each block's attention); ``top_k``
        overrides the configured number of candidates carried between scales; ``progress(step, 4)`` is called
        per scale.
        """
        k_carry = self.config.top_k if top_k is None else int(top_k)
        if k_carry < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if exemplar_cache is not None:
            self._check_cache(exemplar_cache, label, exemplar, exemplar_label)
        elif exemplar is None or exemplar_label is None:
            raise ValueError("match needs exemplar and exemplar_label, or an exemplar_cache from encode_exemplar")
        with cpu_inference_heap(label):
            return self._match(label, exemplar, exemplar_label, warp_exemplar, warp_exclude, query_chunk_size,
                               k_carry, progress, exemplar_cache)

    def _match(self, label, exemplar, exemplar_label, warp_exemplar, warp_exclude, query_chunk_size, k_carry,
               progress, cache: Optional[DynaSTExemplarCache] = None) -> DynaSTMatch:
        fast = not torch.is_grad_enabled()
        ref = branch = None
        if cache is None:
            # the exemplar branch runs at the exemplar's own batch (1 when it is shared) and is repeated to the
            # target batch where the blocks read it: the same per-scale code as encode_exemplar
            self._check(label, exemplar, exemplar_label)
            size = tuple(label.shape[-2:])
            exemplar, exemplar_label = self._prepare_exemplar(exemplar, exemplar_label, size)
            ref = torch.cat([exemplar, exemplar_label], 1)
            del exemplar_label
        else:
            size, exemplar, branch = tuple(cache.size), cache.exemplar, cache._scales()
        label = self._pad8(label)
        b = label.shape[0]
        if fast:
            # inference: every activation channels-last from here on (the convolutions' native layout on the
            # CPU, a contiguous channel reduction for the norms, and the attention's row layout for free)
            label = label.contiguous(memory_format=torch.channels_last)
            ref = ref.contiguous(memory_format=torch.channels_last) if ref is not None else None
        if warp_exemplar and exemplar.shape[0] != b:
            exemplar = exemplar.expand(b, -1, -1, -1)
        segs_q: dict = {}
        q_prev = dict(zip((4, 3, 2, 1), self.encoder_q(label)))
        features, corrs, confs, warped = {}, {}, {}, []
        topk = q = kv = pos = None
        for s in (4, 3, 2, 1):
            if s == 4:
                grid = q_prev[4].shape[-2:]
                q = self.embed_q4(q_prev.pop(4), *self._segs(segs_q, label, grid, fast))
                if branch is None:
                    branch = self._exemplar_branch(ref, fast, like=q)   # pos in the target features' layout
                    ref = None
            else:
                segs_q.clear()                                # the label at the previous scale is done
                dq = getattr(self, f"decoder_q{s + 1}{s}")(q)
                dq = dq.add_(q_prev.pop(s)) if fast else dq + q_prev.pop(s)
                q = getattr(self, f"embed_q{s}")(dq, *self._segs(segs_q, label, dq.shape[-2:], fast))
                del dq
            kv = key = None                                   # the previous scale's, before the next is made
            _, kv, key, pos = next(branch)
            kv, key = _batched(kv, b), _batched(key, b)
            wv = F.avg_pool2d(exemplar, 2 ** (s - 1)) if warp_exemplar and s > 1 else (exemplar if warp_exemplar
                                                                                       else None)
            x = q
            seg, seg_padded = self._segs(segs_q, label, q.shape[-2:], fast)
            blocks = getattr(self, f"transformer_{s}")
            for i, block in enumerate(blocks):
                last = i == len(blocks) - 1
                if s == 4:
                    out = block(x, kv, kv, pos, seg, top_k=k_carry if last else 0, warp_values=wv,
                                warp_exclude=warp_exclude, query_chunk_size=query_chunk_size, key=key,
                                seg_padded=seg_padded)
                else:
                    out = block(x, kv, kv, pos, seg, topk, need_topk=not (s == 1 and last), warp_values=wv,
                                warp_exclude=warp_exclude, query_chunk_size=query_chunk_size, key=key,
                                need_candidates=last, seg_padded=seg_padded)
                x = out.features
                if out.topk is not None:
                    topk = out.topk
                if out.warped is not None:
                    warped.append(out.warped)
            del key
            grid = tuple(x.shape[-2:])
            corr = Correspondence(out.candidates, out.weights, grid, grid, out.confidence)
            unpadded = (-(-size[0] // 2 ** (s - 1)), -(-size[1] // 2 ** (s - 1)))
            corrs[s] = corr.crop(unpadded, unpadded) if unpadded != grid else corr
            confs[s] = out.confidence
            features[s] = x
            if progress is not None:
                progress(5 - s, 4)
        return DynaSTMatch(features, corrs, confs, label, size, warped)

    def decode(self, m: DynaSTMatch) -> torch.Tensor:
        """The synthesis path on a :class:`DynaSTMatch`: ``(B, 3, H, W)`` in [-1, 1] (padding cropped)."""
        with cpu_inference_heap(m.label):
            return self._decode(m)

    def _decode(self, m: DynaSTMatch) -> torch.Tensor:
        fast = not torch.is_grad_enabled()
        segs: dict = {}
        x = m.features[4]
        for s in (3, 2, 1):
            x = getattr(self, f"decoder_{s + 1}{s}")(x)
            x = x.add_(m.features[s]) if fast else x + m.features[s]
            embed = self.embed_q1 if s == 1 else getattr(self, f"embed_{s}")   # official: embed_q1, not embed_1
            x = embed(x, *self._segs(segs, m.label, x.shape[-2:], fast))
        h, w = m.size
        out = self.decoder_10(x)[..., :h, :w]
        return out.contiguous() if fast else out

    def forward(self, label: torch.Tensor, exemplar: torch.Tensor, exemplar_label: torch.Tensor,
                **kwargs) -> DynaSTOutput:
        with cpu_inference_heap(label):
            m = self.match(label, exemplar, exemplar_label, **kwargs)
            return DynaSTOutput(self.decode(m), m.correspondence, m.confidence, m)


# ---------------------------------------------------------------------------------------------- loading
def _official_to_ours(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Fold spectral norm; everything else keeps its official name. A ResidualBlock's PReLU is stored as
    ``relu.weight`` and ``model.2.weight`` (one module); files that keep only one get the other filled."""
    out = fold_spectral_norm(sd)
    for k in list(out):
        if k.endswith(".relu.weight") and k[: -len("relu.weight")] + "model.0.weight" in out:
            out.setdefault(k[: -len("relu.weight")] + "model.2.weight", out[k])
    for k in list(out):
        if k.endswith(".model.2.weight"):
            out.setdefault(k[: -len("model.2.weight")] + "relu.weight", out[k])
    return out


def load_dynast(path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]], *,
                config: Optional[DynaSTConfig] = None, device=None,
                dtype: Optional[torch.dtype] = None) -> DynaSTGenerator:
    """Load a DynaST generator: the official ``latest_net_G.pth`` (raw state_dict, optional ``module.``
    prefix, read with ``weights_only=True``), our ``.safetensors`` (config in its metadata) or a state dict.

    The config is taken from the file's metadata, else inferred from the tensors, unless given. The model is
    returned in eval mode with its 4-D weights in channels-last memory format (inference runs channels-last).

    Raises:
        CheckpointError: not a DynaST generator (the message says what the file looks like), truncated,
            or a key whose shape does not match (named, with both shapes).
    """
    meta: Dict[str, str] = {}
    if isinstance(path_or_state_dict, Mapping):
        sd = strip_prefix(path_or_state_dict)
        source = "state dict"
    else:
        sd, meta = read_state_dict(path_or_state_dict)
        source = str(path_or_state_dict)
    if "pos_embed" not in sd or not any(k.startswith("transformer_4.") for k in sd):
        raise CheckpointError(f"{source} is not a DynaST generator: it looks like {describe_state_dict(sd)}")
    if config is None:
        config = DynaSTConfig(**json.loads(meta["config"])) if "config" in meta else infer_dynast_config(sd)
    model = DynaSTGenerator(config)
    if dtype is not None:
        model.to(dtype)        # before loading, so float64 weights are not rounded through float32
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    sd = _official_to_ours(sd)
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match the DynaST generator ({len(missing)} keys missing, e.g. "
                              f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    check_shapes(want, sd, source)
    model.load_state_dict(sd, strict=True)
    # convolution weights laid out channels-last, as inference lays out its activations (no per-call weight
    # reordering); values, keys and parameter objects are unchanged
    return model.eval().to(device=device or "cpu", memory_format=torch.channels_last)


def save_dynast_safetensors(model: DynaSTGenerator, path) -> Path:
    """Write the (folded) weights with the config in the metadata."""
    meta = {"format": FORMAT, "config": json.dumps(asdict(model.config))}
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith(".model.2.weight")}  # shared PReLU
    return save_safetensors(path, sd, meta)


def convert_dynast_checkpoint(src, dst) -> Path:
    """Official ``.pth`` -> ``.safetensors`` with config metadata (spectral norm folded)."""
    return save_dynast_safetensors(load_dynast(src), dst)


@torch.no_grad()
def generate(model: DynaSTGenerator, label: torch.Tensor, exemplar: torch.Tensor, exemplar_label: torch.Tensor,
             **kwargs) -> DynaSTOutput:
    """User-facing generation: ``exemplar`` RGB in [0, 1] (any size; resized to the label's), labels as
    :mod:`dynast_core.conditioning` builds them; returns the output with ``.image`` in [0, 1]."""
    p = next(model.parameters())
    out = model(label.to(p), (exemplar.to(p) * 2 - 1), exemplar_label.to(p), **kwargs)
    out.image = ((out.image + 1) / 2).clamp(0, 1)
    return out
