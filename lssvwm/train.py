"""Training the world model: one loop for 1 CPU, 1 GPU, or N processes under ``torchrun`` (DDP; gloo on CPU,
NCCL on GPU) or started here (:func:`train_processes`: N local CPU processes). The machinery it shares with the
autoencoder's loop (seeds, LR schedule, EMA/AdamW step, exact resume, batch sampler, the loop skeleton) is in
:mod:`lssvwm.loop`.

Every step draws its batch and its noise from generators seeded by (seed, step[, clip]); together with the
saved optimizer/EMA state this makes ``--resume`` continue exactly: on CPU the loss sequence after a resume
equals that of an uninterrupted run, and N processes compute what one process does.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import frame_codec, init_from, save_checkpoint
from .config import ConfigError, RunConfig
from .data.dataset import EpisodeWindows
from .diffusion import (action_dropout_mask, diffusion_loss, drop_actions, own_rollout_batch, own_rollout_plan,
                        training_noise)
from .loop import (Loop, StepBatchSampler, autocast_dtype, check_data_folder, device_memory, init_training,
                   optimizer_step, run_cpu_processes, setup_distributed, stable_seed)
from .models.world_model import WorldModel, parameter_count
from .resources import check_fits
from .writer_lock import one_writer


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def training_bytes(cfg, batch: int, clip_len: int) -> float:
    """A lower estimate of a training step's memory: 20 bytes per parameter (weights, gradients, AdamW, EMA) and
    the activations kept for the backward, per token and layer about 4 bytes x (14 d_model + 12 x the SSM's inner
    width (expand x d_model) + 3 x the MLP's hidden width): 200 bytes x d_model at the presets' expand 2 and MLP
    ratio 4, a lower bound of what they take on CPU and GPU (docs/results.md). Every field that scales memory
    enters it, through the parameter count or these widths."""
    grid = cfg.frame_size // cfg.patch_size
    layers = max(1, len(cfg.layers))
    width = 14 * cfg.d_model + 12 * cfg.expand * cfg.d_model + 3 * int(cfg.d_model * cfg.mlp_ratio)
    per_layer = 4.0 * batch * clip_len * grid * grid * width
    acts = per_layer * (2 if cfg.gradient_checkpointing else layers)  # checkpointing keeps about one layer's worth
    return 20.0 * parameter_count(cfg) + acts


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


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train; returns the run folder. ``stop_after`` ends the process-local loop early (tests: a 'kill'). The
    process that writes the run (rank 0) holds the folder for as long as it trains (one writer per run)."""
    cfg.validate()
    rank, world, device = setup_distributed()
    with one_writer(cfg.train.out, "training run") if rank == 0 else contextlib.nullcontext():
        return _train(cfg, resume, progress, stop_after, rank, world, device)


def _check_batch_split(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise ConfigError(f"train.batch_size={batch_size} must be divisible by the number of processes {processes}")


def train_processes(cfg: RunConfig, processes: int = 1, resume: bool = False, progress: bool = True) -> Path:
    """:func:`train` in ``processes`` local CPU processes (:func:`~lssvwm.loop.run_cpu_processes`: DDP over gloo,
    ``train.batch_size`` split between them, this process's threads shared): the run one process makes, at the pace
    of several. ``processes=1``: :func:`train` here. Returns the run folder."""
    if processes == 1:
        return train(cfg, resume, progress)
    cfg.validate()
    _check_batch_split(cfg.train.batch_size, processes)  # before any process starts
    _check_one_process(cfg, processes)
    run_cpu_processes(train, (cfg, resume, progress), processes)
    return Path(cfg.train.out)


def _check_one_process(cfg: RunConfig, world: int) -> None:
    """The settings that train in one process only, checked against ``world`` training processes."""
    if cfg.diffusion.own_rollout_grad and cfg.diffusion.own_rollout_prob > 0 and world > 1:
        raise ConfigError(f"diffusion.own_rollout_grad trains in one process only (DDP's hooks expect one forward "
                          f"per backward), got {world} processes: train without --processes/torchrun or set it "
                          f"to 0")


def _train(cfg: RunConfig, resume: bool, progress: bool, stop_after: int | None, rank: int, world: int,
           device: torch.device) -> Path:
    tc = cfg.train
    run_dir = Path(tc.out)
    check_data_folder(tc, resume)
    ds = EpisodeWindows(tc.data, tc.clip_len, "train", tc.val_fraction, skip_bad=tc.skip_bad_files,
                        layout=tc.data_layout)
    if ds.bad_files and rank == 0:
        print(f"skipped {len(ds.bad_files)} unreadable episode file(s) (train.skip_bad_files=true):\n" +
              "\n".join(f"  {reason}" for _, reason in ds.bad_files), flush=True)
    codec = frame_codec(cfg, device)  # pixels, or the latents of a frozen autoencoder
    check_data_matches(cfg, ds, codec)
    _check_batch_split(tc.batch_size, world)
    _check_one_process(cfg, world)
    per_rank = tc.batch_size // world
    check_fits(f"training (model.d_model={cfg.model.d_model}, {len(cfg.model.layers)} layers, "
               f"train.batch_size={per_rank} per process, train.clip_len={tc.clip_len})",
               training_bytes(cfg.model, per_rank, tc.clip_len),
               "lower train.batch_size or train.clip_len, use a smaller model, or set "
               "model.gradient_checkpointing=true", device_memory(device))
    amp = autocast_dtype(tc, device)

    torch.manual_seed(tc.seed)
    model = WorldModel(cfg.model).to(device)
    ema, opt, start, state = init_training(model, tc, run_dir, resume, truncate_log=rank == 0)
    if state:
        torch.set_rng_state(state["rng_torch"])
    elif tc.init:  # fine-tuning: the weights of another run, a fresh optimizer and schedule
        source = init_from(model, ema, cfg, tc.init)
        if rank == 0:
            print(f"starting from the weights of {source}", flush=True)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        print(f"lssvwm train: {run_dir} | {model.num_params() / 1e6:.2f}M params | {len(ds)} windows | device {device}"
              f" x{world} | autocast {amp}\n{cfg.to_yaml()}", flush=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    fwd = torch.compile(ddp) if tc.compile else ddp  # the training forward; rollouts run the module as it is
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=StepBatchSampler(len(ds), tc.batch_size, tc.seed, start,
                                                                            None, rank, world),  # the loop stops
                                         num_workers=tc.num_workers, persistent_workers=False)
    batches = iter(loader)
    loop = Loop(tc, run_dir, start, opt, "train", progress, rank, world, device, tc.tensorboard, stop_after, state)
    autocast = functools.partial(torch.autocast, device.type, dtype=amp or torch.float32, enabled=amp is not None)
    for step in loop:
        batch = next(batches)  # this rank's slice of global batch `step`
        frames = codec.encode(batch["frames"].to(device))  # (B, T, C, H, W): pixels or latents
        actions = batch["actions"].to(device)  # (B, T)
        if tc.curriculum_steps > 0:  # not from the paper: grow the clip length
            clip_len = max(2, int(round(tc.clip_len * min(1.0, 0.25 + 0.75 * step / tc.curriculum_steps))))
            frames, actions = frames[:, :clip_len], actions[:, :clip_len]
        clip_len = frames.shape[1]  # this step's (train.clip_len, or shorter in the curriculum)
        levels, mask, noise = training_noise((tc.batch_size, *frames.shape[1:]), cfg.diffusion,
                                             torch.Generator().manual_seed(stable_seed(tc.seed, step, 1)))
        plan = own_rollout_plan(clip_len, cfg.diffusion, torch.Generator().manual_seed(stable_seed(tc.seed, step, 3)))
        plan = plan if step >= cfg.diffusion.own_rollout_start else None
        if plan is not None:  # the first n + r frames become context: true, then the model's own rollout
            clip_gens = [torch.Generator().manual_seed(stable_seed(tc.seed, step, 2, i))
                         for i in range(rank * per_rank, (rank + 1) * per_rank)]  # one per clip of the global batch
            with autocast():
                frames, actions, levels, mask = own_rollout_batch(  # global levels and mask
                    ddp, frames, actions, levels, mask, plan, cfg.sampling, clip_gens, codec.value_range,
                    cfg.diffusion.own_rollout_reversed, cfg.diffusion.inverse_actions, cfg.diffusion.own_rollout_grad)
        drop = action_dropout_mask(tc.batch_size, clip_len, cfg.diffusion,
                                   torch.Generator().manual_seed(stable_seed(tc.seed, step, 4)))
        actions = drop_actions(actions, None if drop is None else drop[mine])  # after the own rollout's true actions
        normalizer = float(mask.sum().clamp(min=1)) / world  # DDP averages gradients over ranks
        with autocast():
            loss, stats = diffusion_loss(fwd, frames, actions, levels[mine].to(device), mask[mine].to(device),
                                         noise[mine].to(device), cfg.diffusion, normalizer)
        logged = loss.detach().clone()
        if world > 1:  # the logged loss is the global one
            dist.all_reduce(logged)
            logged /= world
        if not torch.isfinite(logged):  # the all-reduced value: every rank takes the same branch
            if tc.nan_policy == "skip":
                if rank == 0:
                    print(f"step {step}: non-finite loss {loss.item()}, step skipped (train.nan_policy=skip)")
                continue
            raise TrainingDiverged(f"step {step}: loss is {loss.item()}; stopped. The last good checkpoint in "
                                   f"{run_dir / 'checkpoints'} is kept. Lower train.lr or set train.nan_policy=skip.")
        grad_norm = optimizer_step(model, ema, opt, loss, step, tc)
        record = {"loss": logged.item(), "grad_norm": float(grad_norm), **stats}
        if plan is not None:
            record["own_rollout"] = list(plan)
        checkpoint_due = loop.end_step(step, record, frames=tc.batch_size * clip_len)
        if rank == 0:
            if checkpoint_due:
                save_checkpoint(run_dir, step + 1, cfg, model, ema, opt,
                                {"rng_torch": torch.get_rng_state(), **loop.state()})
            if tc.sample_every and (step + 1) % tc.sample_every == 0:
                _sample(ema, cfg, run_dir, step + 1, codec, loop.tb)
        if world > 1:
            dist.barrier()
    loop.close()
    if world > 1 and dist.is_initialized():
        # Every rank past its last write and collective before any tears the group down, and the DDP wrapper (which
        # holds the group) gone first. Without them a rank was seen, twice in CI, to abort at exit ("terminate called
        # without an active exception", SIGABRT) after a run that had trained correctly; with them once more, so the
        # processes of --processes N also skip the interpreter's teardown (loop._cpu_rank). Under torchrun they don't.
        dist.barrier()
        del fwd, ddp
        dist.destroy_process_group()
    return run_dir


def _sample(ema, cfg: RunConfig, run_dir: Path, step: int, codec, tb) -> None:
    """A rollout video of the EMA model; in TensorBoard too, ground truth over the rollout."""
    from .generate import write_sample

    sample = write_sample(ema, cfg, run_dir / "samples" / f"step_{step:07d}.mp4", codec)
    if tb is not None:
        tb.add_image("samples/rollout", sample["image"], step, dataformats="HWC")
        tb.add_scalar("samples/psnr", sample["psnr"], step)
        tb.add_scalar("samples/ssim", sample["ssim"], step)
