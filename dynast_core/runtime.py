"""Where and in what precision the library computes: one policy, used by every user-level call.

Every user-level function (:mod:`dynast_core.api`) takes ``device``, ``dtype`` and ``output_device`` and
resolves them here:

* ``device``: where the work runs. Default: the model's device when a model is given (the caller places
  the model; the library never moves it), else the device of the first input.
* ``dtype``: the compute precision. Default: the model's dtype when a model is given, else float32. A
  precision name is accepted too: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (:func:`auto_dtype`:
  float16 on CUDA GPUs that run it well, float32 elsewhere: half precision is slow on most CPUs).
* ``output_device``: where results are returned. Default: the device the inputs arrived on, so a call with
  CPU tensors and ``device="cuda"`` computes on the GPU and hands back CPU tensors (nothing stays behind).

Inputs are moved to the compute device once per call (or once per window of frames, see ``window`` in the
API), cast to the compute dtype where they are floating point; images and masks come back as float32.

Half precision holds because the operators keep what overflows or underflows in float32 (attention
logits, softmax, norms and statistics, small eps values) and cast back; see the attention ops and
:mod:`dynast_core.models.blocks`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn as nn

__all__ = ["PRECISIONS", "Placement", "auto_dtype", "parse_precision", "module_device", "module_dtype",
           "resolve_placement", "to_device"]

#: precision names a user can choose (the ComfyUI loaders show these)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_BY_NAME = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
            "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}

DeviceLike = Union[str, torch.device, None]
DtypeLike = Union[str, torch.dtype, None]


def auto_dtype(device: DeviceLike) -> torch.dtype:
    """The precision ``"auto"`` picks on ``device``: float16 on CUDA GPUs of compute capability 7 or newer
    (fast half-precision units; our ops keep their sensitive parts in float32), float32 elsewhere (CPUs
    without bfloat16 matrix units run half precision many times slower than float32)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(dev)
        return torch.float16 if major >= 7 else torch.float32
    if dev.type == "mps":
        return torch.float16
    return torch.float32


def parse_precision(precision: DtypeLike, device: DeviceLike = None) -> Optional[torch.dtype]:
    """``"auto"`` / ``"fp32"`` / ``"fp16"`` / ``"bf16"`` (or a floating torch dtype) -> torch dtype; None -> None.

    Raises:
        ValueError: an unknown name or a non-floating dtype.
    """
    if precision is None:
        return None
    if isinstance(precision, torch.dtype):
        if not precision.is_floating_point:
            raise ValueError(f"the compute dtype must be floating point, got {precision}")
        return precision
    name = str(precision).lower()
    if name == "auto":
        return auto_dtype(device)
    if name not in _BY_NAME:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return _BY_NAME[name]


def module_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter (cpu for a module without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def module_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def to_device(obj: Any, device: DeviceLike = None, dtype: Optional[torch.dtype] = None) -> Any:
    """Move a tensor, or every tensor inside a list / tuple / dict / object with ``.to(device)``, to
    ``device``; floating tensors are cast to ``dtype`` when given (integer tensors keep their dtype)."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype)
        return obj.to(device=device)
    if isinstance(obj, dict):
        return {k: to_device(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, dtype) for v in obj)
    if hasattr(obj, "to"):
        return obj.to(device) if dtype is None else obj.to(device, dtype)
    return obj


@dataclass(frozen=True)
class Placement:
    """A resolved policy: compute ``device`` and ``dtype``, and the ``output_device`` of the results."""

    device: torch.device
    dtype: torch.dtype
    output_device: torch.device

    def put(self, x: Any) -> Any:
        """Inputs to the compute device, floating tensors in the compute dtype."""
        return to_device(x, self.device, self.dtype)

    def out(self, x: Any, dtype: Optional[torch.dtype] = torch.float32) -> Any:
        """Results to the output device (floating tensors as ``dtype``, float32 by default)."""
        return to_device(x, self.output_device, dtype)


def resolve_placement(*inputs: Any, model: Optional[nn.Module] = None, device: DeviceLike = None,
                      dtype: DtypeLike = None, output_device: DeviceLike = None) -> Placement:
    """Apply the policy above to one call.

    Args:
        inputs: the call's input tensors (the first tensor found decides the default devices).
        model: the model the call runs, if any: its device and dtype are the defaults.
        device, dtype, output_device: explicit choices (``dtype`` also as a precision name).

    Raises:
        ValueError: a model whose parameters are not on ``device`` while the device was given explicitly is
            fine (ComfyUI may leave small modules on the CPU and cast them per call); an unknown precision is not.
    """
    first = next((t for t in _tensors(inputs)), None)
    in_dev = first.device if first is not None else torch.device("cpu")
    if device is None:
        dev = module_device(model) if model is not None else in_dev
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    dt = parse_precision(dtype, dev)
    if dt is None:
        dt = module_dtype(model) if model is not None else torch.float32
    out = torch.device(output_device) if output_device is not None else in_dev
    return Placement(dev, dt, out)


def _tensors(objs):
    for o in objs:
        if isinstance(o, torch.Tensor):
            yield o
        elif isinstance(o, (list, tuple)):
            yield from _tensors(o)
        elif hasattr(o, "image") and isinstance(getattr(o, "image"), torch.Tensor):   # an Exemplar
            yield o.image
