"""Tiny inputs for .ci/runtime_smoke.sh, written with the runtime dependencies only (torch, numpy, pillow).

    python .ci/make_smoke_inputs.py DIR

DIR/content, DIR/style       a few small generated images (content/style folders for `train stya2k`)
DIR/people                   small images each with an OpenPose-18 keypoint JSON beside it (`train dynast`)
DIR/pose.json                one pose (exemplar and target layouts of `generate` / `match --model`)
DIR/target.png, exemplar.png a textured image and a shifted copy (`match`), DIR/mask.png (`stylize --mask`)
DIR/vgg19_conv.pth           random VGG-19 in the DynaST/CoCosNet layout (`train dynast --vgg`)
DIR/stya2k/                  the four StyA2K files in the official layout, random weights (`stylize --weights`,
                             `convert --stya2k`); vgg_normalised.pth is also `train stya2k --vgg`
DIR/latest_net_G.pth         a tiny DynaST generator in the official layout (`convert`, then `generate`)
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dynast_core.demo import brush_texture, scene_image, textured_image
from dynast_core.imageio import save_image
from dynast_core.models.dynast import DynaSTConfig, DynaSTGenerator
from dynast_core.models.stya2k import StyA2K
from dynast_core.training import VGG19Features

POSE = [[0.5, 0.12], [0.5, 0.22], [0.4, 0.22], [0.37, 0.36], [0.35, 0.49], [0.6, 0.22], [0.63, 0.36],
        [0.65, 0.49], [0.44, 0.5], [0.43, 0.68], [0.43, 0.86], [0.56, 0.5], [0.57, 0.68], [0.57, 0.86],
        [0.48, 0.1], [0.52, 0.1], [0.46, 0.11], [0.54, 0.11]]


def main(out: Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for sub in ("content", "style", "people", "stya2k"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(2):
        save_image(scene_image(64, 80, seed=i)[0], out / "content" / f"c{i}.png")
        save_image(brush_texture(72, 64, seed=i)[0], out / "style" / f"s{i}.png")
        img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(out / "people" / f"p{i}.png")
        pose = [[x * 64 + i, y * 64, 1.0] for x, y in POSE]                  # pixels of the 64x64 image
        (out / "people" / f"p{i}.json").write_text(json.dumps(pose))
    (out / "pose.json").write_text(json.dumps([[x, y, 1.0] for x, y in POSE]))
    exemplar = textured_image(96, 96, seed=3)
    save_image(exemplar[0], out / "exemplar.png")
    save_image(torch.roll(exemplar, 5, dims=3)[0], out / "target.png")
    mask = torch.zeros(1, 96, 96)
    mask[:, 20:70, 20:70] = 1
    save_image(mask, out / "mask.png")
    torch.save(VGG19Features("cocosnet").state_dict(), out / "vgg19_conv.pth")
    vgg = VGG19Features("normalised")
    for m in vgg.modules():         # features of a useful magnitude for one training step
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(vgg.state_dict_official(), out / "stya2k" / "vgg_normalised.pth")
    model = StyA2K()
    torch.save(model.a2k.state_dict(), out / "stya2k" / "latest_net_A2K.pth")
    torch.save(model.transform.state_dict(), out / "stya2k" / "latest_net_transform.pth")
    torch.save(model.decoder.state_dict(), out / "stya2k" / "latest_net_decoder.pth")
    tiny = DynaSTConfig(semantic_nc=20, ngf=8, pos_dim=4, prune_dim=4, crop_size=64)
    torch.save(DynaSTGenerator(tiny).state_dict(), out / "latest_net_G.pth")
    print(f"smoke inputs in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
