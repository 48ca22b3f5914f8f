"""ComfyUI entry point. ComfyUI imports this folder as a package: relative imports only."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# Served by ComfyUI at /extensions/<this folder's name>/; the frontend's node help panel reads
# web/docs/<NodeId>.md from there. No JavaScript: the folder holds help pages and their pictures only.
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
