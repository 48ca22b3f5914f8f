"""Trainers for DynaST and StyA2K: one code path for a single process and for ``torchrun``.

* Distributed: when ``WORLD_SIZE > 1`` the process group is initialised from the environment (``env://``;
  NCCL on CUDA, gloo on CPU), the networks are wrapped in ``DistributedDataParallel`` and every rank reads its
  own share of each epoch (:class:`~dynast_core.training.data.ResumableSampler`). ``batch_size`` is per
  process. Only rank 0 shows the progress bar, writes samples and checkpoints.
* Seeds: networks are initialised from ``seed`` (identically on every rank; DDP also broadcasts rank 0's
  weights), data order and augmentation from ``(seed, epoch, position)``.
* Mixed precision (``amp=True``): ``torch.autocast`` around the network forwards (float16 on CUDA, bfloat16
  on CPU), losses in float32; ``GradScaler`` on CUDA only.
* Checkpoints, ``OUT/checkpoints/step_NNNNNNN/``: weights as ``.safetensors`` (DynaST: ``generator.safetensors``
  written by :func:`save_dynast_safetensors`, loadable by :func:`load_dynast`; ``discriminator.safetensors``
  in the official key layout. StyA2K: ``stya2k.safetensors`` by :func:`save_stya2k_safetensors`, loadable by
  :func:`load_stya2k`) and ``train_state.pt`` (step, optimizer and scaler states, RNG states: plain tensors and
  containers, read back with ``torch.load(weights_only=True)``). ``OUT/checkpoints/latest`` names the newest.
  Resuming restores all of it, so the run continues exactly as if uninterrupted (same seed and options).
* ``OUT/losses.jsonl``: one line of losses per step (rank 0). ``OUT/samples/step_NNNNNNN.png``: sample grids.
* On CPU, denormal floats are flushed to zero (``flush_denormal``): the official small initialisations
  otherwise make CPU steps up to 30x slower.
* ``write_checksums``: at the end every rank writes ``OUT/checksums/rank{r}.json`` (SHA-256 of its weights), to
  check that the ranks agree.

The DynaST generator is trained, as officially, with spectral norm on the encoder convs and the SPADE
residual blocks' convs (the official file's ``weight_orig`` keys); the saved generator keeps the
``weight_orig/_u/_v`` tensors, which :func:`load_dynast` folds exactly as eval-mode spectral norm does.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from ..checkpoints import CheckpointError, check_shapes, read_state_dict, save_safetensors
from ..models.dynast import DynaSTConfig, DynaSTGenerator, save_dynast_safetensors
from ..models.stya2k import REGIONS, StyA2K, save_stya2k_safetensors
from .data import ResumableSampler
from .discriminator import MultiscaleDiscriminator, init_weights
from .losses import DynaSTCriterion, DynaSTLossWeights, StyA2KCriterion, StyA2KLossWeights, VGG19Features

__all__ = ["TrainOptions", "DynaSTTrainer", "StyA2KTrainer", "apply_generator_spectral_norm",
           "weights_checksum", "latest_checkpoint"]


@dataclass
class TrainOptions:
    """Options shared by both trainers (``lr=None``: the trainer's official default)."""

    out_dir: str = "runs/train"
    steps: int = 1000
    batch_size: int = 1
    lr: Optional[float] = None
    seed: int = 0
    amp: bool = False
    sample_every: int = 500
    save_every: int = 1000
    num_workers: int = 0
    device: str = "auto"
    #: False, True (latest checkpoint in out_dir) or a checkpoint folder
    resume: Union[bool, str] = False
    progress: bool = True
    write_checksums: bool = False
    #: CPU only: flush denormal floats to zero (the small initial weights give denormal activations that make
    #: CPU training many times slower; this is process-wide, set by the trainer)
    flush_denormal: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "sample_every", "save_every"):
            if int(getattr(self, name)) < (0 if name in ("sample_every", "save_every") else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


# ---------------------------------------------------------------------------------------------- helpers
_SN_PATTERN = re.compile(r"^(encoder_(q|kv)\.layer\d+\.0|embed_\w+\.conv_[01])$")


def apply_generator_spectral_norm(gen: DynaSTGenerator) -> List[str]:
    """Spectral norm (hook style) on the convs the official generator normalises; returns their names."""
    names = []
    for name, m in list(gen.named_modules()):
        if isinstance(m, nn.Conv2d) and _SN_PATTERN.match(name) and not hasattr(m, "weight_orig"):
            nn.utils.spectral_norm(m)
            names.append(name)
    return names


def weights_checksum(module: nn.Module, buffers: bool = False) -> str:
    """SHA-256 over the parameters (and buffers) in name order."""
    h = hashlib.sha256()
    items = list(module.named_parameters()) + (list(module.named_buffers()) if buffers else [])
    for name, t in sorted(items, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def latest_checkpoint(out_dir: Union[str, os.PathLike]) -> Optional[Path]:
    p = Path(out_dir) / "checkpoints" / "latest"
    if p.is_file():
        d = p.parent / p.read_text().strip()
        if d.is_dir():
            return d
    steps = sorted((Path(out_dir) / "checkpoints").glob("step_*[0-9]"))
    return steps[-1] if steps else None


def _rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                    "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    v, keys, _ = st["python"]
    random.setstate((v, tuple(keys), None))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class _GenStep(nn.Module):
    """What DDP wraps for DynaST: the generator forward with the warp branch, as plain tensors."""

    def __init__(self, gen: DynaSTGenerator, warp_exclude: str):
        super().__init__()
        self.gen, self.warp_exclude = gen, warp_exclude

    def forward(self, label, ref, label_ref):
        m = self.gen.match(label, ref, label_ref, warp_exemplar=True, warp_exclude=self.warp_exclude)
        return self.gen.decode(m), list(m.warped)


class _StyA2KStep(nn.Module):
    """What DDP wraps for StyA2K: frozen encoder, the three trainable parts, the decoder output."""

    def __init__(self, model: StyA2K):
        super().__init__()
        self.model = model

    def forward(self, content, style):
        m = self.model
        with torch.no_grad():
            c, s = m.vgg(content), m.vgg(style)
        cs = m.transform(c[3], s[3], c[4], s[4])
        skip = m.a2k(c[2], s[2], REGIONS[3]) if m.config.skip3 else None
        return m.decoder(cs, skip), c, s


# ---------------------------------------------------------------------------------------------- base
class _Trainer:
    default_lr = 1e-4
    name = "trainer"

    def __init__(self, options: TrainOptions):
        self.opt = options
        self.out = Path(options.out_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._own_group = False
        if options.device == "auto":
            use_cuda = torch.cuda.is_available()
            self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        else:
            self.device = torch.device(options.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        elif options.flush_denormal:
            torch.set_flush_denormal(True)
        if self.world > 1 and not (dist.is_available() and dist.is_initialized()):
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, init_method="env://")
            self._own_group = True
        if self.world > 1:
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.lr = options.lr if options.lr is not None else self.default_lr
        self.step = 0
        self.history: List[Dict[str, float]] = []
        _seed_all(options.seed)

    # -- hooks for subclasses
    def train_step(self, batch) -> Dict[str, float]:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError

    def save_weights(self, folder: Path) -> None:
        raise NotImplementedError

    def load_weights(self, folder: Path) -> None:
        raise NotImplementedError

    def load_state(self, st: dict) -> None:
        raise NotImplementedError

    def sample_grid(self, batch, outputs) -> Optional[torch.Tensor]:
        return None

    def weight_modules(self) -> Dict[str, nn.Module]:
        raise NotImplementedError

    # -- common
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _ddp(self, module: nn.Module) -> nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=True)

    def autocast(self):
        if not self.opt.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _scaler(self):
        return torch.amp.GradScaler("cuda", enabled=self.opt.amp and self.device.type == "cuda")

    def _barrier(self):
        if self.world > 1:
            dist.barrier()

    def make_loader(self, dataset) -> DataLoader:
        sampler = ResumableSampler(len(dataset), seed=self.opt.seed, rank=self.rank, world_size=self.world,
                                   start=self.step * self.opt.batch_size)
        return DataLoader(dataset, batch_size=self.opt.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.opt.num_workers, pin_memory=self.device.type == "cuda")

    def save_checkpoint(self) -> Optional[Path]:
        """Write the checkpoint of the current step (rank 0); returns its folder."""
        folder = None
        if self.is_main:
            root = self.out / "checkpoints"
            folder = root / f"step_{self.step:07d}"
            tmp = root / (folder.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            self.save_weights(tmp)
            st = self.state()
            st.update({"step": self.step, "rng": _rng_state(), "trainer": self.name,
                       "options": json.dumps(asdict(self.opt))})
            torch.save(st, tmp / "train_state.pt")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
            (root / "latest").write_text(folder.name)
        self._barrier()
        return folder

    def resume(self, where: Union[bool, str, os.PathLike]) -> None:
        folder = latest_checkpoint(self.out) if where is True else Path(where)
        if folder is None:
            raise ValueError(f"--resume: no checkpoint found under {self.out / 'checkpoints'}; train without "
                             "--resume first, or pass the checkpoint folder")
        if not (folder / "train_state.pt").is_file():
            raise ValueError(f"--resume: {folder} is not a checkpoint folder (train_state.pt is missing)")
        try:
            st = torch.load(folder / "train_state.pt", map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{folder / 'train_state.pt'}: cannot be read safely ({err})") from None
        if st.get("trainer") != self.name:
            raise ValueError(f"--resume: {folder} was written by the {st.get('trainer')} trainer, not {self.name}")
        self.load_weights(folder)
        self.load_state(st)
        self.step = int(st["step"])
        _set_rng_state(st["rng"])

    def write_checksums(self) -> Path:
        d = self.out / "checksums"
        d.mkdir(parents=True, exist_ok=True)
        info = {"rank": self.rank, "step": self.step}
        for k, m in self.weight_modules().items():
            info[k] = weights_checksum(m)
        p = d / f"rank{self.rank}.json"
        p.write_text(json.dumps(info, indent=1))
        return p

    def _log(self, losses: Dict[str, float]) -> None:
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "losses.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **losses}) + "\n")

    def _save_samples(self, batch, outputs) -> None:
        if not self.is_main:
            return
        grid = self.sample_grid(batch, outputs)
        if grid is not None:
            from ..imageio import save_image
            save_image(grid, self.out / "samples" / f"step_{self.step:07d}.png")

    def train(self, dataset) -> List[Dict[str, float]]:
        """Train up to ``options.steps`` (resuming first if asked); returns the losses of the steps run."""
        if self.opt.resume:
            self.resume(self.opt.resume)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        if len(dataset) < self.opt.batch_size * self.world and self.is_main:
            import warnings
            warnings.warn(f"the dataset has {len(dataset)} samples, fewer than one global batch: samples repeat")
        loader = self.make_loader(dataset)
        bar = None
        if self.is_main and self.opt.progress and self.step < self.opt.steps:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.opt.steps, initial=self.step, desc=f"train {self.name}", dynamic_ncols=True)
        last_saved = self.step
        run: List[Dict[str, float]] = []
        try:
            it = iter(loader)
            while self.step < self.opt.steps:
                batch = _to(next(it), self.device)
                t0 = time.perf_counter()
                losses, outputs = self.train_step(batch)
                self.step += 1
                losses["sec"] = time.perf_counter() - t0
                run.append(losses)
                self.history.append(losses)
                self._log(losses)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k != "sec"}, refresh=False)
                if self.opt.sample_every and self.step % self.opt.sample_every == 0:
                    self._save_samples(batch, outputs)
                if self.opt.save_every and self.step % self.opt.save_every == 0:
                    self.save_checkpoint()
                    last_saved = self.step
            if last_saved != self.step:
                self.save_checkpoint()
            if self.opt.write_checksums:
                self.write_checksums()
        finally:
            if bar is not None:
                bar.close()
            self.close()
        return run

    def close(self) -> None:
        if self._own_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self._own_group = False


# ---------------------------------------------------------------------------------------------- DynaST
class DynaSTTrainer(_Trainer):
    """Adversarial training of :class:`DynaSTGenerator` with the official objective and TTUR Adam
    (betas (0, 0.9); generator lr/2 with eps 1e-3, discriminator lr*2 with eps 1e-8; official lr 1e-4).

    Args:
        config: generator architecture (e.g. ``dynast_config('deepfashion')``).
        vgg: frozen :class:`VGG19Features` for the perceptual terms (see :func:`load_vgg19`).
        loss_weights: :class:`DynaSTLossWeights` (``mode='unsupervised'`` for style-transfer pairs).
        ndf, n_layers_D, num_D: discriminator size (official 64, 4, 2).
        spectral_norm: train the generator with the official spectral norm (default True).
        init_generator: optional generator checkpoint (anything :func:`load_dynast` reads) to start from.
    """

    name = "dynast"
    default_lr = 1e-4

    def __init__(self, config: DynaSTConfig, vgg: VGG19Features, options: Optional[TrainOptions] = None,
                 loss_weights: Optional[DynaSTLossWeights] = None, ndf: int = 64, n_layers_D: int = 4,
                 num_D: int = 2, spectral_norm: bool = True, init_type: str = "xavier",
                 init_generator=None):
        super().__init__(options or TrainOptions())
        self.config = config
        self.weights = loss_weights or DynaSTLossWeights()
        gen = DynaSTGenerator(config)
        if spectral_norm:
            apply_generator_spectral_norm(gen)
        init_weights(gen, init_type, 0.02)
        if init_generator is not None:
            self._load_generator_init(gen, init_generator)
        self.disc_config = {"label_nc": config.semantic_nc, "ndf": ndf, "n_layers_D": n_layers_D, "num_D": num_D}
        disc = init_weights(MultiscaleDiscriminator(**self.disc_config), init_type, 0.02)
        if self.device.type == "cuda" and self.world > 1:
            gen = nn.SyncBatchNorm.convert_sync_batchnorm(gen)
        self.gen, self.disc = gen.to(self.device), disc.to(self.device)
        self.vgg = vgg.to(self.device).eval()
        self.criterion = DynaSTCriterion(self.vgg, self.weights)
        self.gen_step = self._ddp(_GenStep(self.gen, self.weights.warp_exclude))
        self.disc_ddp = self._ddp(self.disc)
        g_params = [p for p in self.gen.parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(g_params, lr=self.lr / 2, betas=(0.0, 0.9), eps=1e-3)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=self.lr * 2, betas=(0.0, 0.9))
        self.scaler_g, self.scaler_d = self._scaler(), self._scaler()

    @staticmethod
    def _fill_shared(sd: Dict[str, torch.Tensor], want) -> Dict[str, torch.Tensor]:
        sd = dict(sd)
        for k in want:
            if k.endswith(".model.2.weight") and k not in sd:
                alt = k[: -len("model.2.weight")] + "relu.weight"
                if alt in sd:
                    sd[k] = sd[alt]
        return sd

    def _load_generator_init(self, gen: DynaSTGenerator, src) -> None:
        sd = src if isinstance(src, dict) else read_state_dict(src)[0]
        sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
        want = gen.state_dict()
        if any(k.endswith(".weight_orig") for k in sd):
            sd = self._fill_shared(sd, want)
        else:   # folded weights: use them as weight_orig (sigma ~ 1); u, v converge in a few steps
            sd = {(k[:-len(".weight")] + ".weight_orig" if k[:-len(".weight")] + ".weight_orig" in want else k): v
                  for k, v in sd.items()}
            sd = self._fill_shared(sd, want)
            for k in want:
                if (k.endswith(".weight_u") or k.endswith(".weight_v")) and k not in sd:
                    sd[k] = want[k]
        missing = [k for k in want if k not in sd]
        if missing:
            raise CheckpointError(f"{src}: not a generator for this config ({len(missing)} keys missing, e.g. "
                                  f"{missing[:2]})")
        check_shapes(want, sd, str(src), "the config expects")
        gen.load_state_dict({k: sd[k] for k in want})

    def weight_modules(self):
        return {"generator": self.gen, "discriminator": self.disc}

    @property
    def min_size(self) -> int:
        """Smallest training side the discriminator accepts (its coarsest instance norm needs > 1 pixel)."""
        return 3 * 2 ** (self.disc_config["num_D"] - 1 + self.disc_config["n_layers_D"] - 1)

    def train_step(self, batch):
        label, image, ref, label_ref = batch["label"], batch["image"], batch["ref"], batch["label_ref"]
        if min(image.shape[-2:]) < self.min_size:
            raise ValueError(f"training images are {image.shape[-1]}x{image.shape[-2]}: the discriminator "
                             f"(num_D={self.disc_config['num_D']}, n_layers_D={self.disc_config['n_layers_D']}) "
                             f"needs at least {self.min_size} pixels per side; use a larger --size")
        self.gen.train()
        self.disc.train()
        # generator
        for p in self.disc.parameters():
            p.requires_grad_(False)
        with self.autocast():
            fake, warped = self.gen_step(label, ref, label_ref)
        fake = fake.float()
        warped = [w.float() for w in warped]
        g_losses = self.criterion.generator_losses(fake, warped, batch, self.disc, self.autocast)
        g_total = sum(g_losses.values())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(g_total).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        for p in self.disc.parameters():
            p.requires_grad_(True)
        # discriminator
        d_losses = self.criterion.discriminator_losses(self.disc_ddp, label, fake.detach(), image, self.autocast)
        d_total = sum(d_losses.values())
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(d_total).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        out = {k: float(v.detach()) for k, v in {**g_losses, **d_losses}.items()}
        out["g_total"], out["d_total"] = float(g_total.detach()), float(d_total.detach())
        return out, {"fake": fake.detach(), "warped": [w.detach() for w in warped]}

    def sample_grid(self, batch, outputs):
        from ..conditioning import label_preview
        from ..demo import contact_sheet
        f = lambda t: ((t[:1].float().cpu() + 1) / 2).clamp(0, 1)  # noqa: E731
        items = {"label": label_preview(batch["label"][:1].float().cpu()), "exemplar": f(batch["ref"]),
                 "exemplar label": label_preview(batch["label_ref"][:1].float().cpu())}
        if outputs["warped"]:
            items["warped (last block)"] = f(outputs["warped"][-1])
        items["output"] = f(outputs["fake"])
        items["ground truth"] = f(batch["image"])
        return contact_sheet(items, columns=3, cell=min(256, batch["image"].shape[-1] * 2))

    def save_weights(self, folder: Path) -> None:
        save_dynast_safetensors(self.gen, folder / "generator.safetensors")
        save_safetensors(folder / "discriminator.safetensors", self.disc.state_dict(),
                         {"format": "dynast_core.MultiscaleDiscriminator", "config": self.disc_config})

    def load_weights(self, folder: Path) -> None:
        sd, _ = read_state_dict(folder / "generator.safetensors")
        self.gen.load_state_dict(self._fill_shared(sd, self.gen.state_dict()), strict=True)
        sd, _ = read_state_dict(folder / "discriminator.safetensors")
        self.disc.load_state_dict(sd, strict=True)

    def state(self):
        return {"optimizer_g": self.opt_g.state_dict(), "optimizer_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
                "config": json.dumps(asdict(self.config)), "loss_weights": json.dumps(asdict(self.weights))}

    def load_state(self, st):
        if json.loads(st["config"]) != asdict(self.config):
            raise ValueError(f"--resume: the checkpoint was trained with config {st['config']}, not "
                             f"{json.dumps(asdict(self.config))}")
        self.opt_g.load_state_dict(st["optimizer_g"])
        self.opt_d.load_state_dict(st["optimizer_d"])
        if st.get("scaler_g"):
            self.scaler_g.load_state_dict(st["scaler_g"])
        if st.get("scaler_d"):
            self.scaler_d.load_state_dict(st["scaler_d"])

    def generator(self) -> DynaSTGenerator:
        return self.gen


# ---------------------------------------------------------------------------------------------- StyA2K
class StyA2KTrainer(_Trainer):
    """Training of StyA2K's A2K (relu3_1), Transform and decoder with the official losses; the VGG encoder
    (``vgg_normalised.pth``) is frozen. Adam with PyTorch's default betas, official lr 2e-4 (no decay here).

    Args:
        vgg_state: the encoder weights (a ``vgg_normalised.pth`` state dict) or a path to the file.
        init_from: optional StyA2K weights to fine-tune (anything :func:`load_stya2k` reads as one path).
    """

    name = "stya2k"
    default_lr = 2e-4

    def __init__(self, vgg_state, options: Optional[TrainOptions] = None,
                 loss_weights: Optional[StyA2KLossWeights] = None, init_type: str = "normal", init_from=None):
        super().__init__(options or TrainOptions())
        model = StyA2K()
        for part in (model.a2k, model.transform, model.decoder):
            init_weights(part, init_type, 0.02)
        sd = vgg_state if isinstance(vgg_state, dict) else read_state_dict(vgg_state)[0]
        want = model.vgg.state_dict()
        if "conv1_1.weight" in sd:
            raise ValueError(f"{vgg_state}: this is the DynaST/CoCosNet vgg19_conv.pth; StyA2K's encoder is "
                             "vgg_normalised.pth (the AdaIN/SANet/StyA2K file, keys 0.weight, 2.weight, ...)")
        missing = [k for k in want if k not in sd]
        if missing:
            raise ValueError(f"{vgg_state}: not vgg_normalised.pth ({len(missing)} encoder keys missing, e.g. "
                             f"{missing[:2]})")
        model.vgg.load_state_dict({k: sd[k] for k in want})
        if init_from is not None:
            from ..models.stya2k import load_stya2k
            src = load_stya2k(init_from)
            for part in ("a2k", "transform", "decoder"):
                getattr(model, part).load_state_dict(getattr(src, part).state_dict())
        self.model = model.to(self.device)
        self.model.vgg.eval()
        self.weights = loss_weights or StyA2KLossWeights()
        self.criterion = StyA2KCriterion(self.model.vgg, self.weights)
        self.step_module = self._ddp(_StyA2KStep(self.model))
        params = [p for part in (model.a2k, model.transform, model.decoder) for p in part.parameters()]
        self.opt_g = torch.optim.Adam(params, lr=self.lr)
        self.scaler = self._scaler()

    def weight_modules(self):
        return {"stya2k": self.model}

    def train_step(self, batch):
        content, style = batch["content"], batch["style"]
        self.model.train()
        self.model.vgg.eval()
        with self.autocast():
            cs, c_feats, s_feats = self.step_module(content, style)
        c_feats = [f.float() for f in c_feats]
        s_feats = [f.float() for f in s_feats]
        losses = self.criterion(cs.float(), c_feats, s_feats)
        total = sum(losses.values())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["total"] = float(total.detach())
        return out, {"stylised": cs.detach()}

    def sample_grid(self, batch, outputs):
        from ..demo import contact_sheet
        f = lambda t: t[:1].float().cpu().clamp(0, 1)  # noqa: E731
        return contact_sheet({"content": f(batch["content"]), "style": f(batch["style"]),
                              "stylised": f(outputs["stylised"])}, columns=3,
                             cell=min(256, batch["content"].shape[-1] * 2))

    def save_weights(self, folder: Path) -> None:
        save_stya2k_safetensors(self.model, folder / "stya2k.safetensors")

    def load_weights(self, folder: Path) -> None:
        sd, _ = read_state_dict(folder / "stya2k.safetensors")
        self.model.load_state_dict(sd, strict=True)

    def state(self):
        return {"optimizer": self.opt_g.state_dict(), "scaler": self.scaler.state_dict(),
                "loss_weights": json.dumps(asdict(self.weights))}

    def load_state(self, st):
        self.opt_g.load_state_dict(st["optimizer"])
        if st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
