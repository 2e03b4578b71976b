"""Baselines side by side: train every model of the paper's comparison on the same data, steps and seed, then
score them on spatial retrieval and spatial reasoning.

    python -m benchmarks.memory --preset cpu      # `small` models on 32x32 mazes, < 60 min on 2 CPU cores
    python -m benchmarks.memory --preset paper    # `base` models on 64x64 mazes, for a GPU (hours)
    python -m benchmarks.memory --preset smoke    # `tiny`, seconds: checks the pipeline end to end

Writes ``benchmarks/results/memory_<preset>/`` (runs, data, per-task eval folders) and ``memory_<preset>.json``
with the table; prints it like the paper's (SSIM / LPIPS / PSNR per model).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lssvwm.config import DiffusionConfig, RunConfig, TrainConfig, model_preset

# model name -> (variant, long-context training probability)
MODELS = {
    "hybrid (ours)": ("hybrid", 0.5),
    "full-context transformer": ("full-transformer", 0.5),
    "limited-context transformer": ("window-transformer", 0.5),
    "mamba2": ("mamba2", 0.5),
    "mamba2 + local attention": ("mamba2-local", 0.5),
    "hybrid w/o long-context training": ("hybrid", 0.0),
}

PRESETS = {
    # name: model preset, resolution, data (episodes, steps), training (steps, batch, clip), eval (ctx, frames, eps)
    "smoke": dict(model="tiny", res=16, episodes=6, ep_steps=80, steps=4, batch=2, clip=8, ctx=16, frames=8, eps=1,
                  mazes=2),
    "cpu": dict(model="small", res=32, episodes=64, ep_steps=400, steps=350, batch=8, clip=16, ctx=64, frames=48,
                eps=4, mazes=4),
    "paper": dict(model="base", res=64, episodes=2000, ep_steps=1000, steps=100_000, batch=32, clip=64, ctx=400,
                  frames=400, eps=64, mazes=0),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from lssvwm.data.episodes import generate_dataset
    from lssvwm.evaluation import evaluate_models
    from lssvwm.train import train

    s = PRESETS[a.preset]
    out = Path(a.out or Path(__file__).parent / "results" / f"memory_{a.preset}")
    data = generate_dataset(out / "data", s["episodes"], s["ep_steps"], s["res"], seed=a.seed, workers=2,
                            mazes=s["mazes"])
    runs = {}
    for name, (variant, lct) in MODELS.items():
        run = out / "runs" / (variant + ("" if lct else "-no-lct"))
        cfg = RunConfig(model=model_preset(s["model"], variant), diffusion=DiffusionConfig(long_context_prob=lct),
                        train=TrainConfig(data=str(data), out=str(run), steps=s["steps"], batch_size=s["batch"],
                                          clip_len=s["clip"], seed=a.seed, ckpt_every=max(1, s["steps"] // 4)))
        if not (run / "checkpoints" / "latest").exists() or _step(run) < s["steps"]:
            print(f"== training {name} ==", flush=True)
            train(cfg, resume=(run / "checkpoints" / "latest").exists())
        runs[name] = run
    table = {}
    for task in ("retrieval", "reasoning"):
        res = evaluate_models([str(r) for r in runs.values()], task, s["ctx"], s["frames"], out / f"eval_{task}",
                              s["eps"], a.seed, data=str(data))
        names = dict(zip([r.name for r in runs.values()], runs))
        table[task] = {names.get(k, k): {m: v[m] for m in ("ssim", "lpips", "psnr")} for k, v in res["models"].items()}
    path = out.parent / f"memory_{a.preset}.json"
    path.write_text(json.dumps({"preset": a.preset, "settings": s, "seed": a.seed, "results": table}, indent=2))
    for task, rows in table.items():
        print(f"\n{task}  (SSIM / LPIPS / PSNR)")
        for name, r in rows.items():
            lp = "n/a" if r["lpips"] is None else f"{r['lpips']:.3f}"
            print(f"  {name:<34} {r['ssim']:.3f} / {lp} / {r['psnr']:.2f}")
    print(f"-> {path}")


def _step(run: Path) -> int:
    from lssvwm.checkpoint import find_checkpoint, load_state

    return int(load_state(find_checkpoint(run) / "state.pt")["step"])


if __name__ == "__main__":
    main()
