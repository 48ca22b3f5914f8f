"""The DynaST multi-scale patch discriminator, key-compatible with Huage001/DynaST
``models/networks/discriminator.py`` (``MultiscaleDiscriminator`` of ``NLayerDiscriminator``).

Each discriminator: a 4x4 stride-2 conv + LeakyReLU(0.2), then ``n_layers_D - 1`` spectrally normalised 4x4
convs (stride 2, the last stride 1) with InstanceNorm (no affine) and LeakyReLU, and a 4x4 conv to one
channel; every stage's output is returned (the feature-matching loss uses all but the last). The official
module also builds a decoder branch ``dec`` that its forward never calls; it is kept so the official
``latest_net_D.pth`` loads and ours loads there. The next discriminator sees the input average-pooled
(3x3, stride 2, padding 1, ``count_include_pad=False``).

Spectral norm is the hook-style ``torch.nn.utils.spectral_norm`` (state keys ``weight_orig``, ``weight_u``,
``weight_v``) as in the official file.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

__all__ = ["NLayerDiscriminator", "MultiscaleDiscriminator", "init_weights"]


class NLayerDiscriminator(nn.Module):
    def __init__(self, input_nc: int, label_nc: int, ndf: int = 64, n_layers_D: int = 4):
        super().__init__()
        nf = ndf
        stages = [[nn.Conv2d(input_nc, nf, 4, 2, 1), nn.LeakyReLU(0.2, False)]]
        for n in range(1, n_layers_D):
            prev, nf = nf, min(nf * 2, 512)
            last = n == n_layers_D - 1
            if last:
                dec: List[nn.Module] = []
                c = prev
                for _ in range(n_layers_D - 1):
                    dec += [nn.Upsample(scale_factor=2), spectral_norm(nn.Conv2d(c, c // 2, 3, 1, 1)),
                            nn.InstanceNorm2d(c // 2), nn.LeakyReLU(0.2, False)]
                    c //= 2
                dec.append(nn.Conv2d(c, label_nc, 3, 1, 1))
                self.dec = nn.Sequential(*dec)   # built (and saved) by the official code, never called
            stages.append([spectral_norm(nn.Conv2d(prev, nf, 4, 1 if last else 2, 1)), nn.InstanceNorm2d(nf),
                           nn.LeakyReLU(0.2, False)])
        stages.append([nn.Conv2d(nf, 1, 4, 1, 1)])
        self.n_stages = len(stages)
        for i, s in enumerate(stages):
            self.add_module(f"model{i}", nn.Sequential(*s))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for i in range(self.n_stages):
            x = getattr(self, f"model{i}")(x)
            outs.append(x)
        return outs


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` :class:`NLayerDiscriminator` on successively halved inputs; ``forward(x)`` returns one list of
    stage outputs per discriminator. ``x`` is ``cat(label, image)`` with ``input_nc = label_nc + 3`` channels.
    """

    def __init__(self, label_nc: int, ndf: int = 64, n_layers_D: int = 4, num_D: int = 2, image_nc: int = 3):
        super().__init__()
        self.label_nc, self.num_D = label_nc, num_D
        for i in range(num_D):
            self.add_module(f"discriminator_{i}", NLayerDiscriminator(label_nc + image_nc, label_nc, ndf, n_layers_D))

    def forward(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        result = []
        for i in range(self.num_D):
            result.append(getattr(self, f"discriminator_{i}")(x))
            if i + 1 < self.num_D:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
        return result


def init_weights(net: nn.Module, init_type: str = "xavier", gain: float = 0.02) -> nn.Module:
    """The official ``BaseNetwork.init_weights``: conv/linear weights xavier-normal (gain 0.02) or normal,
    biases 0, batch-norm weights N(1, gain).

    As in the official code, a spectrally normalised conv exposes ``weight`` as a computed tensor, so its
    ``weight_orig`` keeps PyTorch's default initialisation (the official init writes into a temporary).
    """
    for m in net.modules():
        name = type(m).__name__
        if "BatchNorm" in name:
            if getattr(m, "weight", None) is not None:
                nn.init.normal_(m.weight.data, 1.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif ("Conv" in name or "Linear" in name) and isinstance(getattr(m, "weight", None), nn.Parameter):
            if init_type == "xavier":
                nn.init.xavier_normal_(m.weight.data, gain=gain)
            elif init_type == "normal":
                nn.init.normal_(m.weight.data, 0.0, gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            elif init_type != "none":
                raise ValueError(f"unknown init_type {init_type!r}")
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)
    return net
