"""A torch function mode that catches device mistakes on a machine with one device.

On a GPU, two classes of bug break a run: a tensor created without ``device=`` lands on the CPU while its
neighbours live on the GPU, and an operation mixes tensors of two devices. Without a GPU neither shows, so
:class:`DeviceGuard` records, while active:

* every tensor factory (``torch.zeros``, ``arange``, ``tensor``, ``from_numpy`` ...) called from library code
  (``dynast_core/``) without an explicit ``device``;
* every call whose tensor arguments live on more than one device (0-d CPU scalars excepted).
"""
from __future__ import annotations

import sys

import torch
from torch.overrides import TorchFunctionMode

FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor, torch.linspace,
             torch.eye, torch.rand, torch.randn, torch.randint, torch.as_tensor, torch.from_numpy, torch.randperm,
             torch.logspace, torch.empty_strided}
NO_DEVICE_ARG = {torch.from_numpy}


def _tensors(obj, out):
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


class DeviceGuard(TorchFunctionMode):
    """``with DeviceGuard() as g: ...``; then ``g.problems`` lists what went wrong (empty = clean)."""

    def __init__(self, package: str = "dynast_core"):
        super().__init__()
        self.package = package
        self.problems = []

    def _caller(self):
        f = sys._getframe(2)
        while f is not None and f.f_code.co_filename.endswith(("overrides.py", "device_guard.py")):
            f = f.f_back
        return f

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            f = self._caller()
            where = f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "?"
            if f"/{self.package}/" in where.replace("\\", "/"):
                if func in NO_DEVICE_ARG or kwargs.get("device") is None:
                    self.problems.append(f"{getattr(func, '__name__', func)} without device= at {where}")
        tensors = _tensors(list(args) + list(kwargs.values()), [])
        devices = {t.device for t in tensors if not (t.dim() == 0 and t.device.type == "cpu")}
        if len(devices) > 1:
            f = self._caller()
            where = f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "?"
            self.problems.append(f"{getattr(func, '__name__', func)} mixes devices {sorted(map(str, devices))} at "
                                 f"{where}")
        return func(*args, **kwargs)
