"""dynast_core: exemplar-guided generation (DynaST) and all-to-key style transfer (StyA2K) in PyTorch.

The library never imports ComfyUI. See README.md for the user-facing overview.
"""
__version__ = "0.1.0"
