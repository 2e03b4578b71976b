"""A PyTorch dataset of fixed-length windows from episode files.

Item ``i`` is a deterministic (episode, start) pair, so a training run that draws indices from a seeded
generator visits the same windows after a resume. Episodes are split into train/val by episode (never by
window), with the last ``val_fraction`` of the sorted files held out (TECO folders: train/ and test/).

Three folder layouts are read (``layout="auto"`` tells them apart): ``episodes`` (``.npz`` files, ours or Memory
Maze's offline dataset, :mod:`.episodes`), ``teco`` (TECO Minecraft) and ``videos`` (your own mp4 + actions),
both in :mod:`.videos`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import LAYOUTS
from .episodes import EpisodeFormatError, action_indices, episode_files, image_to_frames, load_episode, probe_episode
from .videos import detect_layout, load_video_episode, probe_video_episode, video_files



class EpisodeReader:
    """``*.npz`` episodes (Memory Maze's offline layout); the last ``val_fraction`` of the files are validation."""

    def files(self, root: Path, split: str, val_fraction: float) -> list[Path]:
        return split_files(episode_files(root), split, val_fraction)

    def probe(self, f: Path) -> tuple[tuple, np.ndarray | None, int]:
        """(image shape, actions or None when not read yet, number of discrete actions), without decoding."""
        shape, action_shape = probe_episode(f)
        return shape, None, int(action_shape[1])

    def read(self, f: Path) -> tuple[np.ndarray, np.ndarray, int]:
        """(image (T, H, W, 3) uint8, actions (T,) ids, number of discrete actions)."""
        ep = load_episode(f)
        return ep["image"], action_indices(ep["action"]), int(ep["action"].shape[1])


class VideoReader:
    """``*.mp4`` + action files: your own videos (``layout="videos"``; the last ``val_fraction`` of the files are
    validation) or TECO's Minecraft (``layout="teco"``; train/ and test/)."""

    def __init__(self, layout: str):
        self.layout = layout

    def files(self, root: Path, split: str, val_fraction: float) -> list[Path]:
        if self.layout == "teco":
            return video_files(root, "teco", split)
        return split_files(video_files(root, "videos"), split, val_fraction)

    def probe(self, f: Path) -> tuple[tuple, np.ndarray, int]:
        shape, actions = probe_video_episode(f, self.layout)
        return shape, actions, self._width(actions)

    def read(self, f: Path) -> tuple[np.ndarray, np.ndarray, int]:
        image, actions = load_video_episode(f, self.layout)
        return image, actions, self._width(actions)

    def _width(self, actions: np.ndarray) -> int:
        """Discrete action ids in use (TECO: always 3; continuous vectors: 0)."""
        return 3 if self.layout == "teco" else (int(actions.max()) + 1 if actions.ndim == 1 else 0)


READERS = {"episodes": EpisodeReader, "teco": lambda: VideoReader("teco"), "videos": lambda: VideoReader("videos")}


def split_files(files: list[Path], split: str, val_fraction: float) -> list[Path]:
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if split == "all":
        return files
    n_val = max(1, int(round(len(files) * val_fraction))) if len(files) > 1 and val_fraction > 0 else 0
    return files[len(files) - n_val:] if split == "val" else files[:len(files) - n_val]


class EpisodeWindows(Dataset):
    """Random-access windows of ``clip_len`` frames (``train.clip_len``).

    Returns ``{"frames": (L, C, H, W) float32 in [-1, 1], "actions": (L,) int64}`` (or ``(L, A)`` float32 for
    continuous actions); ``actions[t]`` is the action that led to ``frames[t]`` (-1 or a zero vector = none, for
    the first frame of an episode). ``num_actions`` (discrete) or ``action_dim`` (continuous, else 0) describe them.

    Every file is indexed at start from its headers (npz) or its action file and frame count (videos).
    ``cache=None`` (default) keeps all decoded episodes in memory when they fit in ``max_cache_gb``. They are
    loaded and fully checked up front. Larger datasets, such as Memory Maze's 30k-episode offline set or TECO's
    Minecraft, are read per item instead; use ``train.num_workers`` to hide the decoding.
    """

    def __init__(self, root: str | os.PathLike, clip_len: int, split: str = "train", val_fraction: float = 0.1,
                 stride: int = 1, cache: bool | None = None, skip_bad: bool = False, layout: str = "auto",
                 max_cache_gb: float = 4.0):
        if clip_len < 1:
            raise ValueError(f"window length must be >= 1, got {clip_len}")
        if layout not in LAYOUTS:
            raise ValueError(f"data layout must be one of {LAYOUTS}, got {layout!r}")
        self.root = Path(root)
        self.layout = detect_layout(root) if layout == "auto" else layout
        self.reader = READERS[self.layout]()
        self.clip_len, self.stride = clip_len, stride
        self._episodes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        files = self.reader.files(self.root, split, val_fraction)
        self.num_actions, self.action_dim = 0, 0
        kinds = set()
        self.bad_files: list[tuple[Path, str]] = []  # (file, reason), when skip_bad
        self.files: list[Path] = []
        self._lengths: list[int] = []
        self.index: list[tuple[int, int]] = []
        shapes = set()

        def attempt(read, f):
            """``read(f)``, or None after recording the file as bad (with ``skip_bad``)."""
            try:
                return read(f)
            except EpisodeFormatError as e:
                if not skip_bad:
                    raise
                self.bad_files.append((f, str(e)))
                return None

        probed = [(f, p) for f in files if (p := attempt(self.reader.probe, f)) is not None]  # headers, counts
        total_gb = sum(int(np.prod(shape)) for _, (shape, _, _) in probed) / 2**30
        self.cache = total_gb <= max_cache_gb if cache is None else cache
        for f, (shape, actions, width) in probed:
            if self.cache:  # decode and fully check every file now, before training starts
                if (read := attempt(self.reader.read, f)) is None:
                    continue
                image, actions, width = read
                shape = image.shape
            if shape[0] < clip_len:
                raise EpisodeFormatError(f"{f}: episode has {shape[0]} frames, shorter than the window "
                                         f"length {clip_len}")
            e = len(self.files)
            self.files.append(f)
            self._lengths.append(shape[0])
            if self.cache:
                self._episodes[e] = (image, actions)
            shapes.add(tuple(shape[1:]))
            if actions is not None:
                kinds.add("continuous" if actions.ndim == 2 else "discrete")
            if actions is not None and actions.ndim == 2:
                if self.action_dim and actions.shape[1] != self.action_dim:
                    raise EpisodeFormatError(f"{f}: actions have {actions.shape[1]} dims, earlier files "
                                             f"{self.action_dim}")
                self.action_dim = int(actions.shape[1])
            else:
                self.num_actions = max(self.num_actions, width)
            self.index.extend((e, s) for s in range(0, shape[0] - clip_len + 1, stride))
        if not self.files:
            raise EpisodeFormatError(f"{root}: split '{split}' has no usable episodes ({len(files)} files, "
                                     f"{len(self.bad_files)} unreadable)")
        if len(shapes) > 1:
            raise EpisodeFormatError(f"{root}: episodes have different frame shapes {sorted(shapes)}")
        if len(kinds) > 1:
            raise EpisodeFormatError(f"{root}: some files have discrete action ids, others continuous vectors")
        self.frame_shape = shapes.pop()  # (H, W, 3)

    def _load(self, e: int):
        if e in self._episodes:
            return self._episodes[e]
        image, actions, _ = self.reader.read(self.files[e])
        if image.shape[0] != self._lengths[e]:  # a video's decoded length can differ from its counted one
            raise EpisodeFormatError(f"{self.files[e]}: decoded {image.shape[0]} frames, but {self._lengths[e]} "
                                     f"were counted when the dataset was indexed")
        if self.cache:
            self._episodes[e] = (image, actions)
        return image, actions

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e, s = self.index[i]
        image, actions = self._load(e)
        return {"frames": image_to_frames(image[s:s + self.clip_len]),
                "actions": torch.from_numpy(actions[s:s + self.clip_len].copy())}

    def episode(self, e: int) -> dict:
        """A whole episode as tensors (for rollouts and evaluation)."""
        image, actions = self._load(e)
        return {"frames": image_to_frames(image), "actions": torch.from_numpy(actions.copy())}
