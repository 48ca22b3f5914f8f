"""Safe checkpoint I/O: official ``.pth`` files (``weights_only``) and our ``.safetensors``.

Nothing here ever unpickles code: ``.pth``/``.pt``/``.ckpt`` files go through
``torch.load(..., weights_only=True)``, everything else must be safetensors. Model-specific key mapping
lives next to each model (``checkpoint_filter_fn`` style); this module only reads, writes, recognises and
folds.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

__all__ = [
    "CheckpointError",
    "read_state_dict",
    "save_safetensors",
    "describe_state_dict",
    "fold_spectral_norm",
    "strip_prefix",
    "PTH_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
]

PTH_EXTENSIONS = (".pth", ".pt", ".ckpt", ".bin")
SUPPORTED_EXTENSIONS = PTH_EXTENSIONS + (".safetensors",)

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: missing, truncated, unsafe, or of the wrong kind."""


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> StateDict:
    """Remove ``prefix`` (DataParallel's ``module.``) from every key that has it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _unwrap(obj, path: Path) -> StateDict:
    """Accept a raw state dict or the common wrappers ({'state_dict': ...}, {'model': ...})."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in ("state_dict", "model", "model_state_dict", "net", "generator", "netG"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return {str(k): v for k, v in inner.items()}
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__}); "
                          "expected a raw state_dict saved with torch.save(model.state_dict()) or a "
                          ".safetensors file")


def read_state_dict(path: PathLike, *, device: Union[str, torch.device] = "cpu"
                    ) -> Tuple[StateDict, Dict[str, str]]:
    """Read a checkpoint safely.

    Args:
        path: ``.safetensors`` (any metadata is returned) or ``.pth``/``.pt``/``.ckpt``/``.bin`` (loaded
            with ``torch.load(weights_only=True)``; a ``module.`` prefix is stripped).
        device: where to put the tensors.

    Returns:
        ``(state_dict, metadata)``; metadata is empty for ``.pth`` files.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a checkpoint, or would need to run
            pickled code to load.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file inside it")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                metadata = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable .safetensors file ({err}); it may be "
                                  "truncated: download or convert it again") from err
        return strip_prefix(sd), metadata
    if suffix not in PTH_EXTENSIONS:
        raise CheckpointError(f"{path}: unsupported checkpoint extension {suffix!r}; use one of "
                              f"{', '.join(SUPPORTED_EXTENSIONS)}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise CheckpointError(f"{path} is corrupted (entry {bad} fails its checksum): download it "
                                      "again")
        except zipfile.BadZipFile as err:
            raise CheckpointError(f"{path} is truncated or corrupted ({err}): download it again") from err
    try:
        obj = torch.load(str(path), map_location=device, weights_only=True)
    except (EOFError, RuntimeError, zipfile.BadZipFile) as err:
        msg = str(err)
        if isinstance(err, EOFError) or "failed finding central directory" in msg or "truncated" in msg \
                or "PytorchStreamReader" in msg:
            raise CheckpointError(f"{path} is truncated or corrupted ({size} bytes): download it again"
                                  ) from err
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint: {msg}") from err
    except Exception as err:  # pickle.UnpicklingError and friends: it needs to run code to load
        if type(err).__name__ == "UnpicklingError" or "weights_only" in str(err):
            raise CheckpointError(
                f"{path} refuses to load safely: it contains pickled Python objects beyond tensors, "
                "and this project never runs pickled code. Re-save it as a plain state_dict "
                "(torch.save(model.state_dict(), ...)) or convert it to .safetensors") from err
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint: {err}") from err
    return strip_prefix(_unwrap(obj, path)), {}


def save_safetensors(path: PathLike, state_dict: Mapping[str, torch.Tensor],
                     metadata: Optional[Mapping[str, object]] = None) -> Path:
    """Write ``state_dict`` as ``.safetensors`` with string metadata (non-strings are JSON-encoded).

    Tensors that share storage (e.g. an aliased PReLU) are written as independent copies.
    """
    from safetensors.torch import save_file
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"output must end in .safetensors, got {path.name}")
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def fold_spectral_norm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Replace ``<m>.weight_orig/.weight_u/.weight_v`` by ``<m>.weight`` as eval-mode spectral norm does.

    ``torch.nn.utils.spectral_norm`` in eval mode uses the stored ``u`` and ``v`` without a power
    iteration: ``weight = weight_orig / dot(u, W @ v)`` with ``W = weight_orig.reshape(out, -1)``.
    Other keys pass through unchanged.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_u") or key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_orig"):
            base = key[: -len(".weight_orig")]
            u, v = state_dict.get(base + ".weight_u"), state_dict.get(base + ".weight_v")
            if u is None or v is None:
                raise CheckpointError(f"spectral-norm weight {key} has no matching .weight_u/.weight_v")
            w = value.reshape(value.shape[0], -1)
            sigma = torch.dot(u.to(w.dtype), torch.mv(w, v.to(w.dtype)))
            out[base + ".weight"] = value / sigma
        else:
            out[key] = value
    return out


def check_shapes(want: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], source: str,
                 expects: str = "the model expects") -> None:
    """Raise :class:`CheckpointError` naming the first key whose shape differs (keys absent from
    ``state_dict`` are the caller's business)."""
    for key, value in want.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{source}: key {key} has shape {tuple(state_dict[key].shape)}, {expects} "
                                  f"{tuple(value.shape)}")


def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """One phrase that says what a state dict looks like, for error messages.

    Recognises the official DynaST generator and discriminator, the four StyA2K files (VGG encoder in
    the vgg_normalised.pth layout, A2K, Transform, Decoder), a torchvision-style VGG-19 and our own
    packed StyA2K safetensors; otherwise lists a few keys.
    """
    keys = set(state_dict)
    n = len(keys)

    def has(*names):
        return all(k in keys for k in names)

    def shape(name):
        t = state_dict.get(name)
        return tuple(t.shape) if t is not None else None

    if any(k.startswith("transformer_4.") for k in keys) and any(k.startswith("encoder_q.") for k in keys):
        w = shape("embed_q4.norm_0.mlp_shared.0.weight")
        nc = f", {w[1]} label channels" if w else ""
        return f"a DynaST generator ({n} tensors{nc})"
    if any(k.startswith("discriminator_0.") for k in keys):
        return f"a DynaST multi-scale discriminator ({n} tensors)"
    if any(k.startswith("vgg.") for k in keys) and any(k.startswith("decoder.") for k in keys):
        return f"a packed StyA2K model ({n} tensors)"
    if has("sim_alpha", "sim_beta", "q.weight", "fusion1.weight"):
        return f"a StyA2K A2K module with {shape('q.weight')[0]} channels ({n} tensors)"
    if any(k.startswith("attn_adain_4_1.") for k in keys) and "merge_conv.weight" in keys:
        return f"a StyA2K Transform (relu4_1 + relu5_1 A2K, {n} tensors)"
    if any(k.startswith("decoder_layer_1.") for k in keys):
        skip = shape("decoder_layer_2.1.weight")
        extra = " with the relu3_1 skip input" if skip and skip[1] == 512 else ""
        return f"a StyA2K decoder{extra} ({n} tensors)"
    if has("0.weight") and shape("0.weight") == (3, 3, 1, 1) and has("2.weight"):
        return f"a VGG-19 encoder in the vgg_normalised.pth layout ({n} tensors)"
    if has("features.0.weight") or has("conv1_1.weight"):
        return f"a VGG-19 in torchvision or named-layer layout ({n} tensors)"
    sample = ", ".join(sorted(keys)[:4])
    return f"an unrecognised state dict ({n} tensors; keys like {sample})"
