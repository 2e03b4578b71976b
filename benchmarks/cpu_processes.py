"""Training on a CPU in one process with every thread, or in several local processes that split the threads and
the batch (``lssvwm train --processes N``: DDP over gloo). The same run (tests/test_robustness.py holds the losses
equal); this times its pace. Each variant is a real ``lssvwm train`` run of the demo's recipe (model, batch 4 x 16
frames, bf16 where ``autocast: auto`` picks it) on built-in maze data, for ``--steps`` steps in a fresh process
tree; the pace is read from the run's log (the seconds from step ``--skip`` to the last step, so start-up, the
spawn of the processes and the first steps are left out). Variants alternate within each round.

    python -m benchmarks.cpu_processes                      # 1 and 2 processes, all the threads this process may use
    python -m benchmarks.cpu_processes --threads 4 --processes 1,2,4 --rounds 3
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
from benchmarks.common import DEMO_WIDTH
from lssvwm.demo import demo_model, demo_run_config
from lssvwm.train import train_processes

data, out, steps, processes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = demo_run_config(demo_model(d_model=DEMO_WIDTH), data, out, minutes=0)
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


def run(threads: int | None = None, processes=(1, 2), steps: int = 80, skip: int = 20, rounds: int = 2) -> dict:
    threads = threads or usable_threads()
    with tempfile.TemporaryDirectory(prefix="lssvwm-procs-") as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "lssvwm", "data", "maze", "--episodes", "16", "--steps", "200",
                        "--resolution", "32", "--mazes", "4", "--seed", "0", "--out", str(data)],
                       check=True, capture_output=True, cwd=common.ROOT)
        times: dict[int, list[float]] = {p: [] for p in processes}
        for r in range(rounds):
            for p in processes:  # alternate: 1 2 1 2 ...
                out = Path(tmp) / f"run_{p}_{r}"
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(common.ROOT))
                done = subprocess.run([sys.executable, "-c", DRIVER, str(data), str(out), str(steps), str(p)],
                                      capture_output=True, text=True, env=env, cwd=common.ROOT)
                if done.returncode:
                    raise RuntimeError(done.stderr[-3000:])
                times[p].append(pace(out, skip))
                print(f"  round {r + 1}/{rounds}, {p} process(es): {1000 * times[p][-1]:.0f} ms/step", flush=True)
    base = statistics.median(times[processes[0]])
    rows = [{"processes": p, "threads_each": max(1, threads // p), "ms_per_step": round(1000 * statistics.median(t), 1),
             "ms_per_step_rounds": " ".join(f"{1000 * x:.0f}" for x in t),
             f"speedup_vs_{processes[0]}": round(base / statistics.median(t), 2)} for p, t in times.items()]
    print(f"the demo's training (batch 4 x 16 frames), {threads} thread(s) in all, {common.cpu_name()} "
          f"({common.cpu_kind()}); steps {skip}..{steps} of each run, median of {rounds} rounds, variants alternating")
    print(common.table(rows, list(rows[0])))
    return {"cpu": common.cpu_name(), "cpu_kind": common.cpu_kind(), "threads": threads, "steps": steps,
            "skip": skip, "rounds": rounds, "rows": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads in all (default: every one this process may use)")
    p.add_argument("--processes", default="1,2", help="comma-separated process counts to time (default 1,2)")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--skip", type=int, default=20, help="steps left out of the timing at the start")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    res = run(a.threads, tuple(int(x) for x in a.processes.split(",")), a.steps, a.skip, a.rounds)
    print(f"-> {common.save('cpu_processes', res)}")


if __name__ == "__main__":
    main()
