"""The demo at equal wall time, across model widths and depths: which size makes the most of ``make demo``'s
minutes on this machine?

    python -m benchmarks.demo_sweep --out runs/sweep --widths 96,128,192,256 --depths 4,6,8 --minutes 14
    python -m benchmarks.demo_sweep --out runs/sweep --points 96x4,128x6 --seeds 0,1   # chosen points only

Each point is ``lssvwm demo`` (:func:`lssvwm.demo.run_demo`: its data, recipe, time budget and the follow
benchmark on held-out trajectories in the training mazes and in unseen ones) with that ``d_model`` and number
of layers, trained in a fresh process with the threads ``OMP_NUM_THREADS`` gives, one point after another, all
sharing one data folder. A point whose ``metrics.json`` exists is not run again, so a killed sweep resumes. The
table (steps, time per step, parameters, free 1-8 / free 48 / one step ahead SSIM per window set) is printed,
written to ``OUT/sweep.json`` and ``benchmarks/results/demo_sweep.json``, and drawn to ``OUT/sweep.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, cpu_kind, cpu_name, save, table

SETS = ("train-mazes", "unseen-mazes")


def point_dir(out: Path, width: int, depth: int, seed: int) -> Path:
    return out / f"d{width}_L{depth}_s{seed}"


def run_point(out: Path, width: int, depth: int, seed: int, minutes: float) -> None:
    """One demo run in this process (the sweep starts one process per point)."""
    from lssvwm.demo import run_demo

    run_demo(out=str(point_dir(out, width, depth, seed)), minutes=minutes, d_model=width, n_layers=depth,
             data=str(out / "data"), shipped=None, seed=seed)


def row(metrics: dict, name: str) -> dict:
    """The sweep table's row of one demo's metrics.json."""
    r = {"point": name, "d_model": metrics["model"]["d_model"], "layers": metrics["model"]["layers"],
         "params_M": round(metrics["model"]["parameters"] / 1e6, 2), "seed": metrics["seed"],
         "s_per_step": round(60 * metrics["train_minutes"] / max(1, metrics["train_steps"]), 3),  # as trained
         "steps": metrics["train_steps"]}
    scores = metrics["follow"]["run"]
    for s, short in zip(SETS, ("train", "unseen")):
        free, tf = scores[s]["free"]["ssim"], scores[s]["teacher_forced"]["ssim"]
        r[f"{short} free1-8"] = round(free["1-8"], 3)
        r[f"{short} free48"] = round(free["all"], 3)
        r[f"{short} TF"] = round(tf["all"], 3)
    return r


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("train free1-8", "train free48", "train TF")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(axes, keys):
        for depth in sorted({r["layers"] for r in rows}):
            pts = sorted((r["d_model"], r[key]) for r in rows if r["layers"] == depth)
            ax.plot(*zip(*pts), "o-", label=f"{depth} layers")
        ax.set_xlabel("d_model")
        ax.set_title(f"SSIM, {key}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="sweep folder (one sub-folder per point, shared data)")
    p.add_argument("--widths", default="96,128,192,256")
    p.add_argument("--depths", default="4,6,8")
    p.add_argument("--points", default="", help="WxL,... instead of the widths x depths grid")
    p.add_argument("--seeds", default="0")
    p.add_argument("--minutes", type=float, default=14.0, help="training minutes per point")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # W,L,SEED: one point, in this process
    a = p.parse_args()
    out = Path(a.out).resolve()
    if a.one:
        w, d, s = map(int, a.one.split(","))
        return run_point(out, w, d, s, a.minutes)
    if a.points:
        grid = [tuple(map(int, pt.split("x"))) for pt in a.points.split(",")]
    else:
        grid = [(w, d) for d in map(int, a.depths.split(",")) for w in map(int, a.widths.split(","))]
    points = [(w, d, s) for s in map(int, a.seeds.split(",")) for w, d in grid]
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(points)} points x {a.minutes:g} min on {os.environ.get('OMP_NUM_THREADS', 'all')} thread(s); "
          f"{cpu_name()} ({cpu_kind()})", flush=True)
    rows = []
    for w, d, s in points:
        folder = point_dir(out, w, d, s)
        if not (folder / "metrics.json").exists():
            t0 = time.time()
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "stdout.txt", "w") as log:
                rc = subprocess.run([sys.executable, "-m", "benchmarks.demo_sweep", "--out", str(out),
                                     "--minutes", str(a.minutes), "--one", f"{w},{d},{s}"],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
            print(f"{folder.name}: rc {rc} in {(time.time() - t0) / 60:.1f} min", flush=True)
            if rc:
                print((folder / "stdout.txt").read_text()[-2000:], flush=True)
                continue
        rows.append(row(json.loads((folder / "metrics.json").read_text()), folder.name))
    cols = ["point", "params_M", "s_per_step", "steps"] + [f"{s} {k}" for s in ("train", "unseen")
                                                          for k in ("free1-8", "free48", "TF")]
    print(table(rows, cols))
    payload = {"cpu": cpu_name(), "cpu_kind": cpu_kind(), "threads": os.environ.get("OMP_NUM_THREADS"),
               "minutes": a.minutes, "rows": rows}
    (out / "sweep.json").write_text(json.dumps(payload, indent=1))
    save("demo_sweep", payload)
    if rows:
        plot(rows, out / "sweep.png")


if __name__ == "__main__":
    main()
