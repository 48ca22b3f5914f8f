"""dynast_core: exemplar-guided generation (DynaST) and all-to-key style transfer (StyA2K) in PyTorch.

The library never imports ComfyUI. See README.md for the user-facing overview.
"""
__version__ = "0.1.0"

from .correspondence import Correspondence  # noqa: E402
from .models.dynast import DynaSTGenerator, load_dynast  # noqa: E402
from .models.stya2k import StyA2K, load_stya2k  # noqa: E402
from .stylize import stylize  # noqa: E402

__all__ = ["Correspondence", "DynaSTGenerator", "load_dynast", "StyA2K", "load_stya2k", "stylize"]
