"""Tensors created inside the DynaST model, the attention operators and weight-free matching take their
device from an input (``device=``), so nothing lands on the CPU while the inputs live on a GPU."""
import inspect
import os

import torch
from torch.overrides import TorchFunctionMode

import dynast_core
from dynast_core.attention import dynamic_attention, inner_scale_sparse_attention, inter_scale_sparse_attention
from dynast_core.models.dynast import DynaSTConfig, DynaSTGenerator, load_dynast
from dynast_core.weightfree import match_images, match_layouts

CORE = os.path.dirname(dynast_core.__file__)
WATCHED = {os.path.join(CORE, *p) for p in (("attention", "dense.py"), ("attention", "sparse.py"),
                                           ("attention", "gate.py"), ("attention", "_inference.py"),
                                           ("models", "blocks.py"), ("models", "dynast.py"), ("weightfree.py",))}
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor, torch.rand,
             torch.randn, torch.randint, torch.linspace, torch.eye, torch.empty_strided, torch.as_tensor}


class FactoryWatch(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.missing = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = inspect.stack()[1]
            if os.path.abspath(caller.filename) in WATCHED:
                self.missing.append(f"{os.path.basename(caller.filename)}:{caller.lineno} {func.__name__}")
        return func(*args, **kwargs)


def test_no_factory_call_without_a_device():
    cfg = DynaSTConfig(semantic_nc=5, ngf=8, max_multi=8, n_layers=2, pos_dim=4, prune_dim=4, crop_size=32)
    torch.manual_seed(0)
    model = load_dynast(DynaSTGenerator(cfg).state_dict())
    lab, ex = torch.rand(2, 5, 36, 44), torch.rand(1, 3, 40, 40) * 2 - 1
    q, k, v = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6), torch.randn(1, 3, 6, 6)
    watch = FactoryWatch()
    with watch:
        with torch.no_grad():
            model(lab, ex, torch.rand(1, 5, 40, 40))
        model(lab[:1], ex, torch.rand(1, 5, 40, 40))                 # the autograd path
        for grad in (False, True):
            qq = q.clone().requires_grad_(grad)
            dynamic_attention(qq, k, v, q, k, top_k=2, warp_values=v)
            inter_scale_sparse_attention(qq, k, v, torch.randint(0, 9, (1, 9, 2)), q, k, warp_values=v)
            inner_scale_sparse_attention(qq, k, v, torch.randint(0, 36, (1, 36, 2)), q, k, warp_values=v)
        img = torch.rand(1, 3, 40, 48)
        match_images(img, img)
        match_layouts(lab[:1], lab[1:])
    assert not watch.missing, watch.missing
