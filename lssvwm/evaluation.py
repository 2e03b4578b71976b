"""Memory evaluation: models scored side by side on the memory task sets (:mod:`lssvwm.data.memory_tasks`), per
frame and against memory distance; and the synthetic recall score (:func:`recall_psnr`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .data.memory_tasks import build_task_set
from .data.worlds import World, world_from_meta


def lpips_fn(download: bool = False):
    """LPIPS (AlexNet) as (fn or None, note). By default only when its network weights are already on this machine
    (nothing is downloaded at run time); ``download=True`` (``--lpips download``) lets torchvision fetch the AlexNet
    weights (~230 MB) into the torch hub folder once."""
    try:
        import lpips  # noqa: F401
        import torch
    except ImportError:
        return None, "LPIPS unavailable: the 'lpips' package is not installed (pip install lpips)"
    alex = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not alex.exists() and not download:
        return None, (f"LPIPS unavailable: AlexNet weights not found at {alex} (never downloaded unless asked: "
                      f"--lpips download)")
    try:
        net = lpips.LPIPS(net="alex", verbose=False).eval()
    except Exception as e:  # no network, a broken torchvision: report, do not stop the evaluation
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        return None, f"LPIPS unavailable: could not build LPIPS (AlexNet){' or download its weights' if download else ''}: {first}"
    return (lambda a, b: net(a.float(), b.float()).flatten()), "LPIPS (AlexNet)"


def load_runs(ckpts: list[str], device: str = "cpu") -> dict:
    """{name: Run} for run or checkpoint folders; names are unique (a repeated name gets a #2, #3 ... suffix, so
    two runs both called 'tiny' keep two rows of results)."""
    from .checkpoint import load_run

    runs: dict = {}
    for c in ckpts:
        path = Path(c)
        if (path / "checkpoints").exists() or not path.name.startswith("step_"):
            name = path.name or str(c)  # a run folder, weights in the HF layout, a shipped name, a hub repo id
        else:  # a checkpoint folder: RUN/step_N
            name = f"{path.parent.parent.name}/{path.name}"
        unique, k = name, 2
        while unique in runs:
            unique, k = f"{name}#{k}", k + 1
        runs[unique] = load_run(c, device=device)
    return runs


def common_resolution(runs: dict) -> int:
    """The pixel resolution the runs share (decoded frames for latent models); comparing needs one."""
    res = {run.pixel_shape[-1] for run in runs.values()}
    if len(res) != 1:
        raise ValueError(f"checkpoints have different frame sizes {sorted(res)}; compare models of one resolution")
    return res.pop()


def distance_curve(distances: np.ndarray, values: np.ndarray, bins=(1, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)):
    """Mean metric per memory-distance bin (frames never seen in the context are left out)."""
    xs, ys = [], []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (distances >= lo) & (distances < hi)
        if sel.any():
            xs.append(float(np.mean(distances[sel])))
            ys.append(float(np.mean(values[sel])))
    return xs, ys


def evaluate_models(ckpts: list[str], task: str, context: int, frames: int, out: str | os.PathLike,
                    episodes: int = 4, seed: int = 0, sampling=None, data: str | None = None,
                    device: str = "cpu", progress: bool = True, lpips: str = "local",
                    context_limit: int | str | None = None) -> dict:
    """Score checkpoints on one task set; writes results.json, metric_vs_distance.png and grid.mp4 to ``out``.

    Returns {"models": {name: {"psnr", "ssim", "lpips", ...}}, "baselines": {...}, ...}: the baselines
    (:func:`_baselines`) are repeating the last context frame and the best context frame, printed under the
    table and drawn in the plots. ``sampling``: overrides of each run's
    sampling settings (:class:`~lssvwm.config.SamplingOverrides`, or a mapping of its fields). ``data``: the
    training data folder whose ``meta.json`` says which fixed mazes to use (default: the first checkpoint's
    training data).

    ``context_limit``: give the models only the last ``context_limit`` frames of each context (the memory
    distances stay those of the whole context); ``"reach"``: each model its own attention reach
    (:meth:`~lssvwm.config.ModelConfig.attention_reach`; the whole context for a model attending over every past
    frame). Given as many frames as its attention reaches, a model without scans makes the same frames as with the
    whole context, so scored with and without the cut, a model shows what its scans remembered from before.
    """
    if context_limit is not None and context_limit != "reach" and not (
            isinstance(context_limit, int) and 1 <= context_limit <= context):
        raise ValueError(f"context_limit must be 'reach' or in [1, context = {context}] frames, got "
                         f"{context_limit!r}")
    import torch
    from tqdm import tqdm

    from .data.episodes import episode_files, episode_tensors, load_episode, read_meta
    from .metrics import psnr, ssim
    from .plots import plot_curves
    from .video import side_by_side, to_uint8, upscale, write_video

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(ckpts, device)
    samplers = {name: run.sampler(sampling) for name, run in runs.items()}
    resolution = common_resolution(runs)
    first = next(iter(runs.values())).cfg
    meta = read_meta(data or first.train.data) if (data or Path(first.train.data).exists()) else {}
    world = world_from_meta(meta) or World()  # data no generator can rebuild: the default built-in maze
    tasks = build_task_set(out / f"tasks_{world.name}_{task}_c{context}_f{frames}_s{seed}_r{resolution}", task,
                           episodes, context, frames, resolution, seed, world=world)
    lp, lp_note = lpips_fn(download=lpips == "download")
    results = {"task": task, "context": context, "frames": frames, "episodes": episodes, "seed": seed,
               "context_limit": context_limit, "task_set": str(tasks), "lpips": lp_note, "models": {}}
    grid_panels = None
    files = episode_files(tasks)
    results["baselines"] = _baselines(files, frames)
    for name, sampler in samplers.items():
        limit = context_limit
        if limit == "reach":  # None (the whole context) for a model whose attention sees every past frame
            limit = runs[name].cfg.model.attention_reach()
            limit = limit if limit is not None and limit < context else None
        per_frame = {"psnr": [], "ssim": [], "lpips": [], "distance": []}
        for e, f in enumerate(tqdm(files, desc=f"eval {name}", disable=not progress)):
            ep = load_episode(f)
            n = int(ep["context_length"])
            tensors = episode_tensors(ep)
            video, acts = tensors["frames"], tensors["actions"]
            start = n - limit if limit else 0  # the cut: only the context's last frames
            sampler.reseed(seed + e)
            pred = sampler.rollout(video[None, start:n], acts[None, start:n], acts[None, n:n + frames])[0]
            gt = video[n:n + frames]
            per_frame["psnr"] += psnr(pred, gt).tolist()
            per_frame["ssim"] += ssim(pred, gt).tolist()
            if lp is not None:
                with torch.no_grad():
                    per_frame["lpips"] += lp(pred, gt).tolist()
            per_frame["distance"] += ep["memory_distance"][:frames].tolist()
            if e == 0:
                scale = max(1, 128 // resolution)
                if grid_panels is None:
                    grid_panels = [upscale(to_uint8(gt), scale)]
                grid_panels.append(upscale(to_uint8(pred), scale))
        summary = {k: float(np.mean(v)) if v else None for k, v in per_frame.items() if k != "distance"}
        results["models"][name] = {**summary, "context_limit": limit, "per_frame": per_frame}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for metric in ("psnr", "ssim"):
        curves = {name: distance_curve(np.array(r["per_frame"]["distance"]), np.array(r["per_frame"][metric]))
                  for name, r in (results["models"] | {f"({BASELINES[k]})": v for k, v in
                                                       results["baselines"].items()}).items()}
        plot_curves(curves, "memory distance (frames since the place was last seen in the context)",
                    metric.upper(), out / f"{metric}_vs_distance.png", f"{task}: {metric.upper()} vs memory distance")
    write_video(out / "grid.mp4", side_by_side(*grid_panels, gap=4), fps=8)
    header = f"{'model':<24} {'SSIM':>7} {'LPIPS':>7} {'PSNR':>7}"
    lines = [header] + [f"{n:<24} {r['ssim']:>7.3f} {('%.3f' % r['lpips']) if r['lpips'] is not None else 'n/a':>7} "
                        f"{r['psnr']:>7.2f}" for n, r in results["models"].items()]
    lines += [f"({BASELINES[k]}, whole context): SSIM {r['ssim']:.3f}, PSNR {r['psnr']:.2f}"
              for k, r in results["baselines"].items()]
    results["table"] = "\n".join(lines)
    cut = ""
    if context_limit == "reach":
        cut = " (each model given only the frames its attention reaches: " + ", ".join(
            f"{n} {r['context_limit'] or 'all'}" for n, r in results["models"].items()) + ")"
    elif context_limit:
        cut = f" (the models given only its last {context_limit})"
    print(f"{task}: {episodes} episodes, {context} context frames{cut}, {frames} generated ({lp_note})")
    print(results["table"])
    print(f"results: {out / 'results.json'}\nplots: {out / 'psnr_vs_distance.png'}, {out / 'ssim_vs_distance.png'}\n"
          f"video (ground truth | " + " | ".join(results["models"]) + f"): {out / 'grid.mp4'}")
    return results


BASELINES = {"repeat_last_frame": "repeat the last context frame",
             "best_context_frame": "best context frame, picked with the truth"}


def _baselines(files, frames: int) -> dict:
    """The two baselines of the follow benchmark on a task set, from each episode's whole context: repeating its
    last frame, and the best context frame for each true frame (the most a model could score by recalling its
    context without rendering anything new; on the look-around task, where every frame was shown one turn back,
    SSIM 1). {name: {"psnr", "ssim", "per_frame": {"psnr", "ssim", "distance"}}}."""
    from .data.episodes import episode_tensors, load_episode
    from .metrics import best_context_frames, psnr, ssim

    per_frame = {k: {"psnr": [], "ssim": [], "distance": []} for k in BASELINES}
    for f in files:
        ep = load_episode(f)
        n = int(ep["context_length"])
        video = episode_tensors(ep)["frames"]
        ctx, gt = video[:n], video[n:n + frames]  # (N, C, H, W), (M, C, H, W)
        for k, guess in (("repeat_last_frame", ctx[-1:].expand_as(gt)),
                         ("best_context_frame", best_context_frames(ctx[None], gt[None])[0])):
            per_frame[k]["psnr"] += psnr(guess, gt).tolist()
            per_frame[k]["ssim"] += ssim(guess, gt).tolist()
            per_frame[k]["distance"] += ep["memory_distance"][:frames].tolist()
    return {k: {"psnr": float(np.mean(v["psnr"])), "ssim": float(np.mean(v["ssim"])), "per_frame": v}
            for k, v in per_frame.items()}


def memory_horizons(run, frames, actions) -> list[dict]:
    """How long each scan head remembers, measured on clips (pixels (B, T, C, H, W) in [-1, 1], actions (B, T)):
    per layer with a scan, each head's memory in frames, 1 / its mean log-decay per frame (after that many frames
    its state keeps 1/e of what it held; the step size depends on the input, hence on the clips). Compare with the
    frames the attention reaches (:meth:`~lssvwm.config.ModelConfig.attention_reach`): memory beyond the attention
    needs heads that remember longer."""
    import torch

    from .models.ssm import resolve_block

    model = run.model
    inputs: dict[int, list] = {}
    hooks = [blk.ssm.register_forward_pre_hook(lambda _, args, i=i: inputs.setdefault(i, []).append(args[0]))
             for i, blk in enumerate(model.blocks) if blk.ssm is not None]
    try:
        with torch.no_grad():
            run.sampler().prefill(frames, actions)  # the clips as context: every frame clean, as committed frames are
    finally:
        for h in hooks:
            h.remove()
    grid = model.cfg.frame_size // model.cfg.patch_size
    out = []
    with torch.no_grad():
        for i, xs in inputs.items():
            ssm = model.blocks[i].ssm
            rate = torch.cat([-ssm.log_decay_per_frame(x).float().flatten(0, 1) for x in xs]).mean(0)  # (heads,)
            bh, bw = resolve_block(ssm.block, grid, grid)
            out.append({"layer": i, "block": "full" if ssm.block is None else list(ssm.block),
                        "steps_per_frame": bh * bw, "horizon": (1 / rate).tolist()})
    return out


def recall_psnr(model, distance: int, length: int, trials: int = 16, seed: int = 1, size: int = 16,
                cue_frames: int = 2) -> float:
    """Mean PSNR of the model's one-shot prediction (from pure noise) of the recall frame at ``distance``: the
    :class:`~lssvwm.diffusion.Sampler` with one step on the uniform grid, so the frame is the clamped x0 estimate
    from pure noise, after a clean context."""
    from .config import SamplingConfig
    from .data.episodes import episode_tensors
    from .data.recall import recall_clip
    from .diffusion import Sampler
    from .metrics import psnr

    rng = np.random.default_rng(seed)
    sampler = Sampler(model, SamplingConfig(steps=1, schedule="uniform", stabilization=0.0), clamp=(-1.0, 1.0))
    scores = []
    for _ in range(trials):
        clip = recall_clip(rng, length, distance, size, cue_frames)
        r = int(clip["recall_index"])
        tensors = episode_tensors(clip)
        frames, acts = tensors["frames"][None], tensors["actions"][None]
        sampler.reseed(len(scores))  # the trial's noise: the same for every model
        x0, _ = sampler.step(sampler.prefill(frames[:, :r], acts[:, :r]), acts[:, r])
        scores.append(float(psnr(x0, frames[:, r])))
    return float(np.mean(scores))
