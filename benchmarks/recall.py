"""Synthetic long-range recall: tiny hybrid vs windowed transformer, same data, steps and seed; recall PSNR vs
the distance between cue and recall."""
from __future__ import annotations

from pathlib import Path

from benchmarks.common import RESULTS, table


def recall_experiment(out: str, steps: int = 3000, length: int = 24, clips: int = 1200, window: int = 3,
                      distances=(0, 1, 2, 4, 8, 12, 16, 20), variants=("hybrid", "window-transformer"),
                      seed: int = 0) -> dict:
    """Train tiny models of each variant on the same recall data, steps and seed; recall PSNR vs D."""
    from lssvwm.config import DiffusionConfig, RunConfig, TrainConfig, model_preset
    from lssvwm.checkpoint import load_model
    from lssvwm.data.recall import NUM_ACTIONS, generate_recall_dataset
    from lssvwm.evaluation import recall_psnr
    from lssvwm.train import train

    out = Path(out)
    data = out / "data"
    if not (data / f"ep_{clips - 1:06d}.npz").exists():
        generate_recall_dataset(data, clips, length, seed=seed)
    rows = []
    for variant in variants:
        run = out / variant
        cfg = RunConfig(model=model_preset("tiny", variant, window=window, num_actions=NUM_ACTIONS),
                        diffusion=DiffusionConfig(),
                        train=TrainConfig(data=str(data), out=str(run), clip_len=length, batch_size=16, steps=steps,
                                          lr=2e-3, warmup=50, ckpt_every=steps, seed=seed, val_fraction=0.05))
        if not (run / "checkpoints" / "latest").exists():
            train(cfg, progress=False)
        model, _, _ = load_model(run)
        for d in distances:
            rows.append({"variant": variant, "D": d, "D_over_k": round(d / window, 2),
                         "recall_psnr": round(recall_psnr(model, d, length), 2)})
    return {"window_k": window, "steps": steps, "clip_length": length, "rows": rows}


def run() -> dict:
    res = recall_experiment(str(RESULTS / "recall"))
    print(f"synthetic recall: cue, D distractor frames, recall; tiny models, {res['steps']} steps each, same data "
          f"and seed; windowed transformer k = {res['window_k']} sees the cue only while D <= k - 2")
    print(table(res["rows"], ["variant", "D", "D_over_k", "recall_psnr"]))
    try:
        from lssvwm.plots import plot_curves

        curves = {v: ([r["D"] for r in res["rows"] if r["variant"] == v],
                      [r["recall_psnr"] for r in res["rows"] if r["variant"] == v])
                  for v in {r["variant"] for r in res["rows"]}}
        plot_curves(curves, "D (distractor frames between cue and recall)", "recall PSNR (dB)",
                    RESULTS / "recall.png", f"recall vs distance (window k = {res['window_k']})")
    except Exception as e:
        print(f"(no plot: {e})")
    return res
