"""Conditioning labels: our numpy/torch rasteriser against the official OpenCV recipe, parsing, errors.

Tolerances: the RGB skeleton render may differ from the OpenCV reference at <= 0.5% of pixels (any
channel); every limb distance map must be within 1 grey level (of 255) at >= 99.5% of pixels. (In
practice both match exactly: the rasterisers reproduce OpenCV's integer drawing.)
"""
import json
import math

import numpy as np
import pytest
import torch

from dynast_core import conditioning as C

RGB_TOL = 0.005  # largest fraction of differing render pixels
DIST_FRAC = 0.995  # smallest fraction of distance-map pixels within 1 grey level


# ------------------------------------------------------------------------------------------------
# OpenCV reference: the official DeepFashion / CelebA-HQ recipes, written with cv2 calls
# ------------------------------------------------------------------------------------------------

def _official_pose(cv2, kps, h, w):
    """data/deepfashion_dataset.py::get_label_tensor drawing, before resizing; missing joint = conf <= 0."""
    subset = [i if kps[i, 2] > 0 else -1 for i in range(18)]
    canvas = np.zeros((h, w, 3), np.uint8)
    for i in range(18):
        if subset[i] == -1:
            continue
        x, y = kps[i, :2]
        cv2.circle(canvas, (int(x), int(y)), 4, C.OPENPOSE_COLORS[i], thickness=-1)
    dists = []
    for i, (a, b) in enumerate(C.OPENPOSE_LIMBS):
        cur = canvas.copy()
        if subset[a] == -1 or subset[b] == -1:
            dists.append(np.clip(cv2.distanceTransform(np.full((h, w), 255, np.uint8), cv2.DIST_L1, 3) / 3,
                                 0, 255).astype(np.uint8))
            continue
        xs, ys = kps[[a, b], 0], kps[[a, b], 1]
        length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        poly = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), 4), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(cur, poly, C.OPENPOSE_COLORS[i])
        canvas = cv2.addWeighted(canvas, 0.4, cur, 0.6, 0)
        joint = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(joint, poly, 255)
        joint = cv2.addWeighted(joint, 0.4, joint, 0.6, 0)
        d = cv2.distanceTransform(255 - joint, cv2.DIST_L1, 3)
        dists.append(np.clip(d / 3, 0, 255).astype(np.uint8))
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB), np.stack(dists)


def _random_pose(rng, h, w, missing=0, margin=0.0):
    kps = np.zeros((18, 3))
    kps[:, 0] = rng.uniform(-margin * w, (1 + margin) * w, 18)
    kps[:, 1] = rng.uniform(-margin * h, (1 + margin) * h, 18)
    kps[:, 2] = rng.uniform(0.3, 1.0, 18)
    if missing:
        kps[rng.choice(18, missing, replace=False)] = 0.0
    return kps


def _cases():
    rng = np.random.default_rng(1234)
    h, w = 96, 72
    cases = [("random", _random_pose(rng, h, w)),
             ("missing", _random_pose(rng, h, w, missing=6)),
             ("off_canvas", _random_pose(rng, h, w, margin=0.4)),
             ("all_missing", np.zeros((18, 3)))]
    same = _random_pose(rng, h, w)
    same[1, :2] = same[0, :2]  # zero-length limb (neck-nose)
    same[2, :2] = same[1, :2] + 0.4
    cases.append(("degenerate", same))
    return h, w, cases


def _compare(cv2, kps, h, w):
    ref_rgb, ref_dist = _official_pose(cv2, kps, h, w)
    rgb = C.render_pose_rgb(kps, h, w)
    dist = C.limb_distance_maps(kps, h, w)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    assert dist.shape == (17, h, w) and dist.dtype == np.uint8
    rgb_diff = np.any(rgb != ref_rgb, axis=-1).mean()
    dist_ok = (np.abs(dist.astype(int) - ref_dist.astype(int)) <= 1).mean()
    return rgb_diff, dist_ok


@pytest.mark.parametrize("case", range(5))
def test_pose_render_matches_opencv_recipe(case):
    cv2 = pytest.importorskip("cv2")
    h, w, cases = _cases()
    name, kps = cases[case]
    rgb_diff, dist_ok = _compare(cv2, kps, h, w)
    assert rgb_diff <= RGB_TOL, f"{name}: {rgb_diff:.4%} of render pixels differ"
    assert dist_ok >= DIST_FRAC, f"{name}: only {dist_ok:.4%} of distance pixels within 1 level"


def test_pose_label_normalised_and_pixel_input_agree():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    h, w = 80, 64
    kps = _random_pose(rng, h, w, missing=3)
    frame_px = {"people": [{"pose_keypoints_2d": kps.reshape(-1).tolist()}], "canvas_width": w, "canvas_height": h}
    norm = kps.copy()
    norm[:, 0] /= w
    norm[:, 1] /= h
    norm[kps[:, 2] == 0] = 0
    frame_norm = {"people": [{"pose_keypoints_2d": norm.reshape(-1).tolist()}], "canvas_width": w, "canvas_height": h}
    a = C.parse_pose_keypoints([frame_px])[0]
    b = C.parse_pose_keypoints([frame_norm])[0]
    np.testing.assert_allclose(a, b, atol=1e-9)
    la = C.pose_keypoints_to_label(a, h, w)
    lb = C.pose_keypoints_to_label(b, h, w)
    assert torch.equal(la, lb)
    ref_rgb, ref_dist = _official_pose(cv2, a, h, w)
    assert (la[:3] * 255).round().permute(1, 2, 0).numpy().astype(np.uint8).tolist() == ref_rgb.tolist()
    assert torch.allclose(la[3:], torch.from_numpy(ref_dist).float() / 255)


def test_rasterisers_match_opencv_primitives():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    for _ in range(60):
        c = tuple(int(v) for v in rng.integers(-30, 120, 2))
        axes = (int(rng.integers(0, 70)), 4)
        ang = int(rng.integers(-360, 361))
        ref = cv2.ellipse2Poly(c, axes, ang, 0, 360, 1)
        ours = C.ellipse2poly(c, axes, ang, 0, 360, 1)
        assert np.array_equal(ref, ours), (c, axes, ang)
        a = np.zeros((64, 48), np.uint8)
        b = np.zeros((64, 48), np.uint8)
        cv2.fillConvexPoly(a, ref, 7)
        C.fill_convex_poly(b, ref, 7)
        assert (a != b).mean() <= RGB_TOL, (c, axes, ang)
    for _ in range(30):
        c = tuple(int(v) for v in rng.integers(-6, 30, 2))
        r = int(rng.integers(0, 9))
        a = np.zeros((24, 20, 3), np.uint8)
        b = np.zeros((24, 20, 3), np.uint8)
        cv2.circle(a, c, r, (1, 2, 3), thickness=-1)
        C.fill_circle(b, c, r, (1, 2, 3))
        assert np.array_equal(a, b), (c, r)


def test_l1_distance_transform_exact():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    m = rng.random((40, 56)) < 0.02
    ref = cv2.distanceTransform(np.where(m, 0, 255).astype(np.uint8), cv2.DIST_L1, 3)
    np.testing.assert_array_equal(C.l1_distance_transform(m), ref)
    assert np.isinf(C.l1_distance_transform(np.zeros((9, 9), bool))).all()
    assert (C.distance_map_uint8(np.zeros((9, 9), bool)) == 255).all()


def test_celebahq_edge_label_matches_official_recipe():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(11)
    h, w = 48, 40
    masks = np.zeros((13, h, w), np.uint8)
    masks[0, 8:40, 6:34] = 1  # skin
    masks[3, 18:22, 10:16] = 1  # l_eye
    masks[7, 22:30, 17:23] = 1  # nose
    masks[12, 0:14, 0:40] = 1  # hair (overlaps skin)
    # r_brow etc. absent -> all-ones channels
    canny = (rng.random((h, w)) < 0.1).astype(np.uint8)

    def get_edges(edge, t):  # official get_edges
        edge[:, 1:] = edge[:, 1:] | (t[:, 1:] != t[:, :-1])
        edge[:, :-1] = edge[:, :-1] | (t[:, 1:] != t[:, :-1])
        edge[1:, :] = edge[1:, :] | (t[1:, :] != t[:-1, :])
        edge[:-1, :] = edge[:-1, :] | (t[1:, :] != t[:-1, :])
        return edge

    inner = np.ones((h, w), np.uint8)
    edges = np.zeros((h, w), np.uint8)
    dists = []
    for k, part in enumerate(C.CELEBAHQ_INNER_PARTS):
        edge = np.zeros((h, w), np.uint8)
        pl = masks[k] * 255
        if masks[k].any():
            inner[pl == 255] = 1 if part == "hair" else 0
            edges = get_edges(edges, pl)
            edge = get_edges(edge, pl)
        d = cv2.distanceTransform(255 - edge * 255, cv2.DIST_L1, 3)
        dists.append(np.clip(d / 3, 0, 255).astype(np.uint8))
    edges_all = edges + canny * inner
    edges_all[edges_all > 1] = 1
    ref = np.concatenate([edges_all[None], np.stack(dists) / 255.0, np.minimum(edges, 1)[None]]).astype(np.float32)

    lab = C.celebahq_edge_label(torch.from_numpy(masks.astype(bool)), torch.from_numpy(canny))
    assert lab.shape == (15, h, w) and lab.dtype == torch.float32
    assert torch.allclose(lab, torch.from_numpy(ref))
    assert torch.all(lab[1 + C.CELEBAHQ_INNER_PARTS.index("r_brow")] == 1)
    # an index map gives the same label when the parts do not overlap
    idx = np.zeros((h, w), np.int64)
    for k in (0, 3, 7):
        idx[masks[k] == 1] = k + 1
    nonoverlap = np.stack([idx == k + 1 for k in range(13)])
    assert torch.equal(C.celebahq_edge_label(idx, canny), C.celebahq_edge_label(nonoverlap, canny))


# ------------------------------------------------------------------------------------------------
# Label API
# ------------------------------------------------------------------------------------------------

def test_pose_label_shape_range_missing_limbs_all_ones():
    kps = np.zeros((18, 3))
    kps[2] = [20, 20, 1]  # r_shoulder
    kps[3] = [30, 35, 1]  # r_elbow  -> limb 2 (3, 4) drawn; everything else missing
    lab = C.pose_keypoints_to_label(kps, 48, 40)
    assert lab.shape == (20, 48, 40) and lab.dtype == torch.float32
    assert lab.min() >= 0 and lab.max() <= 1
    drawn = C.OPENPOSE_LIMBS.index((2, 3))
    for i in range(17):
        if i == drawn:
            assert lab[3 + i].min() == 0 and lab[3 + i].max() < 1
        else:
            assert torch.all(lab[3 + i] == 1), f"limb {i} should be all ones"
    # joint 2 colour [255, 170, 0] drawn into a BGR canvas shows as RGB (0, 170, 255)
    assert lab[:3, 20, 16].mul(255).round().tolist() == [0.0, 170.0, 255.0]  # in the joint circle, off the limb


def test_pose_label_batch_and_resize():
    rng = np.random.default_rng(2)
    poses = [_random_pose(rng, 64, 48), _random_pose(rng, 64, 48, missing=5)]
    batch = C.pose_keypoints_to_label(poses, 64, 48)
    assert batch.shape == (2, 20, 64, 48)
    assert torch.equal(batch[1], C.pose_keypoints_to_label(poses[1], 64, 48))
    assert torch.equal(C.pose_keypoints_to_label_batch(np.stack(poses), 64, 48), batch)
    small = C.pose_keypoints_to_label(poses[0], 32, 24, canvas_size=(64, 48))
    assert small.shape == (20, 32, 24) and 0 <= small.min() and small.max() <= 1
    frames = [{"people": [{"pose_keypoints_2d": p.reshape(-1).tolist()}], "canvas_width": 48, "canvas_height": 64}
              for p in poses]
    assert torch.equal(C.pose_keypoints_to_label_batch(frames, 64, 48), batch)


def test_parse_formats(tmp_path):
    rng = np.random.default_rng(9)
    kps = _random_pose(rng, 100, 80, missing=4)
    flat = kps.reshape(-1).tolist()
    frame = {"people": [{"pose_keypoints_2d": flat, "face_keypoints_2d": None}], "canvas_width": 80,
             "canvas_height": 100}
    expect = kps.copy()
    for obj in ([frame], frame, json.dumps([frame]), frame["people"][0], kps, kps.tolist(), torch.from_numpy(kps), flat):
        out = C.parse_pose_keypoints(obj)
        assert len(out) == 1 and out[0].shape == (18, 3)
        np.testing.assert_allclose(out[0], expect)
    p = tmp_path / "pose.json"
    p.write_text(json.dumps([frame, frame]))
    assert len(C.parse_pose_keypoints(str(p))) == 2
    assert len(C.parse_pose_keypoints(p)) == 2
    # (18, 2): (-1, -1) and (0, 0) are missing
    xy = kps[:, :2].copy()
    xy[0] = -1
    out = C.parse_pose_keypoints(xy)[0]
    assert out[0, 2] == 0 and np.all(out[kps[:, 2] == 0, 2] == 0) and np.all(out[1:][kps[1:, 2] > 0, 2] == 1)
    # normalised coordinates scale by canvas size (frame's, else width/height)
    norm = np.array([[0.5, 0.25, 1.0]] * 18)
    norm[5] = 0
    out = C.parse_pose_keypoints(norm, width=200, height=400)[0]
    assert out[0, 0] == 100 and out[0, 1] == 100 and out[5, 2] == 0
    # most complete person is chosen; person= picks one
    few = np.zeros((18, 3))
    few[0] = [5, 5, 1]
    two = {"people": [{"pose_keypoints_2d": few.reshape(-1).tolist()}, {"pose_keypoints_2d": flat}],
           "canvas_width": 80, "canvas_height": 100}
    np.testing.assert_allclose(C.parse_pose_keypoints(two)[0], expect)
    np.testing.assert_allclose(C.parse_pose_keypoints(two, person=0)[0], few)
    # BODY_25 -> COCO-18
    b25 = np.zeros((25, 3))
    b25[8] = [1, 1, 1]  # MidHip, dropped
    b25[9] = [10, 20, 1]  # r_hip -> COCO 8
    out = C.parse_pose_keypoints({"people": [{"pose_keypoints_2d": b25.reshape(-1).tolist()}]})[0]
    assert out[8].tolist() == [10, 20, 1] and out[:, 2].sum() == 1


@pytest.mark.parametrize("bad, match", [
    ([], "empty"),
    ("", "empty"),
    ({"people": [], "canvas_width": 8, "canvas_height": 8}, "no people"),
    ([{"people": [{"pose_keypoints_2d": [1.0] * 50}]}], "54"),
    ({"persons": []}, "people"),
    (np.zeros((17, 3)), r"\(18, 3\)"),
    (np.zeros((18, 4)), r"\(18, 3\)"),
    (np.full((18, 3), np.nan), "NaN"),
    (np.full((18, 3), 0.5), "normalised"),
    ("not json and not a file", "neither JSON"),
])
def test_parse_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        C.parse_pose_keypoints(bad)


def test_label_errors():
    kps = np.zeros((18, 3))
    with pytest.raises(ValueError, match="at least 8"):
        C.pose_keypoints_to_label(kps, 7, 64)
    with pytest.raises(ValueError, match="NaN"):
        C.pose_keypoints_to_label(np.full((18, 3), np.nan), 16, 16)
    with pytest.raises(ValueError, match="shape"):
        C.pose_keypoints_to_label(np.zeros((5, 3)), 16, 16)
    with pytest.raises(ValueError, match="empty"):
        C.pose_keypoints_to_label_batch([], 16, 16)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        C.image_to_edge_label(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="at least 8"):
        C.image_to_edge_label(torch.rand(1, 3, 4, 16))
    with pytest.raises(ValueError, match="NaN"):
        C.image_to_edge_label(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="13 channels"):
        C.celebahq_edge_label(torch.zeros(1, 5, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="0..13"):
        C.celebahq_edge_label(torch.full((16, 16), 20))
    with pytest.raises(ValueError, match="non-empty"):
        C.label_preview(torch.zeros(0))


def test_image_to_edge_label_and_preview():
    img = torch.zeros(2, 3, 32, 24)
    img[:, :, 8:24, 6:18] = 1.0  # a bright square: edges on its border
    lab = C.image_to_edge_label(img)
    assert lab.shape == (2, 15, 32, 24) and lab.dtype == torch.float32
    assert lab.min() >= 0 and lab.max() <= 1
    assert lab[:, 0].sum() > 0 and torch.all(lab[:, 1:14] == 1) and torch.all(lab[:, 14] == 0)
    seg = torch.zeros(32, 24, dtype=torch.long)
    seg[10:20, 8:16] = 1  # skin
    full = C.image_to_edge_label(img[:1], parts_segmentation=seg)
    assert full.shape == (1, 15, 32, 24) and full[0, 1].min() == 0 and full[0, 14].sum() > 0
    for label in (lab, lab[0], C.pose_keypoints_to_label(np.zeros((18, 3)), 16, 16), torch.rand(1, 7, 8, 8)):
        prev = C.label_preview(label)
        assert prev.dim() == 4 and prev.shape[1] == 3 and prev.shape[-2:] == label.shape[-2:]
        assert prev.min() >= 0 and prev.max() <= 1
