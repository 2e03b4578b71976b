"""The real Memory Maze (jurgisp/memory-maze on MuJoCo): exploration episodes in its offline dataset's layout.

Install with ``pip install 'lssvwm[memory-maze]'`` (memory-maze 1.0.3 with dm-control 1.0.16 and mujoco 3.1.2,
the versions its maintainer says work; dm-control 1.0.16 needs numpy < 2, gym 0.26 is imported by memory-maze).
Rendering needs OpenGL: on a CPU machine Debian's OSMesa (``apt-get install libosmesa6``) with
``MUJOCO_GL=osmesa``, on a GPU ``MUJOCO_GL=egl``; this module picks one when ``MUJOCO_GL`` is unset.

The policy is :class:`~lssvwm.data.maze.ExplorationPolicy` (random goal cell, shortest path on the maze layout,
2% random bursts), the closest public analogue of the unpublished generator of the offline dataset, run on the
``-ExtraObs`` variant. Files hold every key of the offline dataset with a leading axis of T + 1 (the reset frame
first; ``action``/``reward``/``terminal`` have zero dummies in row 0). Note Memory Maze's conventions, which we
keep as they are: ``maze_layout`` is 1 = free (ours is 1 = wall), flipped so that ``maze_layout[y, x]`` with
``agent_pos = (x, y)`` and y pointing up, and the image has the current target's colour as a border.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .episodes import FORMAT_VERSION, episode_seed, fixed_maze_seed, save_episode, write_dataset
from .maze import ACTION_NAMES, NUM_ACTIONS, ExplorationPolicy

MAZES = {"9x9": 1000, "11x11": 2000, "13x13": 3000, "15x15": 4000}  # size -> steps per episode (time limit)
KEYS = ("image", "action", "reward", "terminal", "agent_pos", "agent_dir", "targets_pos", "targets_vec",
        "target_pos", "target_vec", "target_color", "maze_layout")


def _tasks():
    """memory_maze.tasks, with a renderer chosen; a clear message when the extra is missing."""
    if "MUJOCO_GL" not in os.environ:
        import torch

        os.environ["MUJOCO_GL"] = "egl" if torch.cuda.is_available() else "osmesa"
    try:
        from memory_maze import tasks
    except ImportError as e:
        raise ImportError(f"the real Memory Maze needs the optional extra: pip install 'lssvwm[memory-maze]' "
                          f"(and on CPU: apt-get install libosmesa6); import failed: {e}") from e
    return tasks


def check_maze(maze: str, steps: int | None = None) -> None:
    """A ValueError unless ``maze`` is a Memory Maze size and ``steps`` (if given) fit in its time limit."""
    if maze not in MAZES:
        raise ValueError(f"maze must be one of {list(MAZES)}, got {maze!r}")
    if steps is not None and not 1 <= steps <= MAZES[maze]:
        raise ValueError(f"steps must be in [1, {MAZES[maze]}] for a {maze} maze (its time limit), got {steps}")


def make_env(maze: str = "9x9", seed: int | None = None):
    """The dm_env ``MemoryMaze-<maze>-ExtraObs`` environment. Equal seeds give equal mazes, targets and start."""
    check_maze(maze)
    tasks = _tasks()
    return getattr(tasks, f"memory_maze_{maze}")(global_observables=True, seed=seed)


class MemoryMazeEnv:
    """Memory Maze with the interface of :class:`~lssvwm.data.maze.MazeEnv` (Gymnasium-style ``reset``/``step``,
    ``pos``, ``angle``, ``layout`` with 1 = wall and a wall border, ``cell()``; ``pos = agent_pos + 1`` in that
    bordered grid), so the exploration policy and the memory task builders run in it unchanged.
    ``reset(seed=s)`` rebuilds the maze of seed ``s`` (or of ``options["maze_seed"]``): equal seeds give equal
    mazes, targets and start poses."""

    right_turn_increases_angle = False  # angles are counter-clockwise, y up
    turn_step = np.deg2rad(18.3)  # measured: one "left"/"right" step turns ~18.3 degrees once rolling

    def __init__(self, maze: str = "9x9"):
        check_maze(maze)
        self.maze, self.max_steps = maze, MAZES[maze]
        self._env = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        maze_seed = (options or {}).get("maze_seed", seed)
        if self._env is not None:
            self._env.close()
        self._env = make_env(self.maze, maze_seed)
        ts = self._env.reset()
        return self._update(ts.observation), {}

    def step(self, action: int):
        ts = self._env.step(int(action))
        return self._update(ts.observation), float(ts.reward or 0.0), False, bool(ts.last()), {}

    def _update(self, obs) -> dict:
        self.obs = {k: np.array(obs[k]) for k in KEYS if k in obs}
        # Our grid convention: 1 = wall, with a wall border (Memory Maze strips its outer walls), so the grid
        # and ``pos`` are shifted by one cell from ``agent_pos``.
        self.layout = np.pad((self.obs["maze_layout"] == 0).astype(np.int8), 1, constant_values=1)
        self.pos = self.obs["agent_pos"].astype(np.float64) + 1.0
        self.angle = float(np.arctan2(self.obs["agent_dir"][1], self.obs["agent_dir"][0]))
        return self.obs

    def cell(self) -> tuple[int, int]:
        return int(np.floor(self.pos[1])), int(np.floor(self.pos[0]))

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None


def generate_episode(seed: int, steps: int, maze: str = "9x9", maze_seed: int | None = None) -> dict:
    """``steps`` steps of the exploration policy in the maze of ``maze_seed`` (else ``seed``); the policy's
    choices come from ``seed``. Returns the arrays of one offline-dataset file."""
    check_maze(maze, steps)
    env = MemoryMazeEnv(maze)
    obs, _ = env.reset(seed=seed, options=None if maze_seed is None else {"maze_seed": maze_seed})
    policy = ExplorationPolicy(env, np.random.default_rng(seed))
    rows = [obs]
    actions = np.zeros((steps + 1, NUM_ACTIONS), dtype=np.float32)
    rewards = np.zeros(steps + 1, dtype=np.float32)
    terminal = np.zeros(steps + 1, dtype=bool)
    for t in range(1, steps + 1):
        a = policy()
        obs, rewards[t], _, terminal[t], _ = env.step(a)
        actions[t, a] = 1.0
        rows.append(obs)
    env.close()
    ep = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    for k in ("agent_pos", "agent_dir", "targets_pos", "targets_vec", "target_pos", "target_vec", "target_color"):
        ep[k] = ep[k].astype(np.float32)
    ep["image"], ep["maze_layout"] = ep["image"].astype(np.uint8), ep["maze_layout"].astype(np.uint8)
    return ep | {"action": actions, "reward": rewards, "terminal": terminal}


def _generate_one(args):
    path, seed, steps, maze, maze_seed = args
    save_episode(path, generate_episode(seed, steps, maze, maze_seed))
    return path


def generate_dataset(out: str | os.PathLike, episodes: int, steps: int = 1000, maze: str = "9x9", seed: int = 0,
                     workers: int = 1, mazes: int = 0, progress: bool = True) -> Path:
    """Like :func:`lssvwm.data.episodes.generate_dataset` (resumable, atomic, per-episode seeds), in the real
    Memory Maze. ``mazes=K``: episode i runs in fixed maze ``i % K``."""
    _tasks()  # fail early, with the install hint
    check_maze(maze, steps)
    meta = {"generator": "memory_maze", "format_version": FORMAT_VERSION, "seed": seed, "episodes": episodes,
            "steps": steps, "frames_per_episode": steps + 1, "maze": maze, "mazes": mazes, "resolution": 64,
            "action_names": list(ACTION_NAMES), "maze_layout": "1 = free, maze_layout[y, x], y up"}
    return write_dataset(out, meta, ("generator", "seed", "steps", "maze", "mazes"), _generate_one,
                         lambda i: (episode_seed(seed, i), steps, maze, fixed_maze_seed(seed, mazes, i)),
                         workers, progress, "memory-maze episodes")
