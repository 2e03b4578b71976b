"""Checkpoints that are written atomically and load without executing code.

A run folder holds ``checkpoints/step_XXXXXXX/`` folders and a ``checkpoints/latest`` pointer. Each
checkpoint folder has ``model.safetensors``, ``ema.safetensors``, ``config.yaml`` and ``state.pt``
(optimizer, step, RNG states; read with ``torch.load(weights_only=True)``, which refuses pickled code).
A checkpoint is first written to a temporary folder and renamed into place, then the pointer is replaced:
a process killed at any moment leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import AERunConfig, RunConfig, load_ae_config, load_config
from .models.autoencoder import Autoencoder, LatentCodec, PixelCodec


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, unsafe, or does not match the model."""


def _state_dict(model: torch.nn.Module) -> dict:
    model = getattr(model, "module", model)  # unwrap DDP
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: str | os.PathLike, step: int, cfg: RunConfig, model, ema, optimizer, extra: dict,
                    keep: int = 2) -> Path:
    ckpts = Path(run_dir) / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step_{step:07d}"
    tmp = ckpts / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_state_dict(model), tmp / "model.safetensors")
    save_file(_state_dict(ema), tmp / "ema.safetensors")
    cfg.save(tmp / "config.yaml")
    torch.save({"optimizer": optimizer.state_dict(), "step": step, **extra}, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = ckpts / "latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, ckpts / "latest")
    old = sorted(p for p in ckpts.glob("step_*") if p.is_dir() and p != final)
    for p in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    for stale in ckpts.glob(".tmp_step_*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    return final


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder (-> its latest checkpoint) or a checkpoint folder."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    pointer = path / "checkpoints" / "latest"
    if pointer.exists():
        ckpt = path / "checkpoints" / pointer.read_text().strip()
        if (ckpt / "model.safetensors").exists():
            return ckpt
        raise CheckpointError(f"{pointer}: points to {ckpt}, which has no model.safetensors")
    raise CheckpointError(f"{path}: no checkpoint here (expected model.safetensors or checkpoints/latest)")


def load_weights(model: torch.nn.Module, file: str | os.PathLike) -> None:
    """Load safetensors weights, with an error listing missing/unexpected tensors and shape mismatches."""
    try:
        state = load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{file}: cannot read safetensors file: {e}") from e
    own = getattr(model, "module", model).state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:8]))
        raise CheckpointError(f"{file}: does not match the model config: " + "; ".join(parts))
    getattr(model, "module", model).load_state_dict(state)


def load_state(file: str | os.PathLike) -> dict:
    """Training state with ``weights_only=True``: a file carrying pickled code is refused."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{file}: refused: not a weights-only file (it would execute pickled code): "
                              f"{str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read training state: {e}") from e


def load_model(path: str | os.PathLike, ema: bool = True, device="cpu"):
    """Build the model described by a checkpoint and load its (EMA) weights. Returns (model, cfg, ckpt)."""
    from .models.world_model import WorldModel

    ckpt = find_checkpoint(path)
    cfg = load_config(ckpt / "config.yaml")
    model = WorldModel(cfg.model)
    load_weights(model, ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    return model.to(device).eval(), cfg, ckpt


@dataclass
class Run:
    """A trained world model, ready to use: the model (eval mode), its run config, the frame codec (pixels, or a
    frozen autoencoder's latents) and the checkpoint folder it came from."""

    model: torch.nn.Module
    cfg: RunConfig
    codec: PixelCodec | LatentCodec
    checkpoint: Path

    def sampler(self, **overrides):
        """A :class:`~lssvwm.diffusion.Sampler` with the run's sampling settings; ``overrides`` (steps,
        stabilization, schedule, eta, seed) replace any of them, None meaning "the run's setting"."""
        from .diffusion import Sampler

        return Sampler(self.model, self.cfg.sampling.replace(**overrides), self.codec)

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the frames this model shows (decoded frames for a latent model)."""
        return self.codec.pixel_shape(self.cfg.model)


def load_run(path: str | os.PathLike, device="cpu", ema: bool = True) -> Run:
    """A run or checkpoint folder -> :class:`Run` (EMA weights unless ``ema=False``)."""
    model, cfg, ckpt = load_model(path, ema=ema, device=device)
    return Run(model, cfg, frame_codec(cfg, device), ckpt)


def load_autoencoder(path, device="cpu", ema: bool = True) -> tuple[Autoencoder, AERunConfig]:
    """A `lssvwm train-ae` run or checkpoint folder -> (autoencoder in eval mode, its AERunConfig)."""
    ckpt = find_checkpoint(path)
    cfg = load_ae_config(ckpt / "config.yaml")
    ae = Autoencoder(cfg.autoencoder)
    load_weights(ae, ckpt / ("ema.safetensors" if ema else "model.safetensors"))
    return ae.to(device).eval(), cfg


def frame_codec(cfg: RunConfig, device="cpu") -> PixelCodec | LatentCodec:
    """The codec of a world-model run config: latents of ``train.autoencoder`` when set, else pixels."""
    if not cfg.train.autoencoder:
        return PixelCodec()
    ae, _ = load_autoencoder(cfg.train.autoencoder, device=device)
    return LatentCodec(ae)
