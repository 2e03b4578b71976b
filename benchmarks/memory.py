"""The paper's memory experiment: train every model of its comparison on the same data, steps, seeds and recipe,
then score them on spatial retrieval and spatial reasoning, per memory-distance bin, and at contexts beyond the
training clip (extrapolation).

    python -m benchmarks.memory --preset cpu               # `small` models on 32x32 mazes, 2-core CPU
    python -m benchmarks.memory --preset gpu --seeds 0 1 2 # `base` models on 64x64 mazes, one GPU (hours)
    python -m benchmarks.memory --preset smoke             # `tiny`, seconds: checks the pipeline end to end

Every model uses the demo's recipe (lr, EDM sampler, previous-frame input) and the same steps, with attention
windows of k frames. A stack of L windowed attention layers reaches R = 1 + L (k - 1) frames back (one more with the
previous-frame input; ``ModelConfig.attention_reach``), not k: each layer attends to frames the layer below already
mixed. So the limited-context transformer sees R frames, and only memory can help beyond R; the presets' windows
keep R well below the training clip, so that training has frames beyond R to learn from. Memory distance is the
number of frames since the agent last saw the place during the context; scores are reported in the bins ``< k``
(inside one window), ``k..R-1`` (inside the stacked attention's reach) and ``R+`` (beyond it), and for places
never seen. Retrieval is also scored with contexts of 2x and 4x the training clip (extrapolation), and once more
with a 4x-clip context retraced for 4x-clip frames: a retrace of F frames reaches memory distances up to ~2F, so
this long retrace puts most of its frames beyond R, and the claim about memory beyond the attention window is
checked on it. The long retrace is run twice: with the whole context, and with each model given only the context's
last R frames; the difference, per model and bin, is what the model remembered from beyond R (the
limited-context transformer, the control, must lose nothing).

Writes ``benchmarks/results/memory_<preset>/`` (data, runs per seed, eval folders) and ``memory_<preset>.json``,
``memory_<preset>_distance.png`` (SSIM vs memory distance per model, mean over seeds) beside it; prints the
paper's table (SSIM / LPIPS / PSNR, mean +- spread over seeds), the bins, and the paper's claims checked.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lssvwm.config import DiffusionConfig, RunConfig, SamplingConfig, TrainConfig, model_preset
from lssvwm.demo import RECIPE

# model name -> (variant, long-context training probability)
MODELS = {
    "hybrid (ours)": ("hybrid", 0.5),
    "full-context transformer": ("full-transformer", 0.5),
    "limited-context transformer": ("window-transformer", 0.5),
    "mamba2": ("mamba2", 0.5),
    "mamba2 + local attention": ("mamba2-local", 0.5),
    "hybrid w/o long-context training": ("hybrid", 0.0),
}
# the eval whose retrace reaches well beyond the attention's reach (see the module's docstring)
LONG_RETRACE = "retrieval, 4x clip retraced"
# the same, each model given only the context's last R frames, R = the limited-context transformer's attention reach
# (ModelConfig.attention_reach: its windows stacked over its layers): what a model loses here is what it remembered
# from beyond that reach (the limited-context transformer itself loses nothing)
LONG_RETRACE_CUT = "retrieval, 4x clip retraced, context cut to the attention reach"
HYBRID, FULL, WINDOW, NO_LCT = ("hybrid (ours)", "full-context transformer", "limited-context transformer",
                                "hybrid w/o long-context training")

PRESETS = {
    # model preset, frame size, attention window k, previous-frame input; data (episodes x steps, fixed mazes);
    # training (steps, batch, clip); eval (context, generated frames, task episodes). The attention's reach R
    # (:func:`reach`) stays well below the clip: cpu 6 of 16 frames, gpu 14 of 64. The previous-frame input stays on
    # here (the tables in docs/results.md were measured with it) although the demo's recipe dropped it.
    "smoke": dict(model="tiny", res=16, window=2, episodes=6, ep_steps=80, mazes=2, steps=4, batch=2, clip=8,
                  ctx=8, frames=8, eps=1),
    "cpu": dict(model="small", d_model=RECIPE["d_model"], res=32, window=2, prev_frame=True,
                episodes=64, ep_steps=400, mazes=4, steps=600, batch=8, clip=16, ctx=16, frames=16, eps=4),
    "gpu": dict(model="base", res=64, window=2, prev_frame=True, episodes=2000, ep_steps=1000,
                mazes=0, steps=100_000, batch=32, clip=64, ctx=64, frames=64, eps=32),
}
PRESETS["paper"] = PRESETS["gpu"]  # the old name


def distance_bins(k: int, r: int) -> dict[str, tuple[int, int]]:
    """Memory-distance bins (frames, [low, high)) for attention windows of ``k`` frames stacked to reach ``r``
    frames: inside one window, inside the reach, beyond it (a place last seen r or more frames ago)."""
    return {f"<{k}": (0, k), f"{k}..{r - 1}": (k, r), f"{r}+": (r, 1 << 62)}


def binned(per_frame: dict, k: int, r: int) -> dict:
    """Mean SSIM / PSNR per distance bin (and for never-seen places) from an evaluation's per-frame lists."""
    d = np.asarray(per_frame["distance"])
    out = {}
    for name, (lo, hi) in {**distance_bins(k, r), "never seen": (-1, 0)}.items():
        sel = (d >= lo) & (d < hi)
        out[name] = {m: float(np.mean(np.asarray(per_frame[m])[sel])) if sel.any() else None for m in ("ssim", "psnr")}
        out[name]["frames"] = int(sel.sum())
    return out


def preset_model(s: dict, variant: str):
    """The model config of ``variant`` in preset ``s`` (the cpu preset: at the demo's width)."""
    width = {"d_model": s["d_model"]} if "d_model" in s else {}
    return model_preset(s["model"], variant, window=s["window"], prev_frame=s.get("prev_frame", False), **width)


def reach(s: dict) -> int:
    """The frames the limited-context transformer of preset ``s`` sees (its attention windows stacked over its
    layers): the long retrace's context is cut to this many frames in :data:`LONG_RETRACE_CUT`."""
    return preset_model(s, "window-transformer").attention_reach()


def run_config(s: dict, variant: str, lct: float, data: Path, run: Path, seed: int) -> RunConfig:
    """The run config of one model of preset ``s``: ``variant`` with long-context training probability ``lct``,
    trained on ``data`` into ``run`` with training seed ``seed``, on the demo's recipe (sampled at temperature 1,
    as the experiment's recorded tables were: a colder sampler would move every model's scores)."""
    return RunConfig(model=preset_model(s, variant), diffusion=DiffusionConfig(long_context_prob=lct),
                     sampling=SamplingConfig(**RECIPE["sampling"]).replace(temperature=1.0),
                     train=TrainConfig(data=str(data), out=str(run), steps=s["steps"], batch_size=s["batch"],
                                       clip_len=s["clip"], lr=RECIPE["lr"], warmup=min(50, s["steps"] // 4),
                                       seed=seed, ckpt_every=max(1, s["steps"] // 4)))


def train_models(s: dict, data: Path, out: Path, seed: int, models: dict | None = None) -> dict[str, Path]:
    """Train (or resume, or reuse when done) each of ``models`` (default :data:`MODELS`; name -> (variant,
    long-context training probability)) of preset ``s`` on ``data`` into ``out/seed<seed>/<variant>``."""
    from lssvwm.train import train

    runs = {}
    for name, (variant, lct) in (models or MODELS).items():
        run = out / f"seed{seed}" / (variant + ("" if lct else "-no-lct"))
        cfg = run_config(s, variant, lct, data, run, seed)
        if (run / "config.yaml").exists() and (diff := saved_run_differences(run, cfg)):
            raise SystemExit(f"{run}: a saved run of this experiment trained with other settings than this preset's "
                             f"({'; '.join(diff)}); it would be scored under this preset's name: pass another "
                             f"--out or delete the run")
        if not (run / "checkpoints" / "latest").exists() or _step(run) < s["steps"]:
            print(f"== training {name}, seed {seed} ==", flush=True)
            train(cfg, resume=(run / "checkpoints" / "latest").exists())
        runs[name] = run
    return runs


# the training recipe's fields a saved run must share with the preset to be reused (out and data may move)
RECIPE_FIELDS = ("steps", "batch_size", "clip_len", "lr", "warmup", "seed")


def saved_run_differences(run: Path, cfg: RunConfig) -> list[str]:
    """Where the run saved at ``run`` (its config.yaml) was trained differently from ``cfg``: the model's
    architecture, diffusion, sampling and the recipe (:data:`RECIPE_FIELDS`). Empty when it can be reused."""
    from dataclasses import asdict

    from lssvwm.checkpoint import architecture_differences
    from lssvwm.config import load_config

    saved = load_config(run / "config.yaml")
    diff = architecture_differences(cfg.model, saved.model)
    for section, fields in (("diffusion", None), ("sampling", None), ("train", RECIPE_FIELDS)):
        a, b = asdict(getattr(cfg, section)), asdict(getattr(saved, section))
        diff += [f"{section}.{k}: {a[k]!r} here, {b.get(k)!r} in the run" for k in (fields or a) if a[k] != b.get(k)]
    return diff


def evaluate(runs: dict[str, Path], s: dict, data: Path, out: Path, seed: int) -> dict:
    """{eval name: {model: {ssim, lpips, psnr, bins}}} for retrieval and reasoning at the main context,
    retrieval at 2x and 4x the training clip, and the long retrace (:data:`LONG_RETRACE`; again with the context
    cut to the attention's reach, :data:`LONG_RETRACE_CUT`). Kept in
    ``eval_seed<seed>/scores.json`` beside the runs' steps, so seeds run as separate processes (``--seeds 0`` and
    ``--seeds 1`` side by side) are then reported together by ``--seeds 0 1`` without evaluating again."""
    from lssvwm.evaluation import evaluate_models

    # eval name -> (task, context, generated frames, context limit)
    plan = {"retrieval": ("retrieval", s["ctx"], s["frames"], None),
            "reasoning": ("reasoning", s["ctx"], s["frames"], None)}
    for mult in (2, 4):
        plan[f"retrieval @ {mult}x clip"] = ("retrieval", mult * s["clip"], s["frames"], None)
    plan[LONG_RETRACE] = ("retrieval", 4 * s["clip"], 4 * s["clip"], None)
    plan[LONG_RETRACE_CUT] = ("retrieval", 4 * s["clip"], 4 * s["clip"], reach(s))
    saved = out / f"eval_seed{seed}" / "scores.json"
    steps = {name: _step(run) for name, run in runs.items()}
    res = {}
    if saved.exists():  # the evals kept for these runs and settings are not run again; new ones are added
        old = json.loads(saved.read_text())
        if old.get("steps") == steps and old.get("settings") == s:
            res = {key: v for key, v in old["scores"].items() if key in plan}
    if set(res) == set(plan):
        return res

    names = {r.name: n for n, r in runs.items()}
    for key, (task, ctx, frames, limit) in plan.items():
        if key in res:
            continue
        folder = key.replace(" ", "").replace("@", "_").replace(",", "_")
        r = evaluate_models([str(p) for p in runs.values()], task, ctx, frames, out / f"eval_seed{seed}" / folder,
                            s["eps"], seed, data=str(data), progress=False, context_limit=limit)
        res[key] = {"context": ctx, "frames": frames, "context_limit": limit, "models": {
            names.get(n, n): {"ssim": v["ssim"], "lpips": v["lpips"], "psnr": v["psnr"],
                              "bins": binned(v["per_frame"], s["window"], reach(s)),
                              "per_frame": {m: v["per_frame"][m] for m in ("ssim", "psnr", "distance")}}
            for n, v in r["models"].items()}}
    saved.write_text(json.dumps({"settings": s, "steps": steps, "scores": {key: res[key] for key in plan}}))
    return {key: res[key] for key in plan}


def aggregate(per_seed: dict[int, dict]) -> dict:
    """Mean and spread (max - min) over seeds of every score; per distance bin also the frames it holds, summed
    over seeds."""
    first = next(iter(per_seed.values()))
    out = {}
    for key, ev in first.items():
        out[key] = {"context": ev["context"], "frames": ev["frames"], "context_limit": ev.get("context_limit"),
                    "models": {}}
        for model, r in ev["models"].items():
            def stat(get):
                vals = [get(per_seed[s][key]["models"][model]) for s in per_seed]
                vals = [v for v in vals if v is not None]
                return None if not vals else {"mean": float(np.mean(vals)), "spread": float(np.ptp(vals))}
            out[key]["models"][model] = {
                **{m: stat(lambda x, m=m: x[m]) for m in ("ssim", "lpips", "psnr")},
                "bins": {b: {**{m: stat(lambda x, b=b, m=m: x["bins"][b][m]) for m in ("ssim", "psnr")},
                             "frames": sum(per_seed[s][key]["models"][model]["bins"][b]["frames"]
                                           for s in per_seed)}
                         for b in r["bins"]}}
    return out


def paired_gaps(per_seed: dict[int, dict], key: str, b: str, a: str = HYBRID, ref: str = WINDOW,
                ref_key: str | None = None) -> list[float]:
    """Per seed, model ``a``'s SSIM minus model ``ref``'s in bin ``b`` of eval ``key`` (``ref`` scored in eval
    ``ref_key`` when given): both were scored on the same episodes and frames, so the pair's difference varies less
    over seeds than either score does."""
    def bin_ssim(s, model, k):
        return per_seed[s][k]["models"][model]["bins"][b]["ssim"]

    pairs = [(bin_ssim(s, a, key), bin_ssim(s, ref, ref_key or key)) for s in per_seed]
    return [x - y for x, y in pairs if x is not None and y is not None]


def memory_used(per_seed: dict[int, dict], model: str, b: str) -> list[float]:
    """Per seed, what ``model``'s memory from beyond the attention's reach is worth in bin ``b``: its SSIM on the long
    retrace with the whole context minus with the context cut to that reach (same episodes and frames)."""
    return paired_gaps(per_seed, LONG_RETRACE, b, model, model, ref_key=LONG_RETRACE_CUT)


def claims(agg: dict, r: int, per_seed: dict[int, dict]) -> list[str]:
    """The paper's ordering, checked against the seed spread. Memory beyond the attention window is judged on the
    long retrace's frames beyond the attention's reach ``r`` (bin ``r+``), the rest on the main retrieval eval. The
    first claim is shown when the mean gap is >= 0.05, exceeds the seed spread of both scores, and every seed's
    paired gap is > 0; the last (memory used) when every seed's hybrid loses SSIM there with its context cut to r."""
    far = f"{r}+"

    def ssim(model, key="retrieval", b=None):
        r = agg[key]["models"][model]
        v = r["bins"][b]["ssim"] if b else r["ssim"]
        return (v["mean"], v["spread"]) if v else (float("nan"), float("nan"))

    lines = []
    h, hs = ssim(HYBRID, LONG_RETRACE, far)
    w, ws = ssim(WINDOW, LONG_RETRACE, far)
    n = agg[LONG_RETRACE]["models"][HYBRID]["bins"][far]["frames"]
    gaps = paired_gaps(per_seed, LONG_RETRACE, far)
    lines.append(f"distance {far}, beyond the attention's reach ({LONG_RETRACE}, {n} frames over all seeds): hybrid "
                 f"SSIM {h:.3f} vs limited-context transformer {w:.3f} (gap {h - w:+.3f}, target >= +0.05 beyond "
                 f"the seed spread {max(hs, ws):.3f}); per seed, paired: {', '.join(f'{g:+.3f}' for g in gaps)} -> "
                 + ("shown" if h - w >= 0.05 and h - w > max(hs, ws) and min(gaps, default=0) > 0 else "not shown"))
    h_all, _ = ssim(HYBRID)
    f_all, fs = ssim(FULL)
    lines.append(f"retrieval: hybrid {h_all:.3f} vs full-context transformer {f_all:.3f} (gap {h_all - f_all:+.3f}, "
                 f"target within 0.03)")
    n_all, ns = ssim(NO_LCT)
    lines.append(f"retrieval: hybrid {h_all:.3f} vs hybrid w/o long-context training {n_all:.3f} "
                 f"(gap {h_all - n_all:+.3f}, target > 0 beyond the seed spread {ns:.3f})")
    x4, _ = ssim(HYBRID, "retrieval @ 4x clip")
    lines.append(f"extrapolation: hybrid retrieval at 4x the training clip {x4:.3f} vs {h_all:.3f} at the main "
                 f"context (loss {h_all - x4:+.3f}, target < 0.05)")
    used, control = memory_used(per_seed, HYBRID, far), memory_used(per_seed, WINDOW, far)
    per = lambda gaps: ", ".join(f"{g:+.3f}" for g in gaps)
    lines.append(f"memory from beyond the attention's reach, distance {far} ({LONG_RETRACE} minus the same with the "
                 f"context cut to the last {r} frames), per seed: hybrid {per(used)} -> "
                 + ("used" if used and min(used) > 0 else "not used")
                 + f"; limited-context transformer (the control: must be 0) {per(control)}")
    return lines


def report(agg: dict, seeds: list[int], per_seed: dict[int, dict]) -> str:
    def fmt(v, digits=3):
        if v is None:
            return "n/a"
        return f"{v['mean']:.{digits}f}" + (f"+-{v['spread'] / 2:.{digits}f}" if len(seeds) > 1 else "")

    lines = [f"seeds {seeds}; SSIM / LPIPS / PSNR (mean{' +- half the spread' if len(seeds) > 1 else ''})"]
    for key, ev in agg.items():
        first = next(iter(ev["models"].values()))
        bins = list(first["bins"])
        lines.append(f"\n{key} (context {ev['context']}, {ev['frames']} generated; frames per bin over all seeds: "
                     + ", ".join(f"{b} {first['bins'][b]['frames']}" for b in bins) + ")")
        lines.append(f"  {'model':<34} {'SSIM':>12} {'LPIPS':>12} {'PSNR':>13}   " +
                     "  ".join(f"SSIM {b:>10}" for b in bins))
        for model, r in ev["models"].items():
            lines.append(f"  {model:<34} {fmt(r['ssim']):>12} {fmt(r['lpips']):>12} {fmt(r['psnr'], 2):>13}   " +
                         "  ".join(f"{fmt(r['bins'][b]['ssim']):>15}" for b in bins))
    bins = [b for b in next(iter(agg[LONG_RETRACE]["models"].values()))["bins"] if b != "never seen"]
    lines.append(f"\nmemory from beyond the attention's reach: SSIM on '{LONG_RETRACE}' minus '{LONG_RETRACE_CUT}' "
                 f"({agg[LONG_RETRACE_CUT]['context_limit']} frames), per seed {seeds}")
    lines.append(f"  {'model':<34} " + "  ".join(f"{b:>28}" for b in bins))
    for model in MODELS:
        lines.append(f"  {model:<34} " + "  ".join(
            f"{' '.join(f'{g:+.3f}' for g in memory_used(per_seed, model, b)):>28}" for b in bins))
    return "\n".join(lines)


def plot_distance(per_seed: dict[int, dict], path: Path) -> Path:
    """SSIM vs memory distance per model, all seeds pooled, from the long retrace (it spans all distances); the
    hybrid also with its context cut to the attention's reach (what it scores without its scans' memory)."""
    from lssvwm.evaluation import distance_curve
    from lssvwm.plots import plot_curves

    key = LONG_RETRACE
    curves = {}
    for label, (model, k) in {**{m: (m, key) for m in MODELS},
                              f"{HYBRID}, context cut to the attention's reach": (HYBRID, LONG_RETRACE_CUT)}.items():
        d = np.concatenate([np.asarray(per_seed[s][k]["models"][model]["per_frame"]["distance"]) for s in per_seed])
        v = np.concatenate([np.asarray(per_seed[s][k]["models"][model]["per_frame"]["ssim"]) for s in per_seed])
        curves[label] = distance_curve(d, v)
    return plot_curves(curves, "memory distance (frames since the place was last seen)", "SSIM", path,
                       f"{key}: SSIM vs memory distance (all seeds)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training and evaluation seeds")
    a = p.parse_args(argv)
    from lssvwm.data.episodes import generate_dataset

    s = PRESETS[a.preset]
    out = Path(a.out or Path(__file__).parent / "results" / f"memory_{a.preset}")
    data = generate_dataset(out / "data", s["episodes"], s["ep_steps"], s["res"], seed=0, workers=2,
                            mazes=s["mazes"], progress=False)
    per_seed = {seed: evaluate(train_models(s, data, out / "runs", seed), s, data, out, seed) for seed in a.seeds}
    agg = aggregate(per_seed)
    table, checks = report(agg, a.seeds, per_seed), claims(agg, reach(s), per_seed)
    png = plot_distance(per_seed, out.parent / f"memory_{a.preset}_distance.png")
    path = out.parent / f"memory_{a.preset}.json"
    path.write_text(json.dumps({"preset": a.preset, "settings": s, "recipe": RECIPE, "seeds": a.seeds,
                                "results": agg, "claims": checks,
                                "reach": reach(s), "per_seed": {str(k): v for k, v in per_seed.items()}}, indent=1))
    print(table + "\n\nthe paper's claims:\n  " + "\n  ".join(checks) + f"\n-> {path}\n-> {png}")


def _step(run: Path) -> int:
    from lssvwm.checkpoint import find_checkpoint, load_state

    return int(load_state(find_checkpoint(run) / "state.pt")["step"])


if __name__ == "__main__":
    main()
