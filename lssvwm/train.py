"""Training: one loop for 1 CPU, 1 GPU, or N processes under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU).

Every step draws its batch and its noise from generators seeded by (seed, step[, rank]); together with the
saved optimizer/EMA state this makes ``--resume`` continue exactly: on CPU the loss sequence after a resume
equals that of an uninterrupted run.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import find_checkpoint, frame_codec, load_state, load_weights, save_checkpoint
from .config import ConfigError, RunConfig, check_fits, training_bytes
from .data.dataset import EpisodeWindows
from .diffusion import diffusion_loss, own_rollout_batch, own_rollout_plan, training_noise
from .models.world_model import WorldModel


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        rank = dist.get_rank()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def get_lr(step: int, cfg) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    t = cfg.train
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; never on biases, norms, embeddings' 1-d params, A_log, D, dt_bias."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _seed(*parts: int) -> int:
    """A stable 56-bit seed from integers (independent of Python's hash randomisation)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def check_data_matches(cfg: RunConfig, ds: EpisodeWindows, codec=None) -> None:
    """The model must take what the data (through the codec) gives: frame size, channels, actions."""
    h, w, c = ds.frame_shape
    m = cfg.model
    ae = getattr(codec, "ae", None)
    if ae is not None:
        try:
            h, w, c = ae.cfg.latent_shape(h, w, c)
        except ConfigError as e:
            raise ConfigError(f"{e}; autoencoder: {cfg.train.autoencoder}") from e
        what = f"the autoencoder's latents are {h}x{w}x{c}"
    else:
        what = f"data frames are {h}x{w}x{c}"
    if h != w:
        raise ConfigError(f"{what}: the models here take square frames; crop or resize the data to a square size")
    if (h, w, c) != (m.frame_size, m.frame_size, m.channels):
        raise ConfigError(f"{what} but model.frame_size={m.frame_size}, model.channels={m.channels}: set "
                          f"model.frame_size={h}, model.channels={c} (or regenerate the data)")
    if ds.action_dim:
        if m.action_dim != ds.action_dim:
            raise ConfigError(f"data has continuous {ds.action_dim}-d actions but model.action_dim={m.action_dim}: "
                              f"set model.action_dim={ds.action_dim}")
    elif m.action_dim:
        raise ConfigError(f"data has discrete action ids but model.action_dim={m.action_dim}: set "
                          f"model.action_dim=0, model.num_actions={ds.num_actions}")
    elif ds.layout == "videos" and ds.num_actions > m.num_actions:
        raise ConfigError(f"data uses action ids up to {ds.num_actions - 1} but model.num_actions={m.num_actions}: "
                          f"set model.num_actions={ds.num_actions}")
    elif ds.layout != "videos" and ds.num_actions != m.num_actions:
        raise ConfigError(f"data has {ds.num_actions} actions but model.num_actions={m.num_actions}: "
                          f"set model.num_actions={ds.num_actions}")


def init_training(model: torch.nn.Module, t, run: Path, resume: bool, truncate_log: bool = True):
    """EMA copy and AdamW for ``model``; with ``resume``, both (and the model) from the run's latest checkpoint.

    Returns (ema, optimizer, start step, saved state or None). A run folder that already holds a checkpoint is
    refused without ``resume``, so a finished run is never overwritten by accident."""
    ema, opt = ema_and_optimizer(model, t)
    has_ckpt = (run / "checkpoints" / "latest").exists()
    if has_ckpt and not resume:
        raise ConfigError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if not has_ckpt:
        return ema, opt, 0, None
    ckpt = find_checkpoint(run)
    load_weights(model, ckpt / "model.safetensors")
    load_weights(ema, ckpt / "ema.safetensors")
    state = load_state(ckpt / "state.pt")
    opt.load_state_dict(state["optimizer"])
    start = int(state["step"])
    if truncate_log:
        _truncate_log(run / "log.jsonl", start)
    return ema, opt, start, state


def ema_and_optimizer(model: torch.nn.Module, t) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A fresh EMA copy of ``model`` and its AdamW (no weight decay on biases, norms and SSM parameters)."""
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    return ema, torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.99))


def optimizer_step(model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   step: int, t) -> torch.Tensor:
    """One update of the training loops: backward, gradient clipping, AdamW, EMA. Returns the gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    opt.step()
    ema_update(ema, model, step, t.ema_decay)
    return grad_norm


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA of the weights, with a warmup of the decay (``(1 + step) / (10 + step)``) so early EMA tracks."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


def device_memory(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None on the CPU: the machine's available memory is used)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


def autocast_dtype(cfg: RunConfig, device: torch.device):
    if cfg.train.autocast == "none":
        return None
    if cfg.train.autocast in ("auto", "bf16"):
        return torch.bfloat16
    raise ConfigError(f"train.autocast must be 'auto', 'bf16' or 'none', got {cfg.train.autocast!r}")


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train; returns the run folder. ``stop_after`` ends the process-local loop early (tests: a 'kill')."""
    from tqdm import tqdm

    cfg.validate()
    rank, world, device = setup_distributed()
    t = cfg.train
    run = Path(t.out)
    ds = EpisodeWindows(t.data, t.clip_len, "train", t.val_fraction, skip_bad=t.skip_bad_files,
                        layout=t.data_layout)
    if ds.bad_files and rank == 0:
        print(f"skipped {len(ds.bad_files)} unreadable episode file(s) (train.skip_bad_files=true):\n" +
              "\n".join(f"  {reason}" for _, reason in ds.bad_files), flush=True)
    codec = frame_codec(cfg, device)  # pixels, or the latents of a frozen autoencoder
    check_data_matches(cfg, ds, codec)
    if t.batch_size % world:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by the number of processes {world}")
    check_fits(f"training (model.d_model={cfg.model.d_model}, {len(cfg.model.layers)} layers, "
               f"train.batch_size={t.batch_size // world} per process, train.clip_len={t.clip_len})",
               training_bytes(cfg.model, t.batch_size // world, t.clip_len),
               "lower train.batch_size or train.clip_len, use a smaller model, or set "
               "model.gradient_checkpointing=true", device_memory(device))
    amp = autocast_dtype(cfg, device)

    torch.manual_seed(t.seed)
    model = WorldModel(cfg.model).to(device)
    ema, opt, start, state = init_training(model, t, run, resume, truncate_log=rank == 0)
    if state:
        torch.set_rng_state(state["rng_torch"])

    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        cfg.save(run / "config.yaml")
        print(f"lssvwm train: {run} | {model.num_params() / 1e6:.2f}M params | {len(ds)} windows | device {device}"
              f" x{world} | autocast {amp}\n{cfg.to_yaml()}", flush=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    log = open(run / "log.jsonl", "a") if rank == 0 else None
    tb = _tensorboard(run) if rank == 0 and t.tensorboard else None
    per_rank = t.batch_size // world
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=StepBatchSampler(len(ds), t.batch_size, t.seed, start,
                                                                            t.steps, rank, world),
                                         num_workers=t.num_workers, persistent_workers=False)
    batches = iter(loader)
    t0 = t_step = time.time()
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=not progress or rank != 0)
    for step in range(start, t.steps):
        lr = get_lr(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(batches)  # this rank's slice of global batch `step`
        frames = codec.encode(batch["frames"].to(device))  # (B, T, C, H, W): pixels or latents
        actions = batch["actions"].to(device)  # (B, T)
        if t.curriculum_steps > 0:  # not from the paper: grow the clip length
            frac = min(1.0, 0.25 + 0.75 * step / t.curriculum_steps)
            length = max(2, int(round(t.clip_len * frac)))
            frames, actions = frames[:, :length], actions[:, :length]
        gen = torch.Generator().manual_seed(_seed(t.seed, step, 1))
        levels, mask, noise = training_noise((t.batch_size,) + tuple(frames.shape[1:]), cfg.diffusion, gen)
        plan = own_rollout_plan(frames.shape[1], cfg.diffusion, torch.Generator().manual_seed(_seed(t.seed, step, 3)))
        plan = plan if step >= cfg.diffusion.own_rollout_start else None
        if plan is not None:  # the first n + r frames become context: true, then the model's own rollout
            clip_gens = [torch.Generator().manual_seed(_seed(t.seed, step, 2, i))
                         for i in range(rank * per_rank, (rank + 1) * per_rank)]  # one per clip of the global batch
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                frames, levels, mask = own_rollout_batch(ddp, frames, actions, levels, mask, plan, cfg.sampling,
                                                         clip_gens, codec.value_range)  # global levels and mask
        normalizer = float(mask.sum().clamp(min=1)) / world  # DDP averages gradients over ranks
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, stats = diffusion_loss(ddp, frames, actions, levels[mine].to(device), mask[mine].to(device),
                                         noise[mine].to(device), cfg.diffusion, normalizer)
        if world > 1:  # the logged loss is the global one
            logged = loss.detach().clone()
            dist.all_reduce(logged)
            logged /= world
        else:
            logged = loss.detach()
        if not torch.isfinite(logged):  # the all-reduced value: every rank takes the same branch
            if t.nan_policy == "skip":
                if rank == 0:
                    print(f"step {step}: non-finite loss {loss.item()}, step skipped (train.nan_policy=skip)")
                continue
            raise TrainingDiverged(f"step {step}: loss is {loss.item()}; stopped. The last good checkpoint in "
                                   f"{run / 'checkpoints'} is kept. Lower train.lr or set train.nan_policy=skip.")
        grad_norm = optimizer_step(model, ema, opt, loss, step, t)
        step_s, t_step = time.time() - t_step, time.time()
        elapsed = time.time() - t0
        out_of_time = t.max_minutes > 0 and elapsed > 60 * t.max_minutes
        if world > 1:  # every rank must stop at the same step
            flag = torch.tensor(float(out_of_time), device=device)
            dist.broadcast(flag, 0)
            out_of_time = bool(flag.item())
        last = step + 1 == t.steps or out_of_time
        if rank == 0:
            rec = {"step": step + 1, "loss": logged.item(), "lr": lr, "grad_norm": float(grad_norm),
                   "time": round(elapsed, 3), "frames_per_s": round(t.batch_size * frames.shape[1] / step_s, 2),
                   **stats}
            if plan is not None:
                rec["own_rollout"] = list(plan)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if tb is not None:
                for key, value in rec.items():
                    if key != "step" and isinstance(value, (int, float)):
                        tb.add_scalar(f"train/{key}", value, step + 1)
            bar.update()
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.1e}")
            if (step + 1) % t.ckpt_every == 0 or last:
                save_checkpoint(run, step + 1, cfg, model, ema, opt, {"rng_torch": torch.get_rng_state()})
            if t.sample_every and (step + 1) % t.sample_every == 0:
                from .generate import write_sample
                sample = write_sample(ema, cfg, run / "samples" / f"step_{step + 1:07d}.mp4", codec)
                if tb is not None:  # ground truth over the EMA model's rollout
                    tb.add_image("samples/rollout", sample["image"], step + 1, dataformats="HWC")
                    tb.add_scalar("samples/psnr", sample["psnr"], step + 1)
                    tb.add_scalar("samples/ssim", sample["ssim"], step + 1)
        if world > 1:
            dist.barrier()
        if out_of_time or (stop_after is not None and step + 1 - start >= stop_after):
            break
    bar.close()
    if log:
        log.close()
    if tb is not None:
        tb.close()
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return run


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start .. steps-1``, this rank's slice of each global batch (see batch_indices).

    Batches depend only on (seed, step), so DataLoader workers, any number of ranks and a resume all see
    exactly the windows an uninterrupted single process would."""

    def __init__(self, n: int, batch: int, seed: int, start: int, steps: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.start, self.steps = n, batch, seed, start, steps
        self.rank, self.per_rank = rank, batch // world

    def __iter__(self):
        for step in range(self.start, self.steps):
            idx = batch_indices(step, self.n, self.batch, self.seed)
            yield idx[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].tolist()

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def batch_indices(step: int, n: int, batch: int, seed: int) -> torch.Tensor:
    """Window indices of global batch ``step``: consecutive slices of one random permutation of the ``n``
    windows per epoch, so within an epoch no window repeats or is skipped, however many ranks share it."""
    pos = torch.arange(step * batch, (step + 1) * batch)
    epochs = pos // n
    out = torch.empty(batch, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, "epoch", e)))
        sel = epochs == e
        out[sel] = perm[pos[sel] % n]
    return out


def _truncate_log(log: Path, step: int) -> None:
    """Drop log records after the checkpoint we resume from (a killed run may have logged a few more)."""
    if not log.exists():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a line cut short by the kill
    tmp = log.with_name(log.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, log)


def _tensorboard(run: Path):
    """A TensorBoard writer in RUN/tensorboard (train.tensorboard); the JSONL log is always written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install 'lssvwm[tensorboard]'"
                          ) from e
    return SummaryWriter(str(run / "tensorboard"))
