"""nodes/bridge.py: ComfyUI's memory manager, devices and out-of-memory recovery.

The pack is loaded twice by path: standalone, and with a fake of the small part of ComfyUI it uses
(comfy.model_management, comfy.model_patcher, comfy.utils, comfy.ops, folder_paths) that records what the
pack asks of it. A real ComfyUI run is described in the closing notes (and scripted outside the repo).
"""
import gc
import sys
import types
import weakref
from pathlib import Path

import pytest
from _pack import load_pack
import torch
import torch.nn as nn



@pytest.fixture(scope="module")
def pack():
    return load_pack("dynast_pack_bridge_standalone")


class FakeComfy:
    """Records calls; the compute device is the CPU (this machine has no GPU)."""

    def __init__(self, models_dir: Path):
        self.calls = []
        self.intermediate = torch.device("cpu")
        calls = self.calls
        fake = self

        mm = types.ModuleType("comfy.model_management")
        mm.get_torch_device = lambda: torch.device("cpu")
        mm.unet_offload_device = lambda: torch.device("cpu")
        mm.intermediate_device = lambda: fake.intermediate
        mm.intermediate_dtype = lambda: torch.float32
        mm.should_use_fp16 = lambda device=None, **kw: False
        mm.should_use_bf16 = lambda device=None, **kw: False
        mm.extra_reserved_memory = lambda: 0
        mm.get_free_memory = lambda dev=None, torch_free_too=False: 8 * 2 ** 30
        mm.throw_exception_if_processing_interrupted = lambda: None
        mm.is_oom = lambda e: isinstance(e, torch.OutOfMemoryError)

        def load_models_gpu(models, memory_required=0, force_full_load=False, **kw):
            calls.append(("load_models_gpu", [m.model for m in models], memory_required, force_full_load))
            for m in models:
                m.model.to(m.load_device)

        def free_memory(memory_required, device, keep_loaded=(), **kw):
            calls.append(("free_memory", int(memory_required), str(device), list(keep_loaded)))
            return []

        def soft_empty_cache(force=False):
            calls.append(("soft_empty_cache",))

        class LoadedModel:
            def __init__(self, patcher):
                self.model = patcher

        mm.load_models_gpu, mm.free_memory, mm.soft_empty_cache, mm.LoadedModel = (
            load_models_gpu, free_memory, soft_empty_cache, LoadedModel)

        mp = types.ModuleType("comfy.model_patcher")

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
                self.model, self.load_device, self.offload_device = model, load_device, offload_device
        mp.ModelPatcher = ModelPatcher

        cu = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total):
                self.total, self.value = total, 0

            def update_absolute(self, value, total=None, preview=None):
                self.value, self.total = value, total or self.total
                calls.append(("progress", value, self.total))
        cu.ProgressBar = ProgressBar

        ops = types.ModuleType("comfy.ops")

        class disable_weight_init:
            class Conv2d(nn.Conv2d):
                comfy_cast_weights = False

            class BatchNorm2d(nn.BatchNorm2d):
                comfy_cast_weights = False
        ops.disable_weight_init = disable_weight_init

        fp = types.ModuleType("folder_paths")
        fp.models_dir = str(models_dir)
        fp.folder_names_and_paths = {}
        fp.get_filename_list = lambda kind: sorted(p.name for d in fp.folder_names_and_paths[kind][0]
                                                   if Path(d).is_dir() for p in Path(d).iterdir())
        fp.get_folder_paths = lambda kind: list(fp.folder_names_and_paths[kind][0])

        def get_full_path(kind, name):
            for d in fp.folder_names_and_paths[kind][0]:
                if (Path(d) / name).is_file():
                    return str(Path(d) / name)
            return None
        fp.get_full_path = get_full_path

        comfy = types.ModuleType("comfy")
        comfy.model_management, comfy.model_patcher, comfy.utils, comfy.ops = mm, mp, cu, ops
        self.modules = {"comfy": comfy, "comfy.model_management": mm, "comfy.model_patcher": mp, "comfy.utils": cu,
                        "comfy.ops": ops, "folder_paths": fp}
        self.ops = ops

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    fake = FakeComfy(tmp_path)
    for name, mod in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    fake.pack = load_pack(f"dynast_pack_in_fake_comfy_{id(fake)}")
    assert fake.pack.nodes.bridge.IN_COMFY
    return fake


def _img(b=1, h=48, w=40, seed=0):
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _pose(w=40, h=48, shift=0.0):
    pts = []
    for i in range(18):
        pts += [0.3 + 0.02 * i + shift, 0.1 + 0.045 * i, 1.0]
    return [{"people": [{"pose_keypoints_2d": pts}], "canvas_width": w, "canvas_height": h}]


# ---------------------------------------------------------------------------------------------- OOM
def test_oom_retry_releases_the_failed_attempt_and_shrinks_chunks(pack):
    bridge = pack.nodes.bridge
    resolve_chunk_size = sys.modules[f"{pack.__name__}.dynast_core.attention._common"].resolve_chunk_size
    seen, alive = [], []

    def fn(chunk):
        size = resolve_chunk_size(100_000, 4.0, chunk)       # an attention op sizing its chunk
        seen.append(size)
        if alive:
            gc.collect()
            alive.append(alive[-1]() is None)              # the previous attempt's tensor is gone by now
        if len(seen) < 3:
            big = torch.empty(1_000_000)
            alive.append(weakref.ref(big))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return size

    assert bridge.with_oom_retry(fn, None, "test") == seen[-1]
    assert seen[1] <= seen[0] // 4 and seen[2] <= seen[1] // 4       # below the automatic chunk, each time
    assert alive[1] is True and alive[3] is True                     # released before each retry


def test_oom_retry_gives_up_with_advice_and_passes_other_errors(pack):
    bridge = pack.nodes.bridge

    def always(chunk):
        raise torch.OutOfMemoryError("out of memory")
    with pytest.raises(RuntimeError, match="Lower the image size"):
        bridge.with_oom_retry(always, 64, "stylisation")

    def broken(chunk):
        raise ValueError("bad input")
    with pytest.raises(ValueError, match="bad input"):
        bridge.with_oom_retry(broken, None, "x")

    class Interrupt(BaseException):
        pass

    def cancelled(chunk):
        raise Interrupt()
    with pytest.raises(Interrupt):
        bridge.with_oom_retry(cancelled, None, "x")


# ---------------------------------------------------------------------------------------------- ComfyUI
def _dynast_file(tmp_path):
    from dynast_core.models.dynast import DynaSTConfig, DynaSTGenerator, save_dynast_safetensors
    torch.manual_seed(0)
    d = tmp_path / "dynast"
    d.mkdir(exist_ok=True)
    save_dynast_safetensors(DynaSTGenerator(DynaSTConfig(semantic_nc=20, ngf=8, pos_dim=4, prune_dim=4)),
                            d / "tiny.safetensors")
    return "tiny.safetensors"


def _stya2k_file(tmp_path):
    from dynast_core.models.stya2k import StyA2K, save_stya2k_safetensors
    torch.manual_seed(0)
    d = tmp_path / "stya2k"
    d.mkdir(exist_ok=True)
    save_stya2k_safetensors(StyA2K(), d / "packed.safetensors")
    return "packed.safetensors"


def test_models_go_through_comfy_model_management(comfy, tmp_path):
    N = comfy.pack.NODE_CLASS_MAPPINGS
    (handle,) = N["DynaST_ModelLoader"]().load(_dynast_file(tmp_path), "auto")
    assert handle.patcher is not None and handle.patcher.model is handle.model
    convs = [m for m in handle.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is comfy.ops.disable_weight_init.Conv2d for m in convs)   # castable layers
    exemplar, _ = N["DynaST_Exemplar"]().run(_img(), "pose", pose_keypoint=_pose())
    corr, conf, _ = N["DynaST_Match"]().run(exemplar, 4, 0, 1.0, "auto", model=handle, target_pose=_pose(shift=0.05))
    loads = comfy.named("load_models_gpu")
    assert loads and loads[-1][1] == [handle.model] and loads[-1][2] > 0          # with a memory estimate
    assert loads[-1][3] is False                                                  # partial loads allowed
    (img,) = N["DynaST_Decode"]().run(handle, corr)
    assert len(comfy.named("load_models_gpu")) == 2 and img.shape == (1, 48, 40, 3)
    assert comfy.named("progress")                                                 # ComfyUI's progress bar
    # one cached model per loader kind: loading StyA2K keeps the DynaST handle cached
    (st,) = N["DynaST_StyA2KLoader"]().load(_stya2k_file(tmp_path), "(none)", "(none)", "(none)", "(none)", "auto")
    (again,) = N["DynaST_ModelLoader"]().load("tiny.safetensors", "auto")
    assert again is handle and st.patcher is not None
    (out,) = N["DynaST_Stylize"]().run(_img(), _img(seed=3), 1.0, False, 0, "auto", model=st)
    assert comfy.named("load_models_gpu")[-1][1] == [st.model] and out.shape == (1, 48, 40, 3)


def test_castable_layers_compute_the_same(comfy, tmp_path):
    from dynast_core.models.dynast import load_dynast
    N = comfy.pack.NODE_CLASS_MAPPINGS
    name = _dynast_file(tmp_path)
    (handle,) = N["DynaST_ModelLoader"]().load(name, "fp32")
    plain = load_dynast(tmp_path / "dynast" / name)
    label = torch.rand(1, 20, 32, 32)
    ex = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(handle.model(label, ex, label).image, plain(label, ex, label).image)


def test_nothing_of_ours_stays_on_the_compute_device(comfy, tmp_path):
    """Results between nodes go to ComfyUI's intermediate device (here 'meta', distinct from the CPU compute
    device), the DynaST features Decode needs included."""
    N = comfy.pack.NODE_CLASS_MAPPINGS
    (handle,) = N["DynaST_ModelLoader"]().load(_dynast_file(tmp_path), "auto")
    comfy.intermediate = torch.device("meta")
    exemplar, preview = N["DynaST_Exemplar"]().run(_img(), "pose", pose_keypoint=_pose())
    assert exemplar.image.device.type == "meta" and exemplar.label.device.type == "meta"
    assert preview.device.type == "meta"
    comfy.intermediate = torch.device("cpu")
    exemplar, _ = N["DynaST_Exemplar"]().run(_img(), "pose", pose_keypoint=_pose())
    comfy.intermediate = torch.device("meta")
    corr, conf, flow = N["DynaST_Match"]().run(exemplar, 4, 0, 1.0, "auto", model=handle, target_pose=_pose())
    tensors = corr.tensors()
    assert corr.state is not None and len(tensors) > 8
    assert all(t.device.type == "meta" for t in tensors) and conf.device.type == "meta"
    assert flow.device.type == "meta"
    comfy.intermediate = torch.device("cpu")
    img, low, corr2 = N["DynaST_Generate"]().run(handle, exemplar, 0, target_pose=_pose())
    assert corr2.state is None            # Generate keeps no features between nodes


def test_weight_free_runs_reserve_memory_on_the_gpu(comfy):
    bridge = comfy.pack.nodes.bridge
    with bridge.reserve(123456, torch.device("cuda", 0)) as dev:
        assert dev.type == "cuda"
    calls = comfy.named("free_memory")
    assert calls and calls[-1][1] >= 123456 and calls[-1][2] == "cuda:0"
    with bridge.reserve(10, torch.device("cpu")):
        pass
    assert len(comfy.named("free_memory")) == 1                       # nothing to free on the CPU


def test_precision_choice_follows_comfy(comfy):
    bridge = comfy.pack.nodes.bridge
    mm = comfy.modules["comfy.model_management"]
    assert bridge.precision_dtype("auto", torch.device("cpu")) == torch.float32
    mm.should_use_fp16 = lambda device=None, **kw: True
    assert bridge.precision_dtype("auto", torch.device("cpu")) == torch.float16
    assert bridge.precision_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        bridge.precision_dtype("int8")


def test_frame_windows_follow_the_device(comfy):
    bridge = comfy.pack.nodes.bridge
    mm = comfy.modules["comfy.model_management"]
    assert bridge.frame_window(10 ** 6, torch.device("cpu"), 64) == 1      # a CPU gains nothing from batches
    mm.get_free_memory = lambda device=None, **kw: 10 * 2 ** 30
    gpu = torch.device("cuda", 0)
    assert bridge.frame_window(2 * 2 ** 30, gpu, 64) == 4                # 80% of 10 GiB: 4 frames of 2 GiB
    assert bridge.frame_window(2 ** 28, gpu, 64) == bridge.MAX_WINDOW    # at most MAX_WINDOW
    assert bridge.frame_window(2 ** 28, gpu, 3) == 3                     # never more than the clip
    assert bridge.frame_window(2 ** 34, gpu, 64) == 1                    # at least one frame
