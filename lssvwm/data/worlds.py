"""The world a dataset was made in, rebuilt from its ``meta.json``: :func:`world_from_meta` is the one place that
turns a dataset's description into an environment, its episodes and its maze-seed rules, for the follow benchmark
and the memory tasks alike. A dataset's ``meta.json`` records every setting of the built-in maze that made it
(``world``: size, resolution, objects, loop probability, move and turn steps, agent radius, field of view), so an
evaluation rebuilds the same world even for data generated with non-default ``MazeEnv`` settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .episodes import episode_seed, fixed_maze_seed
from .maze import MazeEnv, maze_settings, policy_settings

# a maze seed stream the generators never use for training data: the follow benchmark's unseen mazes
UNSEEN_MAZE_SEED = 7_777_777


@dataclass(frozen=True)
class World:
    """``kind``: 'maze' (built-in, ``settings`` = MazeEnv's) or 'memory-maze' (``settings`` = {'maze': '9x9'});
    ``seed`` and ``mazes``: the dataset's seed and the number of fixed mazes it cycles through (0: one per
    episode); ``policy``: how the built-in maze's exploration policy explores
    (:func:`~lssvwm.data.maze.policy_settings`), in the dataset and in the memory tasks built for it."""

    kind: str = "maze"
    settings: dict = field(default_factory=maze_settings)
    seed: int = 0
    mazes: int = 0
    policy: dict = field(default_factory=policy_settings)

    @property
    def name(self) -> str:
        return "maze" if self.kind == "maze" else f"memory-maze-{self.settings.get('maze', '9x9')}"

    def env(self, steps: int, resolution: int | None = None):
        """A fresh environment of this world for episodes of ``steps`` steps (``resolution``: another frame size
        of the built-in maze; the real Memory Maze renders 64x64 only)."""
        if self.kind == "maze":
            return MazeEnv(**{**self.settings, **({"resolution": resolution} if resolution else {})},
                           max_steps=steps)
        from .memory_maze import MemoryMazeEnv, check_maze

        maze = self.settings.get("maze", "9x9")
        if resolution not in (None, 64):
            raise ValueError(f"the real Memory Maze renders 64x64 frames, not {resolution}x{resolution}")
        check_maze(maze, steps)
        return MemoryMazeEnv(maze)

    def training_maze(self, i: int) -> int:
        """The maze of training episode ``i``: one of the fixed mazes, or the episode's own."""
        return fixed_maze_seed(self.seed, self.mazes, i) if self.mazes else episode_seed(self.seed, i)

    def fixed_maze(self, i: int) -> int | None:
        """The ``i``-th of the dataset's fixed mazes in turn; None (a new maze) when it has none."""
        return fixed_maze_seed(self.seed, self.mazes, i)

    def unseen_maze(self, i: int) -> int:
        """A maze the training data never had."""
        return episode_seed(UNSEEN_MAZE_SEED + self.seed, i)

    def episode(self, seed: int, steps: int, maze_seed: int | None, resolution: int | None = None) -> dict:
        """An exploration episode of ``steps`` steps in this world (trajectory from ``seed``, maze from
        ``maze_seed``), as the dataset's generator writes them."""
        if self.kind == "maze":
            from .episodes import generate_episode

            s = {**self.settings, **({"resolution": resolution} if resolution else {})}
            return generate_episode(seed, steps, maze_seed=maze_seed, policy=self.policy, **s)
        from .memory_maze import generate_episode as memory_maze_episode

        if resolution not in (None, 64):
            raise ValueError(f"the real Memory Maze renders 64x64 frames, not {resolution}x{resolution}")
        return memory_maze_episode(seed, steps, self.settings.get("maze", "9x9"), maze_seed)


def world_from_meta(meta: dict) -> World | None:
    """The world of a dataset's ``meta.json``; None when no generator here can rebuild it (your own videos, TECO).
    Datasets written before ``world`` was recorded get MazeEnv's defaults for what their meta does not say."""
    gen, seed, mazes = meta.get("generator"), int(meta.get("seed", 0)), int(meta.get("mazes", 0) or 0)
    if gen == "lssvwm.data.maze":
        recorded = meta.get("world") or {"size": meta.get("maze_size", 9), "resolution": meta.get("resolution", 64)}
        return World("maze", maze_settings(**recorded), seed, mazes, policy_settings(**meta.get("policy", {})))
    if gen == "memory_maze":
        return World("memory-maze", {"maze": meta.get("maze", "9x9")}, seed, mazes)
    return None


def world_named(world: "World | str", size: int = 9, seed: int = 0, mazes: int = 0) -> World:
    """A :class:`World` as given, or from its name: ``maze`` (the built-in one, ``size`` cells) or
    ``memory-maze-9x9`` etc. (the real Memory Maze, 64x64, needs the ``memory-maze`` extra)."""
    if isinstance(world, World):
        return world
    if world == "maze":
        return World("maze", maze_settings(size=size), seed, mazes)
    if isinstance(world, str) and world.startswith("memory-maze-"):
        return World("memory-maze", {"maze": world[len("memory-maze-"):]}, seed, mazes)
    raise ValueError(f"world must be 'maze' or 'memory-maze-<9x9|11x11|13x13|15x15>', got {world!r}")
