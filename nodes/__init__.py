"""ComfyUI nodes: thin wrappers over dynast_core (all ComfyUI services through nodes/bridge.py)."""
from . import bridge
from .correspondence import ConfidenceToMask, CorrespondencePreview, Decode, Generate, Match, Warp
from .layout import Exemplar, ImageToEdgeLabel, LabelFromImage, PoseKeypointsFromJSON, PoseToLabel
from .loaders import DynaSTModelLoader, StyA2KModelLoader
from .stylize import Stylize
from .video import PropagateKeyframes

bridge.register_model_folders()
bridge.install_cancel_check()

_NODES = [
    ("DynaST_ModelLoader", DynaSTModelLoader, "Load DynaST Model"),
    ("DynaST_StyA2KLoader", StyA2KModelLoader, "Load StyA2K Model"),
    ("DynaST_PoseKeypointsFromJSON", PoseKeypointsFromJSON, "Pose Keypoints from JSON"),
    ("DynaST_PoseToLabel", PoseToLabel, "Pose Keypoints to DynaST Label"),
    ("DynaST_ImageToEdgeLabel", ImageToEdgeLabel, "Image to Edge Label"),
    ("DynaST_LabelFromImage", LabelFromImage, "Label from Image"),
    ("DynaST_Exemplar", Exemplar, "DynaST Exemplar"),
    ("DynaST_Match", Match, "DynaST Match"),
    ("DynaST_Warp", Warp, "DynaST Warp"),
    ("DynaST_Decode", Decode, "DynaST Decode"),
    ("DynaST_Generate", Generate, "DynaST Generate"),
    ("DynaST_Stylize", Stylize, "Stylize (StyA2K / weight-free)"),
    ("DynaST_CorrespondencePreview", CorrespondencePreview, "Correspondence Preview"),
    ("DynaST_ConfidenceToMask", ConfidenceToMask, "Confidence to Mask"),
    ("DynaST_PropagateKeyframes", PropagateKeyframes, "Propagate Keyframes (video)"),
]

NODE_CLASS_MAPPINGS = {name: cls for name, cls, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {name: title for name, _, title in _NODES}
