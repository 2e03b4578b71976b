"""Speed and memory benchmarks: ``make bench`` or ``python -m benchmarks.run [NAME ...]`` (all but the GPU ones when
no name is given). One module per benchmark, each with a ``run()`` that prints a table and returns its results;
this writes them to ``benchmarks/results/<name>.json`` (and the benchmarks write a PNG where useful). Memory is
the peak resident set size (Linux VmHWM) of a fresh subprocess, minus its size after set-up, so every figure
comes from its own process and the numbers compared in one table come from one run.

| name | module |
|---|---|
| maze | maze_env.py: environment frames/s |
| ssm | ssm_scan.py: the chunked SSD scan against the reference loop, memory vs length |
| rollout | rollout.py: a rollout to frame 4,000, ms/frame and memory along the way |
| inference | inference.py: per-frame cost vs context, hybrid vs full-context transformer vs recompute |
| training | training.py: tokens/s and memory vs clip length |
| play | play.py: what a user plays, batch 1 (``--against REV`` there) |
| profile | train_step.py: the training step against the measured peak (``--against REV`` there) |
| processes | cpu_processes.py: training in 1 or 2 local processes sharing the CPU's threads (``lssvwm train --processes``) |
| recall | recall.py: synthetic recall, hybrid vs windowed transformer |
| gpu, gpu-quick, gpu-smoke | gpu.py: CUDA only (gpu-quick: eager steps only, about a minute) / the same code small on the CPU |
"""
from __future__ import annotations

import importlib
import sys

from benchmarks.common import save

BENCHES = {"maze": ("maze_env", "run"), "ssm": ("ssm_scan", "run"), "rollout": ("rollout", "run"),
           "play": ("play", "run"), "profile": ("train_step", "run_default"),
           "processes": ("cpu_processes", "run"), "inference": ("inference", "run"),
           "training": ("training", "run"), "recall": ("recall", "run"), "gpu": ("gpu", "run"),
           "gpu-quick": ("gpu", "run_quick"), "gpu-smoke": ("gpu", "run_smoke")}


def main(argv=None):
    names = (argv if argv is not None else sys.argv[1:]) or [n for n in BENCHES if not n.startswith("gpu")]
    for name in names:
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        module, fn = BENCHES[name]
        print(f"\n== {name} ==")
        path = save(name, getattr(importlib.import_module(f"benchmarks.{module}"), fn)())
        print(f"-> {path}")


if __name__ == "__main__":
    main()
