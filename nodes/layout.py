"""Layout nodes: pose keypoints -> DynaST pose label, image -> edge label, label images, the EXEMPLAR."""
from __future__ import annotations

import json

from . import bridge, convert

CATEGORY = "DynaST/layout"
LABEL_TIP = "a DynaST layout label (B, C, H, W): 20 channels for pose (DeepFashion), 15 for edges (CelebA-HQ)"


def preview(label: torch.Tensor) -> torch.Tensor:
    from ..dynast_core.conditioning import label_preview
    return convert.image_out(label_preview(label))


class PoseToLabel:
    DESCRIPTION = ("OpenPose-18 keypoints (POSE_KEYPOINT from the OpenPose/DWPose nodes of comfyui_controlnet_aux) "
                   "-> the 20-channel DeepFashion pose label DynaST expects (skeleton render + limb distance maps).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "keypoints; one label per frame"}),
            "width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                              "tooltip": "label width; 0 = the keypoints' canvas width"}),
            "height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                               "tooltip": "label height; 0 = the keypoints' canvas height"}),
        }}

    RETURN_TYPES = ("DYNAST_LABEL", "IMAGE")
    RETURN_NAMES = ("label", "preview")
    OUTPUT_TOOLTIPS = (LABEL_TIP, "the skeleton render of the label")
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, pose_keypoint, width, height):
        from ..dynast_core.conditioning import pose_frames_to_label
        label = pose_frames_to_label(pose_keypoint, height, width)
        return (label, preview(label))


class ImageToEdgeLabel:
    DESCRIPTION = ("An image -> the 15-channel CelebA-HQ edge label (reduced form: Canny edges only; the official "
                   "label also has face-part distance maps from a parsing model).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE", {"tooltip": "the face (or any) image to take edges from"})}}

    RETURN_TYPES = ("DYNAST_LABEL", "IMAGE")
    RETURN_NAMES = ("label", "preview")
    OUTPUT_TOOLTIPS = (LABEL_TIP, "the edges")
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, image):
        from ..dynast_core.conditioning import image_to_edge_label
        label = image_to_edge_label(convert.image_in(image))
        return (label, preview(label))


class LabelFromImage:
    DESCRIPTION = ("Use a ready label map given as an IMAGE (e.g. a segmentation or skeleton render) as a layout "
                   "label: its RGB channels, or one grey channel. Weight-free matching takes any channel count; a "
                   "DynaST model needs the channel count it was trained with.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "the label map"}),
            "channels": (["rgb", "grey"], {"tooltip": "keep 3 colour channels or average to one"}),
        }}

    RETURN_TYPES = ("DYNAST_LABEL",)
    RETURN_NAMES = ("label",)
    OUTPUT_TOOLTIPS = (LABEL_TIP,)
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, image, channels):
        x = convert.image_in(image)
        return (x.mean(1, keepdim=True) if channels == "grey" else x,)


class Exemplar:
    DESCRIPTION = ("Bundle an exemplar image with its layout (pose keypoints, a ready label, or edges computed from "
                   "the image) into one EXEMPLAR for Match / Generate.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "the exemplar: its appearance is transferred"}),
                "layout": (["auto", "pose", "label", "edges", "none"],
                           {"tooltip": "auto: pose if connected, else label, else none (image-only matching)"}),
            },
            "optional": {
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "the exemplar's pose (OpenPose-18)"}),
                "label": ("DYNAST_LABEL", {"tooltip": "a ready layout label of the exemplar"}),
            },
        }

    RETURN_TYPES = ("DYNAST_EXEMPLAR", "IMAGE")
    RETURN_NAMES = ("exemplar", "layout_preview")
    OUTPUT_TOOLTIPS = ("exemplar image + layout", "what the layout looks like (the image itself when none)")
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, image, layout, pose_keypoint=None, label=None):
        from ..dynast_core.api import make_exemplar
        ex = make_exemplar(convert.image_in(image, "exemplar image"), layout=layout, pose=pose_keypoint, label=label)
        shown = preview(ex.label) if ex.label is not None else convert.image_out(ex.image)
        return (ex.to(bridge.intermediate_device()), shown)


#: a standing person, OpenPose-18 order, normalised coordinates (the default of PoseKeypointsFromJSON)
DEFAULT_POSE = [[0.5, 0.12], [0.5, 0.22], [0.4, 0.22], [0.37, 0.36], [0.35, 0.49], [0.6, 0.22], [0.63, 0.36],
                [0.65, 0.49], [0.44, 0.5], [0.43, 0.68], [0.43, 0.86], [0.56, 0.5], [0.57, 0.68], [0.57, 0.86],
                [0.48, 0.1], [0.52, 0.1], [0.46, 0.11], [0.54, 0.11]]


class PoseKeypointsFromJSON:
    DESCRIPTION = ("POSE_KEYPOINT from JSON text: OpenPose JSON (the format the OpenPose/DWPose nodes emit), or a "
                   "list of 18 [x, y] / [x, y, confidence] points (normalised 0..1 or pixels). Use it when the pose "
                   "comes from a file rather than a pose estimator node.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "json_text": ("STRING", {"multiline": True, "default": json.dumps([p + [1.0] for p in DEFAULT_POSE]),
                                     "tooltip": "OpenPose JSON or 18 keypoints"}),
            "canvas_width": ("INT", {"default": 512, "min": 8, "max": 8192, "tooltip": "width the pose refers to"}),
            "canvas_height": ("INT", {"default": 512, "min": 8, "max": 8192,
                                      "tooltip": "height the pose refers to"}),
        }}

    RETURN_TYPES = ("POSE_KEYPOINT",)
    RETURN_NAMES = ("pose_keypoint",)
    OUTPUT_TOOLTIPS = ("one frame per pose, in the OpenPose/DWPose node format",)
    FUNCTION = "run"
    CATEGORY = CATEGORY

    def run(self, json_text, canvas_width, canvas_height):
        from ..dynast_core.conditioning import parse_pose_keypoints
        try:
            obj = json.loads(json_text)
        except json.JSONDecodeError as err:
            raise ValueError(f"json_text is not valid JSON: {err}") from None
        frames = obj if isinstance(obj, list) and obj and isinstance(obj[0], dict) else None
        if isinstance(obj, dict):
            frames = [obj]
        if frames is not None:
            parse_pose_keypoints(frames, width=canvas_width, height=canvas_height)      # validates
            for f in frames:
                f.setdefault("canvas_width", canvas_width)
                f.setdefault("canvas_height", canvas_height)
            return (frames,)
        poses = parse_pose_keypoints(obj, width=canvas_width, height=canvas_height)
        return ([{"people": [{"pose_keypoints_2d": [float(v) for v in p.reshape(-1)]}],
                  "canvas_width": canvas_width, "canvas_height": canvas_height} for p in poses],)
