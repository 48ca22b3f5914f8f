"""Command line: ``python -m dynast_core <command>`` (or the ``dynast`` console script).

Commands: demo, stylize, match, generate, convert, train. ``<command> --help`` describes each.
"""
from __future__ import annotations

import argparse
import sys


def _device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _add_device_options(p) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="compute precision (default auto: fp16 on recent GPUs, fp32 on CPU)")


def _placement(args):
    """(device, dtype) from --device / --precision."""
    from .runtime import parse_precision
    device = _device(args.device)
    return device, parse_precision(args.precision, device)


# ---------------------------------------------------------------------------------------------- stylize
def _add_stylize_command(sub) -> None:
    p = sub.add_parser("stylize", help="style transfer: StyA2K weights, or the weight-free path without them",
                       description="Stylise CONTENT with STYLE. With StyA2K weights (--weights DIR, a packed "
                                   ".safetensors, or the four files) the trained network runs; without any, the "
                                   "weight-free all-to-key path runs (no download needed).")
    p.add_argument("content")
    p.add_argument("style")
    p.add_argument("-o", "--output", required=True, help="output image (PNG)")
    p.add_argument("--weights", help="folder with the four official files, or a packed .safetensors")
    for slot in ("vgg", "a2k", "transform", "decoder"):
        p.add_argument(f"--{slot}", help=f"the {slot} file (overrides --weights for that slot)")
    p.add_argument("--size", type=int, help="longer side to process and return (default: the content's size)")
    p.add_argument("--strength", type=float, default=1.0, help="0 = content, 1 = full style (default 1)")
    p.add_argument("--preserve-color", action="store_true", help="keep the content's colours")
    p.add_argument("--mask", help="content mask image (white = stylise); any size")
    _add_device_options(p)
    p.set_defaults(func=_run_stylize)


def _run_stylize(args) -> int:
    from .api import stylize
    from .imageio import load_image, load_mask, save_image
    content = load_image(args.content)
    style = load_image(args.style)
    mask = load_mask(args.mask) if args.mask else None
    device, dtype = _placement(args)
    slots = {s: getattr(args, s) for s in ("vgg", "a2k", "transform", "decoder")}
    model = None
    if args.weights or any(slots.values()):
        from .models.stya2k import load_stya2k
        model = load_stya2k(args.weights, device=device, dtype=dtype, **slots)
    else:
        print("No StyA2K weights given: using the weight-free all-to-key style transfer "
              "(see README: what to expect).")
    out = stylize(content, style, model=model, strength=args.strength, preserve_color=args.preserve_color, mask=mask,
                  size=args.size, device=device, dtype=dtype)
    path = save_image(out, args.output)
    print(f"Wrote {path} ({out.shape[-1]}x{out.shape[-2]})")
    return 0


# ---------------------------------------------------------------------------------------------- convert
def _add_convert_command(sub) -> None:
    p = sub.add_parser("convert", help="convert official checkpoints to .safetensors with config metadata",
                       description="DynaST: convert IN.pth OUT.safetensors. StyA2K: convert --stya2k DIR "
                                   "OUT.safetensors packs the four official files (or --vgg/--a2k/--transform/"
                                   "--decoder) into one file.")
    p.add_argument("inputs", nargs="+", help="IN OUT (DynaST), or OUT alone with --stya2k/--vgg...")
    p.add_argument("--stya2k", help="folder holding the four official StyA2K files")
    for slot in ("vgg", "a2k", "transform", "decoder"):
        p.add_argument(f"--{slot}", help=f"StyA2K {slot} file")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    slots = {s: getattr(args, s) for s in ("vgg", "a2k", "transform", "decoder")}
    if args.stya2k or any(slots.values()):
        if len(args.inputs) != 1:
            raise ValueError("with --stya2k give only the output path: convert --stya2k DIR OUT.safetensors")
        from .models.stya2k import load_stya2k, save_stya2k_safetensors
        model = load_stya2k(args.stya2k, **slots)
        path = save_stya2k_safetensors(model, args.inputs[0])
        print(f"Wrote {path} (StyA2K: vgg + a2k + transform + decoder)")
        return 0
    if len(args.inputs) != 2:
        raise ValueError("give IN.pth OUT.safetensors (DynaST), or --stya2k DIR OUT.safetensors (StyA2K)")
    from .models.dynast import convert_dynast_checkpoint
    path = convert_dynast_checkpoint(args.inputs[0], args.inputs[1])
    print(f"Wrote {path} (DynaST generator with config metadata)")
    return 0


# ---------------------------------------------------------------------------------------------- demo
def _add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="weight-free demo on generated images (no inputs, no weights)",
                       description="Generate content/style/exemplar images, run the weight-free style transfer "
                                   "and match + warp, and write the results and a contact sheet to DIR.")
    p.add_argument("-o", "--output", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--size", type=int, default=384, help="image side (default 384)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .demo import run_demo
    paths = run_demo(args.output, size=args.size, seed=args.seed)
    for name, path in paths.items():
        print(f"  {name:<16} {path.resolve()}")
    print(f"Contact sheet: {paths['contact_sheet'].resolve()}")
    return 0


# ---------------------------------------------------------------------------------------------- layouts
def _add_layout_options(p) -> None:
    p.add_argument("--exemplar-pose", help="exemplar pose keypoints (OpenPose-18 JSON, ComfyUI POSE_KEYPOINT)")
    p.add_argument("--exemplar-label", help="exemplar label map (.safetensors with one tensor (C, H, W))")
    p.add_argument("--exemplar-edges", action="store_true", help="exemplar layout: the CelebA-HQ edge label of "
                                                                 "the exemplar image")
    p.add_argument("--pose", help="target pose keypoints JSON (one pose, or a list of frames)")
    p.add_argument("--label", help="target label map (.safetensors with one tensor (C, H, W) or (B, C, H, W))")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="target size for a pose or label target (default: the target image's, else the exemplar's)")


def _read_label(path):
    from .checkpoints import read_state_dict
    sd, _ = read_state_dict(path)
    if len(sd) != 1:
        raise ValueError(f"{path}: expected one tensor (C, H, W), found {len(sd)}")
    t = next(iter(sd.values())).float()
    return t[None] if t.dim() == 3 else t


def _exemplar_and_target(args, exemplar_image, target_image=None):
    """The Exemplar and the target label (or None) from the layout options."""
    import torch.nn.functional as F
    from .api import make_exemplar
    if args.exemplar_pose:
        exemplar = make_exemplar(exemplar_image, layout="pose", pose=args.exemplar_pose)
    elif args.exemplar_label:
        exemplar = make_exemplar(exemplar_image, layout="label", label=_read_label(args.exemplar_label))
    elif args.exemplar_edges:
        exemplar = make_exemplar(exemplar_image, layout="edges")
    else:
        exemplar = make_exemplar(exemplar_image)
    h, w = args.size or (target_image.shape[-2:] if target_image is not None else exemplar_image.shape[-2:])
    label = None
    if args.label:
        label = F.interpolate(_read_label(args.label), size=(h, w), mode="nearest")
    elif args.pose:
        from .conditioning import parse_pose_keypoints, pose_keypoints_to_label_batch
        poses = parse_pose_keypoints(args.pose, width=w, height=h)
        label = pose_keypoints_to_label_batch(poses, h, w)
    return exemplar, label


# ---------------------------------------------------------------------------------------------- match
def _add_match_command(sub) -> None:
    p = sub.add_parser("match", help="correspondence from a target to an exemplar; warp the exemplar onto it",
                       description="Match the target to EXEMPLAR and write the warped exemplar (-o), and optionally "
                                   "the flow picture, the confidence and the correspondence itself (.safetensors). "
                                   "Weight-free on the images (TARGET image), weight-free on layouts (--pose/--label "
                                   "with an exemplar layout), or with a DynaST model (--model, layouts needed).")
    p.add_argument("target", nargs="?", help="target image (image matching; optional with --pose / --label)")
    p.add_argument("exemplar", help="exemplar image")
    p.add_argument("-o", "--output", required=True, help="warped exemplar (PNG)")
    p.add_argument("--model", help="DynaST generator (latest_net_G.pth or a converted .safetensors)")
    _add_layout_options(p)
    p.add_argument("--flow", help="write the flow visualisation here")
    p.add_argument("--confidence", help="write the confidence (grey PNG) here")
    p.add_argument("--save", help="write the Correspondence (.safetensors) here")
    p.add_argument("--grid-scale", type=float, default=1.0, help="weight-free: match on a grid this fraction of "
                                                                   "the image")
    p.add_argument("--top-k", type=int, default=None, help="candidates per position (default: the model's, 4)")
    _add_device_options(p)
    p.set_defaults(func=_run_match)


def _run_match(args) -> int:
    from .api import match, warp
    from .imageio import load_image, save_image
    exemplar_image = load_image(args.exemplar)
    target = load_image(args.target) if args.target else None
    exemplar, label = _exemplar_and_target(args, exemplar_image, target)
    if target is None and label is None:
        raise ValueError("give a TARGET image, or a target layout with --pose / --label")
    device, dtype = _placement(args)
    model = None
    if args.model:
        from .models.dynast import load_dynast
        model = load_dynast(args.model, device=device, dtype=dtype)
    result = match(exemplar, target_label=label, target_image=target, model=model, top_k=args.top_k,
                   grid_scale=args.grid_scale, device=device, dtype=dtype)
    print(f"Matched {result.method}: {result.correspondence}")
    print(f"Wrote {save_image(warp(result), args.output)}")
    if args.flow:
        print(f"Wrote {save_image(result.preview('flow'), args.flow)}")
    if args.confidence:
        print(f"Wrote {save_image(result.confidence(), args.confidence)}")
    if args.save:
        print(f"Wrote {result.correspondence.save(args.save)}")
    print(f"mean confidence {float(result.correspondence.confidence.mean()):.3f}")
    return 0


# ---------------------------------------------------------------------------------------------- generate
def _add_generate_command(sub) -> None:
    p = sub.add_parser("generate", help="DynaST: exemplar + target layout -> image (needs a checkpoint)",
                       description="Generate an image with the layout of the target (pose keypoints JSON or a "
                                   "ready label map .safetensors) and the appearance of the exemplar.")
    p.add_argument("--model", required=True, help="latest_net_G.pth or a converted .safetensors")
    p.add_argument("--exemplar", required=True, help="exemplar image")
    _add_layout_options(p)
    p.add_argument("-o", "--output", required=True, help="output image; several frames are written as "
                                                         "OUT_0000.png, OUT_0001.png, ...")
    _add_device_options(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from .api import generate
    from .imageio import load_image, save_image
    from .models.dynast import load_dynast
    device, dtype = _placement(args)
    model = load_dynast(args.model, device=device, dtype=dtype)
    exemplar, label = _exemplar_and_target(args, load_image(args.exemplar))
    if exemplar.label is None or label is None:
        raise ValueError("give the exemplar layout (--exemplar-pose / --exemplar-label / --exemplar-edges) and the "
                         "target layout (--pose / --label)")
    out = generate(model, exemplar, target_label=label, device=device, dtype=dtype)
    if out.image.shape[0] == 1:
        print(f"Wrote {save_image(out.image[0], args.output)}")
    else:
        from pathlib import Path
        stem = Path(args.output)
        suffix = stem.suffix or ".png"
        for i, img in enumerate(out.image):
            print(f"Wrote {save_image(img, stem.with_name(f'{stem.stem}_{i:04d}{suffix}'))}")
    return 0


def _add_train_command(sub) -> None:
    from .training.cli import add_train_command
    add_train_command(sub)


REGISTRY = [_add_demo_command, _add_generate_command, _add_stylize_command, _add_match_command, _add_convert_command,
            _add_train_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in REGISTRY:
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:   # CheckpointError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
