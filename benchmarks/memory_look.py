"""Does data that asks for memory teach the hybrid's scans to remember beyond its attention?

The memory experiment's `cpu` preset found no model using its scans beyond the attention's reach; its data hardly
asks it to (``benchmarks.memory_need``: 0.1% of a 16-frame clip's view was in sight only 6+ frames earlier). This
experiment trains the preset's hybrid and limited-context transformer (same widths, windows, recipe and steps) on
data where the agent looks around at half of its goals (two full turns in place, 30-degree steps: 12 frames a
turn; a new maze per episode, so no model can know a place from its weights), on 32-frame clips: 5% of the view
then needs a memory of 6+ frames. Both are scored on two memory tasks in new mazes, with the whole context and
with the context cut to the attention's reach (R = 6 frames):

- look-around: the context ends with a full turn in place, and the agent keeps turning: every generated frame
  shows what the context showed 12 frames earlier (a 30-degree slice of the 80-degree view is new at each step);
- retrieval: explore, turn around, retrace.

What a model loses with the cut is what its scans remembered from beyond R (the limited-context transformer, the
control, loses nothing by construction).

    python -m benchmarks.memory_look --seeds 0 1     # 2 models x 2 seeds, ~30 min per seed on one thread

Writes ``results/memory_look_<preset>/`` (data, runs, evals) and ``results/memory_look_<preset>.json``, prints
the table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lssvwm.evaluation import BASELINES  # eval memory's baselines (whole context), reported beside the models

from .memory import HYBRID, PRESETS, WINDOW, _step, binned, reach, train_models

# the cpu memory preset's models and recipe on 32-frame clips of look-around data; smoke: seconds, for the tests
SETTINGS = {
    "cpu": {**PRESETS["cpu"], "clip": 32, "mazes": 0, "eps": 8, "world": {"turn_step_deg": 30.0},
            "policy": {"spin_prob": 0.5, "spin_turns": 2},
            "tasks": {"look-around": (32, 24), "retrieval": (32, 32)}},  # task -> (context, generated frames)
    "smoke": {**PRESETS["smoke"], "mazes": 0, "world": {"turn_step_deg": 30.0},
              "policy": {"spin_prob": 0.5, "spin_turns": 2}, "tasks": {"look-around": (14, 6), "retrieval": (8, 6)}},
}
MODELS = {HYBRID: ("hybrid", 0.5), WINDOW: ("window-transformer", 0.5)}  # name -> (variant, long-context prob.)


def evaluate(runs: dict[str, Path], s: dict, data: Path, out: Path, seed: int) -> dict:
    """{eval: {model: {"whole": scores, "cut": scores}}} and, beside the models, eval memory's two baselines
    ({"whole": scores}), scores = SSIM, PSNR and distance bins; kept in
    ``eval_seed<seed>/scores.json`` for the runs' steps and these settings."""
    from lssvwm.evaluation import evaluate_models

    saved = out / f"eval_seed{seed}" / "scores.json"
    steps = {name: _step(run) for name, run in runs.items()}
    settings = json.loads(json.dumps(s))  # as saved (tuples as lists)
    if saved.exists() and (old := json.loads(saved.read_text())).get("steps") == steps and \
            old.get("settings") == settings and old.get("baselines"):
        return old["scores"]
    r = reach(s)
    names = {p.name: n for n, p in runs.items()}
    res = {}
    for key, (ctx, frames) in s["tasks"].items():
        res[key] = {name: {} for name in runs}
        for part, limit in (("whole", None), ("cut", r)):
            ev = evaluate_models([str(p) for p in runs.values()], key, ctx, frames,
                                 out / f"eval_seed{seed}" / f"{key}_{part}", s["eps"], seed, data=str(data),
                                 progress=False, context_limit=limit)
            for n, v in ev["models"].items():
                res[key][names.get(n, n)][part] = {"ssim": v["ssim"], "psnr": v["psnr"],
                                                   "bins": binned(v["per_frame"], s["window"], r)}
            if part == "whole":
                res[key] |= {BASELINES[b]: {"whole": {"ssim": v["ssim"], "psnr": v["psnr"],
                                                      "bins": binned(v["per_frame"], s["window"], r)}}
                             for b, v in ev["baselines"].items()}
    saved.write_text(json.dumps({"settings": settings, "steps": steps, "baselines": True, "scores": res}))
    return res


def memory_gap(a: dict, b: dict, b_name: str) -> float | None:
    """SSIM of scores ``a`` minus scores ``b`` in distance bin ``b_name`` (None where a bin holds no frames)."""
    x, y = a["bins"][b_name]["ssim"], b["bins"][b_name]["ssim"]
    return None if x is None or y is None else x - y


def _ssim(b: dict) -> str:
    return "n/a" if b["ssim"] is None else f"{b['ssim']:.3f}"


def report(per_seed: dict[int, dict], s: dict, r: int) -> str:
    far = f"{r}+"
    seeds = list(per_seed)
    lines = [f"SSIM on frames whose place was last in sight {far} frames before (beyond the attention's reach), per "
             f"seed {seeds}: with the whole context | with only its last {r} frames | memory used (the difference)"]
    for key, (ctx, frames) in s["tasks"].items():
        lines.append(f"\n{key} (context {ctx}, {frames} generated)")
        for model in MODELS:
            cells = []
            for sd in seeds:
                whole, cut = (per_seed[sd][key][model][p] for p in ("whole", "cut"))
                used = memory_gap(whole, cut, far)
                cells.append("n/a" if used is None else
                             f"{whole['bins'][far]['ssim']:.3f} | {cut['bins'][far]['ssim']:.3f} | {used:+.3f}")
            lines.append(f"  {model:<30} " + "   ".join(f"{c:>25}" for c in cells))
        for name in BASELINES.values():
            lines.append(f"  {'(' + name + ')':<30} " + "   ".join(
                f"{_ssim(per_seed[sd][key][name]['whole']['bins'][far]):>25}" for sd in seeds))
        gaps = [memory_gap(per_seed[sd][key][HYBRID]["whole"], per_seed[sd][key][WINDOW]["whole"], far)
                for sd in seeds]
        lines.append("  hybrid minus limited-context transformer, whole context: "
                     + ", ".join("n/a" if g is None else f"{g:+.3f}" for g in gaps))
    return "\n".join(lines)


def main(argv=None):
    from lssvwm.data.episodes import generate_dataset

    from .common import RESULTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(SETTINGS), default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training and evaluation seeds")
    p.add_argument("--out", default=None, help="experiment folder (default: benchmarks/results/memory_look_<preset>)")
    a = p.parse_args(argv)
    s = SETTINGS[a.preset]
    out = Path(a.out) if a.out else RESULTS / f"memory_look_{a.preset}"
    data = generate_dataset(out / "data", s["episodes"], s["ep_steps"], s["res"], seed=0, workers=2,
                            mazes=s["mazes"], progress=False, world=s["world"], policy=s["policy"])
    per_seed = {sd: evaluate(train_models(s, data, out / "runs", sd, MODELS), s, data, out, sd) for sd in a.seeds}
    text = report(per_seed, s, reach(s))
    path = out.parent / f"memory_look_{a.preset}.json"
    path.write_text(json.dumps({"preset": a.preset, "settings": s, "seeds": a.seeds, "reach": reach(s),
                                "per_seed": {str(k): v for k, v in per_seed.items()}}, indent=1))
    print(text + f"\n-> {path}")


if __name__ == "__main__":
    main()
