"""Maze rendering speed: the built-in environment and its exploration policy, frames/s on one core."""
from __future__ import annotations

import time

from benchmarks.common import in_subprocess, table


def maze_fps(resolution: int, steps: int = 2000) -> dict:
    import numpy as np

    from lssvwm.data.maze import ExplorationPolicy, MazeEnv

    env = MazeEnv(resolution=resolution, max_steps=steps + 1)
    env.reset(seed=0)
    pol = ExplorationPolicy(env, np.random.default_rng(0))
    t = time.perf_counter()
    for _ in range(steps):
        env.step(pol())
    dt = time.perf_counter() - t
    return {"resolution": resolution, "frames_per_s": round(steps / dt, 1)}


def run() -> dict:
    rows = [in_subprocess("maze_env", "maze_fps", r) for r in (64, 32)]
    print("maze env + exploration policy, one core (target >= 1000 frames/s at 64x64)")
    print(table(rows, ["resolution", "frames_per_s"]))
    return {"rows": rows, "target_64": 1000}
