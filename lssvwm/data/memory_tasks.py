"""Memory task sets (the paper's spatial retrieval and reasoning), built in the built-in maze or the real Memory Maze.

- **Retrieval**: the agent explores for N steps (the context), then turns around and retraces its moves
  backwards for M steps; a model gets the context frames and all actions and must regenerate what it saw.
- **Reasoning**: after the context, the agent goes on exploring with goals drawn from cells it has already
  visited, so it passes seen places, often from other directions.
- **Look-around**: the context ends with a full turn in place, and the agent keeps turning: every generated frame
  shows exactly what the context showed one turn earlier (24 frames at 15 degrees a step), a pure recall of
  frames beyond a short attention window (memory distance here: frames since the same cell *and heading*).

The environment renders the ground truth along the executed actions, so it is exact even where a wall
collision makes a reversed move differ from the original. A task set is stored as a dataset in the
standard episode format (plus ``context_length`` and ``memory_distance``) with its seed, so every model is
scored on identical episodes.

**Memory distance** of generated frame i: frames since the agent was last in the same maze cell during the
context, whatever its heading (``-1`` when the context never visits that cell). Retracing turns the agent
around, so it sees the same places (side walls, objects) from the other direction.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .episodes import episode_seed, save_episode
from .maze import NUM_ACTIONS, ExplorationPolicy, turn_steps
from .worlds import World, world_named

TASKS = ("retrieval", "reasoning", "look-around")
# (move, turn) -> action id, Memory Maze's set: noop, forward, left, right, forward+left, forward+right
_ACTION_OF = {(0, 0): 0, (1, 0): 1, (0, -1): 2, (0, 1): 3, (1, -1): 4, (1, 1): 5}
_MOVE_TURN = {a: mt for mt, a in _ACTION_OF.items()}


def reverse_actions(actions: list[int], turn_steps_180: int) -> list[int]:
    """Actions that turn around and retrace ``actions`` backwards.

    An action turns first, then moves. Undoing step k (turn d_k, then move) from the turned-around pose is a
    move back, then the turn -d_k; merged with the next undo this gives (turn -d_{k+1}, move_k).
    """
    out = [2] * turn_steps_180  # turn left by 180 degrees
    mt = [_MOVE_TURN[a] for a in actions]
    for k in range(len(mt) - 1, -1, -1):
        turn_next = -mt[k + 1][1] if k + 1 < len(mt) else 0
        out.append(_ACTION_OF[(mt[k][0], turn_next)])
    if mt:
        out.append(_ACTION_OF[(0, -mt[0][1])])
    return out


def memory_distance(positions: np.ndarray, context: int, headings: np.ndarray | None = None) -> np.ndarray:
    """For frames ``context..`` of a trajectory: frames since the agent was last in that cell in the context
    (``headings``: integer heading steps, then in that cell facing the same way)."""
    cells = [tuple(c) for c in np.floor(positions).astype(int)]
    if headings is not None:
        cells = [(*c, int(h)) for c, h in zip(cells, headings)]
    last_seen: dict[tuple, int] = {}
    for j in range(context):
        last_seen[cells[j]] = j
    return np.array([i - last_seen[cells[i]] if cells[i] in last_seen else -1
                     for i in range(context, len(positions))], dtype=np.int64)


def build_task_episode(task: str, seed: int, context: int, frames: int, resolution: int, size: int = 9,
                       maze_seed: int | None = None, world: "World | str" = "maze") -> dict:
    """One task episode: ``context + frames`` steps (``context + frames + 1`` images incl. the first).

    In the real Memory Maze (``world="memory-maze-9x9"``), the rolling ball's inertia makes a retrace only
    approximate; the ground truth is still exact (rendered along the executed actions) and memory distances
    come from the positions reached."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    world = world_named(world, size)
    env = world.env(context + frames + 1, resolution)
    obs, _ = env.reset(seed=seed, options=None if maze_seed is None else {"maze_seed": maze_seed})
    rng = np.random.default_rng(seed)
    policy = ExplorationPolicy(env, rng, **world.policy)
    turn = turn_steps(env)
    if task == "look-around" and context <= turn:
        raise ValueError(f"look-around: the context ({context} steps) must be longer than a full turn ({turn} steps)")
    images, pos, ang, acts = [obs["image"]], [env.pos.copy()], [env.angle], []

    def do(a):
        o, *_ = env.step(a)
        images.append(o["image"])
        pos.append(env.pos.copy())
        ang.append(env.angle)
        acts.append(a)

    for _ in range(context - turn if task == "look-around" else context):
        do(policy())
    if task == "look-around":
        way = int(rng.choice((2, 3)))  # turn left or right, in place
        for _ in range(turn + frames):
            do(way)
    elif task == "retrieval":
        plan = reverse_actions(acts, int(round(np.pi / env.turn_step)))
        plan = (plan + [0] * frames)[:frames]
        for a in plan:
            do(a)
    else:
        visited = sorted({(int(np.floor(p[1])), int(np.floor(p[0]))) for p in pos})
        policy.set_goal(None)
        while len(acts) < context + frames:
            if policy.goal is None or env.cell() == policy.goal:  # next goal: a cell seen in the context
                goal = visited[int(rng.integers(len(visited)))]
                if goal != env.cell():
                    policy.set_goal(goal)
            do(policy())
    onehot = np.zeros((len(images), NUM_ACTIONS), np.float32)
    onehot[np.arange(1, len(images)), acts] = 1.0
    positions, angles = np.array(pos), np.array(ang)
    return {
        "image": np.stack(images), "action": onehot, "reward": np.zeros(len(images), np.float32),
        "terminal": np.zeros(len(images), bool), "agent_pos": positions.astype(np.float32),
        "agent_dir": np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32),
        "maze_layout": np.repeat(env.layout[None], len(images), 0),  # 1 = wall, in ``agent_pos``'s grid
        "context_length": np.array(context + 1),  # images 0..context are given to the model
        "memory_distance": memory_distance(positions, context + 1, np.round(angles / env.turn_step).astype(int) % turn
                                           if task == "look-around" else None),
    }


def build_task_set(out: str | os.PathLike, task: str, episodes: int, context: int, frames: int, resolution: int,
                   seed: int = 0, size: int = 9, mazes: int = 0, maze_dataset_seed: int = 0,
                   world: "World | str" = "maze") -> Path:
    """Write (or reuse) a task set in ``world`` (a :class:`~lssvwm.data.worlds.World`, e.g. the training data's
    from :func:`~lssvwm.data.worlds.world_from_meta`, or a name with ``size``, ``mazes`` and
    ``maze_dataset_seed``). A world with fixed mazes is used as ``lssvwm data maze --mazes`` draws them, so a
    model trained on K fixed mazes is evaluated in those mazes, on new trajectories."""
    out = Path(out)
    world = world_named(world, size, maze_dataset_seed, mazes)
    meta = {"task": task, "episodes": episodes, "context": context, "frames": frames, "resolution": resolution,
            "seed": seed, "world": world.name, "settings": world.settings, "policy": world.policy, "mazes": world.mazes,
            "maze_dataset_seed": world.seed, "generator": "lssvwm.evaluation"}
    if (out / "meta.json").exists() and json.loads((out / "meta.json").read_text()) == meta:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for i in range(episodes):
        ep = build_task_episode(task, episode_seed(seed + 1_000_003, i), context, frames, resolution,
                                maze_seed=world.fixed_maze(i), world=world)
        save_episode(out / f"ep_{i:06d}.npz", ep)
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out
