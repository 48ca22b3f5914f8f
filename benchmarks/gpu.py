"""Every node-level operation on the compute device (CUDA when present, else the CPU), in each precision.

For each operation (the ComfyUI nodes, run through the pack's own bridge as ComfyUI would: Match weight-free
and with DynaST, Generate, Decode, Warp of IMAGE / MASK / LATENT, Stylize with StyA2K and weight-free), each
size and each precision it prints:

* seconds (after one warm-up call);
* peak memory of the call (CUDA: max allocated above what was allocated before; CPU: peak RSS above before,
  with glibc's mmap threshold lowered so freed memory is returned and the figure follows live memory);
* memory still allocated after the node returned, minus before (CUDA; must be 0: nothing of ours stays behind);
* against the float32 run on identical inputs: NaN/inf count, mean and 99th-percentile absolute difference of
  the output image (or warped tensor), and the top-1 candidate agreement of the correspondence.

Models have random official-layout weights (DynaST deepfashion preset); StyA2K uses the released A2K file from
../shared/weights when present. With ``--near-ties`` a float64 run of the DynaST and StyA2K cases is added:
its difference to float32 shows how much of the half-precision difference comes from near-ties of random
weights (gate logits within rounding of zero flip in any precision).

    python benchmarks/gpu.py                       # CUDA: 512 1024, fp32 fp16 bf16; CPU: 128, fp32 bf16
    python benchmarks/gpu.py --sizes 256 --precisions fp32 fp16 bf16 --near-ties
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

from _harness import ROOT, measure

SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def load_pack():
    spec = importlib.util.spec_from_file_location("dynast_pack_bench", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["dynast_pack_bench"] = pack
    spec.loader.exec_module(pack)
    return pack


def make_models(folder):
    import torch
    from dynast_core.models.dynast import DynaSTGenerator, dynast_config, save_dynast_safetensors
    from dynast_core.models.stya2k import StyA2K, save_stya2k_safetensors
    torch.manual_seed(0)
    os.makedirs(os.path.join(folder, "dynast"), exist_ok=True)
    os.makedirs(os.path.join(folder, "stya2k"), exist_ok=True)
    save_dynast_safetensors(DynaSTGenerator(dynast_config("deepfashion")), os.path.join(folder, "dynast", "g.safetensors"))
    m = StyA2K()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight)
            torch.nn.init.zeros_(mod.bias)
    real = os.path.join(SHARED, "weights", "stya2k_official_latest_net_A2K.pth")
    if os.path.exists(real):
        m.a2k.load_state_dict(torch.load(real, map_location="cpu", weights_only=True))
    save_stya2k_safetensors(m, os.path.join(folder, "stya2k", "s.safetensors"))
    return os.path.exists(real)


class Meter:
    """Seconds, peak memory and memory left behind of one call on ``device``."""

    def __init__(self, device):
        self.device = device

    def __call__(self, fn):
        import gc
        import torch
        if self.device.type != "cuda":
            out, seconds, peak_mb = measure(fn)
            return out, seconds, peak_mb, float("nan")
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        peak_mb = (torch.cuda.max_memory_allocated(self.device) - before) / 2 ** 20
        gc.collect()
        left_mb = (torch.cuda.memory_allocated(self.device) - before) / 2 ** 20
        return out, seconds, peak_mb, left_mb


def _image(x):
    """The comparable tensor of a node's outputs: the first IMAGE/LATENT samples, as float32 on the CPU."""
    if isinstance(x, dict):
        x = x["samples"]
    return x.detach().float().cpu()


def _corr(outputs):
    for o in outputs:
        if hasattr(o, "correspondence"):
            return o.correspondence
    return None


def compare(ref, out):
    import torch
    a, b = _image(ref[0]), _image(out[0])
    bad = int((~torch.isfinite(b)).sum())
    d = (torch.nan_to_num(b) - a).abs().flatten()
    mean = float(d.mean())
    p99 = float(d.kthvalue(max(1, int(0.99 * d.numel()))).values) if d.numel() else 0.0
    agree = ""
    ca, cb = _corr(ref), _corr(out)
    if ca is not None and cb is not None:
        ia = ca.indices.gather(-1, ca.weights.argmax(-1, keepdim=True))
        ib = cb.indices.gather(-1, cb.weights.argmax(-1, keepdim=True))
        agree = f"{100 * float((ia == ib).float().mean()):.1f}%"
    return bad, mean, p99, agree


def cases(pack, size, precision):
    """(name, callable returning the node outputs) for one size and precision."""
    import torch
    N = pack.NODE_CLASS_MAPPINGS
    from dynast_core.demo import brush_texture, scene_image, textured_image, tps_grid, warp_with_grid
    g = torch.Generator().manual_seed(0)
    ex_img = textured_image(size, size, seed=1)
    target = warp_with_grid(ex_img, tps_grid(size, size, seed=2))
    to_comfy = lambda x: x.permute(0, 2, 3, 1).contiguous()  # noqa: E731
    (model,) = N["DynaST_ModelLoader"]().load("g.safetensors", precision)
    (st,) = N["DynaST_StyA2KLoader"]().load("s.safetensors", "(none)", "(none)", "(none)", "(none)", precision)
    label = torch.rand(1, 20, size, size, generator=g)
    ex_label = torch.rand(1, 20, size, size, generator=g)
    ex_plain, _ = N["DynaST_Exemplar"]().run(to_comfy(ex_img), "none")
    ex_lab, _ = N["DynaST_Exemplar"]().run(to_comfy(ex_img), "label", label=ex_label)
    state = {}

    def match_wf():
        out = N["DynaST_Match"]().run(ex_plain, 4, 0, 1.0, precision, target_image=to_comfy(target))
        state["wf"] = out[0]
        return (out[2],) + out

    def match_dynast():
        out = N["DynaST_Match"]().run(ex_lab, 4, 0, 1.0, precision, model=model, target_label=label)
        state["dy"] = out[0]
        return (out[2],) + out

    def warp_kind(kind):
        def run():
            c = state["wf"]
            if kind == "IMAGE":
                return (N["DynaST_Warp"]().run(c, image=to_comfy(ex_img))[0], c)
            if kind == "MASK":
                return (N["DynaST_Warp"]().run(c, mask=torch.rand(1, size, size, generator=g))[1], c)
            lat = {"samples": torch.randn(1, 4, size // 8, size // 8, generator=g)}
            return (N["DynaST_Warp"]().run(c, latent=lat)[2], c)
        return run

    return [
        ("Match weight-free", match_wf),
        ("Match DynaST", match_dynast),
        ("Decode", lambda: N["DynaST_Decode"]().run(model, state["dy"])),
        ("Generate", lambda: N["DynaST_Generate"]().run(model, ex_lab, 0, target_label=label)),
        ("Warp IMAGE", warp_kind("IMAGE")),
        ("Warp MASK", warp_kind("MASK")),
        ("Warp LATENT", warp_kind("LATENT")),
        ("Stylize StyA2K", lambda: N["DynaST_Stylize"]().run(to_comfy(scene_image(size, size)),
                                                             to_comfy(brush_texture(size, size)), 1.0, False, 0,
                                                             precision, model=st)),
        ("Stylize weight-free", lambda: N["DynaST_Stylize"]().run(to_comfy(scene_image(size, size)),
                                                                  to_comfy(brush_texture(size, size)), 1.0, False, 0,
                                                                  precision)),
    ]


def main(argv=None) -> int:
    import torch
    if not torch.cuda.is_available() and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and argv is None:
        # CPU: large allocations get their own mappings, so the resident set follows live memory (the heap's
        # high-water mark would otherwise hide a call's allocations behind the warm-up's); slower, but exact
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+")
    p.add_argument("--precisions", nargs="+")
    p.add_argument("--near-ties", action="store_true", help="add float64 runs of the model cases")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sizes = args.sizes or ([512, 1024] if cuda else [128])
    precisions = args.precisions or (["fp32", "fp16", "bf16"] if cuda else ["fp32", "bf16"])
    if "fp32" not in precisions:
        precisions = ["fp32"] + precisions
    if args.near_ties:
        precisions = precisions + ["fp64"]
    os.environ["DYNAST_NO_TQDM"] = "1"
    tmp = tempfile.mkdtemp(prefix="dynast_gpu_bench_")
    os.environ["DYNAST_MODELS_DIR"] = tmp
    real = make_models(tmp)
    pack = load_pack()
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"# Node-level operations on {device} ({name}); torch {torch.__version__}; StyA2K A2K weights: "
          f"{'released file' if real else 'random'}")
    print("| op | size | precision | s | peak MB | left MB | NaN/inf | mean abs diff | p99 abs diff | top-1 agree |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    meter = Meter(device)
    for size in sizes:
        refs = {}
        for prec in precisions:
            model_only = prec == "fp64"
            for op, fn in cases(pack, size, "fp32" if prec == "fp64" else prec):
                if model_only and op not in ("Match DynaST", "Decode", "Generate", "Stylize StyA2K"):
                    continue
                if prec == "fp64":
                    fn = _in_float64(pack, op, size)
                try:
                    with torch.inference_mode():
                        fn()                                   # warm-up (kernels, caches)
                        out, s, peak, left = meter(fn)
                except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
                    print(f"| {op} | {size} | {prec} | failed: {type(err).__name__}: {str(err)[:80]} |||||||")
                    continue
                if prec == "fp32":
                    refs[op] = out
                    diff = ("0", "-", "-", "-")
                else:
                    bad, mean, p99, agree = compare(refs[op], out) if op in refs else (0, float("nan"), float("nan"), "")
                    diff = (str(bad), f"{mean:.2e}", f"{p99:.2e}", agree or "-")
                left_s = "-" if left != left else f"{left:.1f}"
                print(f"| {op} | {size} | {prec} | {s:.3f} | {peak:.0f} | {left_s} | " + " | ".join(diff) + " |",
                      flush=True)
    return 0


def _in_float64(pack, op, size):
    """The same model case with float64 models and inputs (the near-tie reference)."""
    import torch
    N = pack.NODE_CLASS_MAPPINGS
    bridge = pack.nodes.bridge
    from dynast_core import api
    from dynast_core.demo import brush_texture, scene_image, textured_image
    from dynast_core.models.dynast import load_dynast
    from dynast_core.models.stya2k import load_stya2k
    g = torch.Generator().manual_seed(0)
    folder = os.environ["DYNAST_MODELS_DIR"]
    ex_img = textured_image(size, size, seed=1).double()
    label = torch.rand(1, 20, size, size, generator=g).double()
    ex_label = torch.rand(1, 20, size, size, generator=g).double()
    dev = bridge.torch_device()
    if op == "Stylize StyA2K":
        st = load_stya2k(os.path.join(folder, "stya2k", "s.safetensors"), device=dev, dtype=torch.float64)
        c, s = scene_image(size, size).double(), brush_texture(size, size).double()
        return lambda: (api.stylize(c, s, model=st).permute(0, 2, 3, 1),)
    model = load_dynast(os.path.join(folder, "dynast", "g.safetensors"), device=dev, dtype=torch.float64)
    ex = api.make_exemplar(ex_img, label=ex_label)
    if op == "Generate":
        return lambda: (api.generate(model, ex, target_label=label).image.permute(0, 2, 3, 1),)
    if op == "Decode":
        r = api.match(ex, target_label=label, model=model)
        return lambda: (api.decode(model, r).permute(0, 2, 3, 1),)
    return lambda: (lambda r: (r.preview("flow").permute(0, 2, 3, 1), r))(api.match(ex, target_label=label, model=model))


if __name__ == "__main__":
    sys.exit(main())
