"""The ``lssvwm`` command line.

    lssvwm data maze --episodes N --steps T --resolution 64 --out DIR [--workers W] [--seed S]
    lssvwm data memory-maze --maze 9x9 --episodes N --steps T --out DIR [--workers W] [--mazes K]
    lssvwm data preview DIR [--episode i] [--out preview.mp4]
    lssvwm train-ae --data DIR --out RUN [--preset memory-maze] [--set train.steps=2000 ...] [--resume]
    lssvwm model info PRESET [--variant hybrid]
    lssvwm train [--config run.yaml] [--preset small] [--variant hybrid] [--data DIR] [--out RUN] [--resume]
                 [--set train.steps=500 ...]
    lssvwm generate --ckpt RUN --data DIR --context N --frames M --out video.mp4
    lssvwm eval memory --ckpt A [--ckpt B ...] --task retrieval|reasoning --context N --frames M
    lssvwm eval follow --ckpt A [--ckpt B ...] [--context 32] [--frames 48] [--long 200] [--windows 8]
    lssvwm play --ckpt RUN [--port 8765] [--record DIR]
    lssvwm demo [--out runs/demo] [--minutes 14]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .config import SCHEDULES, ConfigError


def _data_maze(a):
    from .data.episodes import generate_dataset

    out = generate_dataset(a.out, a.episodes, a.steps, a.resolution, a.size, a.seed, a.workers, mazes=a.mazes)
    print(f"dataset: {out} ({a.episodes} episodes x {a.steps + 1} frames at {a.resolution}x{a.resolution})")


def _data_memory_maze(a):
    from .data.memory_maze import generate_dataset

    out = generate_dataset(a.out, a.episodes, a.steps, a.maze, a.seed, a.workers, a.mazes)
    print(f"dataset: {out} ({a.episodes} Memory Maze {a.maze} episodes x {a.steps + 1} frames at 64x64)")


def _train_ae(a):
    from .config import ae_config_from_dict, autoencoder_preset, load_ae_config
    from .train_ae import train_autoencoder

    base = _layered_config(a, load_ae_config, "autoencoder", bool(a.preset),
                           lambda: autoencoder_preset(a.preset or "memory-maze").__dict__.copy())
    run = train_autoencoder(ae_config_from_dict(base), resume=a.resume, progress=not a.no_progress)
    print(f"run: {run}")


def _data_preview(a):
    import numpy as np

    from .data.episodes import episode_files, load_episode
    from .video import side_by_side, top_down_map, upscale, write_video

    files = episode_files(a.dir)
    if not 0 <= a.episode < len(files):
        raise SystemExit(f"error: --episode must be in [0, {len(files)}), got {a.episode}")
    ep = load_episode(files[a.episode])
    frames = ep["image"][: a.frames]
    res = frames.shape[1]
    scale = max(1, 256 // res)
    view = upscale(frames, scale)
    panels = [view]
    if "maze_layout" in ep and "agent_pos" in ep:
        layout = np.asarray(ep["maze_layout"][0] if ep["maze_layout"].ndim == 3 else ep["maze_layout"])
        if "targets_pos" in ep:  # the real Memory Maze's files: 1 = free and no outer walls (see data.memory_maze)
            layout = np.pad(1 - layout, 1, constant_values=1)
            positions = ep["agent_pos"][: a.frames] + 1.0
        else:
            positions = ep["agent_pos"][: a.frames]
        cell = max(4, view.shape[1] // layout.shape[0])
        panels.append(top_down_map(layout, positions, cell))
    out = Path(a.out or Path(a.dir) / f"preview_{a.episode:06d}.mp4")
    write_video(out, side_by_side(*panels), fps=a.fps)
    print(f"preview: {out}")


def _model_info(a):
    from .config import model_preset
    from .models.world_model import WorldModel

    cfg = model_preset(a.preset, a.variant)
    model = WorldModel(cfg)
    grid = cfg.frame_size // cfg.patch_size
    print(f"preset {a.preset} / variant {a.variant}: {model.num_params():,} parameters "
          f"({model.num_params() / 1e6:.2f}M); frames {cfg.channels}x{cfg.frame_size}x{cfg.frame_size}, "
          f"patch {cfg.patch_size} -> {grid}x{grid} tokens, d_model {cfg.d_model}")
    for i, layer in enumerate(cfg.layers):
        print(f"  layer {i:2d}: ssm block {layer['ssm']!s:>8}  attention window {layer['attn']}")


def _parse_sets(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise SystemExit(f"error: --set expects section.field=value (e.g. train.steps=500), got {pair!r}")
        key, value = pair.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def _layered_config(a, load, section: str, preset_given: bool, preset) -> dict:
    """--config (or, with --resume, the run's own config.yaml; else defaults), then the preset replaces
    ``section`` when given (or when there is no config), then --set, --data, --out. Returns a plain dict."""
    config = a.config
    if not config and getattr(a, "resume", False) and a.out and (Path(a.out) / "config.yaml").exists():
        config = Path(a.out) / "config.yaml"
    base = load(config).to_dict() if config else {}
    if preset_given or not config:
        base[section] = preset()
    for name, values in _parse_sets(a.set).items():
        base.setdefault(name, {}).update(values)
    base.setdefault("train", {})
    if a.data:
        base["train"]["data"] = a.data
    if a.out:
        base["train"]["out"] = a.out
    return base


def build_run_config(a):
    """--config (or, with --resume, the run's own config.yaml; else defaults), then --preset/--variant
    (replace the model), then --set, --data, --out."""
    from .config import config_from_dict, load_config, model_preset

    base = _layered_config(a, load_config, "model", bool(a.preset or a.variant),
                           lambda: model_preset(a.preset or "small", a.variant or "hybrid").__dict__.copy())
    if getattr(a, "skip_bad_files", False):
        base["train"]["skip_bad_files"] = True
    return config_from_dict(base)


def _train(a):
    from .train import train

    run = train(build_run_config(a), resume=a.resume, progress=not a.no_progress)
    print(f"run: {run}")


def _generate(a):
    from .checkpoint import load_run
    from .data.dataset import EpisodeWindows
    from .generate import comparison_video, episode_rollout, frame_metrics, write_metrics
    from .video import write_video

    run = load_run(a.ckpt, device=_device(a.device))
    ds = EpisodeWindows(a.data, 1, a.split, run.cfg.train.val_fraction, layout=run.cfg.train.data_layout)
    ep = ds.episode(a.episode)
    ctx, gt, pred = episode_rollout(run.sampler(**_sampling_overrides(a)), ep, a.context, a.frames, start=a.start,
                                    progress=True, teacher_forcing=a.teacher_forcing)
    metrics = frame_metrics(gt, pred)
    write_video(a.out, comparison_video(ctx, gt, pred), fps=a.fps)
    write_metrics(Path(a.out).with_suffix(".json"), metrics)
    print(f"PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.3f} over {a.frames} generated frames")
    print(f"video: {a.out} (checkpoint {run.checkpoint})")


def _play(a):
    import asyncio

    from .web import EnvFactory, serve

    if a.host not in ("127.0.0.1", "localhost", "::1") and not a.allow_remote:
        raise SystemExit(f"error: --host {a.host} exposes the server beyond this machine; add --allow-remote to "
                         f"confirm")
    factory = EnvFactory(a.ckpt, context=a.context, device=_device(a.device), **_sampling_overrides(a))
    try:
        asyncio.run(serve(factory, a.host, a.port, a.record))
    except KeyboardInterrupt:
        pass


def _eval_memory(a):
    from .evaluation import evaluate_models

    evaluate_models(a.ckpt, a.task, a.context, a.frames, a.out, a.episodes, a.seed, _sampling_overrides(a),
                    a.data, _device(a.device))


def _eval_follow(a):
    from .follow import evaluate_follow

    evaluate_follow(a.ckpt, a.data, a.out, a.context, a.frames, a.long, a.windows, a.seed, _sampling_overrides(a),
                    _device(a.device))


def _demo(a):
    from .demo import run_demo

    run_demo(out=a.out, minutes=a.minutes, preset=a.preset)


def _device(name: str | None) -> str:
    """--device: cpu, cuda or cuda:N (default: cuda when available)."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    return name


def _sampling_args(p, seed: bool = True) -> None:
    """Sampling options shared by generate, eval and play; each defaults to the run's own setting."""
    g = p.add_argument_group("sampling (default: the run's own settings)")
    g.add_argument("--steps", type=int, help="denoising steps per frame")
    g.add_argument("--stabilization", type=float, help="noise level committed frames are labelled with, in [0, 1)")
    g.add_argument("--schedule", choices=SCHEDULES, help="step grid")
    g.add_argument("--eta", type=float, help="0: deterministic DDIM, 1: ancestral sampling")
    if seed:
        g.add_argument("--seed", type=int, help="sampling seed")


def _sampling_overrides(a) -> dict:
    return {k: getattr(a, k, None) for k in ("steps", "stabilization", "schedule", "eta", "seed")}


def _generation_args(p) -> None:
    """Options shared by the dataset generators."""
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mazes", type=int, default=0,
                   help="0: a new maze per episode; K: episodes cycle through K fixed mazes (new trajectories)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="lssvwm", description="Long-context state-space video world models")
    sub = p.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="make or inspect datasets").add_subparsers(dest="data_cmd", required=True)
    m = data.add_parser("maze", help="generate built-in maze episodes")
    m.add_argument("--episodes", type=int, default=100)
    m.add_argument("--steps", type=int, default=1000)
    m.add_argument("--resolution", type=int, default=64)
    m.add_argument("--size", type=int, default=9, help="maze grid size (odd)")
    _generation_args(m)
    m.set_defaults(fn=_data_maze)
    mm = data.add_parser("memory-maze", help="generate real Memory Maze episodes (extra: lssvwm[memory-maze])")
    mm.add_argument("--maze", default="9x9", choices=["9x9", "11x11", "13x13", "15x15"])
    mm.add_argument("--episodes", type=int, default=10)
    mm.add_argument("--steps", type=int, default=1000, help="at most the time limit: 1000 steps for 9x9")
    _generation_args(mm)
    mm.set_defaults(fn=_data_memory_maze)
    pv = data.add_parser("preview", help="video of an episode beside a top-down map")
    pv.add_argument("dir")
    pv.add_argument("--episode", type=int, default=0)
    pv.add_argument("--frames", type=int, default=300)
    pv.add_argument("--fps", type=int, default=10)
    pv.add_argument("--out")
    pv.set_defaults(fn=_data_preview)

    model = sub.add_parser("model", help="model presets").add_subparsers(dest="model_cmd", required=True)
    mi = model.add_parser("info", help="parameter count and layer plan of a preset")
    mi.add_argument("preset")
    mi.add_argument("--variant", default="hybrid")
    mi.set_defaults(fn=_model_info)

    t = sub.add_parser("train", help="train a world model (torchrun for several processes)")
    t.add_argument("--config", help="YAML run config")
    t.add_argument("--preset")
    t.add_argument("--variant")
    t.add_argument("--data")
    t.add_argument("--out")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--set", nargs="+", action="extend", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override config fields; may be repeated")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--skip-bad-files", action="store_true",
                   help="skip and count unreadable episode files (default: stop before training)")
    t.set_defaults(fn=_train)

    ae = sub.add_parser("train-ae", help="train the frame autoencoder (for latent world models)")
    ae.add_argument("--config", help="YAML autoencoder config (sections autoencoder, train)")
    ae.add_argument("--preset", help="tiny | memory-maze (4x) | minecraft (8x); default memory-maze")
    ae.add_argument("--data")
    ae.add_argument("--out")
    ae.add_argument("--resume", action="store_true")
    ae.add_argument("--set", nargs="+", action="extend", default=[], metavar="SECTION.FIELD=VALUE")
    ae.add_argument("--no-progress", action="store_true")
    ae.set_defaults(fn=_train_ae)

    g = sub.add_parser("generate", help="roll out a trained model from an episode's context")
    g.add_argument("--ckpt", required=True, help="run folder or checkpoint folder")
    g.add_argument("--data", required=True)
    g.add_argument("--split", default="val", choices=["train", "val", "all"])
    g.add_argument("--episode", type=int, default=0)
    g.add_argument("--start", type=int, default=0)
    g.add_argument("--context", type=int, default=16)
    g.add_argument("--frames", type=int, default=32)
    g.add_argument("--fps", type=int, default=8)
    g.add_argument("--out", default="rollout.mp4")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    _sampling_args(g)
    g.add_argument("--teacher-forcing", action="store_true",
                   help="predict each frame from the true frames before it (one step ahead), not from its own")
    g.set_defaults(fn=_generate)

    ev = sub.add_parser("eval", help="evaluate models").add_subparsers(dest="eval_cmd", required=True)
    em = ev.add_parser("memory", help="spatial retrieval / reasoning, models side by side (built-in maze, or the "
                                      "real Memory Maze when the training data came from it)")
    em.add_argument("--ckpt", action="append", required=True, help="run or checkpoint folder; repeat to compare")
    em.add_argument("--task", choices=["retrieval", "reasoning"], default="retrieval")
    em.add_argument("--context", type=int, default=64)
    em.add_argument("--frames", type=int, default=64)
    em.add_argument("--episodes", type=int, default=4)
    em.add_argument("--seed", type=int, default=0, help="task-set seed (also seeds sampling, per episode)")
    em.add_argument("--data", help="training data folder whose meta.json names the mazes (default: the run's)")
    em.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    _sampling_args(em, seed=False)
    em.add_argument("--out", default="runs/eval")
    em.set_defaults(fn=_eval_memory)

    ef = ev.add_parser("follow", help="does the model keep to the true path? held-out trajectories in the training "
                                      "mazes and in unseen mazes, free and teacher-forced, scored per frame")
    ef.add_argument("--ckpt", action="append", required=True, help="run or checkpoint folder; repeat to compare")
    ef.add_argument("--data", help="the training data folder (default: the first run's)")
    ef.add_argument("--context", type=int, default=32, help="true context frames (default 32)")
    ef.add_argument("--frames", type=int, default=48, help="generated frames of the main scores (default 48)")
    ef.add_argument("--long", type=int, default=200, help="length of the long rollout (default 200)")
    ef.add_argument("--windows", type=int, default=8, help="held-out trajectories per window set (default 8)")
    ef.add_argument("--seed", type=int, default=0, help="window-set seed (default 0)")
    ef.add_argument("--out", default="runs/follow", help="output folder (default runs/follow)")
    ef.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    _sampling_args(ef, seed=False)
    ef.set_defaults(fn=_eval_follow)

    pl = sub.add_parser("play", help="play a trained model in the browser (WebSocket server)")
    pl.add_argument("--ckpt", required=True)
    pl.add_argument("--context", help="dataset folder or episode .npz for the start clip (default: the run's data)")
    pl.add_argument("--host", default="127.0.0.1")
    pl.add_argument("--port", type=int, default=8765)
    pl.add_argument("--allow-remote", action="store_true", help="required for a --host other than loopback")
    pl.add_argument("--record", metavar="DIR", help="save recordings (episode .npz + .mp4) here")
    pl.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    _sampling_args(pl, seed=False)
    pl.set_defaults(fn=_play)

    d = sub.add_parser("demo", help="data -> train -> rollout on the built-in maze, on CPU")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--minutes", type=float, default=14.0, help="training time budget (minutes)")
    d.add_argument("--preset", default="small")
    d.set_defaults(fn=_demo)

    a = p.parse_args(argv)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.episodes import EpisodeFormatError

    try:
        a.fn(a)
    except (ConfigError, EpisodeFormatError, CheckpointError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
