"""``train dynast`` and ``train stya2k`` sub-commands (register with :func:`add_train_command`).

Multi-GPU / multi-process: run the same command under ``torchrun --nproc_per_node N -m dynast_core train ...``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_train_command", "run_train_dynast", "run_train_stya2k"]


def _common(p: argparse.ArgumentParser, size: int, steps: int) -> None:
    p.add_argument("--vgg", required=True, help="VGG-19 weights (vgg19_conv.pth of DynaST/CoCosNet, or "
                                                 "vgg_normalised.pth of AdaIN/StyA2K)")
    p.add_argument("--size", type=int, default=size, help=f"training resolution (default {size})")
    p.add_argument("--batch", type=int, default=1, help="batch size per process (default 1)")
    p.add_argument("--steps", type=int, default=steps, help=f"total training steps (default {steps})")
    p.add_argument("--out", default=None, help="output folder for checkpoints, samples, losses")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from the latest checkpoint in --out (or from the checkpoint folder CKPT)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the official one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 + GradScaler on CUDA, "
                                                      "bfloat16 on CPU)")
    p.add_argument("--sample-every", type=int, default=500, help="write a sample grid every N steps (0: never)")
    p.add_argument("--save-every", type=int, default=1000, help="write a checkpoint every N steps (0: only at "
                                                               "the end)")
    p.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad training samples: stop (default) or skip them with a warning")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_train_command(subparsers) -> None:
    """Add ``train {dynast,stya2k}`` to an ``argparse`` sub-parsers object."""
    tp = subparsers.add_parser("train", help="train DynaST or StyA2K",
                               description="Train DynaST (exemplar-based generation) or StyA2K (style transfer).")
    sub = tp.add_subparsers(dest="train_model", metavar="{dynast,stya2k}")
    sub.required = True

    d = sub.add_parser("dynast", help="train DynaST",
                       description="Train DynaST. --data is either a DeepFashion root in the official layout "
                                   "(train.txt, img/, pose/: pose-guided person generation) or any folder of "
                                   "images (self-supervised: label = edges, or pose keypoints from a JSON beside "
                                   "each image; exemplar = an augmented copy of the image).")
    d.add_argument("--data", required=True, help="DeepFashion root or folder of images")
    d.add_argument("--preset", choices=("deepfashion", "celebahq_edge"), default=None,
                   help="architecture (default: deepfashion for pose labels, celebahq_edge for edge labels)")
    d.add_argument("--label", choices=("auto", "edge", "pose"), default="auto",
                   help="label for an image folder (default: pose if every image has a keypoint JSON)")
    d.add_argument("--style-data", default=None, help="folder of style images: with --style-prob, trains the "
                                                      "unsupervised style-transfer mode")
    d.add_argument("--style-prob", type=float, default=0.0, help="probability of a style exemplar (self_ref 0)")
    d.add_argument("--warp-exclude", choices=("kept", "pruned"), default="kept",
                   help="positions the warp branch masks (official: kept)")
    d.add_argument("--init", default=None, help="generator checkpoint to start from (fine-tuning)")
    _common(d, 256, 100000)
    d.set_defaults(func=run_train_dynast)

    s = sub.add_parser("stya2k", help="train StyA2K",
                       description="Train StyA2K's A2K, Transform and decoder on unpaired content and style "
                                   "folders; --vgg must be vgg_normalised.pth (the frozen encoder).")
    s.add_argument("--content", required=True, help="folder of content images")
    s.add_argument("--style", required=True, help="folder of style images")
    s.add_argument("--load-size", type=int, default=None, help="resize the shorter side to this before the "
                                                             "random crop (default: --size)")
    s.add_argument("--init", default=None, help="StyA2K weights to fine-tune (folder or packed .safetensors)")
    _common(s, 256, 160000)
    s.set_defaults(func=run_train_stya2k)


def _options(args, default_out: str):
    from .trainer import TrainOptions
    return TrainOptions(out_dir=args.out or default_out, steps=args.steps, batch_size=args.batch, lr=args.lr,
                        seed=args.seed, amp=args.amp, sample_every=args.sample_every, save_every=args.save_every,
                        num_workers=args.workers, device=args.device, resume=args.resume,
                        progress=not args.no_progress)


def _check_file(path, what: str) -> None:
    if not Path(path).is_file():
        raise ValueError(f"{what} not found: {path}")


def run_train_dynast(args) -> int:
    from ..models.dynast import dynast_config
    from .data import DeepFashionDataset, ImageFolderLayoutDataset, is_deepfashion_root
    from .losses import DynaSTLossWeights, load_vgg19
    from .trainer import DynaSTTrainer
    data = Path(args.data)
    if not data.is_dir():
        raise ValueError(f"--data {data} is not a folder: give a DeepFashion root (train.txt, img/, pose/) or a "
                         "folder of images")
    _check_file(args.vgg, "--vgg weights")
    if args.size % 8 or args.size < 32:
        raise ValueError(f"--size must be a multiple of 8 and at least 32, got {args.size}")
    if is_deepfashion_root(data):
        dataset = DeepFashionDataset(data, "train", size=args.size, on_error=args.on_error)
        label_nc, mode = 20, "supervised"
    else:
        dataset = ImageFolderLayoutDataset(data, size=args.size, label_mode=args.label, on_error=args.on_error,
                                           style_prob=args.style_prob, style_root=args.style_data)
        label_nc = dataset.label_nc
        mode = "unsupervised" if args.style_prob > 0 else "supervised"
    preset = args.preset or ("deepfashion" if label_nc == 20 else "celebahq_edge")
    config = dynast_config(preset)
    if config.semantic_nc != label_nc:
        raise ValueError(f"--preset {preset} expects {config.semantic_nc}-channel labels, but the data gives "
                         f"{label_nc} ({'pose' if label_nc == 20 else 'edge'} labels); use --preset "
                         f"{'deepfashion' if label_nc == 20 else 'celebahq_edge'}")
    config.crop_size = args.size
    vgg = load_vgg19(args.vgg)
    trainer = DynaSTTrainer(config, vgg, _options(args, "runs/dynast"),
                            DynaSTLossWeights(mode=mode, warp_exclude=args.warp_exclude),
                            init_generator=args.init)
    trainer.train(dataset)
    if trainer.is_main:
        print(f"Done: {trainer.step} steps; checkpoints in {trainer.out / 'checkpoints'}")
    return 0


def run_train_stya2k(args) -> int:
    from .data import ContentStyleDataset
    from .trainer import StyA2KTrainer
    for flag, d in (("--content", args.content), ("--style", args.style)):
        if not Path(d).is_dir():
            raise ValueError(f"{flag} {d} is not a folder of images")
    _check_file(args.vgg, "--vgg weights")
    dataset = ContentStyleDataset(args.content, args.style, size=args.size, load_size=args.load_size,
                                  on_error=args.on_error)
    trainer = StyA2KTrainer(args.vgg, _options(args, "runs/stya2k"), init_from=args.init)
    trainer.train(dataset)
    if trainer.is_main:
        print(f"Done: {trainer.step} steps; checkpoints in {trainer.out / 'checkpoints'}")
    return 0
