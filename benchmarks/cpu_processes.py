"""Training on a CPU in one process with every thread, or in several local processes that split the threads and
the batch (``lssvwm train --processes N``: DDP over gloo). The same run (tests/test_robustness.py holds the losses
equal); this times its pace. Each variant is a real ``lssvwm train`` run of the demo's recipe (model, batch 4 x 16
frames, bf16 where ``autocast: auto`` picks it) on built-in maze data, for ``--steps`` steps in a fresh process
tree; the pace is read from the run's log (the seconds from step ``--skip`` to the last step, so start-up, the
spawn of the processes and the first steps are left out). Variants alternate within each round; ``--against REV``
times another commit's code the same way beside this tree's.

    python -m benchmarks.cpu_processes                      # 1 and 2 processes, all the threads this process may use
    python -m benchmarks.cpu_processes --threads 4 --processes 1,2,4 --rounds 3
    python -m benchmarks.cpu_processes --processes 2 --against 582d2fc   # two processes, that commit against this tree
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import common

# the demo's run (lssvwm.demo.demo_run_config), built in the child so that it is the tree's own, for a fixed number
# of steps instead of a time budget, and no checkpoints to write on the way
DRIVER = """
import sys
from lssvwm.demo import demo_model, demo_run_config
from lssvwm.train import train_processes

data, out, steps, processes, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = demo_run_config(demo_model(d_model=width), data, out, minutes=0)
cfg.train.steps, cfg.train.fit_steps, cfg.train.ckpt_every = steps, False, 10**6
train_processes(cfg, processes, progress=False)
"""


def usable_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pace(run: Path, skip: int) -> float:
    """Seconds per step from step ``skip`` to the last one of the run's log."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    t = {r["step"]: r["time"] for r in log}
    last = max(t)
    if skip >= last:
        raise ValueError(f"--skip {skip} must be below --steps {last}")
    return (t[last] - t[skip]) / (last - skip)


def run(threads: int | None = None, processes=(1, 2), steps: int = 80, skip: int = 20, rounds: int = 2,
        against: str | None = None, d_model: int = common.DEMO_WIDTH) -> dict:
    threads = threads or usable_threads()
    variants = [(name, tree, p) for name, tree in common.trees(against).items() for p in processes]
    with tempfile.TemporaryDirectory(prefix="lssvwm-procs-") as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "lssvwm", "data", "maze", "--episodes", "16", "--steps", "200",
                        "--resolution", "32", "--mazes", "4", "--seed", "0", "--out", str(data)],
                       check=True, capture_output=True, cwd=common.ROOT)
        times: list[list[float]] = [[] for _ in variants]
        for r in range(rounds):
            for i, (name, tree, p) in enumerate(variants):  # alternate: 1 2 1 2 ... (each tree in turn)
                out = Path(tmp) / f"run_{i}_{r}"
                # run outside the tree, so that the working folder on sys.path does not shadow the tree under test
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(tree))
                done = subprocess.run([sys.executable, "-c", DRIVER, str(data), str(out), str(steps), str(p),
                                       str(d_model)],
                                      capture_output=True, text=True, env=env, cwd=tmp)
                if done.returncode:
                    raise RuntimeError(done.stderr[-3000:])
                times[i].append(pace(out, skip))
                print(f"  round {r + 1}/{rounds}, {name}, {p} process(es): {1000 * times[i][-1]:.0f} ms/step",
                      flush=True)
    base = statistics.median(times[0])
    first = f"{variants[0][0]}, {variants[0][2]}" if against else str(variants[0][2])
    rows = [{**({"code": name} if against else {}), "processes": p, "threads_each": max(1, threads // p),
             "ms_per_step": round(1000 * statistics.median(t), 1),
             "ms_per_step_rounds": " ".join(f"{1000 * x:.0f}" for x in t),
             f"speedup_vs_{first.replace(', ', '_').replace(' ', '_')}": round(base / statistics.median(t), 2)}
            for (name, _, p), t in zip(variants, times)]
    print(f"the demo's training ({d_model} wide, batch 4 x 16 frames), {threads} thread(s) in all, "
          f"{common.cpu_name()} ({common.cpu_kind()}); steps {skip}..{steps} of each run, median of {rounds} rounds, "
          f"variants alternating")
    print(common.table(rows, list(rows[0])))
    return {"cpu": common.cpu_name(), "cpu_kind": common.cpu_kind(), "threads": threads, "steps": steps,
            "skip": skip, "rounds": rounds, "against": against, "d_model": d_model, "rows": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads in all (default: every one this process may use)")
    p.add_argument("--processes", default="1,2", help="comma-separated process counts to time (default 1,2)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--skip", type=int, default=20, help="steps left out of the timing at the start")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--against", default=None, help="a git revision to time side by side (e.g. 582d2fc)")
    p.add_argument("--d-model", type=int, default=common.DEMO_WIDTH,
                   help=f"the width of the demo's model timed (default {common.DEMO_WIDTH}, as every speed benchmark)")
    a = p.parse_args(argv)
    res = run(a.threads, tuple(int(x) for x in a.processes.split(",")), a.steps, a.skip, a.rounds, a.against,
              a.d_model)
    print(f"-> {common.save('cpu_processes', res)}")


if __name__ == "__main__":
    main()
