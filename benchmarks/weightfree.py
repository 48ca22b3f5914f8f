"""Weight-free matching and style transfer, measured.

Correspondence: textured procedural images warped by a known affine or thin-plate-spline warp; the target
is matched to the exemplar by (a) dense attention at 1/8 scale over the same descriptors, holding the whole
correlation matrix as CoCosNet and the official DynaST do, its source positions upsampled (the baseline)
and (b) the parameter-free DynaST cascade at full resolution (16 MiB attention chunks), and at half
resolution ("cascade_half", grid_scale 0.5; the equal-memory point at small sizes). Reported: mean
end-point error (px, positions whose true source lies inside the exemplar), PSNR of the warped exemplar
against the target (8 px border excluded), time and peak memory (after a small warm-up run, so one-time library loading is not counted; memory from a
separate run with exact accounting, see benchmarks/_harness.py), at 256, 512 and 1024.

Style transfer: time, CPU time (user + system), page faults and peak memory at 512 and 1024 (``--style-sizes``;
the README's targets: 512 <= 3 s, 1024 <= 10 s, 2048 <= 60 s on two cores); on the 5 x 5 content/style pairs
of ../shared/data/stya2k_samples (``--samples``; at 256): a colour-statistics distance to the style (sum over
RGB of |mean difference| + |std difference|) and an edge-structure similarity to the content (correlation of
Sobel gradient magnitudes of the luminance), for strength 0.5 and 1.0; and the 5 x 5 grid image, written to
the path printed (never committed).

    python benchmarks/weightfree.py [--sizes 256 512 1024] [--style-sizes 512 1024 2048] [--threads 2]
                                    [--grid-out /tmp/wf_grid.png] [--samples DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from _harness import ROOT, measure, run_timed_and_measured, set_threads

SAMPLES = os.path.join(os.path.dirname(ROOT), "shared", "data", "stya2k_samples")


def match_child(method: str, warp: str, size: int, threads: int) -> dict:
    import torch.nn.functional as F
    from dynast_core.demo import affine_grid, grid_to_pixels, textured_image, tps_grid, warp_with_grid
    from dynast_core.weightfree import image_descriptors, match_descriptors, match_images
    set_threads(threads)
    # warm-up on a small instance: code paths load once, so the peak below is the method's working memory
    small = textured_image(64, 64)
    if method.startswith("cascade"):
        match_images(small, small)
    else:
        match_descriptors(image_descriptors(small, [(8, 8)]), image_descriptors(small, [(8, 8)]))
    ex = textured_image(size, size, seed=3)
    grid = affine_grid(size, size) if warp == "affine" else tps_grid(size, size, seed=5)
    target = warp_with_grid(ex, grid)
    if method.startswith("cascade"):
        scale = 0.5 if method == "cascade_half" else 1.0
        corr, seconds, peak = measure(lambda: match_images(target, ex, grid_scale=scale))
        src = corr.source_coordinates()
        if scale != 1.0:
            f = size / corr.query_size[0]
            src = F.interpolate(src * f + (f - 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
    else:
        g = (size // 8, size // 8)

        def run():
            # the CoCosNet / official DynaST formulation: the whole correlation matrix at 1/8 in memory
            return match_descriptors(image_descriptors(target, [g]), image_descriptors(ex, [g]),
                                     memory_budget=1 << 40)
        corr, seconds, peak = measure(run)
        src = F.interpolate(corr.source_coordinates() * 8 + 3.5, size=(size, size), mode="bilinear",
                            align_corners=False)
    truth = grid_to_pixels(grid, (size, size))
    inside = ((truth[:, 0] >= 0) & (truth[:, 0] <= size - 1) & (truth[:, 1] >= 0) & (truth[:, 1] <= size - 1))
    epe = (src - truth).norm(dim=1)[inside].mean().item()
    warped = corr.warp(ex, output_size=(size, size))
    mse = F.mse_loss(warped[..., 8:-8, 8:-8], target[..., 8:-8, 8:-8]).item()
    return {"seconds": seconds, "peak_mb": peak, "epe": epe, "psnr": -10 * math.log10(max(mse, 1e-12))}


def style_child(size: int, threads: int) -> dict:
    import resource
    from dynast_core.demo import brush_texture, scene_image
    from dynast_core.weightfree import stylize_weight_free
    set_threads(threads)
    c, s = scene_image(size, size), brush_texture(size, size)
    stylize_weight_free(c[..., :64, :64], s[..., :64, :64])      # one-time library set-up is not counted
    before = resource.getrusage(resource.RUSAGE_SELF)
    _, seconds, peak = measure(lambda: stylize_weight_free(c, s))
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "peak_mb": peak,
            "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt}


def _edges(x):
    from kornia.filters import sobel
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    return sobel(grey).flatten()


def style_quality(threads: int, out_path: str, samples: str = SAMPLES) -> None:
    import torch
    import torch.nn.functional as F
    from dynast_core.demo import contact_sheet
    from dynast_core.imageio import load_image, save_image
    from dynast_core.weightfree import stylize_weight_free
    set_threads(threads)
    if not os.path.isdir(samples):
        print(f"(style quality skipped: {samples} not found; pass --samples DIR)")
        return

    def load(kind):
        folder = os.path.join(samples, kind)
        return [F.interpolate(load_image(os.path.join(folder, f)), size=(256, 256), mode="area")
                for f in sorted(os.listdir(folder))[:5]]
    contents, styles = load("content"), load("style")
    stats = {0.5: [], 1.0: []}
    rows = []
    for c in contents:
        row = []
        for s in styles:
            full = stylize_weight_free(c, s)
            row.append(full)
            for strength in stats:
                out = (strength * full + (1 - strength) * c).clamp(0, 1)
                colour = ((out.mean((2, 3)) - s.mean((2, 3))).abs().sum()
                          + (out.std((2, 3)) - s.std((2, 3))).abs().sum()).item()
                base = ((c.mean((2, 3)) - s.mean((2, 3))).abs().sum()
                        + (c.std((2, 3)) - s.std((2, 3))).abs().sum()).item()
                edge = torch.corrcoef(torch.stack([_edges(out), _edges(c)]))[0, 1].item()
                stats[strength].append((colour, base, edge))
        rows.append(row)
    print(f"{'strength':>8} | {'colour dist to style':>20} {'(content: )':>11} | {'edge corr with content':>22}")
    for strength, vals in stats.items():
        n = len(vals)
        print(f"{strength:>8} | {sum(v[0] for v in vals) / n:20.3f} {sum(v[1] for v in vals) / n:11.3f} | "
              f"{sum(v[2] for v in vals) / n:22.3f}")
    cells = {}
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            cells[f"content {i + 1} x style {j + 1}"] = img
    save_image(contact_sheet(cells, columns=5)[0], out_path)
    print(f"5 x 5 grid: {out_path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid-out", default="/tmp/weightfree_style_grid.png")
    p.add_argument("--style-sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--samples", default=SAMPLES, help="folder with content/ and style/ sample images")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        if a.child[0] == "style":
            print(json.dumps(style_child(int(a.child[1]), a.threads)))
        else:
            print(json.dumps(match_child(a.child[0], a.child[1], int(a.child[2]), a.threads)))
        return 0
    print("Correspondence on known warps (dense 1/8 baseline vs cascade)")
    print(f"{'size':>5} {'warp':>6} | {'method':>12} {'EPE px':>7} {'PSNR dB':>8} {'s':>7} {'peak MB':>8}")
    for size in a.sizes:
        for warp in ("affine", "tps"):
            for method in ("dense_1/8", "cascade_half", "cascade"):
                r = run_timed_and_measured(__file__, [method, warp, size], a.threads)
                if "error" in r:
                    print(f"{size:>5} {warp:>6} | {method:>12} failed: {r['error']}")
                    continue
                print(f"{size:>5} {warp:>6} | {method:>12} {r['epe']:7.2f} {r['psnr']:8.2f} {r['seconds']:7.2f} "
                      f"{r['peak_mb']:8.0f}", flush=True)
    style_rows(a)
    return 0


def style_rows(a) -> None:
    """The style-transfer part of the report (time, then quality)."""
    print("\nStyle transfer time (procedural content/style)")
    print(f"{'size':>5} | {'s':>7} {'CPU s':>7} {'faults':>8} {'peak MB':>8}")
    for size in a.style_sizes:
        r = run_timed_and_measured(__file__, ["style", size], a.threads)
        print(f"{size:>5} | " + (f"failed: {r['error']}" if "error" in r else
                                 f"{r['seconds']:7.2f} {r['cpu_s']:7.2f} {r['faults']:8d} {r['peak_mb']:8.0f}"),
              flush=True)
    print("\nStyle transfer quality on the 5 x 5 sample pairs (256 px)")
    style_quality(a.threads, a.grid_out, a.samples)


if __name__ == "__main__":
    sys.exit(main())
