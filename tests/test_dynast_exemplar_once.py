"""DynaST exemplar cache: the exemplar branch computed once (encode_exemplar) and reused by match for every
target of a clip, with results equal to match without a cache."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from dynast_core.models.dynast import DynaSTConfig, DynaSTExemplarCache, DynaSTGenerator, load_dynast

SMALL = DynaSTConfig(semantic_nc=5, ngf=8, max_multi=8, n_layers=2, pos_dim=4, prune_dim=4, crop_size=64)
H, W = 44, 70          # not a multiple of 8: the padding is exercised too


def _model(seed=0):
    """A loaded (channels-last, eval) tiny model with non-trivial BatchNorm statistics and PReLU slopes."""
    torch.manual_seed(seed)
    model = load_dynast(DynaSTGenerator(SMALL).state_dict())
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.1, 0.4, generator=g)
    return model


def _inputs(b=3, n=1, seed=1):
    """``b`` target labels (H x W) and ``n`` exemplars of another size (resized by match)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 5, H, W, generator=g), torch.rand(n, 3, 50, 60, generator=g) * 2 - 1,
            torch.rand(n, 5, 50, 60, generator=g))


def _assert_same(a, b):
    for s in (1, 2, 3, 4):
        ca, cb = a.correspondences[s], b.correspondences[s]
        assert torch.equal(ca.indices, cb.indices), s
        assert torch.equal(ca.weights, cb.weights), s
        assert torch.equal(a.confidence[s], b.confidence[s]), s
        assert torch.equal(a.features[s], b.features[s]), s
    assert len(a.warped) == len(b.warped)
    for x, y in zip(a.warped, b.warped):
        assert torch.equal(x, y)


def test_cache_equals_no_cache_bit_for_bit():
    model = _model()
    lab, ex, exl = _inputs(b=3, n=1)
    with torch.inference_mode():
        cache = model.encode_exemplar(ex, exl, (H, W))
        assert isinstance(cache, DynaSTExemplarCache) and cache.batch_size == 1 and cache.size == (H, W)
        assert set(cache.kv) == set(cache.key) == set(cache.pos) == {1, 2, 3, 4}
        assert cache.exemplar.shape == (1, 3, 48, 72)                     # resized to the target, padded to x8
        for kw in ({}, {"warp_exemplar": True, "top_k": 2}):
            plain = model.match(lab, ex, exl, **kw)
            cached = model.match(lab, exemplar_cache=cache, **kw)
            _assert_same(cached, plain)
            assert torch.equal(model.decode(cached), model.decode(plain))
        # one exemplar per target: a cache of the target batch
        lab2, ex2, exl2 = _inputs(b=2, n=2, seed=2)
        cache2 = model.encode_exemplar(ex2, exl2, (H, W))
        _assert_same(model.match(lab2, exemplar_cache=cache2), model.match(lab2, ex2, exl2))
        # forward passes the cache on to match
        assert torch.equal(model(lab, None, None, exemplar_cache=cache).image, model(lab, ex, exl).image)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cache.size = (1, 1)


def test_exemplar_branch_runs_once_for_a_clip():
    model = _model()
    lab, ex, exl = _inputs(b=3, n=1)
    calls = {"kv": [], "q": []}
    model.encoder_kv.register_forward_hook(lambda mod, inp, out: calls["kv"].append(inp[0].shape[0]))
    model.encoder_q.register_forward_hook(lambda mod, inp, out: calls["q"].append(inp[0].shape[0]))
    with torch.no_grad():
        cache = model.encode_exemplar(ex, exl, (H, W))
        for i in range(3):                                               # three batches of frames
            model.match(lab[i:i + 1] if i < 2 else lab, exemplar_cache=cache)
    assert calls["kv"] == [1]                                            # one encode, at the exemplar's batch
    assert calls["q"] == [1, 1, 3]
    calls["kv"].clear()
    with torch.no_grad():
        model.match(lab, ex, exl)                     # without a cache: once per call, not once per target
    assert calls["kv"] == [1]


def test_a_cache_that_does_not_fit_says_what_to_do():
    model = _model()
    lab, ex, exl = _inputs(b=3, n=1)
    with torch.no_grad():
        cache = model.encode_exemplar(ex, exl, (H, W))
        other = model.encode_exemplar(ex, exl, (48, 64))
        with pytest.raises(ValueError, match=r"made for 48x64 targets.*call encode_exemplar with the target size"):
            model.match(lab, exemplar_cache=other)
        two = model.encode_exemplar(ex.expand(2, -1, -1, -1), exl.expand(2, -1, -1, -1), (H, W))
        with pytest.raises(ValueError, match=r"holds 2 exemplars and the label batch is 3: call encode_exemplar"):
            model.match(lab, exemplar_cache=two)
        with pytest.raises(ValueError, match=r"cache\.to|encode_exemplar with the exemplar on the label's"):
            model.match(lab.double(), exemplar_cache=cache)
        with pytest.raises(ValueError, match="either exemplar and exemplar_label or exemplar_cache"):
            model.match(lab, ex, exl, exemplar_cache=cache)
        with pytest.raises(ValueError, match="exemplar and exemplar_label, or an exemplar_cache"):
            model.match(lab)
        with pytest.raises(ValueError, match="at least 16"):
            model.encode_exemplar(ex, exl, (8, 64))
    with pytest.raises(ValueError, match=r"for inference.*torch\.no_grad"):
        model.match(lab, exemplar_cache=cache)                           # autograd on: training needs the branch


def test_api_calls_encode_a_clips_exemplar_once_across_windows():
    from dynast_core import api
    model = _model(3)
    labels, ex, ex_label = _inputs(b=3)
    exemplar = api.make_exemplar((ex + 1) / 2, label=ex_label)
    calls = []
    hook = model.encoder_kv.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        windows = api.generate(model, exemplar, target_label=labels, window=1)
        assert calls == [1]                           # three windows, one exemplar encoding
        calls.clear()
        whole = api.generate(model, exemplar, target_label=labels)
        assert calls == [1]
    finally:
        hook.remove()
    assert torch.equal(windows.match.correspondence.indices, whole.match.correspondence.indices)
    assert torch.allclose(windows.image, whole.image, atol=1e-5)
