"""Side-by-side training runs of the demo's setup: which settings make its rollout follow the maze?

    python -m benchmarks.demo_sweep --out OUT --variants lr3_1000,c1000 --parallel 6

The demo's data (64 episodes x 400 steps, 32x32, 4 fixed mazes) and the `small` hybrid; each variant changes
steps, batch, clip length, lr or the model, trains in its own process (several share one GPU), then is
evaluated on 3 held-out windows (32 context frames from frame 100, 48 generated): free-rollout and
teacher-forced PSNR/SSIM for several sampler settings, the repeat-last-frame baseline, and PNG strips (ground
truth over prediction). Run on an H100 on 2026-11-23 to pick the demo's lr and window; results in docs/results.md,
"How the first demo recipe was tuned". ``SWEEP_MAX_MIN`` caps each run's training minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lssvwm.config import DiffusionConfig, RunConfig, SamplingConfig, TrainConfig, model_preset

BASE = dict(steps=600, batch_size=8, lr=1e-3, clip_len=16, model={}, diffusion={})
VARIANTS = {
    "smoke": dict(steps=3),  # checks the script end to end in a minute on a CPU
    "s600": {},
    "s2400": dict(steps=2400),
    "s9600": dict(steps=9600),
    "bs32_s600": dict(batch_size=32),
    "bs32_s2400": dict(batch_size=32, steps=2400),
    "prev_s2400": dict(steps=2400, model=dict(prev_frame=True)),
    "lc1_s2400": dict(steps=2400, diffusion=dict(long_context_prob=1.0)),
    "lr3e3_s2400": dict(steps=2400, lr=3e-3),
    "c1000": dict(steps=1000),
    "lr3_1000": dict(steps=1000, lr=3e-3),
    "lr3_w4_1000": dict(steps=1000, lr=3e-3, model=dict(window=4)),
    "lr3_c8_2000": dict(steps=2000, lr=3e-3, clip_len=8),
    "lr3_1400": dict(steps=1400, lr=3e-3),
    "lr3_prev_1000": dict(steps=1000, lr=3e-3, model=dict(prev_frame=True)),
}


def make_cfg(name: str, data: Path, out: Path) -> RunConfig:
    v = {**BASE, **VARIANTS[name]}
    m = model_preset("small", **v["model"])
    d = DiffusionConfig(**v["diffusion"])
    t = TrainConfig(data=str(data), out=str(out / name), clip_len=v["clip_len"], batch_size=v["batch_size"],
                    lr=v["lr"], warmup=50, ckpt_every=10**9, steps=v["steps"], seed=0,
                    max_minutes=float(os.environ.get("SWEEP_MAX_MIN", "0")))
    return RunConfig(model=m, diffusion=d, sampling=SamplingConfig(steps=4, stabilization=0.3), train=t)


def strip(ctx, gt, pred, path):
    from PIL import Image

    from lssvwm.video import to_uint8

    idx = [0, 2, 5, 10, 20, 30, 47]
    idx = [i for i in idx if i < gt.shape[0]]
    top = np.concatenate([to_uint8(gt[i:i + 1])[0] for i in idx], axis=1)
    bot = np.concatenate([to_uint8(pred[i:i + 1])[0] for i in idx], axis=1)
    Image.fromarray(np.concatenate([top, bot], axis=0)).resize((top.shape[1] * 3, top.shape[0] * 6),
                                                                Image.NEAREST).save(path)


def evaluate(run: Path, data: Path, device) -> dict:
    from lssvwm.checkpoint import load_run
    from lssvwm.data.dataset import EpisodeWindows
    from lssvwm.generate import episode_rollout, frame_metrics

    trained = load_run(run, device=device)
    cfg = trained.cfg
    val = EpisodeWindows(data, 1, "val", cfg.train.val_fraction)
    eps = [val.episode(i) for i in range(min(3, len(val.files)))]
    res, base = {}, []
    for steps, noise, tf in [(4, 0.3, False), (1, 0.3, False), (8, 0.3, False), (4, 0.6, False), (4, 0.3, True)]:
        scores = []
        for j, ep in enumerate(eps):
            ctx, gt, pred = episode_rollout(trained.sampler(steps=steps, stabilization=noise), ep, 32, 48,
                                            start=100, teacher_forcing=tf)
            scores.append(frame_metrics(gt, pred))
            if not res:  # the same windows every time: the baseline once
                base.append(frame_metrics(gt, ctx[-1:].expand_as(gt))["psnr"])
            if j == 0 and steps == 4 and noise == 0.3:
                strip(ctx, gt, pred, run / f"strip_{'tf' if tf else 'free'}.png")
        res[f"{'tf' if tf else 'free'}_k{steps}_n{noise}"] = {k: np.mean([m[k] for m in scores])
                                                               for k in ("psnr", "ssim")}
    res["repeat_last_psnr"] = np.mean(base)
    return res


def run_one(name: str, data: Path, out: Path) -> None:
    from lssvwm.train import train

    cfg = make_cfg(name, data, out)
    t0 = time.time()
    train(cfg, progress=False)
    t_train = time.time() - t0
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = evaluate(out / name, data, dev)
    log = [json.loads(x) for x in (out / name / "log.jsonl").read_text().splitlines() if x.strip()]
    res.update(name=name, train_s=t_train, steps=cfg.train.steps, steps_done=len(log), batch=cfg.train.batch_size,
               loss_last50=float(np.mean([r["loss"] for r in log[-50:]])))
    (out / name / "result.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--one", default="")
    a = p.parse_args()
    out = Path(a.out)
    data = out / "data"
    if a.one:
        return run_one(a.one, data, out)
    from lssvwm.data.episodes import generate_dataset

    t0 = time.time()
    generate_dataset(data, 64, 400, resolution=32, seed=0, workers=8, mazes=4, progress=False)
    print(f"data in {time.time() - t0:.0f}s", flush=True)
    names = a.variants.split(",")
    procs, pending = [], list(names)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    while pending or procs:
        while pending and len(procs) < a.parallel:
            n = pending.pop(0)
            (out / n).mkdir(parents=True, exist_ok=True)
            f = open(out / n / "stdout.txt", "w")
            cmd = [sys.executable, "-m", "benchmarks.demo_sweep", "--out", str(out.resolve()), "--one", n]
            procs.append((n, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                              cwd=Path(__file__).resolve().parents[1])))
        time.sleep(2)
        for n, pr in list(procs):
            if pr.poll() is not None:
                procs.remove((n, pr))
                print(f"{n} done rc={pr.returncode} at {time.time() - t0:.0f}s", flush=True)
                if pr.returncode:
                    print((out / n / "stdout.txt").read_text()[-3000:], flush=True)


if __name__ == "__main__":
    main()
