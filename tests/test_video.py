"""Video: clips through the API, temporal coherence, keyframe propagation, synthetic clips with known motion."""
import pytest
import torch

from dynast_core import api
from dynast_core.clips import synthetic_clip, warp_by_flow, warping_error
from dynast_core.conditioning import pose_frames_to_label
from dynast_core.video import parse_keyframe_indices, propagate_keyframes


def _pose(shift=0.0, w=40, h=48):
    pts = []
    for i in range(18):
        pts += [0.3 + 0.02 * i + shift, 0.1 + 0.045 * i, 1.0]
    return {"people": [{"pose_keypoints_2d": pts}], "canvas_width": w, "canvas_height": h}


def test_synthetic_clips_know_their_motion():
    for kind in ("pan", "zoom", "wobble", "object"):
        clip = synthetic_clip(kind, frames=4, size=64, seed=1)
        assert clip.frames.shape == (4, 3, 64, 64) and clip.stylised.shape == (4, 3, 64, 64)
        flow, valid = clip.flow(3, 2)
        assert flow.shape == (2, 64, 64) and 0.5 < float(valid.mean()) <= 1
        # the true flow explains the frames: warping error near zero, far below a per-frame noise
        assert warping_error(clip.frames, clip) < 5e-4
        noisy = (clip.frames + 0.05 * torch.randn_like(clip.frames)).clamp(0, 1)
        assert warping_error(noisy, clip) > 10 * warping_error(clip.frames, clip)
    obj = synthetic_clip("object", frames=4, size=64)
    _, valid = obj.flow(3, 0)
    assert float(valid.mean()) < 0.97                         # the moving disc occludes part of the background
    with pytest.raises(ValueError, match="unknown motion"):
        synthetic_clip("spin")


def test_clip_results_equal_per_frame_results_without_temporal():
    clip = synthetic_clip("pan", frames=3, size=48, stylise=None)
    style = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    whole = api.stylize(clip.frames, style, window=2)
    one_by_one = torch.cat([api.stylize(clip.frames[i:i + 1], style) for i in range(3)])
    assert torch.allclose(whole, one_by_one, atol=1e-5)
    ex = api.make_exemplar(clip.frames[:1])
    r = api.match(ex, target_image=clip.frames, window=2)
    for i in range(3):
        single = api.match(ex, target_image=clip.frames[i:i + 1])
        assert torch.equal(r.correspondence.indices[i], single.correspondence.indices[0])


def test_temporal_stylisation_steadies_a_clip():
    from dynast_core.demo import brush_texture
    clip = synthetic_clip("object", frames=4, size=96, stylise=None)
    style = brush_texture(64, 64)
    per_frame = api.stylize(clip.frames, style)
    steady = api.stylize(clip.frames, style, temporal=0.8, window=3)
    assert steady.shape == per_frame.shape and torch.equal(steady[0], per_frame[0])   # frame 0 has no past
    assert warping_error(steady, clip) < 0.4 * warping_error(per_frame, clip)      # measured 0.24
    # the look stays the style's (mean colour as close as per-frame, within 0.05)
    dist = lambda x: float((x.mean((0, 2, 3)) - style.mean((0, 2, 3))).abs().sum())  # noqa: E731
    assert dist(steady) < dist(per_frame) + 0.05
    # and each frame keeps its own colour spread (blending alone flattens it)
    spread = lambda x: x.std((2, 3))  # noqa: E731
    assert torch.allclose(spread(steady), spread(per_frame), atol=0.01)
    with pytest.raises(ValueError, match="temporal"):
        api.stylize(clip.frames, style, temporal=1.5)
    # a moving surface matches with a confidence well under 1 (resampled descriptors): it is still carried
    pan = synthetic_clip("pan", frames=4, size=96, stylise=None)
    per_frame = api.stylize(pan.frames, style)
    assert warping_error(api.stylize(pan.frames, style, temporal=0.8), pan) < 0.6 * warping_error(per_frame, pan)


def test_keyframe_propagation_is_exact_on_a_static_clip_and_follows_motion():
    still = synthetic_clip("pan", frames=1, size=64, stylise=None).frames
    frames = still.expand(4, -1, -1, -1).contiguous()
    key = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    images, low = propagate_keyframes(frames, "0", key)
    assert torch.equal(images, key.expand(4, -1, -1, -1)) and float(low.max()) == 0
    clip = synthetic_clip("pan", frames=3, size=64, speed=3.0)
    images, low = propagate_keyframes(clip.frames, [0], clip.stylised[:1])
    assert torch.equal(images[0], clip.stylised[0])
    flow, valid = clip.flow(2, 0)
    truth = clip.stylised[2:3]
    err = ((images[2:3] - truth) ** 2).mean(1)[0][valid[0] > 0].mean()
    naive = ((clip.stylised[:1] - truth) ** 2).mean(1)[0][valid[0] > 0].mean()
    assert err < 0.2 * naive                                  # far better than reusing the keyframe unwarped
    assert low.shape == (3, 1, 64, 64)


def test_keyframe_inputs_are_checked():
    frames = torch.rand(5, 3, 32, 32)
    assert parse_keyframe_indices("0, 4", 5) == [0, 4] and parse_keyframe_indices("-1", 5) == [4]
    with pytest.raises(ValueError, match="outside the clip of 5 frames"):
        parse_keyframe_indices("7", 5)
    with pytest.raises(ValueError, match="whole numbers"):
        parse_keyframe_indices("first", 5)
    with pytest.raises(ValueError, match="repeat"):
        parse_keyframe_indices([1, 1], 5)
    with pytest.raises(ValueError, match="2 keyframe indices but 1 keyframe images"):
        propagate_keyframes(frames, "0, 4", torch.rand(1, 3, 32, 32))
    big = torch.rand(1, 3, 64, 64)                            # another size: resized to the frames
    images, _ = propagate_keyframes(frames[:1], "0", big)
    assert images.shape == (1, 3, 32, 32)


def test_pose_clips_with_missing_people_and_mismatched_lengths():
    missing = {"people": [], "canvas_width": 40, "canvas_height": 48}
    labels = pose_frames_to_label([missing, _pose(), missing, _pose(0.05)])
    assert labels.shape == (4, 20, 48, 40)
    assert torch.equal(labels[0], labels[1]) and torch.equal(labels[2], labels[1])      # held from a neighbour
    ex = api.make_exemplar(torch.rand(1, 3, 48, 40), layout="pose", pose=[_pose()])
    with pytest.raises(ValueError, match="target image batch 2 and the target layout batch 3"):
        api.match(ex, target_pose=[_pose(), _pose(0.02), _pose(0.04)], target_image=torch.rand(2, 3, 48, 40))
    r = api.match(ex, target_pose=[_pose(0.01 * i) for i in range(3)])
    assert r.batch_size == 3
    one = api.match(ex, target_pose=[_pose()])                  # a clip of one frame is an image
    assert one.batch_size == 1


def test_warm_start_is_never_worse_than_per_frame_on_a_static_clip():
    clip = synthetic_clip("wobble", frames=4, size=64, stylise=None, seed=3)
    exemplar = api.make_exemplar(clip.frames[:1])
    still = clip.frames[2:3].expand(3, -1, -1, -1).contiguous()          # a static clip of three frames
    cold = api.match(exemplar, target_image=still)
    warm = api.match(exemplar, target_image=still, temporal=True, window=2)
    assert warm.correspondence.indices.shape == cold.correspondence.indices.shape
    # frame 0 has no previous frame: the same result; later frames keep the previous match unless a closer
    # one is found, so the match quality never drops anywhere
    assert torch.equal(warm.correspondence.indices[0], cold.correspondence.indices[0])
    cc, wc = cold.confidence(), warm.confidence()
    assert bool((wc >= cc - 1e-6).all())
    # the warp blends the top-k candidates by weight, so its error may move by a hair either way
    err = lambda r: float((api.warp(r) - still).abs().mean())  # noqa: E731
    assert err(warm) <= 1.02 * err(cold)


def test_warm_start_steadies_the_warp_of_a_moving_clip():
    from dynast_core.clips import warping_error
    clip = synthetic_clip("object", frames=5, size=96, stylise=None, seed=0)
    exemplar = api.make_exemplar(clip.frames[:1])
    per_frame = warping_error(api.warp(api.match(exemplar, target_image=clip.frames)), clip)
    warm = warping_error(api.warp(api.match(exemplar, target_image=clip.frames, temporal=True)), clip)
    assert warm < 0.6 * per_frame                      # measured 0.32x (the background stays put, sub-pixel)


def test_warm_start_follows_motion_and_checks_its_input():
    from dynast_core.weightfree import image_descriptors, match_descriptors, pyramid_sizes
    clip = synthetic_clip("zoom", frames=4, size=64, stylise=None, seed=2)
    exemplar = api.make_exemplar(clip.frames[:1])
    warm = api.match(exemplar, target_image=clip.frames, temporal=True)
    cold = api.match(exemplar, target_image=clip.frames)

    def epe(r, t):
        flow, valid = clip.flow(t, 0)
        idx = r.correspondence.indices[t, :, 0]
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        d = ((idx % 64 - (xs + flow[0]).flatten()) ** 2 + (idx // 64 - (ys + flow[1]).flatten()) ** 2).sqrt()
        return float(d[valid.flatten() > 0.5].mean())
    # warm frames find the moving content as well as per-frame matching does (a few pixels at most)
    for t in (1, 2, 3):
        assert epe(warm, t) <= epe(cold, t) + 2.0
    sizes = pyramid_sizes((64, 64), 32)
    q = image_descriptors(clip.frames[1:2], sizes)
    k = image_descriptors(clip.frames[:1], sizes)
    with pytest.raises(ValueError, match="previous frame"):
        match_descriptors(q, k, init=torch.zeros(1, 10, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="another exemplar"):
        match_descriptors(q, k, init=torch.full((1, 64 * 64, 4), 64 * 64, dtype=torch.long))


def test_the_exemplar_pyramid_is_built_once_per_clip(monkeypatch):
    import dynast_core.weightfree as wf
    calls = []
    real = wf.image_descriptors
    monkeypatch.setattr(wf, "image_descriptors", lambda img, sizes, **kw: calls.append(img.shape[0]) or
                        real(img, sizes, **kw))
    clip = synthetic_clip("pan", frames=4, size=48, stylise=None)
    exemplar = api.make_exemplar(clip.frames[:1])
    api.match(exemplar, target_image=clip.frames, window=1)
    assert len(calls) == 5                            # four target frames, one exemplar
    calls.clear()
    api.match(exemplar, target_image=clip.frames, window=2, temporal=True)
    assert len(calls) == 5
    calls.clear()                                     # one exemplar per frame: each frame its own
    api.match(api.make_exemplar(clip.frames.flip(0)), target_image=clip.frames, window=2)
    assert len(calls) == 4


def test_a_clip_matched_piece_by_piece_with_previous_equals_one_temporal_call():
    clip = synthetic_clip("object", frames=3, size=48, stylise=None, seed=4)
    exemplar = api.make_exemplar(clip.frames[:1])
    whole = api.match(exemplar, target_image=clip.frames, temporal=True)
    prev = None
    for t in range(3):
        prev = api.match(exemplar, target_image=clip.frames[t:t + 1], previous=prev)
        assert torch.equal(prev.correspondence.indices[0], whole.correspondence.indices[t])
    with pytest.raises(ValueError, match="preceding frame"):
        api.match(exemplar, target_image=clip.frames[:1, :, :40], previous=prev)
