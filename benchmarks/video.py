"""Video: flicker, keyframe propagation against ground truth, and clip-mode speed and memory.

Synthetic clips with known motion (dynast_core.clips: pan, zoom, a smooth wobble, a textured disc crossing the
background with occlusions) give the true flow and visibility of every frame pair.

* flicker: Lai et al.'s warping error (mean squared difference between output t and output t-1 warped by the
  true flow, over pixels visible in both; lower is steadier), per-frame vs temporal, for weight-free Stylize,
  StyA2K Stylize (random weights, and the released A2K file when ../shared is present) and weight-free
  warping (each frame matched to one exemplar; temporal = warm start from the previous frame). Beside it the
  style distance (sum over RGB of |mean diff| + |std diff| between the output and the style image): the look
  must stay as close to the style as per-frame. Random-weight StyA2K decodes nearly flat images (its
  errors are tiny in absolute terms; compare the ratio); the released A2K file replaces only the attention
  layer.
* keyframe propagation: frame 0 restyled with a deterministic stylisation (dynast_core.clips.toon_stylise); the
  clip moves content and stylised scene together, so every stylised frame is known. PSNR of the propagated
  frames over the pixels visible in frame 0, vs reusing the keyframe unwarped.
* speed and memory per frame: per-frame baseline (each frame its own call: the exemplar encoded every time)
  vs clip mode (one call: exemplar once, windows, warm start), for 8 and 64 frames; each case in its own
  process, peak RSS above the RSS before the call.

    python benchmarks/video.py [--size 256] [--frames 8] [--parts flicker keyframes speed] [--threads 2]
                               [--speed-frames 8 64] [--speed-frames-dynast 8]
    (VIDEO_BENCH_WINDOW=8: clip mode with windows of eight frames, as the nodes use on a GPU with room; the
    default is 1, what the nodes use on a CPU)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from _harness import ROOT, measure, run_timed_and_measured, set_threads

SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def _style_distance(out, style):
    import torch
    o, s = out.float(), style.float()
    return float((o.mean((0, 2, 3)) - s.mean((0, 2, 3))).abs().sum() + (o.std((0, 2, 3)) - s.std((0, 2, 3))).abs().sum())


def _style_image(size):
    import torch
    path = os.path.join(SHARED, "data", "stya2k_samples", "style")
    if os.path.isdir(path):
        from dynast_core.imageio import load_image
        first = sorted(os.listdir(path))[0]
        img = load_image(os.path.join(path, first))
        return torch.nn.functional.interpolate(img, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
    from dynast_core.demo import brush_texture
    return brush_texture(size, size, seed=3)


def _stya2k_models():
    import torch
    from dynast_core.models.stya2k import StyA2K
    torch.manual_seed(0)
    models = [("StyA2K random", StyA2K().eval())]
    real = os.path.join(SHARED, "weights", "stya2k_official_latest_net_A2K.pth")
    if os.path.exists(real):
        m = StyA2K().eval()
        m.load_state_dict(models[0][1].state_dict())
        m.a2k.load_state_dict(torch.load(real, map_location="cpu", weights_only=True))
        models.append(("StyA2K real A2K", m))
    return models


def flicker(size: int, frames: int, temporal: float) -> None:
    import torch
    from dynast_core import api
    from dynast_core.clips import KINDS, synthetic_clip, warping_error
    style = _style_image(size)
    print(f"\n## Flicker: warping error (x1e-3, lower is steadier) and style distance; {frames} frames at {size}, "
          f"temporal {temporal}")
    print("| clip | method | per-frame err | temporal err | ratio | style dist per-frame | style dist temporal |")
    print("|---|---|---|---|---|---|---|")
    methods = [("weight-free Stylize", None)] + _stya2k_models()
    for kind in KINDS:
        clip = synthetic_clip(kind, frames=frames, size=size, stylise=None)
        for name, model in methods:
            per = api.stylize(clip.frames, style, model=model, window=4)
            tmp = api.stylize(clip.frames, style, model=model, temporal=temporal, window=4)
            e0, e1 = warping_error(per, clip), warping_error(tmp, clip)
            print(f"| {kind} | {name} | {e0 * 1e3:.3g} | {e1 * 1e3:.3g} | {e1 / e0:.2f} | "
                  f"{_style_distance(per, style):.3f} | {_style_distance(tmp, style):.3f} |", flush=True)
        ex = api.make_exemplar(clip.frames[:1])
        per = api.warp(api.match(ex, target_image=clip.frames, window=4))
        warm = api.warp(api.match(ex, target_image=clip.frames, temporal=True, window=4))
        e0, e1 = warping_error(per, clip), warping_error(warm, clip)
        print(f"| {kind} | weight-free warp of frame 0 | {e0 * 1e3:.3g} | {e1 * 1e3:.3g} | {e1 / e0:.2f} | | |",
              flush=True)


def keyframes(size: int, frames: int) -> None:
    from dynast_core.clips import KINDS, psnr, synthetic_clip
    from dynast_core.video import propagate_keyframes
    print(f"\n## Keyframe propagation: PSNR (dB) of frames 1..{frames - 1} vs the true stylised frames, over pixels "
          f"visible in frame 0; {size} px")
    print("| clip | propagated mean | propagated min | naive (keyframe reused) mean | masked % | s/frame |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        clip = synthetic_clip(kind, frames=frames, size=size)
        t0 = time.perf_counter()
        imgs, low = propagate_keyframes(clip.frames, [0], clip.stylised[:1])
        per_frame = (time.perf_counter() - t0) / frames
        ours, naive = [], []
        for t in range(1, frames):
            _, valid = clip.flow(t, 0)
            ours.append(psnr(imgs[t:t + 1], clip.stylised[t:t + 1], valid))
            naive.append(psnr(clip.stylised[:1], clip.stylised[t:t + 1], valid))
        print(f"| {kind} | {sum(ours) / len(ours):.1f} | {min(ours):.1f} | {sum(naive) / len(naive):.1f} | "
              f"{100 * float(low[1:].mean()):.1f} | {per_frame:.2f} |", flush=True)


WINDOW = int(os.environ.get("VIDEO_BENCH_WINDOW", "1"))


def speed_child(case: str, size: int, frames: int, mode: str, threads: int) -> dict:
    import torch
    from dynast_core import api
    from dynast_core.clips import synthetic_clip
    set_threads(threads)
    clip = synthetic_clip("wobble", frames=frames, size=size, stylise=None)
    if case == "weightfree_match":
        ex = api.make_exemplar(clip.frames[:1])

        def per_frame():
            return [api.match(api.make_exemplar(clip.frames[:1]), target_image=clip.frames[t:t + 1])
                    for t in range(frames)]

        def clip_mode():
            return api.match(ex, target_image=clip.frames, temporal=True, window=WINDOW)
    else:
        from dynast_core.models.dynast import DynaSTGenerator, dynast_config, load_dynast
        torch.manual_seed(0)
        model = load_dynast(DynaSTGenerator(dynast_config("deepfashion")).state_dict())
        labels = torch.rand(frames, 20, size, size)
        ex = api.make_exemplar(clip.frames[:1], label=torch.rand(1, 20, size, size))

        def per_frame():
            return [api.generate(model, ex, target_label=labels[t:t + 1]) for t in range(frames)]

        def clip_mode():
            return api.generate(model, ex, target_label=labels, window=WINDOW)
    fn = per_frame if mode == "per-frame" else clip_mode
    with torch.inference_mode():
        _, seconds, peak = measure(fn)
    return {"seconds": seconds, "peak_mb": peak}


def speed(size_wf: int, size_dynast: int, threads: int, frames_wf=(8, 64), frames_dynast=(8, 64)) -> None:
    print(f"\n## Speed and memory per frame: per-frame calls vs one clip call (exemplar once, windows of {WINDOW}, "
          "warm start)")
    print("| case | size | frames | per-frame s/frame | clip s/frame | ratio | per-frame peak MB | clip peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for case, size, counts in (("weightfree_match", size_wf, frames_wf), ("dynast", size_dynast, frames_dynast)):
        for frames in counts:
            r = {m: run_timed_and_measured(__file__, [case, size, frames, m], threads)
                 for m in ("per-frame", "clip")}
            a, b = r["per-frame"], r["clip"]
            print(f"| {case} | {size} | {frames} | {a['seconds'] / frames:.3f} | {b['seconds'] / frames:.3f} | "
                  f"{b['seconds'] / a['seconds']:.2f} | {a['peak_mb']:.0f} | {b['peak_mb']:.0f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="flicker clips' size (default 256)")
    p.add_argument("--keyframe-size", type=int, default=512)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--temporal", type=float, default=0.8)
    p.add_argument("--parts", nargs="+", default=["flicker", "keyframes", "speed"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-frames", type=int, nargs="+", default=[8, 64], help="clip lengths of the speed part")
    p.add_argument("--speed-frames-dynast", type=int, nargs="+", default=None,
                   help="clip lengths for DynaST (default: --speed-frames; DynaST takes seconds per frame on a CPU)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import json
        case, size, frames, mode = args.child
        print(json.dumps(speed_child(case, int(size), int(frames), mode, args.threads)))
        return 0
    set_threads(args.threads)
    if "flicker" in args.parts:
        flicker(args.size, args.frames, args.temporal)
    if "keyframes" in args.parts:
        keyframes(args.keyframe_size, args.frames)
    if "speed" in args.parts:
        speed(512, 256, args.threads, args.speed_frames, args.speed_frames_dynast or args.speed_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
