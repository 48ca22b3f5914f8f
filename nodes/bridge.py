"""The one place that talks to ComfyUI: model folders, devices and precision, the memory manager, progress,
interruption and out-of-memory recovery. Nodes call :func:`run` with one library function.

Inside ComfyUI:

* loaded models are wrapped in a :class:`ModelHandle` holding ComfyUI's model patcher; every run asks
  ``comfy.model_management.load_models_gpu`` for the model plus an estimate of the run's working memory,
  so ComfyUI frees VRAM held by other models (an SD UNet) when needed and can unload ours for them; its
  ``--cpu`` / ``--lowvram`` / ``--novram`` / ``--gpu-only`` modes decide where weights live. Our convolution
  and batch-norm layers become ComfyUI's weight-casting layers, so a partly loaded model (low VRAM) runs
  with its offloaded weights streamed to the GPU per layer;
* weight-free runs ask ComfyUI to free the memory they need (``free_memory``) before starting;
* the work runs on ComfyUI's torch device, in windows of frames sized to the free memory; results go to
  ComfyUI's intermediate device (the CPU unless ``--gpu-only``), so nothing of ours stays on the GPU;
* out-of-memory is recognised with ComfyUI's own test; the failed attempt is released, ComfyUI frees
  memory, and the run is retried with attention chunks a quarter the size of the ones that failed.

Standalone (tests, scripts): models come from ``$DYNAST_MODELS_DIR`` (default ``./models``), the device is
cuda when available, progress is a tqdm bar, interruption never happens, a model is moved to the device for
the run and back to the CPU after it.
"""
from __future__ import annotations

import gc
import inspect
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..dynast_core.api import estimate_memory
from ..dynast_core.attention._common import chunk_limit, largest_chunk
from ..dynast_core.runtime import PRECISIONS, auto_dtype, module_dtype, parse_precision

try:  # inside ComfyUI
    import comfy.model_management as _mm
    import comfy.utils as _cu
    import folder_paths as _fp
    IN_COMFY = True
except ImportError:  # standalone
    _mm = _cu = _fp = None
    IN_COMFY = False

#: model folder name -> (what goes there, where to get it)
MODEL_FOLDERS: Dict[str, Tuple[str, str]] = {
    "dynast": ("DynaST generator checkpoints (latest_net_G.pth or converted .safetensors)",
               "the official DynaST README (github.com/Huage001/DynaST), or `python -m dynast_core train dynast`"),
    "stya2k": ("StyA2K files (latest_net_A2K.pth, latest_net_transform.pth, latest_net_decoder.pth) or a packed "
               ".safetensors", "github.com/LearningHx/StyA2K (checkpoints/A2K/), or `python -m dynast_core convert`"),
    "vgg": ("vgg_normalised.pth (the VGG-19 encoder of AdaIN/SANet/StyA2K)", "the StyA2K README"),
}
EXTENSIONS = {".pth", ".pt", ".safetensors", ".ckpt", ".bin"}
#: the precision input of the loaders and the weight-free nodes
PRECISION_INPUT = (list(PRECISIONS), {"default": "auto", "tooltip": "compute precision: auto = ComfyUI's choice for "
                                      "the device (fp16 on most GPUs, fp32 on CPU); fp16/bf16 halve memory"})
#: most frames moved to the compute device at once
MAX_WINDOW = 8
#: smallest attention chunk an out-of-memory retry goes down to
MIN_CHUNK = 16


# ---------------------------------------------------------------------------------------------- folders
def register_model_folders() -> None:
    """Register models/dynast, models/stya2k and models/vgg with folder_paths (so extra_model_paths.yaml
    entries work), restricted to checkpoint extensions."""
    if not IN_COMFY:
        return
    for name in MODEL_FOLDERS:
        default = os.path.join(_fp.models_dir, name)
        if name in _fp.folder_names_and_paths:
            paths, exts = _fp.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            _fp.folder_names_and_paths[name] = (paths, set(exts) | EXTENSIONS)
        else:
            _fp.folder_names_and_paths[name] = ([default], set(EXTENSIONS))


def _standalone_dirs(kind: str) -> List[Path]:
    return [Path(os.environ.get("DYNAST_MODELS_DIR", "models")) / kind]


def list_models(kind: str) -> List[str]:
    """File names available for a model folder kind (sorted)."""
    if IN_COMFY:
        return sorted(_fp.get_filename_list(kind))
    names = set()
    for d in _standalone_dirs(kind):
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.suffix.lower() in EXTENSIONS)
    return sorted(names)


def model_path(kind: str, name: str) -> str:
    """Full path of a model file; a clear error (file, folders searched, where to get it) when missing."""
    path = None
    if IN_COMFY:
        path = _fp.get_full_path(kind, name)
        folders = _fp.get_folder_paths(kind)
    else:
        folders = [str(d) for d in _standalone_dirs(kind)]
        for d in folders:
            if (Path(d) / name).is_file():
                path = str(Path(d) / name)
    if not path:
        what, where = MODEL_FOLDERS[kind]
        raise FileNotFoundError(f"model file '{name}' not found in {', '.join(folders) or 'models/' + kind}. "
                                f"This folder holds {what}; get it from {where}.")
    return path


# ---------------------------------------------------------------------------------------------- devices
def torch_device() -> torch.device:
    """ComfyUI's compute device (standalone: cuda if available, else cpu)."""
    if IN_COMFY:
        return _mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    """Where idle models wait (ComfyUI: the UNet offload device; standalone: cpu)."""
    if IN_COMFY:
        return _mm.unet_offload_device()
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where results between nodes live (ComfyUI: cpu, or the GPU under --gpu-only)."""
    if IN_COMFY:
        return _mm.intermediate_device()
    return torch.device("cpu")


def intermediate_dtype() -> torch.dtype:
    """The dtype of IMAGE/MASK outputs (float32 unless ComfyUI runs with --fp16-intermediates)."""
    if IN_COMFY and hasattr(_mm, "intermediate_dtype"):
        return _mm.intermediate_dtype()
    return torch.float32


def precision_dtype(precision: str, device: Optional[torch.device] = None) -> torch.dtype:
    """A precision choice (auto / fp32 / fp16 / bf16) -> dtype; auto is ComfyUI's choice for the device
    (fp16 where it runs well, bf16 where only that does, fp32 on CPU)."""
    device = torch_device() if device is None else device
    if str(precision).lower() != "auto":
        return parse_precision(precision, device)
    if IN_COMFY:
        if _mm.should_use_fp16(device):
            return torch.float16
        if _mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float32
    return auto_dtype(device)


# ---------------------------------------------------------------------------------------------- models
def _make_castable(model: nn.Module) -> bool:
    """Turn our Conv2d / BatchNorm2d layers into ComfyUI's weight-casting ones (same parameters and state
    dict), so ComfyUI's partial (low-VRAM) loading can leave some weights offloaded and stream them per
    layer. False where this ComfyUI has no such classes (the model is then always loaded whole)."""
    try:
        import comfy.ops as ops
        conv, bn = ops.disable_weight_init.Conv2d, ops.disable_weight_init.BatchNorm2d
    except (ImportError, AttributeError):
        return False
    for m in model.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = conv
        elif type(m) is nn.BatchNorm2d:
            m.__class__ = bn
    return True


class ModelHandle:
    """A loaded model as nodes pass it around (DYNAST_MODEL, STYA2K_MODEL).

    Attributes:
        model: the ``nn.Module`` (eval mode) in its compute precision ``dtype``.
        kind: ``"dynast"`` or ``"stya2k"``; name: what it was loaded from.
        patcher: ComfyUI's model patcher (None standalone): ComfyUI's memory manager moves the model with it.
    """

    def __init__(self, model: nn.Module, kind: str, name: str = ""):
        self.model = model.eval()
        self.kind = kind
        self.name = name
        self.dtype = module_dtype(model)
        self.patcher = None
        self.castable = False
        if IN_COMFY:
            import comfy.model_patcher
            self.castable = _make_castable(model)
            self.patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch_device(),
                                                            offload_device=offload_device())

    @property
    def config(self):
        return getattr(self.model, "config", None)

    def __repr__(self) -> str:
        return f"ModelHandle({self.kind}, {self.name or type(self.model).__name__}, {self.dtype})"

    @contextmanager
    def on_device(self, memory_required: int):
        """Make the model ready on the compute device for one run (yields the device).

        ComfyUI: ``load_models_gpu([patcher], memory_required)`` (it frees other models' VRAM as needed; the
        model stays under its management afterwards). Standalone: moved there and back to the CPU after.
        """
        if IN_COMFY:
            _mm.load_models_gpu([self.patcher], memory_required=int(memory_required),
                                force_full_load=not self.castable)
            yield self.patcher.load_device
            return
        dev = torch_device()
        self.model.to(dev)
        try:
            yield dev
        finally:
            self.model.to(offload_device())


@contextmanager
def reserve(memory_required: int, device: torch.device):
    """Weight-free runs: ask ComfyUI to free ``memory_required`` bytes on ``device`` (unloading other models
    if needed) before the run; yields the device."""
    if IN_COMFY and device.type != "cpu":
        _mm.free_memory(int(memory_required) + _mm.extra_reserved_memory(), device)
    yield device


def frame_window(per_frame: int, device: torch.device, frames: int) -> int:
    """How many frames to move to the compute device at once: what fits in about 80% of the free memory,
    at most :data:`MAX_WINDOW` (so memory stays flat however long the clip) and at most ``frames``. On a CPU
    one frame: batching frames buys a CPU nothing (DynaST at 256 px, 8 frames: 3.43 s per frame one at a time,
    3.94 s eight at a time, with a peak of 446 MB against 2151 MB)."""
    if device.type == "cpu":
        return 1
    if IN_COMFY:
        free = _mm.get_free_memory(device)
    elif device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = 2 * 2 ** 30
    return int(max(1, min(MAX_WINDOW, frames, 0.8 * free // max(1, per_frame))))


# ---------------------------------------------------------------------------------------------- progress
def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed cancel (never swallow it)."""
    if IN_COMFY:
        _mm.throw_exception_if_processing_interrupted()


class Progress:
    """A progress bar: ComfyUI's ProgressBar (whose updates also honour cancel) or tqdm. :meth:`hook` is a
    ``progress(step, total)`` callback for the library (absolute steps)."""

    def __init__(self, desc: str = "", total: int = 1):
        self.total = max(1, int(total))
        self.done = 0
        if IN_COMFY:
            self._bar = _cu.ProgressBar(self.total)
        else:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=desc, leave=False, disable=os.environ.get("DYNAST_NO_TQDM") == "1")

    def hook(self, step: int, total: int) -> None:
        check_interrupt()
        total = max(1, int(total))
        step = min(total, int(step))
        if IN_COMFY:
            self._bar.update_absolute(step, total)
        else:
            if total != self._bar.total:
                self._bar.total = total
            self._bar.update(step - self.done)
        self.done, self.total = step, total

    def close(self) -> None:
        if not IN_COMFY:
            self._bar.close()


def install_cancel_check() -> None:
    """Let the library's attention chunk loops honour ComfyUI's cancel (within one chunk)."""
    if IN_COMFY:
        from ..dynast_core.attention._common import set_cancel_check
        set_cancel_check(_mm.throw_exception_if_processing_interrupted)


# ---------------------------------------------------------------------------------------------- memory
def is_out_of_memory(err: BaseException) -> bool:
    """ComfyUI's own out-of-memory test where available; else torch's OutOfMemoryError or its message."""
    if IN_COMFY and hasattr(_mm, "is_oom"):
        return bool(_mm.is_oom(err))
    if IN_COMFY and isinstance(err, getattr(_mm, "OOM_EXCEPTION", ())):
        return True
    if isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                              or "not enough memory" in msg)


def free_memory(device: Optional[torch.device] = None, keep: Optional[ModelHandle] = None,
                amount: int = 0) -> None:
    """After an out-of-memory: collect garbage and ask ComfyUI to free ``amount`` bytes more on ``device``
    (unloading other models; ``keep`` stays loaded), then empty the allocator's cache."""
    gc.collect()
    if IN_COMFY:
        device = torch_device() if device is None else device
        if device.type != "cpu":
            keep_loaded = []
            if keep is not None and keep.patcher is not None and hasattr(_mm, "LoadedModel"):
                keep_loaded = [_mm.LoadedModel(keep.patcher)]
            try:
                _mm.free_memory(int(amount) + _mm.get_free_memory(device) + _mm.extra_reserved_memory(), device,
                                keep_loaded=keep_loaded)
            except TypeError:     # another ComfyUI version's signature
                _mm.free_memory(int(amount), device)
        _mm.soft_empty_cache(True) if "force" in inspect.signature(_mm.soft_empty_cache).parameters \
            else _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def with_oom_retry(fn: Callable[[Optional[int]], object], chunk: Optional[int], what: str, *,
                   device: Optional[torch.device] = None, keep: Optional[ModelHandle] = None, amount: int = 0):
    """Call ``fn(query_chunk_size)``; on out-of-memory release the failed attempt, free memory and retry with
    attention chunks a quarter of the largest that ran (down to :data:`MIN_CHUNK` positions), then fail with
    a message that says what to lower. ``chunk`` is the user's explicit chunk size (None: automatic)."""
    largest_chunk(reset=True)
    limit = None
    while True:
        try:
            with chunk_limit(limit):
                return fn(chunk if limit is None else None)
        except Exception as err:  # noqa: BLE001 - only out-of-memory is retried; ComfyUI's interrupt is a BaseException
            if not is_out_of_memory(err):
                raise
            # nothing here keeps `err`: it and its traceback (holding the attempt's tensors) die with this block
        used = largest_chunk(reset=True) or (limit if limit is not None else chunk) or 4 * 4096
        if used <= MIN_CHUNK:
            raise RuntimeError(
                f"{what} ran out of memory even with attention chunks of {MIN_CHUNK} positions. Lower the image size "
                "(the size / grid_scale inputs), the batch or number of frames, or top_k; choose fp16 precision; or "
                "start ComfyUI with --lowvram.")
        limit = max(MIN_CHUNK, used // 4)
        free_memory(device, keep, amount)


# ---------------------------------------------------------------------------------------------- run
def run(fn: Callable, *args, kind: str, work_size: Tuple[int, int], frames: int = 1,
        model: Optional[ModelHandle] = None, precision: str = "auto", query_chunk_size: Optional[int] = None,
        what: str = "", desc: str = "", **kwargs):
    """Run one library function (:mod:`dynast_core.api`) the way every node does.

    The compute device is ComfyUI's; the dtype the model's (else ``precision``); the frame window what fits
    in free memory; the model is loaded through ComfyUI's manager (or memory is reserved for a weight-free
    run) with an estimate of the working memory (:func:`~dynast_core.api.estimate_memory` of ``kind`` at
    ``work_size``); results go to the intermediate device; progress ticks per window step; out-of-memory retries
    with smaller chunks. Only the keyword arguments ``fn`` accepts are passed.
    """
    dev = torch_device()
    dtype = model.dtype if model is not None else precision_dtype(precision, dev)
    per_frame = estimate_memory(kind, *work_size, dtype=dtype)
    window = frame_window(per_frame, dev, frames)
    need = per_frame * window
    accepted = inspect.signature(fn).parameters
    extra = dict(window=window, device=dev, dtype=dtype, output_device=intermediate_device())
    progress = Progress(desc or what)
    extra["progress"] = progress.hook
    kwargs.update({k: v for k, v in extra.items() if k in accepted})
    if model is not None and "model" in accepted and "model" not in kwargs:
        kwargs["model"] = model.model
    context = model.on_device(need) if model is not None else reserve(need, dev)
    try:
        with context as dev:
            if "device" in accepted:
                kwargs["device"] = dev

            def attempt(chunk):
                if "query_chunk_size" in accepted:
                    kwargs["query_chunk_size"] = chunk
                return fn(*args, **kwargs)
            return with_oom_retry(attempt, query_chunk_size, what or getattr(fn, "__name__", "the node"),
                                  device=dev, keep=model, amount=need)
    finally:
        progress.close()
