"""The follow benchmark: does a world model keep predicting the world it is shown?

Held-out trajectories, fixed seeds: the model gets ``context`` true frames and then the true actions of the
next ``frames`` (48) and ``long`` (200) steps, and must generate what the agent sees. Two window sets:

- ``train-mazes``: new trajectories in the mazes of the training data (its fixed ``--mazes``, or the mazes of
  its first training episodes), so what the model learned about those places counts;
- ``unseen-mazes``: trajectories in mazes the training data never had.

Both are rebuilt from the dataset's ``meta.json`` (built-in maze or real Memory Maze). For data no generator
can rebuild (TECO Minecraft, your own videos) the windows come from the validation split (``val``).

Scores per window set, for every generated frame against the truth: SSIM and PSNR (LPIPS when its weights are
on the machine) over frames 1-8, 9-24, 25-48 and all 48, and over 49-100, 101-200 and all 200 of the long
rollout (the 48-frame rollout is the first 48 frames of the 200-frame one: same seed, same frames); a drift
figure (mean of frames 1-8 minus mean of frames 25-48: how much worse the rollout gets as its own errors
compound); teacher-forced scores (every frame predicted from the true frames before it); a control (the free
rollout again, from the same context, with each window's future actions shuffled in time: the same actions in a
wrong order; ``action_gain`` = free minus shuffled says per bin whether the rollout still follows the actions it
is given, and where it drops to zero the model has lost track of where the agent is); and two baselines:
repeating the last context frame, and the best context frame (for each true frame, the context frame most like
it, picked with the truth: how much of what comes was already in view, the most a model that only recalls its
context could score without rendering anything new). Each window's own SSIM per bin is kept too: every binned SSIM
comes with its standard error over the windows, and every model after the first with its paired difference from
the first (the mean of the per-window differences on the same windows and seeds, and its standard error).

    lssvwm eval follow --ckpt runs/a --ckpt runs/b [--data DIR] [--windows 8] [--out runs/follow]

This module builds the windows and scores them; :mod:`lssvwm.follow_report` writes the table and the pictures.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

# frame bins (1-based, inclusive): those of the main (48-frame) scores, then those of the long (200-frame) rollout;
# each set of scores also has "all" (every frame of its length)
BINS_SHORT = ((1, 8), (9, 24), (25, 48))
BINS_LONG = ((49, 100), (101, 200))
TRAJECTORY_SEED = 20_261_123  # held-out trajectories: never a training episode's seed
SHUFFLE_SEED = 1234  # the fixed time shuffle of the control's actions
# with --pose, the first free frames also scored against views from near the true pose (pose_search.near_truth)
NEAR_FRAMES = 8


def window_sets(data: str | os.PathLike, out: str | os.PathLike, context: int, frames: int, windows: int,
                seed: int = 0, resolution: int | None = None, val_fraction: float = 0.1, layout: str = "auto"
                ) -> dict[str, dict]:
    """{set name: {"frames": (W, context + frames, C, H, W) in [-1, 1], "actions": (W, context + frames)}}.

    Rebuilt (and cached under ``out``) from the dataset's ``meta.json`` when a generator made it, else taken from
    the validation split (episodes long enough for the window; fewer than ``windows`` when there are not enough).
    """
    from .data.episodes import read_meta
    from .data.worlds import world_from_meta

    world = world_from_meta(read_meta(data)) if Path(data).is_dir() else None
    steps = context + frames - 1  # an episode of T steps has T + 1 frames; the window starts at frame 0
    if world is not None:
        res = resolution or world.settings.get("resolution", 64)
        sets = {}
        for name in ("train-mazes", "unseen-mazes"):
            folder = Path(out) / f"windows_{name}_c{context}_f{frames}_w{windows}_s{seed}_r{res}"
            _build_window_set(folder, name, world, windows, steps, res, seed)
            sets[name] = _load_windows(folder, context + frames) | {
                "world": world, "resolution": res, "maze_seeds": _set_mazes(world, name, windows)}
        return sets
    return {"val": _val_windows(data, context + frames, windows, val_fraction, layout)}


def _build_window_set(folder: Path, name: str, world, windows: int, steps: int, res: int, seed: int) -> None:
    """Held-out trajectories in the training data's mazes (a new maze per training episode: training episode
    i's maze) or in unseen ones, in the dataset's world (:class:`~lssvwm.data.worlds.World`)."""
    from .data.episodes import episode_seed, save_episode

    spec = {"set": name, "world": world.kind, "settings": world.settings, "data_seed": world.seed,
            "mazes": world.mazes, "windows": windows, "steps": steps, "resolution": res, "seed": seed}
    if (folder / "spec.json").exists() and json.loads((folder / "spec.json").read_text()) == spec:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for i, maze_seed in enumerate(_set_mazes(world, name, windows)):
        ep = world.episode(episode_seed(TRAJECTORY_SEED + seed, i), steps, maze_seed, res)
        save_episode(folder / f"ep_{i:06d}.npz", ep)
    tmp = folder / "spec.json.tmp"
    tmp.write_text(json.dumps(spec, indent=2))
    os.replace(tmp, folder / "spec.json")


def _set_mazes(world, name: str, windows: int) -> list[int]:
    """The maze seed of each held-out trajectory of a window set: the training episodes' mazes, or unseen ones."""
    maze = world.unseen_maze if name == "unseen-mazes" else world.training_maze
    return [maze(i) for i in range(windows)]


def _load_windows(folder: Path, length: int) -> dict:
    """The set's frames (W, length, C, H, W) and actions; with ``poses`` (W, length, 3) as x, y, heading (radians)
    where every episode recorded its agent's position and heading."""
    from .data.episodes import episode_files, episode_tensors, load_episode

    raw = [load_episode(f) for f in episode_files(folder)]
    eps = [episode_tensors(e) for e in raw]
    out = {"frames": torch.stack([e["frames"][:length] for e in eps]),
           "actions": torch.stack([e["actions"][:length] for e in eps])}
    if all("agent_pos" in e and "agent_dir" in e for e in raw):
        out["poses"] = np.stack([np.concatenate([e["agent_pos"][:length], np.arctan2(
            e["agent_dir"][:length, 1:], e["agent_dir"][:length, :1])], 1) for e in raw]).astype(np.float64)
    return out


def _val_windows(data, length: int, windows: int, val_fraction: float, layout: str) -> dict:
    from .data.dataset import EpisodeWindows

    ds = EpisodeWindows(data, 1, "val", val_fraction, layout=layout)
    picked = [ds.episode(e) for e in range(len(ds.files))]
    picked = [e for e in picked if e["frames"].shape[0] >= length][:windows]
    if not picked:
        raise ValueError(f"{data}: no validation episode has the {length} frames a follow window needs "
                         f"(context + frames); use a shorter --context/--long")
    return {"frames": torch.stack([e["frames"][:length] for e in picked]),
            "actions": torch.stack([e["actions"][:length] for e in picked])}


def _bins(per_frame: np.ndarray, bins) -> dict:
    """Means over the bins that fit in ``per_frame`` (frames on its last axis), and over all of it: floats for one
    curve (M,), a list per window for (W, M)."""
    def mean(v):
        m = np.asarray(v, dtype=np.float64).mean(-1)
        return float(m) if m.ndim == 0 else [float(x) for x in m]

    n = per_frame.shape[-1]
    return {f"{lo}-{hi}": mean(per_frame[..., lo - 1:hi]) for lo, hi in bins if n >= hi} | {"all": mean(per_frame)}


def score(pred: torch.Tensor, gt: torch.Tensor, lpips=None) -> tuple[dict, np.ndarray]:
    """Per-frame metrics of (W, M, C, H, W) predictions, averaged over the windows: {"ssim": [M], ...}, and each
    window's own SSIM per frame (W, M), from which :func:`window_bins` and :func:`paired_difference` take the
    spread over the windows."""
    from .metrics import psnr, ssim

    per_window = ssim(pred, gt)  # (W, M)
    out = {"ssim": per_window.mean(0).tolist(), "psnr": psnr(pred, gt).mean(0).tolist()}
    if lpips is not None:
        with torch.no_grad():
            vals = torch.stack([lpips(pred[:, i], gt[:, i]) for i in range(gt.shape[1])], 1)  # (W, M)
        out["lpips"] = vals.mean(0).tolist()
    return out, per_window.double().cpu().numpy()


def window_bins(per_window: np.ndarray, short: int) -> dict:
    """Each window's SSIM (W, M) averaged over the bins of :func:`summarize`: {"ssim": {bin: [W]}, and
    "ssim_long" where there are more than ``short`` frames}."""
    out = {"ssim": _bins(per_window[:, :short], BINS_SHORT)}
    if per_window.shape[1] > short:
        out["ssim_long"] = _bins(per_window, BINS_LONG)
    return out


def standard_error(values) -> float | None:
    """The standard error of the mean of ``values`` (sample std / sqrt(n)); None for fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None


def paired_difference(a: dict, b: dict) -> dict:
    """Per bin, model a minus model b on the same windows (two :func:`window_bins` outputs): the mean of the
    per-window differences and its standard error. Differences on shared windows vary far less than either
    model's scores over the windows, so this is the figure to judge a comparison by."""
    out = {}
    for kind, bins in a.items():
        if kind in b:
            out[kind] = {}
            for name, va in bins.items():
                d = np.subtract(va, b[kind][name])
                out[kind][name] = {"diff": float(d.mean()), "se": standard_error(d)}
    return out


def shuffled_actions(actions: torch.Tensor, seed: int = SHUFFLE_SEED) -> torch.Tensor:
    """Each window's actions ((W, M) ids or (W, M, A) vectors) in a fixed random order along time: the same
    actions (so the same amount of turning and moving), at the wrong times."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(actions.shape[1], generator=g) for _ in range(actions.shape[0])])  # (W, M)
    if actions.dim() == 3:
        order = order[..., None].expand_as(actions)
    return actions.gather(1, order.to(actions.device))


def action_gain(free: dict, control: dict) -> dict:
    """Per bin, the free rollout's score minus the shuffled-actions control's (both ``summarize`` outputs)."""
    return {m: {b: free[m][b] - control[m][b] for b in control[m]} for m in ("ssim", "psnr", "lpips") if m in control}


def summarize(per_frame: dict, short: int, per_window: dict | None = None) -> dict:
    """Binned means and the drift figure (frames 1-8 minus 25-48) of per-frame metrics; with ``per_window`` (each
    window's binned SSIM, :func:`window_bins`) also the standard error of each binned SSIM over the windows
    ("ssim_se", "ssim_long_se")."""
    out = {}
    for metric, values in per_frame.items():
        v = np.asarray(values)
        out[metric] = _bins(v[:short], BINS_SHORT)
        if v.shape[0] > short:
            out[f"{metric}_long"] = _bins(v, BINS_LONG)
        if "1-8" in out[metric] and "25-48" in out[metric]:
            out[f"{metric}_drift"] = out[metric]["1-8"] - out[metric]["25-48"]
    if per_window is not None:
        for kind, bins in per_window.items():
            out[f"{kind}_se"] = {b: standard_error(v) for b, v in bins.items()}
    return out


def evaluate_follow(ckpts: list[str], data: str | None = None, out: str | os.PathLike = "runs/follow",
                    context: int = 32, frames: int = 48, long: int = 200, windows: int = 8, seed: int = 0,
                    sampling=None, device: str = "cpu", progress: bool = True,
                    videos: bool = True, lpips: str = "local", pose: bool = False, pose_grid: float = 0.2) -> dict:
    """Score checkpoints side by side on the follow windows; writes ``results.json`` (binned scores and
    per-frame curves), ``strip_<set>.png`` (ground truth, then each model's free rollout and teacher-forced
    frames at frames 1, 2, 4, ... 200), ``ssim_vs_frame.png`` and, with ``videos``, ``rollout_<set>.gif`` and
    ``next_frame_<set>.gif`` (the first window: ground truth beside each model's free rollout / one-step-ahead
    predictions) to ``out``. ``sampling``: overrides of each run's sampling settings
    (:class:`~lssvwm.config.SamplingOverrides`, or a mapping of its fields). ``pose`` (built-in maze data only):
    also where each free, one-step-ahead and shuffled-actions frame puts the agent (:mod:`~lssvwm.pose_search`,
    a bank of views on a ``pose_grid``-spaced grid), and the same for the true frames as the search's calibration,
    and how much the first free frames look like a view from near the true pose (``near_truth``);
    adds ``pose`` entries to the results and writes ``pose_vs_frame.png``. Returns the results."""
    from .resources import check_fits
    from .evaluation import common_resolution, load_runs, lpips_fn
    from .metrics import best_context_frames
    from .follow_report import write_report

    if context < 1 or frames < 1 or long < frames or windows < 1:
        raise ValueError(f"need context >= 1, frames >= 1, long >= frames and windows >= 1 (got context={context}, "
                         f"frames={frames}, long={long}, windows={windows})")
    out = Path(out)
    runs = load_runs(ckpts, device)
    resolution = common_resolution(runs)
    first = next(iter(runs.values())).cfg
    # held at once: the windows of both sets (and their episodes), and per model the free, teacher-forced and
    # shuffled-actions rollouts of every window, as float pixels
    frame_bytes = 4 * 3 * resolution**2  # RGB pixels (latent models are scored on decoded frames)
    check_fits(f"the follow benchmark ({windows} windows per set, {context} context + {long} generated frames, "
               f"{len(runs)} model(s))", 2 * windows * (context + long) * frame_bytes * (2 + 3 * len(runs)),
               "use fewer --windows or a shorter --long / --context")
    out.mkdir(parents=True, exist_ok=True)
    data = data or first.train.data
    sets = window_sets(data, out, context, long, windows, seed, resolution, first.train.val_fraction,
                       first.train.data_layout)
    pose_sets = _pose_sets(sets, data, context, long, pose_grid) if pose else {}
    lp, lp_note = lpips_fn(download=lpips == "download")
    results = {"data": str(data), "context": context, "frames": frames, "long": long, "seed": seed,
               "lpips": lp_note, "sets": {}, "models": {}}
    strips = {}
    for set_name, win in sets.items():
        video, acts = win["frames"], win["actions"]
        ctx, gt = video[:, :context], video[:, context:context + long]
        (repeat, repeat_w), (best, best_w) = (score(ctx[:, -1:].expand_as(gt), gt, lp),
                                              score(best_context_frames(ctx, gt), gt, lp))
        results["sets"][set_name] = {"windows": int(video.shape[0]),
                                     "repeat_last_frame": summarize(repeat, frames, window_bins(repeat_w, frames)),
                                     "best_context_frame": summarize(best, frames, window_bins(best_w, frames)),
                                     "per_frame": {"repeat_last_frame": _rounded(repeat),
                                                   "best_context_frame": _rounded(best)}}
        strips[set_name] = [("ground truth", gt)]
    # all window sets in one batch: per-frame calls cost about the same for 8 or 16 windows on a CPU
    video = torch.cat([w["frames"] for w in sets.values()])[:, :context + long]
    acts = torch.cat([w["actions"] for w in sets.values()])[:, :context + long]
    sizes = [w["frames"].shape[0] for w in sets.values()]
    ctx, gt = video[:, :context], video[:, context:]
    ctx_a, fut_a = acts[:, :context], acts[:, context:]
    per_window = {}  # (model, set) -> {"free" / "teacher_forced": window_bins}
    for name, run in runs.items():
        sampler = run.sampler(sampling)
        results["models"][name] = {"checkpoint": str(run.checkpoint), "sampling": vars(sampler.cfg).copy(),
                                   "train_steps": _train_steps(run), "sets": {}}
        sampler.reseed(sampler.cfg.seed)
        free = sampler.rollout(ctx, ctx_a, fut_a, progress=progress)
        sampler.reseed(sampler.cfg.seed)
        tf = sampler.rollout(ctx, ctx_a, fut_a[:, :frames], teacher_frames=gt[:, :frames], progress=progress)
        sampler.reseed(sampler.cfg.seed)
        ctl = sampler.rollout(ctx, ctx_a, shuffled_actions(fut_a[:, :frames]), progress=progress)
        for set_name, f, t, c, g in zip(sets, free.split(sizes), tf.split(sizes), ctl.split(sizes), gt.split(sizes)):
            (free_pf, free_w), (tf_pf, tf_w), (ctl_pf, ctl_w) = (score(f, g, lp), score(t, g[:, :frames], lp),
                                                                 score(c, g[:, :frames], lp))
            free_b, tf_b = window_bins(free_w, frames), window_bins(tf_w, frames)
            per_window[name, set_name] = {"free": free_b, "teacher_forced": tf_b}
            free_s, ctl_s = summarize(free_pf, frames, free_b), summarize(ctl_pf, frames, window_bins(ctl_w, frames))
            results["models"][name]["sets"][set_name] = {
                "free": free_s, "teacher_forced": summarize(tf_pf, frames, tf_b), "shuffled_actions": ctl_s,
                "action_gain": action_gain(free_s, ctl_s),
                "per_frame": {"free": _rounded(free_pf), "teacher_forced": _rounded(tf_pf),
                              "shuffled_actions": _rounded(ctl_pf)},
                "per_window": {k: _rounded_bins(v) for k, v in per_window[name, set_name].items()}}
            strips[set_name] += [(f"{name}: free", f), (f"{name}: one step ahead", t)]
            if set_name in pose_sets:
                pose_sets[set_name]["videos"] |= {(name, "free"): f, (name, "teacher_forced"): t,
                                                  (name, "shuffled_actions"): c}
    # every model after the first against the first, window by window (the same windows, context and seeds)
    base = next(iter(runs))
    for name in list(runs)[1:]:
        for set_name in sets:
            results["models"][name]["sets"][set_name]["versus"] = {"model": base} | {
                kind: paired_difference(per_window[name, set_name][kind], per_window[base, set_name][kind])
                for kind in ("free", "teacher_forced")}
    if pose_sets:
        from .pose_search import track_all
    for set_name, p in pose_sets.items():  # one maze's bank of views at a time, for every model's frames
        tracked = {k: _pose_summary(v, frames) for k, v in track_all(p["videos"], p["envs"], p["poses"],
                                                                        pose_grid).items()}
        results["sets"][set_name]["pose"] = tracked.pop("truth")
        for (name, kind), summary in tracked.items():
            if kind == "free":
                summary["near_truth"] = _near_truth_summary(p["videos"][name, kind], p["envs"], p["poses"])
            results["models"][name]["sets"][set_name].setdefault("pose", {})[kind] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1))
    first_context = {set_name: win["frames"][0, :context] for set_name, win in sets.items()}
    results["table"] = write_report(results, strips, first_context, out, videos)
    return results


def _pose_sets(sets: dict, data, context: int, long: int, grid: float) -> dict[str, dict]:
    """Per window set: the environments of its trajectories' mazes, the true poses (W, long, 3) of the frames to
    generate, and the videos to locate (the truth so far; each model's rollouts are added). Only for held-out
    trajectories that the built-in maze rebuilt (its ``meta.json`` names it); checked before any rollout."""
    from .pose_search import bank_bytes
    from .resources import check_fits

    out = {}
    for name, win in sets.items():
        world = win.get("world")
        if world is None or world.kind != "maze" or "poses" not in win:
            raise ValueError(f"{data}: pose tracking (--pose) needs data made by the built-in maze (`lssvwm data "
                             f"maze`), whose meta.json lets the benchmark rebuild its mazes; this dataset's "
                             f"window set '{name}' has no maze to search")
        envs = []
        for maze_seed in win["maze_seeds"]:
            env = world.env(1, win["resolution"])
            env.reset(seed=0, options={"maze_seed": maze_seed})
            envs.append(env)
        check_fits(f"the pose search's views of one maze (grid {grid} cells)", bank_bytes(envs[0], grid),
                   "use a coarser --pose-grid")
        out[name] = {"envs": envs, "poses": win["poses"][:, context:context + long],
                     "videos": {"truth": win["frames"][:, context:context + long]}}
    return out


def _pose_summary(per_window: dict[str, np.ndarray], short: int) -> dict:
    """Pose tracking of one video ({metric: (W, M)}): per frame the means over the windows (``per_frame``), and
    their means over each bin's frames."""
    per_frame = {k: v.mean(0) for k, v in per_window.items()}
    return summarize(per_frame, short) | {"per_frame": _rounded(per_frame)}


def _near_truth_summary(video: torch.Tensor, envs: list, poses: np.ndarray) -> dict:
    """How much each of the first :data:`NEAR_FRAMES` free frames (``video`` (W, M, 3, H, W)) looks like a view
    from near the agent's true pose (:func:`~lssvwm.pose_search.near_truth`): the mean over the windows per frame
    (``per_frame``), and over those ``frames`` (``mean``)."""
    from .pose_search import near_truth

    n = min(NEAR_FRAMES, video.shape[1])
    fit = np.stack([near_truth(video[i, :n], env, poses[i, :n])[0] for i, env in enumerate(envs)]).mean(0)
    return {"frames": n, "mean": float(fit.mean()), "per_frame": _round4(fit)}


def _round4(values) -> list[float]:
    """Per-frame values as JSON floats to 4 decimals."""
    return [round(float(x), 4) for x in values]


def _rounded(per_frame: dict) -> dict:
    return {k: _round4(v) for k, v in per_frame.items()}


def _rounded_bins(bins: dict) -> dict:
    """:func:`window_bins` output with each window's value to 4 decimals."""
    return {kind: _rounded(per_bin) for kind, per_bin in bins.items()}


def _train_steps(run) -> int | None:
    """Training steps of a checkpoint folder ``step_XXXXXXX`` (None for weights saved elsewhere)."""
    name = run.checkpoint.name
    return int(name[len("step_"):]) if name.startswith("step_") and name[len("step_"):].isdigit() else None
