"""Checkpoints that are written atomically and load without executing code.

A run folder holds ``checkpoints/step_XXXXXXX/`` folders and a ``checkpoints/latest`` pointer. Each
checkpoint folder has ``model.safetensors``, ``ema.safetensors``, ``config.yaml`` and ``state.pt``
(optimizer, step, RNG states; read with ``torch.load(weights_only=True)``, which refuses pickled code).
A checkpoint is first written to a temporary folder and renamed into place, then the pointer is replaced:
a process killed at any moment leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import difflib
import errno
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import AERunConfig, RunConfig, SamplingOverrides, load_ae_config, load_config
from .models import world_model
from .models.autoencoder import Autoencoder, LatentCodec, PixelCodec
from .writer_lock import one_writer


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, unsafe, or does not match the model."""


def _state_dict(model: torch.nn.Module) -> dict:
    model = getattr(model, "module", model)  # unwrap DDP
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: str | os.PathLike, step: int, cfg: RunConfig, model, ema, optimizer, extra: dict,
                    keep: int = 2) -> Path:
    ckpts = Path(run_dir) / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    clean_stale(ckpts)  # a killed or failed writer's leftovers would only take the space this write needs
    final = ckpts / f"step_{step:07d}"
    tmp = ckpts / f".tmp_step_{step:07d}_{os.getpid()}"

    def clean():  # a failed write (a full disk, ...) leaves the previous checkpoint and no partial folder
        shutil.rmtree(tmp, ignore_errors=True)
        (ckpts / "latest.tmp").unlink(missing_ok=True)

    try:
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
    except (OSError, RuntimeError) as e:  # torch.save says a full disk as "RuntimeError: ... unexpected pos"
        clean()
        need = _checkpoint_bytes(model, ema, optimizer)
        free = shutil.disk_usage(ckpts).free
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or free < need:
            raise OSError(errno.ENOSPC, f"No space left on device: the checkpoint of step {step} needs about "
                          f"{need / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free; the previous checkpoint is "
                          f"kept: free some space, then --resume", str(ckpts)) from e
        raise
    finally:
        clean()
    old = sorted(p for p in ckpts.glob("step_*") if p.is_dir() and p != final)
    for p in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _checkpoint_bytes(model, ema, optimizer) -> int:
    """About what a checkpoint of these takes on disk: the weights twice (model, EMA) and the optimizer's state."""
    tensors = [*_state_dict(model).values(), *_state_dict(ema).values()]
    tensors += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def clean_stale(ckpts: Path) -> None:
    """Remove the temporary folders and pointer of writers that were killed (or failed) mid-write."""
    for stale in ckpts.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    (ckpts / "latest.tmp").unlink(missing_ok=True)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder (-> its latest checkpoint), a checkpoint folder, a folder in the Hugging Face layout
    (``config.json`` + ``model.safetensors``), the name of shipped weights (``maze-small``) or a Hugging Face Hub
    repo id (``user/repo``, downloaded when ``huggingface_hub`` is installed and the machine is online)."""
    pretrained = resolve_pretrained(path)
    if pretrained is not None:
        return pretrained
    path = Path(path)
    if not path.exists():
        shipped = list(shipped_weights())
        close = difflib.get_close_matches(str(path), shipped, n=1)
        hint = (f"; did you mean the shipped weights {close[0]!r}?" if close
                else f"; shipped weights: {', '.join(shipped)}" if shipped else "")
        raise CheckpointError(f"{path}: no such run, checkpoint or weights folder{hint}")
    if (path / "model.safetensors").exists():
        return path
    pointer = path / "checkpoints" / "latest"
    if pointer.exists():
        try:
            name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as e:
            raise CheckpointError(f"{pointer}: unreadable: {e.strerror or e}") from e
        if not re.fullmatch(r"step_\d{1,12}", name):  # a plain folder name: never a path out of the run
            raise CheckpointError(f"{pointer}: must name a checkpoint folder step_<N> inside {pointer.parent}, got "
                                  f"{name[:80]!r}")
        ckpt = path / "checkpoints" / name
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
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{file}: tensors with NaN or infinite values: {bad[:8]}{' ...' if len(bad) > 8 else ''}"
                              f" (the run diverged before this checkpoint, or the file is damaged)")
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


def checkpoint_config(ckpt: Path) -> RunConfig:
    """The run config of a checkpoint folder (``config.yaml``) or of weights in the Hugging Face layout
    (``config.json``); ``ckpt`` as :func:`find_checkpoint` returns it."""
    return load_pretrained_config(ckpt) if is_pretrained(ckpt) else load_config(ckpt / "config.yaml")


def load_model(path: str | os.PathLike, ema: bool = True, device="cpu"):
    """Build the model described by a checkpoint and load its (EMA) weights. Returns (model, cfg, ckpt)."""
    from .models.world_model import WorldModel

    ckpt = find_checkpoint(path)
    cfg = checkpoint_config(ckpt)
    if is_pretrained(ckpt):  # one set of weights (the EMA's, when saved from a run)
        weights = ckpt / PRETRAINED_WEIGHTS
        if (ckpt / PRETRAINED_DATA / "meta.json").is_file() and not Path(cfg.train.data or "").is_dir():
            cfg.train.data = str(ckpt / PRETRAINED_DATA)  # the start clips and data description that came along
    else:
        weights = ckpt / ("ema.safetensors" if ema else "model.safetensors")
    model = WorldModel(cfg.model)
    load_weights(model, weights)
    return model.to(device).eval(), cfg, ckpt


# how the model runs, not what it computes: may differ between a run and the weights it starts from
RUNTIME_MODEL_FIELDS = ("gradient_checkpointing", "attn_backend", "attn_chunk")


# what no weight depends on: the scans' step-size init range (the weights replace it) and their chunk length
WEIGHT_FREE_MODEL_FIELDS = ("ssm_dt_init", "ssm_chunk")


def _windows_only(mine: list[dict], theirs: list[dict] | None) -> bool:
    """Whether two layer plans differ only in their attention windows: the same scans, attention in the same
    layers (a window of k frames, or "all", has the same weights whatever k)."""
    return theirs is not None and len(mine) == len(theirs) and all(
        a["ssm"] == b["ssm"] and (a["attn"] is None) == (b["attn"] is None) for a, b in zip(mine, theirs))


def architecture_differences(mine, theirs, same_weights_ok: bool = False) -> list[str]:
    """The model config fields (``ModelConfig``) in which two models differ, apart from how they run. With
    ``same_weights_ok`` (fine-tuning), also apart from what the weights do not depend on: the attention windows
    (:func:`_windows_only`) and :data:`WEIGHT_FREE_MODEL_FIELDS`."""
    from dataclasses import asdict

    a, b = asdict(mine), asdict(theirs)

    def weight_free(k: str) -> bool:
        return k in WEIGHT_FREE_MODEL_FIELDS or k == "layers" and _windows_only(a[k], b.get(k))

    return [f"model.{k}: {a[k]!r} here, {b.get(k)!r} in the weights" for k in a
            if k not in RUNTIME_MODEL_FIELDS and a[k] != b.get(k) and not (same_weights_ok and weight_free(k))]


def init_from(model: torch.nn.Module, ema: torch.nn.Module, cfg: RunConfig, source: str | os.PathLike) -> Path:
    """Fine-tuning (``train.init``): copy the EMA weights of ``source`` (a run, checkpoint or exported folder, or a
    shipped name) into ``model`` and ``ema``; the architectures must match, except in what no weight depends on
    (the attention windows, the scans' init range and chunk length: each such change is printed as a note).
    Returns the checkpoint folder used."""
    try:
        src, src_cfg, ckpt = load_model(source, ema=True)
    except CheckpointError as e:
        raise CheckpointError(f"train.init: {e}") from e
    diff = architecture_differences(cfg.model, src_cfg.model, same_weights_ok=True)
    if diff:
        raise CheckpointError(f"train.init={source}: its model differs from this run's: " + "; ".join(diff) +
                              " (lssvwm train --init without --config or --preset takes the model of the weights)")
    for change in architecture_differences(cfg.model, src_cfg.model):  # the same weights, used differently
        print(f"note: train.init={source}: {change}", flush=True)
    if cfg.train.autoencoder != src_cfg.train.autoencoder and (cfg.train.autoencoder or src_cfg.train.autoencoder):
        print(f"note: train.init={source} was trained with train.autoencoder={src_cfg.train.autoencoder!r}, this "
              f"run uses {cfg.train.autoencoder!r}", flush=True)
    state = src.state_dict()
    with torch.no_grad():
        for m in (model, ema):
            mine = m.state_dict()
            m.load_state_dict({k: v.to(mine[k].device, mine[k].dtype) for k, v in state.items()})
    return ckpt


# -- the Hugging Face layout: config.json + model.safetensors -------------------------------------------------------
PRETRAINED_CONFIG, PRETRAINED_WEIGHTS = "config.json", "model.safetensors"
PRETRAINED_DATA = "data"  # optional: the training data's meta.json and a few start clips (export_run)
SHIPPED = Path(__file__).resolve().parent / "weights"  # in an installed wheel
SHIPPED_SOURCE = Path(__file__).resolve().parent.parent / "weights"  # in a source checkout


# shipped weights no longer shipped -> what to use instead (weights/README.md keeps their cards)
RETIRED = {"maze-small-v2": "replaced by maze-small-v3 on 2026-12-04 (it beats it on every follow score); "
                            "configs/maze-small-v2-stage1.yaml, -stage2.yaml and maze-small-v2.yaml retrain it"}


def shipped_weights() -> dict[str, Path]:
    """Names of the trained weights that come with lssvwm -> their folders (see weights/README.md)."""
    out: dict[str, Path] = {}
    for root in (SHIPPED, SHIPPED_SOURCE):
        for p in sorted(root.iterdir()) if root.is_dir() else []:
            if is_pretrained(p):
                out.setdefault(p.name, p)
    return out


def is_pretrained(folder: Path) -> bool:
    return (folder / PRETRAINED_CONFIG).is_file() and (folder / PRETRAINED_WEIGHTS).is_file()


def resolve_pretrained(name: str | os.PathLike) -> Path | None:
    """A folder in the Hugging Face layout for ``name`` (a folder, a shipped name, or a hub repo id), or None when
    ``name`` is none of these (then it is a run or checkpoint folder)."""
    path = Path(name)
    if path.is_dir():
        return path if is_pretrained(path) else None
    shipped = shipped_weights()
    if str(name) in shipped:
        return shipped[str(name)]
    if str(name) in RETIRED and not path.exists():
        raise CheckpointError(f"{name}: these shipped weights were {RETIRED[str(name)]}")
    if not path.exists() and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(name)):
        return _download(str(name))
    return None


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise CheckpointError(f"{repo_id}: no such folder or shipped weights ({', '.join(shipped_weights()) or 'none'})"
                              f"; to download it from the Hugging Face Hub, pip install 'lssvwm[hub]'") from e
    try:
        folder = Path(snapshot_download(repo_id=repo_id, allow_patterns=[PRETRAINED_CONFIG, PRETRAINED_WEIGHTS,
                                                                          "README.md"]))
    except Exception as e:  # noqa: BLE001 - offline, no such repo, ...: one message
        raise CheckpointError(f"{repo_id}: could not download from the Hugging Face Hub: "
                              f"{' '.join(str(e).split())[:200]}") from e
    if not is_pretrained(folder):
        raise CheckpointError(f"{repo_id}: the repo has no {PRETRAINED_CONFIG} + {PRETRAINED_WEIGHTS}")
    return folder


def load_pretrained_config(folder: Path) -> RunConfig:
    """The run config saved as ``config.json`` (JSON is YAML: the same checks as a config.yaml)."""
    from .config import ConfigError, config_from_dict, read_yaml

    try:
        return config_from_dict(read_yaml(folder / PRETRAINED_CONFIG))
    except ConfigError as e:
        raise CheckpointError(f"{folder / PRETRAINED_CONFIG}: {e}") from e


def save_pretrained(model: torch.nn.Module, cfg: RunConfig, folder: str | os.PathLike,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` (the whole run config: model, diffusion, sampling defaults, training) and
    ``model.safetensors`` (``dtype``: e.g. torch.bfloat16 to halve the size; loading casts back), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in _state_dict(model).items()}
    tmp = folder / (PRETRAINED_WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "library": "lssvwm"})
    os.replace(tmp, folder / PRETRAINED_WEIGHTS)
    tmp = folder / (PRETRAINED_CONFIG + ".tmp")
    tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    os.replace(tmp, folder / PRETRAINED_CONFIG)
    return folder


def export_run(path: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype | None = torch.bfloat16,
               clips: int = 2, clip_frames: int = 101) -> Path:
    """A run or checkpoint -> a folder in the Hugging Face layout that works without the training data: the EMA
    weights (in ``dtype``), ``config.json`` and, when the run's data is an episode folder, ``data/`` with its
    ``meta.json`` (so the follow benchmark and the memory tasks can rebuild its mazes) and the first
    ``clip_frames`` frames of its last ``clips`` validation episodes (start clips for play and DreamEnv). A second
    export into the same folder at once is refused."""
    from .data.dataset import split_files
    from .data.episodes import episode_files, load_episode, read_meta, save_episode

    model, cfg, _ = load_model(path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a folder")
    with one_writer(out, "model export"):  # one writer per folder
        data = Path(cfg.train.data or "")
        meta = read_meta(data) if data.is_dir() else {}
        if clips > 0 and meta:
            files = split_files(episode_files(data), "val", cfg.train.val_fraction)[-clips:]
            folder = out / PRETRAINED_DATA
            folder.mkdir(parents=True, exist_ok=True)
            for f in files:
                ep = {k: v[:clip_frames] for k, v in load_episode(f).items()}
                save_episode(folder / f.name, ep)
            tmp = folder / "meta.json.tmp"
            tmp.write_text(json.dumps({**meta, "exported_clips": [f.name for f in files], "clip_frames": clip_frames},
                                      indent=2))
            os.replace(tmp, folder / "meta.json")
        return save_pretrained(model, cfg, out, dtype)


def start_clip_split(data: str | os.PathLike) -> str:
    """The split of a data folder to take start clips from: all of a folder exported with weights
    (:func:`export_run`, which holds only start clips), else the validation split."""
    from .data.episodes import read_meta

    return "all" if "exported_clips" in read_meta(data) else "val"


def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a folder in the Hugging Face layout (see :func:`save_pretrained`) to ``repo_id``; returns its URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError as e:
        raise CheckpointError("push_to_hub needs huggingface_hub: pip install 'lssvwm[hub]'") from e
    folder = Path(folder)
    if not is_pretrained(folder):
        raise CheckpointError(f"{folder}: no {PRETRAINED_CONFIG} + {PRETRAINED_WEIGHTS} (use save_pretrained first)")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    return f"https://huggingface.co/{repo_id}"


@dataclass
class Run:
    """A trained world model, ready to use: the model (eval mode), its run config, the frame codec (pixels, or a
    frozen autoencoder's latents) and the checkpoint folder it came from."""

    model: torch.nn.Module
    cfg: RunConfig
    codec: PixelCodec | LatentCodec
    checkpoint: Path

    def sampler(self, overrides: SamplingOverrides | dict | None = None, compile: bool = False, **given):
        """A :class:`~lssvwm.diffusion.Sampler` with the run's sampling settings; ``overrides`` (a
        :class:`~lssvwm.config.SamplingOverrides`) and ``given`` fields (``steps=4``, ...) replace any of them,
        None meaning "the run's setting". ``compile``: the per-frame step through ``torch.compile``."""
        from .diffusion import Sampler

        return Sampler(self.model, SamplingOverrides.of(overrides, **given).apply(self.cfg.sampling), self.codec,
                       compile=compile)

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


world_model.PRETRAINED_IO.update(save=save_pretrained, load=load_model, push=push_to_hub)
