"""ComfyUI nodes: thin wrappers over dynast_core."""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
