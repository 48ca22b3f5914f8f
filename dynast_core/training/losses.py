"""Training objectives: DynaST (supervised, as the official ``pix2pix_model.py`` computes it, plus an
unsupervised style-transfer mode) and StyA2K (as the official ``A2K_model.py``), and the VGG-19 feature
extractor they share.

DynaST supervised objective (``DynaSTLossWeights`` defaults = the official training script):

* ``warp``: for every transformer block's warped exemplar (:attr:`DynaSTMatch.warped`, 1/8 scale first), the
  L1 distance to the ground truth average-pooled to that scale, ``mean(|warp - gt| * w)`` with the per-sample
  weights ``w = self_ref / (sum(self_ref) + 1e-5)``, times 1000. Note the official ``mean`` runs over the
  batch too, so the term is additionally divided by the batch size; we reproduce that.
* ``gan``: hinge loss of the multi-scale patch discriminator on ``cat(label, image)`` (times 10); the
  generator term is ``-mean(D(fake))`` averaged over the discriminators.
* ``gan_feat``: L1 between the discriminator's intermediate features of fake and real, summed over layers,
  averaged over discriminators, times 10.
* ``vgg`` (official ``fm``): VGG-19 feature matching at relu1_2, relu2_2, relu3_2, relu4_2, relu5_2 with layer
  weights 1/32, 1/16, 1/8, 1/4, 1, each ``mean(|f - r| * w)`` with the self-reference weights above, times 10.
* ``perc``: MSE between fake and real at relu4_2 (``which_perceptual 4_2``), times 0.001.

The VGG sees the images mapped from [-1, 1] to [0, 1] (official ``--vgg_normal_correct``).

DynaST unsupervised (style-transfer) mode, ``mode="unsupervised"``: the label is the *content* layout and
the exemplar a *style* image; samples with ``self_ref = 1`` (the exemplar is the content itself, augmented)
keep all supervised terms above (self-reconstruction), samples with ``self_ref = 0`` get instead, weighted by
``u = (1 - self_ref) / (sum(1 - self_ref) + 1e-5)`` per sample:

* ``content``: ``w_content * sum_l |mvn(F_l(fake)) - mvn(F_l(content))|^2`` at relu4_2 (``mvn``: per-channel
  mean/variance normalisation, so the content's layout is kept but not its colours);
* ``style``: ``w_style * sum_l (|mu(F_l(fake)) - mu(F_l(style))|^2 + |sigma(F_l(fake)) - sigma(F_l(style))|^2)``
  over relu1_1 ... relu5_1 (channel mean and standard deviation, AdaIN style loss);
* ``contextual``: the contextual loss of Mechrez et al. (ECCV 2018) between fake and style at relu3_2,
  relu4_2, relu5_2 with the layer weights 2, 4, 8 of CoCosNet: features centred on the style's mean,
  L2-normalised, cosine distances ``d_ij``, relative distances ``d~_ij = d_ij / (min_k d_ik + 1e-5)``,
  affinities ``w_ij = exp((1 - d~_ij) / h)`` with bandwidth ``h = 0.1`` (CoCosNet/DynaST's value; the paper
  uses 0.1-0.5), ``CX_ij = w_ij / sum_k w_ik``, ``CX = mean_j max_i CX_ij`` and the loss ``-log(CX)``.
  Maps larger than 64x64 are average-pooled to at most 64x64 first (memory).

The GAN terms apply to every sample (the discriminator's real images are the content images).

StyA2K (:class:`StyA2KCriterion`, official defaults): ``global`` style loss (MSE of channel mean and std
between the stylised and style features at relu1_1 ... relu4_1, weight 10), the ``a2k`` loss (weight 3):
for relu2_1 ... relu5_1 the MSE between the stylised features and ``content + parameter-free all-to-key
attention`` with keys built from *all layers up to that one* (each mean-variance normalised, shallower ones
resized nearest to the layer, concatenated) and the style features as values, regions 16, 8, 8, 4, 8 heads;
optional ``content`` loss (MSE of normalised relu4_1 and relu5_1 features, weight 0 by default).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention.all_to_key import parameter_free_all_to_key
from ..checkpoints import CheckpointError, describe_state_dict, read_state_dict
from ..models.stya2k import mean_variance_norm

__all__ = [
    "VGG19Features", "load_vgg19", "VGG_LAYERS", "calc_mean_std", "hinge_d_loss", "hinge_g_loss",
    "gan_feature_loss", "warp_loss", "contextual_loss", "style_loss", "DynaSTLossWeights", "DynaSTCriterion",
    "StyA2KLossWeights", "StyA2KCriterion", "self_ref_weights",
]

#: relu names in network order.
VGG_LAYERS = ("r11", "r12", "r21", "r22", "r31", "r32", "r33", "r34", "r41", "r42", "r43", "r44",
              "r51", "r52", "r53", "r54")
_CONV_NAMES = tuple("conv" + n[1] + "_" + n[2] for n in VGG_LAYERS)
_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
#: official BGR means of ``util.vgg_preprocess``
_BGR_MEAN = (0.40760392, 0.45795686, 0.48501961)


# ---------------------------------------------------------------------------------------------- VGG
class VGG19Features(nn.Module):
    """Frozen VGG-19 returning named relu features for RGB input in ``[0, 1]``.

    Two layouts (the weights files of the two official codes):

    * ``"cocosnet"``: DynaST/CoCosNet ``vgg19_conv.pth`` (``VGG19_feature_color_torchversion``): modules
      ``conv1_1`` ... ``conv5_4``, zero padding 1, max pooling (floor); the input is converted to BGR,
      mean-subtracted and multiplied by 255 (official ``vgg_preprocess``).
    * ``"normalised"``: AdaIN/SANet/StyA2K ``vgg_normalised.pth``: a 53-layer ``nn.Sequential`` (keys
      ``0.weight``, ``2.weight``, ...) whose first 1x1 conv does the preprocessing, reflection padding,
      max pooling with ceil mode.

    ``forward(x, layers)`` returns a list of the requested features (names of :data:`VGG_LAYERS`).
    """

    def __init__(self, layout: str = "cocosnet"):
        super().__init__()
        if layout not in ("cocosnet", "normalised"):
            raise ValueError(f"unknown VGG layout {layout!r}: use 'cocosnet' (vgg19_conv.pth) or 'normalised' "
                             "(vgg_normalised.pth)")
        self.layout = layout
        if layout == "cocosnet":
            cin = 3
            for name, w in zip(_CONV_NAMES, _WIDTHS):
                setattr(self, name, nn.Conv2d(cin, w, 3, padding=1))
                cin = w
        else:
            layers: List[nn.Module] = [nn.Conv2d(3, 3, 1)]
            self._relu_at: Dict[int, str] = {}
            cin = 3
            for i, (name, w) in enumerate(zip(VGG_LAYERS, _WIDTHS)):
                if i in (2, 4, 8, 12):
                    layers.append(nn.MaxPool2d(2, 2, 0, ceil_mode=True))
                layers += [nn.ReflectionPad2d(1), nn.Conv2d(cin, w, 3), nn.ReLU()]
                self._relu_at[len(layers) - 1] = name
                cin = w
            self.seq = nn.Sequential(*layers)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always eval (no state, but keep it explicit)
        return super().train(False)

    def state_dict_official(self) -> Dict[str, torch.Tensor]:
        """The state dict in the official file's key layout (``seq.`` prefix removed)."""
        sd = self.state_dict()
        return {k[4:] if k.startswith("seq.") else k: v for k, v in sd.items()}

    def load_official(self, sd: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
        if self.layout == "normalised":
            sd = {"seq." + k: v for k, v in sd.items()}
        want = self.state_dict()
        missing = [k for k in want if k not in sd]
        if missing:
            raise CheckpointError(f"{source}: VGG-19 ({self.layout} layout) keys missing, e.g. {missing[:3]}")
        for k, v in want.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise CheckpointError(f"{source}: VGG key {k} has shape {tuple(sd[k].shape)}, expected "
                                      f"{tuple(v.shape)}")
        self.load_state_dict({k: sd[k] for k in want})

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> List[torch.Tensor]:
        unknown = [n for n in layers if n not in VGG_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG layers {unknown}; choose from {VGG_LAYERS}")
        last = max(VGG_LAYERS.index(n) for n in layers)
        out: Dict[str, torch.Tensor] = {}
        if self.layout == "cocosnet":
            mean = torch.tensor(_BGR_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            h = (x.flip(1) - mean) * 255.0
            for i, name in enumerate(VGG_LAYERS[: last + 1]):
                if i in (2, 4, 8, 12):
                    h = F.max_pool2d(h, 2, 2)
                h = F.relu(getattr(self, _CONV_NAMES[i])(h))
                out[name] = h
        else:
            h = x
            stop = max(i for i, n in self._relu_at.items() if n == VGG_LAYERS[last])
            for i in range(stop + 1):
                h = self.seq[i](h)
                if i in self._relu_at:
                    out[self._relu_at[i]] = h
        return [out[n] for n in layers]


def load_vgg19(path: Union[str, os.PathLike], device=None) -> VGG19Features:
    """A frozen :class:`VGG19Features` from ``vgg19_conv.pth`` (CoCosNet/DynaST) or ``vgg_normalised.pth``
    (AdaIN/StyA2K); the layout is detected from the keys.

    Raises:
        CheckpointError: the file is neither (the message says what it looks like).
    """
    sd, _ = read_state_dict(path)
    if "conv1_1.weight" in sd:
        vgg = VGG19Features("cocosnet")
    elif "0.weight" in sd and "2.weight" in sd and tuple(sd["0.weight"].shape) == (3, 3, 1, 1):
        vgg = VGG19Features("normalised")
        if "51.weight" not in sd:   # truncated copies (up to relu5_1) still serve relu1_1..relu5_1
            vgg.seq = vgg.seq[:44]
            vgg._relu_at = {i: n for i, n in vgg._relu_at.items() if i < 44}
    else:
        raise CheckpointError(f"{path} is not a VGG-19 file: expected vgg19_conv.pth (keys conv1_1.weight ...) "
                              f"or vgg_normalised.pth (keys 0.weight, 2.weight ...); it looks like "
                              f"{describe_state_dict(sd)}")
    vgg.load_official(sd, str(path))
    return vgg.to(device or "cpu")


# ---------------------------------------------------------------------------------------------- pieces
def calc_mean_std(feat: torch.Tensor, eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Channel mean and std (unbiased variance + eps), ``(B, C, 1, 1)`` each (official ``calc_mean_std``)."""
    b, c = feat.shape[:2]
    flat = feat.reshape(b, c, -1)
    return flat.mean(-1).view(b, c, 1, 1), (flat.var(-1) + eps).sqrt().view(b, c, 1, 1)


def self_ref_weights(self_ref: torch.Tensor) -> torch.Tensor:
    """Official per-sample weights ``self_ref / (sum(self_ref) + 1e-5)``, shaped ``(B, 1, 1, 1)``."""
    s = self_ref.float().view(-1)
    return (s / (s.sum() + 1e-5)).view(-1, 1, 1, 1)


def hinge_d_loss(preds: Sequence, real: bool) -> torch.Tensor:
    """Discriminator hinge loss averaged over the discriminators (last output of each)."""
    total = 0.0
    for p in preds:
        p = p[-1] if isinstance(p, (list, tuple)) else p
        total = total + (F.relu(1 - p).mean() if real else F.relu(1 + p).mean())
    return total / len(preds)


def hinge_g_loss(preds: Sequence) -> torch.Tensor:
    """Generator hinge loss ``-mean(D(fake))`` averaged over the discriminators."""
    total = 0.0
    for p in preds:
        p = p[-1] if isinstance(p, (list, tuple)) else p
        total = total - p.mean()
    return total / len(preds)


def gan_feature_loss(pred_fake: Sequence, pred_real: Sequence) -> torch.Tensor:
    """L1 between intermediate discriminator features (all but the last output), sum over layers, mean over
    discriminators (real features detached)."""
    total = 0.0
    for f, r in zip(pred_fake, pred_real):
        for a, b in zip(f[:-1], r[:-1]):
            total = total + F.l1_loss(a, b.detach())
    return total / len(pred_fake)


def warp_loss(warped: Sequence[torch.Tensor], real: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Official warping loss (unweighted by the 1000): each warp vs the ground truth average-pooled to its
    scale, ``mean(|warp - gt| * weights)``."""
    total = real.new_zeros(())
    for w in warped:
        h, wd = w.shape[-2:]
        f = real.shape[-1] // wd
        gt = F.avg_pool2d(real, f, stride=f) if f > 1 else real
        gt = gt[..., :h, :wd]
        total = total + (F.l1_loss(w.float(), gt, reduction="none") * weights).mean()
    return total


def style_loss(fake_feats: Sequence[torch.Tensor], style_feats: Sequence[torch.Tensor],
               weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over layers of the squared differences of channel means and stds (per-sample ``weights`` sum to 1,
    else a plain mean)."""
    total = 0.0
    for f, s in zip(fake_feats, style_feats):
        fm, fs = calc_mean_std(f)
        sm, ss = calc_mean_std(s.detach())
        d = ((fm - sm) ** 2 + (fs - ss) ** 2).mean(dim=(1, 2, 3))
        total = total + (d.mean() if weights is None else (d * weights.view(-1)).sum())
    return total


def contextual_loss(x: torch.Tensor, y: torch.Tensor, h: float = 0.1, eps: float = 1e-5,
                    max_side: int = 64) -> torch.Tensor:
    """Per-sample contextual loss ``-log CX(x, y)`` of Mechrez et al. (see the module docstring); ``(B,)``."""
    if max(x.shape[-2:]) > max_side:
        x = F.adaptive_avg_pool2d(x, (min(max_side, x.shape[-2]), min(max_side, x.shape[-1])))
    if max(y.shape[-2:]) > max_side:
        y = F.adaptive_avg_pool2d(y, (min(max_side, y.shape[-2]), min(max_side, y.shape[-1])))
    x, y = x.float(), y.float()
    mu = y.mean(dim=(2, 3), keepdim=True)
    xn = F.normalize((x - mu).flatten(2), dim=1)
    yn = F.normalize((y - mu).flatten(2), dim=1)
    d = 1 - torch.einsum("bci,bcj->bij", xn, yn)                  # cosine distances (B, Nx, Ny)
    d_rel = d / (d.min(dim=2, keepdim=True).values + eps)
    w = torch.exp((1 - d_rel) / h)
    cx = w / w.sum(dim=2, keepdim=True)
    score = cx.max(dim=1).values.mean(dim=1)
    return -torch.log(score + eps)


# ---------------------------------------------------------------------------------------------- DynaST
@dataclass
class DynaSTLossWeights:
    """Weights and switches of the DynaST objective (defaults: the official training script)."""

    warp: float = 1000.0
    gan: float = 10.0
    gan_feat: float = 10.0
    vgg: float = 10.0
    fm_ratio: float = 1.0
    perceptual: float = 0.001
    perceptual_layer: str = "r42"
    vgg_layers: Tuple[str, ...] = ("r12", "r22", "r32", "r42", "r52")
    vgg_layer_weights: Tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    #: which positions the warp branch masks: official ``'kept'`` (see DynaSTGenerator.match)
    warp_exclude: str = "kept"
    mode: str = "supervised"           # or "unsupervised"
    content: float = 1.0
    content_layers: Tuple[str, ...] = ("r42",)
    style: float = 1.0
    style_layers: Tuple[str, ...] = ("r11", "r21", "r31", "r41", "r51")
    contextual: float = 1.0
    contextual_layers: Tuple[str, ...] = ("r32", "r42", "r52")
    contextual_layer_weights: Tuple[float, ...] = (2.0, 4.0, 8.0)
    contextual_h: float = 0.1

    def __post_init__(self):
        if self.warp_exclude not in ("kept", "pruned"):
            raise ValueError(f"warp_exclude must be 'kept' (official) or 'pruned', got {self.warp_exclude!r}")
        if self.mode not in ("supervised", "unsupervised"):
            raise ValueError(f"mode must be 'supervised' or 'unsupervised', got {self.mode!r}")
        if len(self.vgg_layers) != len(self.vgg_layer_weights):
            raise ValueError("vgg_layers and vgg_layer_weights must have the same length")


class DynaSTCriterion(nn.Module):
    """Computes the DynaST generator and discriminator losses (see the module docstring).

    Images are in ``[-1, 1]`` (as the generator produces them); ``batch`` holds ``label``, ``image`` (ground
    truth / content), ``ref`` (exemplar), ``label_ref`` and ``self_ref`` (``(B,)`` float).
    """

    def __init__(self, vgg: VGG19Features, weights: Optional[DynaSTLossWeights] = None):
        super().__init__()
        self.vgg = vgg
        self.w = weights or DynaSTLossWeights()

    def _vgg(self, img: torch.Tensor, layers) -> List[torch.Tensor]:
        return self.vgg(((img.float() + 1) / 2), list(layers))

    def discriminate(self, disc: nn.Module, label: torch.Tensor, fake: torch.Tensor, real: torch.Tensor,
                     autocast=None):
        """One discriminator pass on ``cat(fake pairs, real pairs)``; returns ``(pred_fake, pred_real)``."""
        x = torch.cat([torch.cat([label, fake], 1), torch.cat([label, real], 1)], 0)
        if autocast is not None:
            with autocast():
                out = disc(x)
        else:
            out = disc(x)
        b = fake.shape[0]
        fake_p = [[t[:b].float() for t in o] for o in out]
        real_p = [[t[b:].float() for t in o] for o in out]
        return fake_p, real_p

    def generator_losses(self, fake: torch.Tensor, warped: Sequence[torch.Tensor], batch: Mapping,
                         disc: nn.Module, autocast=None) -> Dict[str, torch.Tensor]:
        w = self.w
        real, label = batch["image"], batch["label"]
        fake = fake.float()
        self_ref = batch["self_ref"].to(real).view(-1)
        sw = self_ref_weights(self_ref)
        losses: Dict[str, torch.Tensor] = {}
        if w.warp > 0 and len(warped):
            losses["warp"] = warp_loss(warped, real, sw) * w.warp
        pred_fake, pred_real = self.discriminate(disc, label, fake, real, autocast)
        losses["gan"] = hinge_g_loss(pred_fake) * w.gan
        if w.gan_feat > 0:
            losses["gan_feat"] = gan_feature_loss(pred_fake, pred_real) * w.gan_feat
        need = list(dict.fromkeys(list(w.vgg_layers) + [w.perceptual_layer]
                                  + (list(w.content_layers) + list(w.style_layers) + list(w.contextual_layers)
                                     if w.mode == "unsupervised" else [])))
        ff = dict(zip(need, self._vgg(fake, need)))
        with torch.no_grad():
            rf = dict(zip(need, self._vgg(real, need)))
        fm = 0.0
        for name, lw in zip(w.vgg_layers, w.vgg_layer_weights):
            fm = fm + lw * ((ff[name] - rf[name]).abs() * sw).mean()
        losses["vgg"] = fm * w.vgg * w.fm_ratio
        if w.perceptual > 0:
            losses["perc"] = F.mse_loss(ff[w.perceptual_layer], rf[w.perceptual_layer]) * w.perceptual
        if w.mode == "unsupervised":
            other = 1 - self_ref
            if float(other.sum()) > 0:
                uw = other / (other.sum() + 1e-5)
                with torch.no_grad():
                    sf = dict(zip(need, self._vgg(batch["ref"], need)))
                c = 0.0
                for name in w.content_layers:
                    d = ((mean_variance_norm(ff[name]) - mean_variance_norm(rf[name])) ** 2).mean(dim=(1, 2, 3))
                    c = c + (d * uw).sum()
                losses["content"] = c * w.content
                losses["style"] = style_loss([ff[n] for n in w.style_layers], [sf[n] for n in w.style_layers],
                                             uw) * w.style
                cx = 0.0
                for name, lw in zip(w.contextual_layers, w.contextual_layer_weights):
                    cx = cx + lw * (contextual_loss(ff[name], sf[name], w.contextual_h) * uw).sum()
                losses["contextual"] = cx * w.contextual
        return losses

    def discriminator_losses(self, disc: nn.Module, label: torch.Tensor, fake: torch.Tensor,
                             real: torch.Tensor, autocast=None) -> Dict[str, torch.Tensor]:
        pred_fake, pred_real = self.discriminate(disc, label, fake.detach().float(), real, autocast)
        return {"d_fake": hinge_d_loss(pred_fake, False) * self.w.gan,
                "d_real": hinge_d_loss(pred_real, True) * self.w.gan}


# ---------------------------------------------------------------------------------------------- StyA2K
#: region side of the A2K loss at relu2_1 .. relu5_1 (feature index 1..4), official values
A2K_LOSS_REGIONS = {1: 16, 2: 8, 3: 8, 4: 4}


@dataclass
class StyA2KLossWeights:
    """Official defaults: lambda_global 10, lambda_no_param_A2K 3, lambda_content 0, shallow keys on."""

    global_style: float = 10.0
    a2k: float = 3.0
    content: float = 0.0
    shallow_keys: bool = True
    heads: int = 8


def a2k_key(feats: Sequence[torch.Tensor], idx: int, shallow: bool = True) -> torch.Tensor:
    """Official ``get_key``: normalised features of layer ``idx``, with ``shallow`` those of all earlier layers
    resized (nearest) to it and concatenated in front."""
    if not shallow or idx == 0:
        return mean_variance_norm(feats[idx])
    h, w = feats[idx].shape[-2:]
    parts = [mean_variance_norm(F.interpolate(feats[i], size=(h, w), mode="nearest")) for i in range(idx)]
    parts.append(mean_variance_norm(feats[idx]))
    return torch.cat(parts, 1)


class StyA2KCriterion(nn.Module):
    """StyA2K training losses computed with the model's own frozen encoder (``model.vgg``)."""

    def __init__(self, encoder: nn.Module, weights: Optional[StyA2KLossWeights] = None):
        super().__init__()
        self.encoder = encoder
        self.w = weights or StyA2KLossWeights()

    @torch.no_grad()
    def targets(self, c_feats: Sequence[torch.Tensor], s_feats: Sequence[torch.Tensor]) -> Dict[int, torch.Tensor]:
        """``content + parameter-free all-to-key(content key, style key, style)`` per layer 1..4."""
        out = {}
        for i, region in A2K_LOSS_REGIONS.items():
            ck = a2k_key(c_feats, i, self.w.shallow_keys)
            sk = a2k_key(s_feats, i, self.w.shallow_keys)
            o = parameter_free_all_to_key(ck.float(), sk.float(), s_feats[i].float(), region=region,
                                          heads=self.w.heads)
            out[i] = o + c_feats[i]
        return out

    def forward(self, stylised: torch.Tensor, c_feats: Sequence[torch.Tensor],
                s_feats: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        w = self.w
        g = [f.float() for f in self.encoder(stylised.float())]
        losses: Dict[str, torch.Tensor] = {}
        if w.content > 0:
            losses["content"] = sum(F.mse_loss(mean_variance_norm(g[i]), mean_variance_norm(c_feats[i]))
                                    for i in (3, 4)) * w.content
        if w.global_style > 0:
            gl = 0.0
            for i in range(4):
                gm, gs = calc_mean_std(g[i])
                sm, ss = calc_mean_std(s_feats[i])
                gl = gl + F.mse_loss(gm, sm) + F.mse_loss(gs, ss)
            losses["global"] = gl * w.global_style
        if w.a2k > 0:
            t = self.targets(c_feats, s_feats)
            losses["a2k"] = sum(F.mse_loss(g[i], t[i]) for i in A2K_LOSS_REGIONS) * w.a2k
        return losses
