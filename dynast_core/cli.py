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
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=_run_stylize)


def _run_stylize(args) -> int:
    from .imageio import load_image, load_mask, save_image
    content = load_image(args.content)
    style = load_image(args.style)
    mask = load_mask(args.mask) if args.mask else None
    device = _device(args.device)
    slots = {s: getattr(args, s) for s in ("vgg", "a2k", "transform", "decoder")}
    if args.weights or any(slots.values()):
        from .models.stya2k import load_stya2k
        from .stylize import stylize
        model = load_stya2k(args.weights, device=device, **slots)
        out = stylize(model, content.to(device), style.to(device), strength=args.strength,
                      preserve_color=args.preserve_color, mask=mask, size=args.size)
    else:
        from .weightfree import stylize_weight_free
        print("No StyA2K weights given: using the weight-free all-to-key style transfer "
              "(see README: what to expect).")
        out = stylize_weight_free(content.to(device), style.to(device), strength=args.strength,
                                  preserve_color=args.preserve_color, mask=mask, size=args.size)
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


# ---------------------------------------------------------------------------------------------- match
def _add_match_command(sub) -> None:
    p = sub.add_parser("match", help="weight-free correspondence: warp EXEMPLAR onto TARGET",
                       description="Match TARGET to EXEMPLAR with the weight-free cascade and write the warped "
                                   "exemplar (-o), and optionally the flow picture, the confidence and the "
                                   "correspondence itself (.safetensors).")
    p.add_argument("target")
    p.add_argument("exemplar")
    p.add_argument("-o", "--output", required=True, help="warped exemplar (PNG)")
    p.add_argument("--flow", help="write the flow visualisation here")
    p.add_argument("--confidence", help="write the confidence (grey PNG) here")
    p.add_argument("--save", help="write the Correspondence (.safetensors) here")
    p.add_argument("--grid-scale", type=float, default=1.0, help="match on a grid this fraction of the image")
    p.add_argument("--top-k", type=int, default=4)
    p.set_defaults(func=_run_match)


def _run_match(args) -> int:
    from .imageio import load_image, save_image
    from .weightfree import match_images
    target, exemplar = load_image(args.target), load_image(args.exemplar)
    corr = match_images(target, exemplar, grid_scale=args.grid_scale, top_k=args.top_k)
    print(f"Wrote {save_image(corr.warp(exemplar, output_size=target.shape[-2:]), args.output)}")
    if args.flow:
        print(f"Wrote {save_image(corr.visualize('flow', size=target.shape[-2:]), args.flow)}")
    if args.confidence:
        print(f"Wrote {save_image(corr.confidence_mask(None, size=target.shape[-2:]), args.confidence)}")
    if args.save:
        print(f"Wrote {corr.save(args.save)}")
    print(f"mean confidence {float(corr.confidence.mean()):.3f}")
    return 0


# ---------------------------------------------------------------------------------------------- generate
def _add_generate_command(sub) -> None:
    p = sub.add_parser("generate", help="DynaST: exemplar + target layout -> image (needs a checkpoint)",
                       description="Generate an image with the layout of the target (pose keypoints JSON or a "
                                   "ready label map .pt/.safetensors) and the appearance of the exemplar.")
    p.add_argument("--model", required=True, help="latest_net_G.pth or a converted .safetensors")
    p.add_argument("--exemplar", required=True, help="exemplar image")
    p.add_argument("--exemplar-pose", help="exemplar pose keypoints (OpenPose-18 JSON, ComfyUI POSE_KEYPOINT)")
    p.add_argument("--pose", help="target pose keypoints JSON")
    p.add_argument("--exemplar-label", help="exemplar label map (.safetensors with one tensor (C, H, W))")
    p.add_argument("--label", help="target label map (.safetensors with one tensor (C, H, W))")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="output size (default: the exemplar's)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run_generate)


def _read_label(path):
    from .checkpoints import read_state_dict
    sd, _ = read_state_dict(path)
    if len(sd) != 1:
        raise ValueError(f"{path}: expected one tensor (C, H, W), found {len(sd)}")
    t = next(iter(sd.values())).float()
    return t[None] if t.dim() == 3 else t


def _run_generate(args) -> int:
    import torch.nn.functional as F
    from .imageio import load_image, save_image
    from .models.dynast import generate, load_dynast
    model = load_dynast(args.model, device=_device(args.device))
    exemplar = load_image(args.exemplar)
    h, w = args.size or exemplar.shape[-2:]
    labels = []
    for pose, label, name in ((args.exemplar_pose, args.exemplar_label, "exemplar"), (args.pose, args.label, "target")):
        if label:
            labels.append(F.interpolate(_read_label(label), size=(h, w), mode="nearest"))
        elif pose:
            from .conditioning import parse_pose_keypoints, pose_keypoints_to_label
            kp = parse_pose_keypoints(pose, width=w, height=h)
            labels.append(pose_keypoints_to_label(kp[:1], h, w))
        else:
            raise ValueError(f"give the {name} layout: --{'exemplar-' if name == 'exemplar' else ''}pose JSON or "
                             f"--{'exemplar-' if name == 'exemplar' else ''}label FILE")
    out = generate(model, labels[1], exemplar, labels[0])
    print(f"Wrote {save_image(out.image[0], args.output)}")
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
