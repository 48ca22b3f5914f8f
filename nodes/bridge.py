"""The one place that talks to ComfyUI: model folders, devices, progress, interruption, memory.

Works outside ComfyUI too (tests, scripts): models come from ``$DYNAST_MODELS_DIR`` (default ``./models``),
the device is cuda when available, progress is a tqdm bar, and interruption never happens.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

try:  # inside ComfyUI
    import comfy.model_management as _mm
    import comfy.utils as _cu
    import folder_paths as _fp
    IN_COMFY = True
except ImportError:  # standalone
    _mm = _cu = _fp = None
    IN_COMFY = False

#: model folder name -> (sub-folder of the models directory, what goes there, where to get it)
MODEL_FOLDERS: Dict[str, Tuple[str, str]] = {
    "dynast": ("DynaST generator checkpoints (latest_net_G.pth or converted .safetensors)",
               "the official DynaST README (github.com/Huage001/DynaST), or `python -m dynast_core train dynast`"),
    "stya2k": ("StyA2K files (latest_net_A2K.pth, latest_net_transform.pth, latest_net_decoder.pth) or a packed "
               ".safetensors", "github.com/LearningHx/StyA2K (checkpoints/A2K/), or `python -m dynast_core convert`"),
    "vgg": ("vgg_normalised.pth (the VGG-19 encoder of AdaIN/SANet/StyA2K)", "the StyA2K README"),
}
EXTENSIONS = {".pth", ".pt", ".safetensors", ".ckpt", ".bin"}


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


def torch_device() -> torch.device:
    if IN_COMFY:
        return _mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    if IN_COMFY:
        return _mm.unet_offload_device()
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    if IN_COMFY:
        return _mm.intermediate_device()
    return torch.device("cpu")


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed cancel (never swallow it)."""
    if IN_COMFY:
        _mm.throw_exception_if_processing_interrupted()


class Progress:
    """A progress bar over ``total`` steps: ComfyUI's ProgressBar (whose updates also honour cancel) or
    tqdm. ``callback(step, of)`` suits the library's progress hooks (sub-steps of one tick)."""

    def __init__(self, total: int, desc: str = ""):
        self.total = max(1, int(total))
        self.done = 0
        if IN_COMFY:
            self._bar = _cu.ProgressBar(self.total)
        else:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=desc, leave=False, disable=os.environ.get("DYNAST_NO_TQDM") == "1")

    def tick(self, n: int = 1) -> None:
        check_interrupt()
        self.done = min(self.total, self.done + n)
        if IN_COMFY:
            self._bar.update_absolute(self.done, self.total)
        else:
            self._bar.update(n)

    def callback(self) -> Callable[[int, int], None]:
        """A ``progress(step, of)`` hook that ticks once per step."""
        def hook(step, of):
            self.tick(1)
        return hook

    def close(self) -> None:
        if not IN_COMFY:
            self._bar.close()


def install_cancel_check() -> None:
    """Let the library's attention chunk loops honour ComfyUI's cancel (within one chunk)."""
    if IN_COMFY:
        from ..dynast_core.attention._common import set_cancel_check
        set_cancel_check(_mm.throw_exception_if_processing_interrupted)


def free_memory() -> None:
    if IN_COMFY:
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                              or "not enough memory" in msg)


def with_oom_retry(fn: Callable[[Optional[int]], object], chunk: Optional[int], what: str):
    """Call ``fn(query_chunk_size)``; on out-of-memory free memory and retry with a smaller chunk (from 4096
    if automatic, halving down to 64), then fail with a message that says what to lower."""
    tries = [chunk] + [c for c in (4096, 2048, 1024, 512, 256, 128, 64) if chunk is None or c < chunk]
    last = None
    for c in tries:
        try:
            return fn(c)
        except Exception as err:  # noqa: BLE001 - only out-of-memory is retried; ComfyUI's interrupt is a BaseException
            if not is_out_of_memory(err):
                raise
            last = err
            free_memory()
    raise RuntimeError(f"{what} ran out of memory even with a query chunk of 64 positions ({last}). Lower the "
                       "image size (or grid scale / size input), the batch size, or top_k.") from last
