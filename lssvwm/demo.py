"""``make demo``: built-in maze data -> train the ``small`` hybrid (at the recipe's width) on CPU for a bounded
time -> the follow benchmark on held-out trajectories, beside the shipped weights -> videos, strips, loss curve,
metrics. Everything lands in one folder, printed at the end."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from .config import DiffusionConfig, RunConfig, SamplingConfig, TrainConfig, model_preset
from .resources import default_device


def _seconds_per_step(cfg: RunConfig) -> float:
    """Time training steps of this config on random data, optimizer and EMA included (the training loop's
    update), to size the run to the time budget. The median of three after a warm-up."""
    from .diffusion import training_loss
    from .models.world_model import WorldModel
    from .loop import autocast_dtype, ema_and_optimizer, optimizer_step

    m = cfg.model
    model = WorldModel(m)
    ema, opt = ema_and_optimizer(model, cfg.train)
    x = torch.randn(cfg.train.batch_size, cfg.train.clip_len, m.channels, m.frame_size, m.frame_size)
    a = torch.randint(0, m.num_actions, x.shape[:2])
    amp = autocast_dtype(cfg.train, torch.device("cpu"))  # as the training loop will use
    times = []
    for i in range(4):
        t = time.time()
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = training_loss(model, x, a, cfg.diffusion)
        optimizer_step(model, ema, opt, loss, i, cfg.train)
        times.append(time.time() - t)
    return sorted(times[1:])[1]


# The demo's recipe: picked side by side on the follow benchmark (docs/recipe.md has the table and the commands).
# d_model: the width of the `small` preset in the demo (a 14-minute CPU budget favours a narrower, faster model);
# other presets keep their own width. prev_frame: off; embedding the previous input frame in each frame's tokens
# paid +0.05 one step ahead on the recipe of 2026-11-24, but on today's (Muon, weight decay 0.1) dropping it scored
# higher on 20 of 24 follow cells (2 seeds x 2 window sets, mean +0.012 SSIM; docs/recipe.md). batch_size: clips per
# step; at equal frames seen, twice the steps at batch 4 beat batch 8 on every follow score (one step ahead +0.06 at
# the demo's budget, 2 seeds at 38 minutes).
# lr: 8e-3 beat 5e-3 at batch 4 on 2 seeds, then 1.2e-2 beat 8e-3 on 2 seeds (docs/recipe.md).
# optimizer: Muon on the hidden matrices beat AdamW one step ahead and over free frames 1-8 on 2 seeds in bf16 on a
# Zen 4 (+0.02 to +0.06 SSIM; free 48 ahead on one, tied on the other), and by far more on an AVX2-only CPU in fp32,
# where it orthogonalises in fp32 (docs/recipe.md, session 30).
# weight_decay: 0.1 beat train.weight_decay's default 0.01 on 2 seeds, with Muon (all six follow scores) and with
# AdamW (11 of 12, the other tied; both in bf16 on a Zen 4; docs/recipe.md).
# sampling.temperature: the sampler's noise scaled down; on the demo's runs every follow score rose on 2 seeds x 2
# window sets, with less speckle on flat walls and somewhat softer frames (docs/recipe.md, session 23); lowered from 0.6
# to 0.3 on the three x0 `make demo` runs (docs/recipe.md, session 27, where the figures are).
# prediction: the network predicts the clean frame (model.prediction "x0") instead of v; the same v-loss and sampler.
# One step ahead and free 48 rose on every cell of `make demo` on 3 seeds, free 1-8 on 2 of the 3 (docs/recipe.md,
# sessions 25-26, where the figures are).
# d_model_fp32: the width where the demo trains in fp32 on a CPU (no fast bf16): on an AVX2-only CPU with Muon, 64
# beat 96 one step ahead on 8 of 8 cells (2 seeds x 2 window sets) and over free frames on 13 of 16 (docs/recipe.md,
# session 30); where it trains in bf16 (a Zen 4, AdamW, 2026-12-04) 64 lost one step ahead and tied free frames.
RECIPE = dict(lr=1.2e-2, window=4, d_model=96, d_model_fp32=64, prev_frame=False, prediction="x0", batch_size=4,
              optimizer="muon", weight_decay=0.1, sampling=dict(steps=4, stabilization=0.0, schedule="edm", temperature=0.3))
SHIPPED = "maze-small-v4"  # the demo's recipe for 100 minutes on the same mazes (weights/README.md), shown beside it


def demo_width() -> int:
    """The recipe's width of ``small`` on this machine: ``d_model`` where the demo trains in bf16 (a GPU, or a CPU
    with fast bf16), ``d_model_fp32`` where it trains in fp32 on a CPU."""
    from .loop import autocast_dtype

    device = default_device()
    fp32_cpu = device.type == "cpu" and autocast_dtype(TrainConfig(), device) is None
    return RECIPE["d_model_fp32"] if fp32_cpu else RECIPE["d_model"]


def demo_model(preset: str = "small", window: int = RECIPE["window"], d_model: int | None = None,
               n_layers: int | None = None):
    """The demo's model: the preset with the recipe's attention window, previous-frame input (off) and prediction
    target (the clean frame), and for ``small`` the recipe's width on this machine (:func:`demo_width`; ``d_model``
    overrides it; other presets keep their own); ``n_layers`` overrides the depth."""
    width = d_model or (demo_width() if preset == "small" else None)
    return model_preset(preset, window=window, n_layers=n_layers, prev_frame=RECIPE["prev_frame"],
                        prediction=RECIPE["prediction"], **({"d_model": width} if width else {}))


def demo_run_config(model_cfg, data, out, minutes: float, lr: float = RECIPE["lr"], seed: int = 0) -> RunConfig:
    """The demo's training run: ``model_cfg`` (:func:`demo_model`) on ``data`` into ``out``, the recipe's batch of
    16-frame clips, weight decay, optimizer and sampler, ``minutes`` with the step count fitted to them
    (train.fit_steps)."""
    return RunConfig(model=model_cfg, diffusion=DiffusionConfig(), sampling=SamplingConfig(**RECIPE["sampling"]),
                     train=TrainConfig(data=str(data), out=str(out), clip_len=16, batch_size=RECIPE["batch_size"],
                                       lr=lr, weight_decay=RECIPE["weight_decay"], warmup=50, ckpt_every=100,
                                       max_minutes=minutes, fit_steps=True, seed=seed, optimizer=RECIPE["optimizer"]))


def demo_processes(batch_size: int, threads: int | None = None) -> int:
    """Training processes for the demo: 2 on a CPU with at least 2 threads (each process half of them; on 2 cores
    two 1-thread processes train the demo's model 1.2x faster than one with both threads, docs/speed.md), 1 on a
    GPU, on one thread or for an odd batch."""
    threads = threads or torch.get_num_threads()
    return 2 if threads >= 2 and batch_size % 2 == 0 and default_device().type == "cpu" else 1


def run_demo(out: str = "runs/demo", minutes: float = 14.0, preset: str = "small", episodes: int = 64,
             steps_per_episode: int = 400, context: int = 32, frames: int = 48, mazes: int = 4,
             lr: float = RECIPE["lr"], window: int = RECIPE["window"], windows: int = 8,
             shipped: str | None = SHIPPED, d_model: int | None = None, n_layers: int | None = None,
             data: str | None = None, seed: int = 0, processes: int | None = None) -> dict:
    """Built-in maze data (episodes cycle through ``mazes`` fixed mazes) -> train the ``small`` hybrid (at the
    recipe's width and the preset's depth, unless ``d_model``, ``n_layers`` or another ``preset`` says otherwise)
    for ``minutes`` on the CPU (training seed ``seed``) -> the
    follow benchmark on held-out trajectories in those mazes and in unseen ones (``context`` true frames, then
    ``frames`` generated), free and one step ahead, beside the shipped weights trained on the same mazes for hours.
    Writes videos, strips, the loss curve and ``metrics.json``. ``data``: where the episodes go (default
    ``out/data``; complete episodes already there are kept, so several demos can share one folder). ``processes``:
    training processes (default :func:`demo_processes`; the same run as one process, at another pace)."""
    from .data.episodes import generate_dataset
    from .follow import evaluate_follow
    from .plots import plot_loss
    from .models.world_model import parameter_count
    from .train import train_processes

    out = Path(out)
    t_start = time.time()
    model_cfg = demo_model(preset, window, d_model, n_layers)
    res = model_cfg.frame_size
    data = Path(data) if data else out / "data"
    print(f"[1/3] generating {episodes} maze episodes of {steps_per_episode} steps at {res}x{res} in {mazes} fixed "
          f"mazes -> {data}")
    generate_dataset(data, episodes, steps_per_episode, resolution=res, seed=0, workers=2, mazes=mazes)

    cfg = demo_run_config(model_cfg, data, out / "run", minutes, lr, seed)
    per_step = _seconds_per_step(cfg)
    # A first guess at the step count, from a timing on random data; the loop fits it to the time budget at the end
    # of the warmup (train.fit_steps), from the pace of the real steps on the machine as it is then.
    cfg.train.steps = max(20, int(minutes * 60 / per_step))
    run = Path(cfg.train.out)
    resume = False
    if (run / "checkpoints" / "latest").exists():
        saved = _own_setup(run / "config.yaml", cfg)
        if saved is None:
            moved = run.with_name(f"run.previous-{time.strftime('%Y%m%d-%H%M%S')}")
            run.rename(moved)
            print(f"      {run} was trained with another setup (an older demo?); kept it as {moved}, starting afresh")
        else:  # keep the schedule of the interrupted run
            cfg, resume = saved, True
    if resume:
        done, planned = _resume_point(run, cfg.train.steps)
        print(f"[2/3] training {preset} hybrid for {minutes:g} min: resuming at step {done} of the {planned} planned")
    else:
        print(f"[2/3] training {preset} hybrid for {minutes:g} min: {per_step:.2f} s/step -> ~{cfg.train.steps} steps "
              f"(fitted to the time after the warmup), optimizer {cfg.train.optimizer}")
    processes = processes or demo_processes(cfg.train.batch_size)
    if processes > 1:
        print(f"      in {processes} processes of {max(1, torch.get_num_threads() // processes)} thread(s) each "
              f"(DDP over gloo, the batch of {cfg.train.batch_size} split between them)")
    train_processes(cfg, processes, resume=resume)
    # the plan the training processes fitted (in their own copies of cfg): the last checkpoint's config has it
    cfg.train.steps = _resume_point(run, cfg.train.steps)[1]

    models = [str(run)] + ([shipped] if _comparable(shipped, cfg) else [])
    print(f"[3/3] follow benchmark: {context} context frames, {frames} generated, {windows} held-out trajectories in "
          f"the training mazes and {windows} in unseen mazes; models: {', '.join(Path(m).name for m in models)}")
    # every model sampled with the recipe's temperature, so the shipped weights (saved with 1) are compared alike
    follow = evaluate_follow(models, data=str(data), out=out / "follow", context=context, frames=frames, long=frames,
                             windows=windows, progress=True, sampling={"temperature": cfg.sampling.temperature})
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    mine = follow["models"][run.name]["sets"]
    metrics = {"train_steps": int(log[-1]["step"]) if log else 0,  # the time budget can end a run early
               "train_steps_planned": cfg.train.steps,  # the plan fitted to the time (train.fit_steps)
               "seconds_per_step": round(per_step, 4),  # the first guess's timing on random data
               "threads": torch.get_num_threads(), "processes": processes, "seed": cfg.train.seed,
               "optimizer": cfg.train.optimizer,
               "model": {"preset": preset, "d_model": cfg.model.d_model, "layers": len(cfg.model.layers),
                         "parameters": parameter_count(cfg.model)},
               "train_minutes": round(log[-1]["time"] / 60, 2) if log else 0,
               "context": context, "frames": frames, "sampling": vars(cfg.sampling),
               "follow": {name: {s: {k: r[k] for k in ("free", "teacher_forced", "shuffled_actions", "action_gain")}
                                  for s, r in m["sets"].items()}
                          for name, m in follow["models"].items()},
               "baseline_repeat_last_frame": {s: r["repeat_last_frame"] for s, r in follow["sets"].items()},
               "ssim_per_frame": mine["train-mazes"]["per_frame"]["free"]["ssim"],
               "psnr_per_frame": mine["train-mazes"]["per_frame"]["free"]["psnr"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    loss_png = plot_loss(run / "log.jsonl", out / "loss.png")
    for name in ("rollout", "next_frame"):  # the training-mazes videos at the top of the output folder
        shutil.copyfile(out / "follow" / f"{name}_train-mazes.gif", out / f"{name}.gif")
    shutil.copyfile(out / "follow" / "strip_train-mazes.png", out / "strip.png")
    print(f"\nDone in {(time.time() - t_start) / 60:.1f} min ({metrics['train_steps']} training steps).\n"
          f"{follow['table']}\n"
          f"  free rollout (ground truth | this run{' | ' + shipped if len(models) > 1 else ''}): {out / 'rollout.gif'}\n"
          f"  one step ahead from the true history: {out / 'next_frame.gif'}\n"
          f"  frames 1, 2, 4 ... {frames} of every model: {out / 'strip.png'}\n"
          f"  loss curve: {loss_png}\n  metrics: {out / 'metrics.json'} (all of it: {out / 'follow'})\n"
          f"  checkpoint: {run}\n  data: {data}")
    return metrics


def _comparable(shipped: str | None, cfg: RunConfig) -> bool:
    """Whether the shipped weights exist and show frames of this run's size (so they can share its windows)."""
    from .checkpoint import load_pretrained_config, shipped_weights

    folder = shipped_weights().get(shipped or "")
    return folder is not None and load_pretrained_config(folder).model.frame_size == cfg.model.frame_size


def _own_setup(saved: Path, cfg: RunConfig) -> RunConfig | None:
    """A run folder's saved config when it is this demo's setup apart from the step count (sized to the
    machine) and where the run and its data lie (a demo folder moved or copied elsewhere goes on there), with
    those places set to ``cfg``'s; else None."""
    from .config import ConfigError, load_config

    try:
        old = load_config(saved)
    except (OSError, ConfigError):
        return None
    a, b = old.to_dict(), cfg.to_dict()
    for d in (a, b):
        for field in ("steps", "out", "data"):
            d["train"].pop(field)
    if a != b:
        return None
    old.train.out, old.train.data = cfg.train.out, cfg.train.data
    return old


def _resume_point(run: Path, steps: int) -> tuple[int, int]:
    """The step a run folder's latest checkpoint was saved at and the step count planned then (its config.yaml:
    the plan train.fit_steps fitted, not the first guess the run's own config.yaml started from); ``steps`` where
    the checkpoint has no readable config."""
    from .checkpoint import CheckpointError, checkpoint_config, find_checkpoint
    from .config import ConfigError

    try:
        ckpt = find_checkpoint(run)
        return int(ckpt.name.removeprefix("step_")), checkpoint_config(ckpt).train.steps
    except (OSError, ValueError, CheckpointError, ConfigError):
        return 0, steps
