"""Make the help-page pictures (web/docs/img/*) and the pack icon (web/icon.png) with the library itself.

Everything is drawn from the procedural images of :mod:`dynast_core.demo` and the weight-free paths of
:mod:`dynast_core.api` (no weights, no third-party images), so the pictures show what the nodes really do.
Model nodes (loaders, Decode, Generate) get a diagram of their place in a chain instead: their outputs
need checkpoints the repository does not ship.

    python tools/make_doc_pictures.py            # rewrite web/icon.png and web/docs/img/
    python tools/make_doc_pictures.py --check    # exit 1 if a picture is missing or over its size budget

Run from the repository root (or anywhere: the script finds the repository from its own path).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from dynast_core import api  # noqa: E402
from dynast_core.conditioning import image_to_edge_label, label_preview, pose_frames_to_label  # noqa: E402
from dynast_core.demo import brush_texture, scene_image, textured_image, tps_grid, warp_with_grid  # noqa: E402
from dynast_core.imageio import thumbnail  # noqa: E402
from dynast_core.masks import confidence_to_mask  # noqa: E402
from dynast_core.clips import synthetic_clip  # noqa: E402
from dynast_core.video import propagate_keyframes  # noqa: E402

IMG_DIR = ROOT / "web" / "docs" / "img"
ICON = ROOT / "web" / "icon.png"
#: a picture's size budget (bytes): the help panel loads them from the pack folder
MAX_BYTES = 40_000
ICON_SIDE = 256
CELL = 136                      # thumbnail side in the strips
BG, INK, ACCENT, GREY = (255, 255, 255), (30, 30, 30), (40, 110, 200), (120, 120, 120)

#: a standing person, OpenPose-18 order, normalised (the default of the Pose Keypoints from JSON node)
POSE = [[0.5, 0.12], [0.5, 0.22], [0.4, 0.22], [0.37, 0.36], [0.35, 0.49], [0.6, 0.22], [0.63, 0.36],
        [0.65, 0.49], [0.44, 0.5], [0.43, 0.68], [0.43, 0.86], [0.56, 0.5], [0.57, 0.68], [0.57, 0.86],
        [0.48, 0.1], [0.52, 0.1], [0.46, 0.11], [0.54, 0.11]]


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:           # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _pose_frame(points, lean: float = 0.0, w: int = 256, h: int = 256):
    pts = []
    for x, y in points:
        pts += [x + lean * (y - 0.5), y, 1.0]
    return [{"people": [{"pose_keypoints_2d": pts}], "canvas_width": w, "canvas_height": h}]


def _pil(t: torch.Tensor, side: int = CELL) -> Image.Image:
    """``(1, C, H, W)`` in [0, 1] -> an RGB PIL image whose longer side is ``side``."""
    return thumbnail(t, side)


def _wrapped(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> List[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def panel(rows: Sequence[Tuple[Sequence[Tuple[str, torch.Tensor]], str]], links: Sequence[str] = (),
          title: str = "", side: int = CELL) -> Image.Image:
    """Thumbnails with captions, at most two per row (the help panel is narrow). ``rows`` are
    ``(items, sep)`` with ``sep`` "+", "->" or "" between the items of that row; ``links[i]`` labels a down
    arrow between row i and row i + 1 ("" = no arrow, just the next row)."""
    gap, cap, link_h = 36, 18, 30
    width = 2 * side + gap + 12
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_lines = _wrapped(probe, title, width - 12, _font(12)) if title else []
    top = 6 + 16 * len(title_lines)
    pics = [[_pil(t, side) for _, t in items] for items, _ in rows]
    heights = [max(p.height for p in r) for r in pics]
    height = top + sum(h + cap for h in heights) + link_h * (len(rows) - 1) + 6
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    for i, line in enumerate(title_lines):
        d.text((6, 4 + 16 * i), line, fill=INK, font=_font(12))
    y = top
    for r, ((items, sep), row) in enumerate(zip(rows, pics)):
        row_w = sum(p.width for p in row) + gap * (len(row) - 1)
        x = (width - row_w) // 2
        for i, ((name, _), p) in enumerate(zip(items, row)):
            img.paste(p, (x, y))
            d.rectangle([x - 1, y - 1, x + p.width, y + p.height], outline=(200, 200, 200))
            f = _font(11)
            tw = d.textlength(name, font=f)
            d.text((x + (p.width - tw) / 2, y + p.height + 3), name, fill=INK, font=f)
            if i < len(row) - 1:
                mid = y + p.height // 2
                if sep == "+":
                    d.text((x + p.width + gap / 2 - 4, mid - 10), "+", fill=INK, font=_font(16))
                elif sep:
                    _arrow(d, x + p.width + 5, x + p.width + gap - 5, mid)
            x += p.width + gap
        y += heights[r] + cap
        if r < len(rows) - 1:
            label = links[r] if r < len(links) else ""
            if label:
                cx = width // 2
                d.line([(cx, y + 2), (cx, y + link_h - 8)], fill=INK, width=2)
                d.polygon([(cx, y + link_h - 2), (cx - 5, y + link_h - 10), (cx + 5, y + link_h - 10)], fill=INK)
                d.text((cx + 8, y + 6), label, fill=GREY, font=_font(11))
            y += link_h
    return img


def _arrow(draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, label: str = "", colour=INK) -> None:
    draw.line([(x0, y), (x1 - 6, y)], fill=colour, width=2)
    draw.polygon([(x1, y), (x1 - 8, y - 5), (x1 - 8, y + 5)], fill=colour)
    if label:
        f = _font(10)
        tw = draw.textlength(label, font=f)
        draw.text(((x0 + x1 - tw) / 2, y - 16), label, fill=GREY, font=f)


Box = Tuple[str, str]           # (title, small print)


def chain(boxes: Sequence[Box], highlight: int, title: str = "", feeders: Sequence[Tuple[Box, int]] = ()
          ) -> Image.Image:
    """A diagram of nodes joined by arrows, top to bottom (the help panel is narrow); ``boxes[highlight]`` is
    the node the page is about; ``feeders`` are ``(box, index)`` drawn in a second column with an arrow into
    ``boxes[index]``."""
    bw, bh, vgap, hgap = 150, 46, 22, 30
    cols = 2 if feeders else 1
    width = cols * bw + (cols - 1) * hgap + 16
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_lines = _wrapped(probe, title, width - 12, _font(12)) if title else []
    top = 8 + 16 * len(title_lines)
    # feeders sit beside their target, later ones of the same target one row lower
    slots, frow = {}, []
    for _, idx in feeders:
        row = idx
        while row in slots.values():
            row += 1
        slots[len(frow)] = row
        frow.append(row)
    rows = max([len(boxes)] + [r + 1 for r in frow])
    height = top + rows * bh + (rows - 1) * vgap + 8
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    for i, line in enumerate(title_lines):
        d.text((6, 4 + 16 * i), line, fill=INK, font=_font(12))

    def box(x, y, t, small, hot):
        fill = (226, 238, 252) if hot else (246, 246, 246)
        d.rounded_rectangle([x, y, x + bw, y + bh], radius=7, fill=fill, outline=ACCENT if hot else GREY,
                            width=2 if hot else 1)
        d.text((x + 8, y + 6), t, fill=INK, font=_font(12))
        for j, line in enumerate(small.split("\n")[:2]):
            d.text((x + 8, y + 22 + 11 * j), line, fill=GREY, font=_font(10))

    def y_of(row):
        return top + row * (bh + vgap)

    for i, (t, small) in enumerate(boxes):
        box(8, y_of(i), t, small, i == highlight)
        if i:
            cx = 8 + bw // 2
            d.line([(cx, y_of(i) - vgap + 2), (cx, y_of(i) - 7)], fill=INK, width=2)
            d.polygon([(cx, y_of(i) - 1), (cx - 5, y_of(i) - 9), (cx + 5, y_of(i) - 9)], fill=INK)
    for k, ((t, small), idx) in enumerate(feeders):
        x, y = 8 + bw + hgap, y_of(frow[k])
        box(x, y, t, small, False)
        tx, ty = 8 + bw + 2, y_of(idx) + bh // 2 + (6 if frow[k] != idx else 0)
        d.line([(x - 2, y + bh // 2), (tx + 8, ty)], fill=INK, width=2)
        d.polygon([(tx, ty), (tx + 9, ty - 5), (tx + 9, ty + 5)], fill=INK)
    return img


# ---------------------------------------------------------------------------------------------- content
def _match_example(size: int = 192, foreign: bool = True):
    """A textured exemplar and a smoothly warped copy as the target; with ``foreign``, a disc of another
    picture pasted into the target: content the exemplar does not have, so its confidence is low."""
    exemplar = textured_image(size, size, seed=3)
    target = warp_with_grid(exemplar, tps_grid(size, size, seed=4))
    if foreign:
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
        disc = (((ys - 0.62) ** 2 + (xs - 0.35) ** 2).sqrt() < 0.15).float()
        target = target * (1 - disc) + scene_image(size, size, seed=8) * disc
    ex = api.make_exemplar(exemplar)
    result = api.match(ex, target_image=target)
    return exemplar, target, result


def pictures() -> dict:
    """name -> PIL image for every picture of the help pages."""
    torch.manual_seed(0)
    out = {}
    exemplar, target, result = _match_example()
    warped = api.warp(result)
    conf = result.confidence()
    flow = result.preview("flow")
    out["match"] = panel([([("exemplar", exemplar), ("target_image", target)], "+"),
                          ([("warped exemplar (Warp)", warped), ("confidence", conf)], ""),
                          ([("flow_preview", flow)], "")], ["Match", ""],
                         title="Weight-free on images: the disc pasted into the target is not in the exemplar, "
                               "so its confidence is low")
    mask = confidence_to_mask(result, 0.3, grow=2, feather_radius=3)
    red = torch.tensor([1.0, 0.15, 0.1]).view(1, 3, 1, 1)
    out["confidence_mask"] = panel([([("confidence", conf), ("mask", mask)], "->"),
                                    ([("mask over the target", target * (1 - 0.6 * mask) + red * 0.6 * mask)], "")],
                                   [""], title="threshold 0.3, grow 2, feather 3: 1 = low confidence, "
                                               "redo (inpaint) there")
    exemplar, target, clean = _match_example(foreign=False)
    exemplar_mask = torch.zeros(1, 1, *exemplar.shape[-2:])
    exemplar_mask[..., 40:120, 50:150] = 1.0
    out["warp"] = panel([([("exemplar", exemplar), ("warped image", api.warp(clean))], "->"),
                         ([("a mask on the exemplar", exemplar_mask),
                           ("warped mask", api.warp(clean, exemplar_mask))], "->")], [""],
                        title="Anything laid out on the exemplar, moved onto the target (a smooth warp here)")
    out["preview"] = panel([([("target image", target), ("kind = flow", clean.preview("flow"))], ""),
                            ([("kind = source", clean.preview("source"))], "")], [""],
                           title="Where each target pixel comes from")
    content, style = scene_image(160, 160, seed=1), brush_texture(160, 160, seed=2)
    full = api.stylize(content, style)
    kept = api.stylize(content, style, strength=0.6, preserve_color=True)
    out["stylize"] = panel([([("content", content), ("style", style)], "+"),
                            ([("strength 1", full), ("0.6, preserve_color", kept)], "")], ["Stylize"],
                           title="Weight-free (a StyA2K model gives crisper strokes)")
    pose = _pose_frame(POSE)
    skeleton = label_preview(pose_frames_to_label(pose, 192, 192))
    dots = _keypoint_dots(POSE, 192)
    out["pose"] = panel([([("POSE_KEYPOINT", dots), ("label (preview)", skeleton)], "->")],
                        title="Keypoints -> 20-channel DynaST pose label")
    out["exemplar"] = panel([([("image", textured_image(192, 192, seed=7)), ("pose keypoints", dots)], "+"),
                             ([("layout_preview", skeleton)], "")], ["Exemplar"],
                            title="An image and its layout (stand-in image)")
    face = scene_image(192, 192, seed=5)
    out["edges"] = panel([([("image", face), ("label (preview)", label_preview(image_to_edge_label(face)))], "->")],
                         title="Image -> 15-channel edge label")
    seg = _segmentation(192)
    out["label_from_image"] = panel([([("label map, rgb", seg), ("channels = grey", seg.mean(1, keepdim=True))],
                                      "")], title="A ready label map as a DYNAST_LABEL")
    out["json_pose"] = panel([([("json_text", _json_card(POSE)), ("POSE_KEYPOINT", dots)], "->"),
                              ([("after Pose to Label", skeleton)], "")], [""],
                             title="A pose from text instead of a pose estimator")
    out["loader_dynast"] = chain([("Load DynaST Model", "models/dynast/\nlatest_net_G.pth"),
                                  ("DynaST Match", "model input"), ("DynaST Decode", "model input")], 0,
                                 title="One model feeds Match and Decode (or Generate)")
    out["loader_stya2k"] = chain([("Load StyA2K Model", "a packed .safetensors, or\nvgg, A2K, transform, decoder"),
                                  ("Stylize", "model input"), ("Preview / Save", "image")], 0,
                                 title="Load StyA2K Model -> Stylize")
    out["decode"] = chain([("DynaST Exemplar", "image + pose/label/edges"), ("DynaST Match", "with the model"),
                           ("DynaST Decode", "the same model"), ("Preview / Save", "image")], 2,
                          title="Decode renders a Match computed with a DynaST model",
                          feeders=[(("Load DynaST Model", "latest_net_G.pth"), 1)])
    out["generate"] = chain([("DynaST Exemplar", "image + pose/label/edges"), ("DynaST Generate", "Match + Decode"),
                             ("Inpaint (your SD)", "image + low_confidence"), ("Preview / Save", "image")], 1,
                            title="Target layout + exemplar -> image, in one node",
                            feeders=[(("Load DynaST Model", "latest_net_G.pth"), 1),
                                     (("Pose to Label", "target_label"), 1)])
    clip = synthetic_clip("object", frames=4, size=160, seed=2, speed=3.0)
    images, low = propagate_keyframes(clip.frames, [0], clip.stylised[:1])
    out["propagate"] = panel([([("keyframe: frame 0 restyled", clip.stylised[:1]), ("frame 3", clip.frames[3:4])],
                               "+"),
                              ([("frame 3 propagated", images[3:4]), ("its low_confidence", low[3:4])], "")],
                             ["Propagate Keyframes"],
                             title="The keyframe's look carried to frame 3 along the motion; where the moving disc "
                                   "uncovered the background, the mask asks for inpainting")
    return out


def _keypoint_dots(points, side: int) -> torch.Tensor:
    img = Image.new("RGB", (side, side), (0, 0, 0))
    d = ImageDraw.Draw(img)
    for x, y in points:
        cx, cy = x * side, y * side
        d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(255, 220, 60))
    return _tensor(img)


def _json_card(points) -> torch.Tensor:
    img = Image.new("RGB", (192, 192), (250, 250, 245))
    d = ImageDraw.Draw(img)
    d.text((6, 6), "[", fill=INK, font=_font(11))
    for i, (x, y) in enumerate(points[:11]):
        d.text((14, 20 + 14 * i), f"[{x:.2f}, {y:.2f}, 1.0],", fill=INK, font=_font(11))
    d.text((14, 20 + 14 * 11), "...", fill=INK, font=_font(11))
    return _tensor(img)


def _segmentation(side: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    img = torch.zeros(3, side, side)
    regions = [((ys < 0.35), (0.5, 0.7, 1.0)), ((ys >= 0.35) & (ys < 0.6), (0.2, 0.6, 0.2)),
               ((ys >= 0.6), (0.55, 0.4, 0.25)), (((ys - 0.5) ** 2 + (xs - 0.5) ** 2 < 0.04), (0.9, 0.2, 0.3))]
    for m, c in regions:
        img = torch.where(m[None], torch.tensor(c).view(3, 1, 1), img)
    return img[None]


def _tensor(img: Image.Image) -> torch.Tensor:
    import numpy as np
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def icon() -> Image.Image:
    """The pack's icon: a weight-free match's correspondence ("source" colours: where each pixel comes from),
    with the exemplar and its warp onto the target inset."""
    exemplar, target, result = _match_example(256, foreign=False)
    img = _pil(result.preview("source"), ICON_SIDE)
    d = ImageDraw.Draw(img)
    inset = 96
    for k, t in enumerate((exemplar, api.warp(result))):
        x0, y0 = 12 + k * (inset + 28), ICON_SIDE - inset - 12
        img.paste(_pil(t, inset), (x0, y0))
        d.rectangle([x0 - 2, y0 - 2, x0 + inset + 1, y0 + inset + 1], outline=(255, 255, 255), width=2)
    _arrow(d, 12 + inset + 4, 12 + inset + 25, ICON_SIDE - 12 - inset // 2, colour=(255, 255, 255))
    return img


# ---------------------------------------------------------------------------------------------- files
def _encode(img: Image.Image, photo: bool) -> bytes:
    buf = io.BytesIO()
    if photo:
        img.save(buf, "JPEG", quality=82, optimize=True, progressive=False)
    else:
        img.quantize(64, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
    return buf.getvalue()


#: pictures drawn as diagrams (flat colours: PNG); the rest are photographs of tensors (JPEG)
DIAGRAMS = {"loader_dynast", "loader_stya2k", "decode", "generate"}


def expected_files() -> List[Path]:
    names = ["match", "warp", "preview", "confidence_mask", "stylize", "pose", "exemplar", "edges",
             "label_from_image", "json_pose", "loader_dynast", "loader_stya2k", "decode", "generate", "propagate"]
    return [IMG_DIR / (n + (".png" if n in DIAGRAMS else ".jpg")) for n in names]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that every picture exists within budget")
    args = ap.parse_args(argv)
    if args.check:
        bad = [f"{p.relative_to(ROOT)}: missing" for p in expected_files() + [ICON] if not p.is_file()]
        bad += [f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes > {MAX_BYTES}" for p in expected_files()
                if p.is_file() and p.stat().st_size > MAX_BYTES]
        print("\n".join(bad) or "all pictures present and within budget")
        return 1 if bad else 0
    torch.set_num_threads(min(2, torch.get_num_threads()))
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    for name, img in pictures().items():
        path = IMG_DIR / (name + (".png" if name in DIAGRAMS else ".jpg"))
        data = _encode(img, name not in DIAGRAMS)
        path.write_bytes(data)
        flag = "" if len(data) <= MAX_BYTES else f"  OVER BUDGET ({MAX_BYTES})"
        print(f"{path.relative_to(ROOT)}: {img.width}x{img.height}, {len(data)} bytes{flag}")
    data = _encode(icon(), photo=False)
    ICON.write_bytes(data)
    print(f"{ICON.relative_to(ROOT)}: {ICON_SIDE}x{ICON_SIDE}, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
