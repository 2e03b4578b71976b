"""The ``lssvwm`` command line.

    lssvwm data maze --episodes N --steps T --resolution 64 --out DIR [--workers W] [--seed S] [--spin-prob P]
    lssvwm data memory-maze --maze 9x9 --episodes N --steps T --out DIR [--workers W] [--mazes K]
    lssvwm data preview DIR [--episode i] [--out preview.mp4]
    lssvwm train-ae --data DIR --out RUN [--preset memory-maze] [--set train.steps=2000 ...] [--resume]
    lssvwm model info PRESET [--variant hybrid]
    lssvwm train [--config run.yaml] [--preset small] [--variant hybrid] [--data DIR] [--out RUN] [--resume]
                 [--set train.steps=500 ...]
    lssvwm generate --ckpt RUN --data DIR --context N --frames M --out video.mp4
    lssvwm eval memory --ckpt A [--ckpt B ...] --task retrieval|reasoning|look-around --context N --frames M
                       [--context-limit N|reach]
    lssvwm eval follow --ckpt A [--ckpt B ...] [--context 32] [--frames 48] [--long 200] [--windows 8]
    lssvwm eval horizon --ckpt A [--data DIR] [--clips 4] [--frames 32]
    lssvwm play --ckpt RUN [--port 8765] [--record DIR]
    lssvwm demo [--out runs/demo] [--minutes 14]

Every failure ends in one line on stderr (``error: ...``) and a non-zero exit: 2 for input the user can fix,
1 for anything else; ``--debug`` (or ``LSSVWM_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import VARIANTS, Allowed, ConfigError


# -- argument types: bad values are refused while parsing, with the option's name ------------------------------
# Numbers are parsed and checked by config.Allowed, the same rule type the configs declare their fields with.
def _int_at_least(low: int, high: int | None = None):
    return Allowed(low, high, integer=True).parse


def _float_in(low: float, high: float, high_open: bool = False, low_open: bool = False):
    return Allowed(low, high, low_open=low_open, high_open=high_open).parse


def _video_path(text: str) -> Path:
    from .video import VIDEO_SUFFIXES

    path = Path(text)
    if path.suffix not in VIDEO_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text}: a video file must end in .mp4 or .gif")
    if path.exists() and path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder, not a video file")
    return path


def _even_resolution(text: str) -> int:
    value = _int_at_least(8, 1024)(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"must be even, got {value}")
    return value


def _odd_size(text: str) -> int:
    value = _int_at_least(5, 101)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd (walls between cells), got {value}")
    return value


POSITIVE, NONNEG = _int_at_least(1), _int_at_least(0)


def _writable_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` (a folder) if needed and check that files can be written in it, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent is a file, a read-only or full disk, a name too long ...
        raise ConfigError(f"{what} {path}: cannot create this folder: {e.strerror or e}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: folder is not writable")
    return path


def _check_output_file(path: Path) -> None:
    _writable_dir(path.parent if str(path.parent) else Path("."), "--out")


def _data_maze(a):
    from .data.episodes import generate_dataset

    out = generate_dataset(a.out, a.episodes, a.steps, a.resolution, a.size, a.seed, a.workers, mazes=a.mazes,
                           policy={"spin_prob": a.spin_prob, "spin_turns": a.spin_turns})
    print(f"dataset: {out} ({a.episodes} episodes x {a.steps + 1} frames at {a.resolution}x{a.resolution})")


def _data_memory_maze(a):
    from .data.memory_maze import generate_dataset

    out = generate_dataset(a.out, a.episodes, a.steps, a.maze, a.seed, a.workers, a.mazes)
    print(f"dataset: {out} ({a.episodes} Memory Maze {a.maze} episodes x {a.steps + 1} frames at 64x64)")


def _train_ae(a):
    from .config import layered_config
    from .train_ae import train_autoencoder

    cfg = layered_config("ae", a.config, a.preset, None, a.set, a.data, a.out, a.resume)
    run = train_autoencoder(cfg, resume=a.resume, progress=not a.no_progress)
    print(f"run: {run}")


def _data_preview(a):
    from .data.episodes import episode_files, load_episode
    from .video import episode_preview, write_video

    files = episode_files(a.dir)
    if a.episode >= len(files):
        raise ConfigError(f"--episode must be in [0, {len(files)}) for the {len(files)} episodes of {a.dir}, got "
                          f"{a.episode}")
    out = a.out or Path(a.dir) / f"preview_{a.episode:06d}.mp4"
    _check_output_file(Path(out))
    write_video(out, episode_preview(load_episode(files[a.episode]), a.frames), fps=a.fps)
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
        print(f"  layer {i:2d}: ssm block {layer.ssm!s:>8}  attention window {layer.attn}")
    reach = cfg.attention_reach()
    seen = ("every past frame" if reach is None else "itself only" if reach == 1 else f"its last {reach} frames "
            f"(attention windows stacked over the layers{', the previous-frame input' if cfg.prev_frame else ''})")
    print(f"  without the scans, a frame's output depends on {seen}")


def _model_export(a):
    import torch

    from .checkpoint import export_run

    _writable_dir(a.out, "--out")
    out = export_run(a.ckpt, a.out, {"bf16": torch.bfloat16, "fp32": None}[a.dtype], a.clips, a.clip_frames)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {a.ckpt} -> {out} ({size / 2**20:.2f} MiB): load it with --ckpt {out}, "
          f"WorldModel.from_pretrained({str(out)!r}) or upload it with push_to_hub")


def build_run_config(a):
    """--config (or, with --resume, the run's own config.yaml; else defaults), then --preset/--variant
    (replace the model), then --set, --data, --out (see config.layered_config)."""
    from .config import layered_config, parse_overrides

    sets = parse_overrides(a.set)
    for flag in ("skip_bad_files", "tensorboard"):
        if getattr(a, flag, False):
            sets.setdefault("train", {})[flag] = True
    init = getattr(a, "init", None)
    if init:
        sets.setdefault("train", {})["init"] = init
    cfg = layered_config("run", a.config, a.preset, a.variant, sets, a.data, a.out, a.resume)
    if init and not (a.config or a.preset or a.variant or "model" in sets or a.resume):
        cfg.model = _init_model_config(init)  # fine-tuning with no model given: the weights' own model
    return cfg


def _init_model_config(source: str):
    """The model section of the run or weights that ``--init`` names."""
    from .checkpoint import checkpoint_config, find_checkpoint

    return checkpoint_config(find_checkpoint(source)).model


def _train(a):
    from .train import train_processes

    run = train_processes(build_run_config(a), a.processes, resume=a.resume, progress=not a.no_progress)
    print(f"run: {run}")


def _generate(a):
    from .checkpoint import load_run
    from .generate import comparison_video, episode_rollout, frame_metrics, start_episode, write_metrics
    from .video import write_video

    _check_output_file(a.out)
    run = load_run(a.ckpt, device=_device(a.device))
    sampler = run.sampler(_sampling_overrides(a), compile=a.compile)
    ep = start_episode(run, a.data, a.split, a.episode)
    ctx, gt, pred = episode_rollout(sampler, ep, a.context, a.frames, start=a.start, progress=True,
                                    teacher_forcing=a.teacher_forcing)
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
    if a.record:
        _writable_dir(a.record, "--record")
    if a.start_clips and not Path(a.start_clips).exists():
        raise ConfigError(f"--start-clips {a.start_clips}: no such dataset folder or episode file")
    factory = EnvFactory(a.ckpt, context=a.start_clips, device=_device(a.device), sampling=_sampling_overrides(a),
                         compile=a.compile)
    try:
        asyncio.run(serve(factory, a.host, a.port, a.record))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        if e.errno in (98, 48, 10048):  # address in use (Linux, macOS, Windows)
            raise ConfigError(f"--port {a.port} is in use on {a.host}: choose another --port (0 = any free port)"
                              ) from e
        raise


def _context_limit(text: str) -> int | str:
    """--context-limit: 'reach' or a positive number of frames."""
    if text == "reach":
        return text
    try:
        return POSITIVE(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'reach' or a positive number of frames, got {text!r}") from None


def _eval_memory(a):
    from .evaluation import evaluate_models

    if isinstance(a.context_limit, int) and a.context_limit > a.context:
        raise ConfigError(f"--context-limit {a.context_limit}: at most --context ({a.context}) frames")
    _writable_dir(a.out, "--out")
    evaluate_models(a.ckpt, a.task, a.context, a.frames, a.out, a.episodes, a.seed, _sampling_overrides(a),
                    a.data, _device(a.device), lpips=a.lpips, context_limit=a.context_limit)


def _eval_horizon(a):
    import torch

    from .checkpoint import load_run
    from .data.episodes import episode_files, episode_tensors, load_episode
    from .evaluation import memory_horizons

    device = _device(a.device)
    run = load_run(a.ckpt, device=device)
    data = a.data or next((str(d) for d in (run.checkpoint / "data", Path(run.cfg.train.data)) if d.is_dir()), None)
    if data is None:
        raise ConfigError(f"--data: give a data folder with episodes (the run's {run.cfg.train.data} is not here)")
    files = episode_files(data)[:a.clips]  # (none: its error names the folder)
    clips = [episode_tensors(load_episode(f)) for f in files]
    t = min(a.frames, *(len(c["actions"]) for c in clips))
    frames = torch.stack([c["frames"][:t] for c in clips]).to(device)
    actions = torch.stack([c["actions"][:t] for c in clips]).to(device)
    reach = run.cfg.model.attention_reach()
    print(f"{a.ckpt}: each scan head's memory in frames (1/e of its state left after that many frames), measured on "
          f"{len(files)} clips of {t} frames from {data}; the attention reaches "
          + ("every past frame" if reach is None else f"{reach} frames"))
    for layer in memory_horizons(run, frames, actions):
        h = sorted(layer["horizon"])
        beyond = "" if reach is None else f"; longer than the attention's reach: {sum(v > reach for v in h)}/{len(h)}"
        print(f"  layer {layer['layer']:2d}, scan block {layer['block']!s:>7} ({layer['steps_per_frame']:3d} steps per "
              f"frame): min {h[0]:.2f}  median {h[len(h) // 2]:.2f}  max {h[-1]:.2f}{beyond}")


def _eval_follow(a):
    from .follow import evaluate_follow

    _writable_dir(a.out, "--out")
    evaluate_follow(a.ckpt, a.data, a.out, a.context, a.frames, a.long, a.windows, a.seed, _sampling_overrides(a),
                    _device(a.device), lpips=a.lpips, pose=a.pose, pose_grid=a.pose_grid)


def _demo(a):
    from .demo import run_demo

    _writable_dir(a.out, "--out")
    run_demo(out=a.out, minutes=a.minutes, preset=a.preset, d_model=a.d_model, n_layers=a.layers,
             processes=a.processes)


def _device(name: str | None) -> str:
    """--device: cpu, cuda or cuda:N (default: cuda when available)."""
    import torch

    if name is None:
        from .resources import default_device

        return default_device().type
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from e
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def _compile_arg(p) -> None:
    p.add_argument("--compile", action="store_true",
                   help="run the model's per-frame step through torch.compile: faster frames after a compile of a "
                        "minute or more at start (needs a C++ compiler on the CPU; docs/play.md)")


def _device_arg(p) -> None:
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")


def _lpips_arg(p) -> None:
    p.add_argument("--lpips", choices=["local", "download"], default="local",
                   help="LPIPS: 'local' uses AlexNet weights already on this machine (else reports it unavailable); "
                   "'download' fetches them once (needs the lpips package and internet) (default local)")


def _sampling_args(p, seed: bool = True) -> None:
    """Sampling options shared by generate, eval and play; each defaults to the run's own setting."""
    from .config import SamplingConfig, allowed

    def option(name: str, help: str, **kw):  # the option's values: those SamplingConfig declares for the field
        a = allowed(SamplingConfig, name)
        if a.choices is not None:
            kw["choices"] = a.choices
        else:
            kw["type"] = a.parse
        g.add_argument("--" + name.replace("_", "-"), help=help, **kw)

    g = p.add_argument_group("sampling (default: the run's own settings)")
    option("steps", "denoising steps per frame")
    option("stabilization", "noise level committed frames are labelled with, in [0, 1)")
    option("schedule", "step grid: uniform in t, uniform in log-SNR, or EDM's")
    option("eta", "0: deterministic DDIM, 1: ancestral sampling")
    option("temperature", "the std of the noise sampling draws (1: the model's distribution; < 1: frames nearer "
           "the most likely one, less varied)", metavar="T")
    option("history_guidance", "history guidance weight (0: off; costs a second model call per step)", metavar="W")
    option("history_guidance_level", "noise level of the history in the guidance's second call (1: none of it)",
           metavar="LEVEL")
    option("action_guidance", "action guidance weight: pushes each step away from the null action's prediction "
           "(0: off; costs a second model call per step)", metavar="W")
    option("action_guidance_null", "the null action of action guidance: -1 = no action (a model trained with "
           "diffusion.action_dropout), or an action id such as a no-op", metavar="ID")
    if seed:
        option("seed", "sampling seed")


def _sampling_overrides(a):
    """The sampling options this command has and the user gave (the rest stay the run's settings)."""
    from dataclasses import fields

    from .config import SamplingOverrides

    return SamplingOverrides.of({f.name: getattr(a, f.name, None) for f in fields(SamplingOverrides)})


def _run_args(p, set_help: str) -> None:
    """Options shared by the training commands: data, run folder, resume, --set overrides, progress bar."""
    p.add_argument("--data", help="dataset folder (train.data)")
    p.add_argument("--out", help="run folder (train.out)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="SECTION.FIELD=VALUE", help=set_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _generation_args(p) -> None:
    """Options shared by the dataset generators."""
    p.add_argument("--out", required=True, help="dataset folder (created; an unfinished one is completed)")
    p.add_argument("--workers", type=POSITIVE, default=1, help="worker processes (default 1)")
    p.add_argument("--seed", type=NONNEG, default=0, help="dataset seed: episode i's seed depends on it (default 0)")
    p.add_argument("--mazes", type=NONNEG, default=0,
                   help="0: a new maze per episode; K: episodes cycle through K fixed mazes (default 0)")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error of the CLI: what is wrong, and where the rest is."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see: {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default when it has a real one (not None/False) and its help does not already say it."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import MODEL_PRESETS
    from .data.maze import POLICY_DEFAULTS
    from .data.memory_tasks import TASKS

    p = _Parser(prog="lssvwm", description="Long-context state-space video world models", formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"lssvwm {__version__}")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (or LSSVWM_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def cmd(parent, name, fn, **kw):
        q = parent.add_parser(name, formatter_class=_Help, **kw)
        q.set_defaults(fn=fn)
        return q

    data = sub.add_parser("data", help="make or inspect datasets").add_subparsers(dest="data_cmd", required=True)
    m = cmd(data, "maze", _data_maze, help="generate built-in maze episodes")
    m.add_argument("--episodes", type=POSITIVE, default=100, help="number of episodes")
    m.add_argument("--steps", type=POSITIVE, default=1000, help="steps per episode (an episode has steps+1 frames)")
    m.add_argument("--resolution", type=_even_resolution, default=64, help="frame size in pixels (even, 8-1024)")
    m.add_argument("--size", type=_odd_size, default=9, help="maze grid size in cells (odd, 5-101)")
    m.add_argument("--spin-prob", type=_float_in(0.0, 1.0), default=POLICY_DEFAULTS["spin_prob"],
                   help="chance the agent looks around (turns in place) at each goal it reaches: views come back "
                        "after a turn's frames, data that asks for memory (0-1, default 0)")
    m.add_argument("--spin-turns", type=_int_at_least(1, 8), default=POLICY_DEFAULTS["spin_turns"],
                   help="full turns per look-around (1-8, default 2: from the second on, every view repeats)")
    _generation_args(m)
    mm = cmd(data, "memory-maze", _data_memory_maze, help="generate real Memory Maze episodes (extra: "
                                                          "lssvwm[memory-maze])")
    mm.add_argument("--maze", default="9x9", choices=["9x9", "11x11", "13x13", "15x15"], help="maze size")
    mm.add_argument("--episodes", type=POSITIVE, default=10, help="number of episodes")
    mm.add_argument("--steps", type=POSITIVE, default=1000, help="steps per episode, at most the time limit "
                                                                 "(1000 for 9x9)")
    _generation_args(mm)
    pv = cmd(data, "preview", _data_preview, help="video of an episode beside a top-down map")
    pv.add_argument("dir", help="dataset folder")
    pv.add_argument("--episode", type=NONNEG, default=0, help="episode index (sorted by file name)")
    pv.add_argument("--frames", type=POSITIVE, default=300, help="frames to show")
    pv.add_argument("--fps", type=POSITIVE, default=10, help="video frames per second")
    pv.add_argument("--out", type=_video_path, help="video file (.mp4 or .gif); default DIR/preview_<episode>.mp4")

    model = sub.add_parser("model", help="model presets").add_subparsers(dest="model_cmd", required=True)
    mi = cmd(model, "info", _model_info, help="parameter count and layer plan of a preset")
    mi.add_argument("preset", choices=list(MODEL_PRESETS), help="model preset")
    mi.add_argument("--variant", default="hybrid", choices=VARIANTS, help="layer plan")

    mx = cmd(model, "export", _model_export, help="a run -> a Hugging Face-layout folder (config.json + "
                                                     "model.safetensors + start clips) that works without the data")
    mx.add_argument("--ckpt", required=True, help="run or checkpoint folder (its EMA weights are exported)")
    mx.add_argument("--out", required=True, help="output folder")
    mx.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="weight type in the file (default "
                                                                               "bf16: half the size)")
    mx.add_argument("--clips", type=NONNEG, default=2, help="validation episodes to carry as start clips, with the "
                                                            "data's meta.json (default 2; 0: none)")
    mx.add_argument("--clip-frames", type=POSITIVE, default=101, help="frames kept of each start clip (default 101)")

    t = cmd(sub, "train", _train, help="train a world model (torchrun for several processes)")
    t.add_argument("--config", help="YAML run config (default: the preset's, or the run's own with --resume)")
    t.add_argument("--preset", choices=list(MODEL_PRESETS), help="model preset (replaces the config's model; "
                                                                 "default small)")
    t.add_argument("--variant", choices=VARIANTS, help="layer plan (default hybrid)")
    _run_args(t, "override config fields, e.g. train.steps=500; may be repeated")
    t.add_argument("--init", metavar="WEIGHTS", help="fine-tune: start from these weights (a run, an exported "
                   "folder or a shipped name such as maze-small) with a fresh optimizer and schedule; without "
                   "--config/--preset the model is theirs (train.init)")
    t.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard (train.tensorboard)")
    t.add_argument("--skip-bad-files", action="store_true",
                   help="skip and count unreadable episode files (default: stop before training)")
    t.add_argument("--processes", type=POSITIVE, default=1,
                   help="train in N local CPU processes (DDP over gloo, the batch and this machine's threads split "
                        "between them): the same run, faster on a CPU with few cores (default 1; GPUs: torchrun)")

    ae = cmd(sub, "train-ae", _train_ae, help="train the frame autoencoder (for latent world models)")
    ae.add_argument("--config", help="YAML autoencoder config (sections autoencoder, train)")
    ae.add_argument("--preset", choices=["tiny", "memory-maze", "minecraft"],
                    help="tiny | memory-maze (4x) | minecraft (8x); default memory-maze")
    _run_args(ae, "override config fields; may be repeated")

    g = cmd(sub, "generate", _generate, help="roll out a trained model from an episode's context")
    g.add_argument("--ckpt", required=True, help="run folder or checkpoint folder")
    g.add_argument("--data", help="dataset folder to take the episode from (default: the run's data, or the start "
                                  "clips that came with exported weights)")
    g.add_argument("--split", choices=["train", "val", "all"], help="which episodes (default val; all for the "
                                                                    "start clips of exported weights)")
    g.add_argument("--episode", type=NONNEG, default=0, help="episode index within the split")
    g.add_argument("--start", type=NONNEG, default=0, help="first context frame")
    g.add_argument("--context", type=POSITIVE, default=16, help="true context frames")
    g.add_argument("--frames", type=POSITIVE, default=32, help="frames to generate")
    g.add_argument("--fps", type=POSITIVE, default=8, help="video frames per second")
    g.add_argument("--out", type=_video_path, default=Path("rollout.mp4"),
                   help="video (.mp4 or .gif); the metrics go beside it as .json")
    _device_arg(g)
    _compile_arg(g)
    _sampling_args(g)
    g.add_argument("--teacher-forcing", action="store_true",
                   help="predict each frame from the true frames before it (one step ahead), not from its own")

    ev = sub.add_parser("eval", help="evaluate models").add_subparsers(dest="eval_cmd", required=True)
    em = cmd(ev, "memory", _eval_memory, help="spatial retrieval / reasoning, models side by side (built-in maze, or "
                                              "the real Memory Maze when the training data came from it)")
    em.add_argument("--ckpt", action="append", required=True, help="run or checkpoint folder; repeat to compare")
    em.add_argument("--task", choices=list(TASKS), default="retrieval", help="memory task (look-around: the context "
                                                                         "ends with a full turn in place, the "
                                                                         "agent turns on: pure recall)")
    em.add_argument("--context", type=POSITIVE, default=64, help="context frames (the exploration)")
    em.add_argument("--context-limit", type=_context_limit, metavar="N|reach",
                    help="give the models only the last N context frames (memory distances stay the whole "
                         "context's); 'reach': each model as many as its attention reaches. What a model loses "
                         "then is what its scans remembered from before")
    em.add_argument("--frames", type=POSITIVE, default=64, help="frames to generate")
    em.add_argument("--episodes", type=POSITIVE, default=4, help="task episodes")
    em.add_argument("--seed", type=NONNEG, default=0, help="task-set seed (also seeds sampling, per episode)")
    em.add_argument("--data", help="training data folder whose meta.json names the mazes (default: the run's)")
    _device_arg(em)
    _sampling_args(em, seed=False)
    em.add_argument("--out", default="runs/eval", help="output folder")
    _lpips_arg(em)

    ef = cmd(ev, "follow", _eval_follow, help="does the model keep to the true path? held-out trajectories in the "
                                              "training mazes and in unseen mazes, free and teacher-forced")
    ef.add_argument("--ckpt", action="append", required=True, help="run or checkpoint folder; repeat to compare")
    ef.add_argument("--data", help="the training data folder (default: the first run's)")
    ef.add_argument("--context", type=POSITIVE, default=32, help="true context frames")
    ef.add_argument("--frames", type=POSITIVE, default=48, help="generated frames of the main scores")
    ef.add_argument("--long", type=POSITIVE, default=200, help="length of the long rollout (>= --frames)")
    ef.add_argument("--windows", type=POSITIVE, default=8, help="held-out trajectories per window set")
    ef.add_argument("--seed", type=NONNEG, default=0, help="window-set seed")
    ef.add_argument("--out", default="runs/follow", help="output folder")
    ef.add_argument("--pose", action="store_true", help="built-in maze data only: also find where each generated "
                    "frame puts the agent (the best-matching view of the maze) and how far that is from the truth")
    ef.add_argument("--pose-grid", type=_float_in(0.02, 1.0), default=0.2, help="spacing in cells of the poses searched")
    _device_arg(ef)
    _lpips_arg(ef)
    _sampling_args(ef, seed=False)

    eh = cmd(ev, "horizon", _eval_horizon, help="how many frames each scan head remembers, measured on data clips, "
                                                "beside the frames the attention reaches")
    eh.add_argument("--ckpt", required=True, help="run or checkpoint folder, or shipped weights")
    eh.add_argument("--data", help="episodes to measure on (default: the weights' clips or the run's data)")
    eh.add_argument("--clips", type=POSITIVE, default=4, help="episodes")
    eh.add_argument("--frames", type=POSITIVE, default=32, help="frames of each")
    _device_arg(eh)

    pl = cmd(sub, "play", _play, help="play a trained model in the browser (WebSocket server)")
    pl.add_argument("--ckpt", required=True, help="run or checkpoint folder")
    pl.add_argument("--start-clips", "--context", dest="start_clips", metavar="PATH",
                    help="dataset folder or episode .npz the start clips come from (default: the run's data; "
                         "--context is the old name)")
    pl.add_argument("--host", default="127.0.0.1", help="address to listen on")
    pl.add_argument("--port", type=_int_at_least(0, 65535), default=8765, help="port (0 = any free port)")
    pl.add_argument("--allow-remote", action="store_true", help="required for a --host other than loopback")
    pl.add_argument("--record", metavar="DIR", help="save recordings (episode .npz + .mp4) here")
    _compile_arg(pl)
    _device_arg(pl)
    _sampling_args(pl, seed=False)

    d = cmd(sub, "demo", _demo, help="data -> train -> rollout on the built-in maze, on CPU")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--minutes", type=_float_in(0, 24 * 60, low_open=True), default=14.0,
                   help="training time budget (minutes)")
    d.add_argument("--preset", default="small", choices=list(MODEL_PRESETS), help="model preset")
    d.add_argument("--d-model", type=POSITIVE, default=None,
                   help="model width (default for small: the recipe's, 96, or 64 where it trains in fp32 on a CPU; "
                        "else the preset's)")
    d.add_argument("--layers", type=POSITIVE, default=None, help="number of layers (default: the preset's)")
    d.add_argument("--processes", type=POSITIVE, default=None,
                   help="training processes (default: 2 on a CPU with 2 or more threads, else 1)")
    return p


# optional packages -> the extra that installs them
OPTIONAL_PACKAGES = {"memory_maze": "memory-maze", "dm_control": "memory-maze", "mujoco": "memory-maze",
                     "gym": "memory-maze", "labmaze": "memory-maze", "websockets": "web", "fla": "gpu",
                     "lpips": None, "playwright": None, "tensorboard": None, "av": None}


def describe_error(e: BaseException) -> tuple[str, int]:
    """One line for the user and the exit code: 2 = input the user can fix, 1 = anything else."""
    from .checkpoint import CheckpointError
    from .data.episodes import EpisodeFormatError

    if isinstance(e, (ConfigError, EpisodeFormatError, CheckpointError)):
        return str(e), 2
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in OPTIONAL_PACKAGES:
        name = e.name.split(".")[0]
        extra = OPTIONAL_PACKAGES[name]
        how = f"pip install 'lssvwm[{extra}]'" if extra else f"pip install {name}"
        return f"this needs the optional package '{name}': {how}", 2
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return ("out of memory: use a smaller model, batch (train.batch_size), clip (train.clip_len) or fewer "
                "frames", 1)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}", 1
    if isinstance(e, ValueError):  # the library's own checks of values it was given
        return " ".join(str(e).split()) or type(e).__name__, 2
    first = (str(e).strip().splitlines() or [""])[0]
    return (f"{type(e).__name__}: {first} (unexpected: please report it; --debug or LSSVWM_DEBUG=1 shows the "
            f"traceback)", 1)


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.debug or os.environ.get("LSSVWM_DEBUG"):
        a.fn(a)
        return 0
    try:
        a.fn(a)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        print("error: input nested too deeply", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes one line
        message, code = describe_error(e)
        print(f"error: {message}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
