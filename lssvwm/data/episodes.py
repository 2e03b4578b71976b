"""Episode files: Memory Maze's offline layout, one ``.npz`` per episode, plus a ``meta.json`` per dataset.

Keys of an episode with T steps (every array has a leading time axis of T + 1):

==============  =====================  ======  ==========================================================
key             shape                  dtype   meaning
==============  =====================  ======  ==========================================================
``image``       (T+1, H, W, 3)         uint8   first-person view; ``image[0]`` precedes the first action
``action``      (T+1, A)               float   one-hot **last** action: ``action[t]`` led to ``image[t]``;
                                               ``action[0]`` is an all-zero dummy
``reward``      (T+1,)                 float   last reward (``reward[0] = 0``)
``terminal``    (T+1,)                 bool    episode ended at this step
``agent_pos``   (T+1, 2)               float   (x, y) position (optional for loading)
``agent_dir``   (T+1, 2)               float   unit heading vector (optional for loading)
``maze_layout`` (T+1, S, S) or (S, S)  uint8   1 = wall (optional for loading)
==============  =====================  ======  ==========================================================

The same reader loads files of the official Memory Maze offline dataset. Every problem with a file raises
:class:`EpisodeFormatError` naming the file, the field and what was expected.
"""
from __future__ import annotations

import json
import os
import stat
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..resources import available_memory
from ..writer_lock import one_writer
from .maze import ACTION_NAMES, NUM_ACTIONS, ExplorationPolicy, MazeEnv, maze_settings, policy_settings

FORMAT_VERSION = 1
REQUIRED_KEYS = ("image", "action")


class EpisodeFormatError(ValueError):
    """An episode file or dataset folder is not in the expected format."""


def episode_seed(dataset_seed: int, index: int) -> int:
    """Seed of episode ``index``: independent of worker count and generation order."""
    return int(np.random.SeedSequence([dataset_seed, index]).generate_state(1)[0])


def fixed_maze_seed(dataset_seed: int, mazes: int, index: int) -> int | None:
    """Maze seed of episode ``index`` when a dataset cycles through ``mazes`` fixed mazes (None: ``mazes=0``,
    a new maze per episode). Shared by dataset generation and the evaluation tasks, which must agree."""
    if not mazes:
        return None
    return int(np.random.SeedSequence([dataset_seed, 1, mazes, index % mazes]).generate_state(1)[0])


def generate_episode(seed: int, steps: int, size: int = 9, resolution: int = 64, maze_seed: int | None = None,
                     policy: dict | None = None, **env_kwargs) -> dict:
    """Run the exploration policy for ``steps`` steps; returns the episode arrays. The maze comes from
    ``maze_seed`` when given (else from ``seed``), the start pose and the policy's choices from ``seed``;
    ``policy``: :class:`~lssvwm.data.maze.ExplorationPolicy` settings (:func:`~lssvwm.data.maze.policy_settings`)."""
    env = MazeEnv(size=size, resolution=resolution, max_steps=steps, **env_kwargs)
    obs, _ = env.reset(seed=seed, options=None if maze_seed is None else {"maze_seed": maze_seed})
    policy = ExplorationPolicy(env, np.random.default_rng(seed), **(policy or {}))
    images, positions, dirs = [obs["image"]], [obs["agent_pos"]], [obs["agent_dir"]]
    actions = np.zeros((steps + 1, NUM_ACTIONS), dtype=np.float32)
    rewards = np.zeros(steps + 1, dtype=np.float32)
    for t in range(1, steps + 1):
        a = policy()
        obs, reward, _, _, _ = env.step(a)
        actions[t, a] = 1.0
        rewards[t] = reward
        images.append(obs["image"])
        positions.append(obs["agent_pos"])
        dirs.append(obs["agent_dir"])
    terminal = np.zeros(steps + 1, dtype=bool)
    return {
        "image": np.stack(images),
        "action": actions,
        "reward": rewards,
        "terminal": terminal,
        "agent_pos": np.stack(positions).astype(np.float32),
        "agent_dir": np.stack(dirs).astype(np.float32),
        "maze_layout": np.repeat(env.layout[None], steps + 1, axis=0),
    }


def save_episode(path: str | os.PathLike, episode: dict) -> None:
    """Write an episode atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    validate_episode(episode, path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **episode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (full disk, ...) leaves no partial file


def regular_file(path: str | os.PathLike, what: str = "file") -> int:
    """The size of ``path``, which must be a regular file: reading a FIFO, a device (a symlink to /dev/zero) or a
    socket may never end, or never stop growing. Symlinks are followed to what they point at."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise EpisodeFormatError(f"{path}: {what} not found") from None
    except OSError as e:
        raise EpisodeFormatError(f"{path}: cannot read it: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
        via = f" (a symlink to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise EpisodeFormatError(f"{path}: is {kind}{via}, not a regular file: data files must be regular files")
    return st.st_size


def npz_headers(path: Path) -> dict:
    """{key: (shape, dtype)} of the arrays in an ``.npz``, from their npy headers (nothing decompressed). A header
    may not promise more bytes than its member holds, and all of them together must fit in the memory available:
    a sparse or forged file would otherwise be read until memory runs out."""
    size = regular_file(path)
    arrays, total = {}, 0
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if not name.endswith(".npy"):
                    continue
                with z.open(name) as fh:
                    major, _ = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
                    header = fh.tell()
                key = name[:-4]
                declared = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
                stored = z.getinfo(name).file_size - header
                if declared > stored:  # a header may not promise more than the file holds (indexing trusts it)
                    raise EpisodeFormatError(f"{path}: field '{key}' declares shape {tuple(shape)} ({declared:,} bytes) "
                                             f"but the file holds {max(0, stored):,} bytes (truncated or corrupt)")
                arrays[key] = (tuple(shape), np.dtype(dtype))
                total += declared
    except EpisodeFormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise EpisodeFormatError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from e
    avail = available_memory()
    if avail is not None and total > avail:
        raise EpisodeFormatError(f"{path}: its arrays take {total / 2**30:.1f} GiB once read ({size / 2**20:.1f} MiB "
                                 f"on disk), more than the {avail / 2**30:.1f} GiB of memory available")
    return arrays


def load_episode(path: str | os.PathLike) -> dict:
    """Load and validate one episode ``.npz`` (ours or Memory Maze's)."""
    path = Path(path)
    npz_headers(path)  # a regular file whose arrays fit in memory
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise EpisodeFormatError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from e
    validate_episode(episode, path)
    return episode


def validate_episode(ep: dict, path) -> None:
    """Raise :class:`EpisodeFormatError` unless ``ep`` follows the layout in this module's docstring."""
    for key in REQUIRED_KEYS:
        if key not in ep:
            raise EpisodeFormatError(f"{path}: missing key '{key}' (found keys: {sorted(ep)})")
    image, action = ep["image"], ep["action"]
    if image.dtype != np.uint8:
        raise EpisodeFormatError(f"{path}: field 'image' must be uint8, got {image.dtype}")
    if image.ndim != 4 or image.shape[-1] != 3:
        raise EpisodeFormatError(f"{path}: field 'image' must have shape (T+1, H, W, 3), got {image.shape}")
    if image.shape[0] < 2:
        raise EpisodeFormatError(f"{path}: field 'image' needs at least 2 frames, got {image.shape[0]}")
    if action.ndim != 2 or not (np.issubdtype(action.dtype, np.floating) or np.issubdtype(action.dtype, np.integer)
                                or action.dtype == bool):
        raise EpisodeFormatError(
            f"{path}: field 'action' must be a (T+1, num_actions) one-hot array, got shape {action.shape} "
            f"dtype {action.dtype}")
    if action.shape[0] != image.shape[0]:
        raise EpisodeFormatError(
            f"{path}: length mismatch: 'image' has {image.shape[0]} frames but 'action' has {action.shape[0]} rows "
            f"(expected equal: action[t] is the action that led to image[t], action[0] a zero dummy)")
    row_sums = np.asarray(action, dtype=np.float32).sum(axis=1)
    if not np.all(row_sums[1:] == 1) or not np.all((action == 0) | (action == 1)):
        bad = int(np.nonzero((row_sums[1:] != 1))[0][0]) + 1 if np.any(row_sums[1:] != 1) else -1
        raise EpisodeFormatError(
            f"{path}: field 'action' must be one-hot (exactly one 1 per row after the dummy row 0); row {bad} is "
            f"{action[bad] if bad >= 0 else 'not binary'}")
    for key, trailing in (("agent_pos", (2,)), ("agent_dir", (2,))):
        if key in ep and ep[key].shape != (image.shape[0],) + trailing:
            raise EpisodeFormatError(
                f"{path}: field '{key}' must have shape {(image.shape[0],) + trailing}, got {ep[key].shape}")
    if "maze_layout" in ep and ep["maze_layout"].ndim not in (2, 3):
        raise EpisodeFormatError(f"{path}: field 'maze_layout' must be (S, S) or (T+1, S, S), got "
                                 f"{ep['maze_layout'].shape}")


def probe_episode(path: str | os.PathLike) -> tuple[tuple, tuple]:
    """Shapes of ``image`` and ``action`` read from the npy headers inside the npz, without decompressing the
    arrays (milliseconds per file, so huge datasets such as Memory Maze's 30k files can be indexed quickly).
    Content checks (one-hot actions) happen when the episode is loaded."""
    path = Path(path)
    shapes = npz_headers(path)
    for key in REQUIRED_KEYS:
        if key not in shapes:
            raise EpisodeFormatError(f"{path}: missing key '{key}' (found keys: {sorted(shapes)})")
    (image, image_dtype), (action, _) = shapes["image"], shapes["action"]
    if image_dtype != np.uint8 or len(image) != 4 or image[-1] != 3:
        raise EpisodeFormatError(f"{path}: field 'image' must be uint8 (T+1, H, W, 3), got {image_dtype} {image}")
    if len(action) != 2 or action[0] != image[0]:
        raise EpisodeFormatError(f"{path}: field 'action' must be (T+1, num_actions) with T+1 = {image[0]} rows "
                                 f"like 'image', got {action}")
    return image, action


def top_down(ep: dict, frames: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """An episode's map and path for a top-down view: (layout (S, S), 1 = wall, outer walls included; the agent's
    positions (T, 2) in that grid), or None when the episode has neither. Knows both file formats: ours (1 = wall)
    and the real Memory Maze's (``targets_pos`` present: 1 = free and no outer walls, see data.memory_maze)."""
    if "maze_layout" not in ep or "agent_pos" not in ep:
        return None
    layout = np.asarray(ep["maze_layout"][0] if ep["maze_layout"].ndim == 3 else ep["maze_layout"])
    positions = np.asarray(ep["agent_pos"][:frames])
    if "targets_pos" in ep:
        return np.pad(1 - layout, 1, constant_values=1), positions + 1.0
    return layout, positions


def action_indices(action_onehot: np.ndarray) -> np.ndarray:
    """One-hot ``(T+1, A)`` -> int64 ``(T+1,)`` indices; the all-zero dummy row becomes -1 ("no action")."""
    idx = action_onehot.argmax(axis=1).astype(np.int64)
    idx[action_onehot.sum(axis=1) == 0] = -1
    return idx


def image_to_frames(image: np.ndarray):
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float tensor in [-1, 1] (the inverse of ``video.to_uint8``)."""
    import torch

    return torch.from_numpy(image).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def episode_tensors(ep: dict) -> dict:
    """An episode as the models take it: ``frames`` (T, 3, H, W) in [-1, 1], ``actions`` (T,) ids (-1 = none)."""
    import torch

    return {"frames": image_to_frames(ep["image"]), "actions": torch.from_numpy(action_indices(ep["action"]))}


def episode_files(root: str | os.PathLike) -> list[Path]:
    """The sorted episode files of a dataset folder (``*.npz`` at the top level or one level down)."""
    root = Path(root)
    if not root.is_dir():
        raise EpisodeFormatError(f"{root}: dataset folder not found")
    files = sorted(root.glob("*.npz")) or sorted(root.glob("*/*.npz"))
    if not files:
        raise EpisodeFormatError(f"{root}: no episode files (*.npz) found in the dataset folder")
    return files


def read_meta(root: str | os.PathLike) -> dict:
    p = Path(root) / "meta.json"
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EpisodeFormatError(f"{p}: invalid JSON: {e}") from e


def _generate_one(args):
    path, seed, steps, settings, maze_seed, policy = args
    save_episode(path, generate_episode(seed, steps, maze_seed=maze_seed, policy=policy, **settings))
    return path


def generate_dataset(out: str | os.PathLike, episodes: int, steps: int, resolution: int = 64, size: int = 9,
                     seed: int = 0, workers: int = 1, progress: bool = True, mazes: int = 0,
                     world: dict | None = None, policy: dict | None = None) -> Path:
    """Generate ``episodes`` maze episodes into ``out``; complete episodes already there are kept.

    ``mazes=0``: every episode in its own maze. ``mazes=K``: episode i runs in maze ``i % K`` (seeded by
    (seed, K, i % K)), so the dataset revisits K fixed mazes along different trajectories. ``world``: other
    :class:`~lssvwm.data.maze.MazeEnv` settings (``move_step``, ``fov_deg``, ...); ``meta.json`` records every
    setting of the world under ``world``, so evaluations rebuild the same one (:mod:`lssvwm.data.worlds`).
    ``policy``: the exploration policy's settings (:func:`~lssvwm.data.maze.policy_settings`, e.g. ``spin_prob``),
    recorded under ``policy``; memory tasks built for the dataset's world explore the same way.
    """
    settings = maze_settings(**{**(world or {}), "size": size, "resolution": resolution})
    policy = policy_settings(**(policy or {}))
    meta = {
        "generator": "lssvwm.data.maze", "format_version": FORMAT_VERSION, "seed": seed, "episodes": episodes,
        "steps": steps, "frames_per_episode": steps + 1, "resolution": resolution, "maze_size": size,
        "image_shape": [steps + 1, resolution, resolution, 3], "action_shape": [steps + 1, NUM_ACTIONS],
        "action_names": list(ACTION_NAMES), "mazes": mazes, "world": settings, "policy": policy,
    }
    # a folder written before `world` (`policy`) was recorded was made with MazeEnv's defaults at its size and
    # resolution (and the default policy)
    legacy = {"world": maze_settings(size=size, resolution=resolution), "policy": policy_settings()}
    return write_dataset(out, meta, ("seed", "steps", "resolution", "maze_size", "mazes", "world", "policy"),
                         _generate_one, lambda i: (episode_seed(seed, i), steps, settings,
                                                   fixed_maze_seed(seed, mazes, i), policy),
                         workers, progress, "episodes", legacy)


def write_dataset(out: str | os.PathLike, meta: dict, same: tuple, worker, job_args, workers: int = 1,
                  progress: bool = True, desc: str = "episodes", legacy: dict | None = None) -> Path:
    """Write ``meta["episodes"]`` files ``ep_<i>.npz`` with ``worker((path, *job_args(i)))``, resumably.

    Complete episodes already there are kept (a folder made with other ``same`` settings is refused), broken
    ones and stale ``.tmp`` files from a killed run are redone. Episodes are written atomically, so re-running
    the same command after an interruption finishes the job; ``meta.json`` is written last. A second process
    writing into the same folder at once is refused (:mod:`lssvwm.writer_lock`). ``legacy``: what a ``same`` key
    that an older ``meta.json`` lacks stood for.
    """
    from tqdm import tqdm

    out = Path(out)
    with one_writer(out, "dataset generation"):  # one writer per folder
        meta_path = out / "meta.json"
        if meta_path.exists():
            old = {**(legacy or {}), **read_meta(out)}
            if any(old.get(k) != meta[k] for k in same):
                raise EpisodeFormatError(
                    f"{meta_path}: folder holds a dataset with different settings "
                    f"({ {k: old.get(k) for k in same} }); use another --out or delete it")
        for stale in out.glob("*.tmp"):
            stale.unlink()
        todo = []
        for i in range(meta["episodes"]):
            path = out / f"ep_{i:06d}.npz"
            if path.exists():
                try:
                    load_episode(path)
                    continue
                except EpisodeFormatError:
                    path.unlink()
            todo.append((path, *job_args(i)))
        bar = tqdm(total=meta["episodes"], initial=meta["episodes"] - len(todo), desc=desc, unit="ep",
                   disable=not progress)
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(worker, todo):
                    bar.update()
        else:
            for job in todo:
                worker(job)
                bar.update()
        bar.close()
        tmp = meta_path.with_name("meta.json.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, meta_path)
    return out
