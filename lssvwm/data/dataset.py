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

from .episodes import EpisodeFormatError, action_indices, episode_files, image_to_frames, load_episode
from .videos import detect_layout, load_video_episode, video_files

LAYOUTS = ("auto", "episodes", "teco", "videos")


def split_files(files: list[Path], split: str, val_fraction: float) -> list[Path]:
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if split == "all":
        return files
    n_val = max(1, int(round(len(files) * val_fraction))) if len(files) > 1 and val_fraction > 0 else 0
    return files[len(files) - n_val:] if split == "val" else files[:len(files) - n_val]


class EpisodeWindows(Dataset):
    """Random-access windows of ``length`` frames.

    Returns ``{"frames": (L, C, H, W) float32 in [-1, 1], "actions": (L,) int64}`` (or ``(L, A)`` float32 for
    continuous actions); ``actions[t]`` is the action that led to ``frames[t]`` (-1 or a zero vector = none, for
    the first frame of an episode). ``num_actions`` (discrete) or ``action_dim`` (continuous, else 0) describe them.
    """

    def __init__(self, root: str | os.PathLike, length: int, split: str = "train", val_fraction: float = 0.1,
                 stride: int = 1, cache: bool = True, skip_bad: bool = False, layout: str = "auto"):
        if length < 1:
            raise ValueError(f"window length must be >= 1, got {length}")
        if layout not in LAYOUTS:
            raise ValueError(f"data layout must be one of {LAYOUTS}, got {layout!r}")
        self.root = Path(root)
        self.layout = detect_layout(root) if layout == "auto" else layout
        self.length, self.stride, self.cache = length, stride, cache
        self._episodes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.layout == "episodes":
            files = split_files(episode_files(root), split, val_fraction)
        elif self.layout == "teco":
            files = video_files(root, "teco", split)
        else:
            files = split_files(video_files(root, "videos"), split, val_fraction)
        self.num_actions, self.action_dim = 0, 0
        kinds = set()
        self.bad_files: list[tuple[Path, str]] = []  # (file, reason), when skip_bad
        self.files: list[Path] = []
        self.index: list[tuple[int, int]] = []
        shapes = set()
        for f in files:  # every file is read and checked once, before training starts
            try:
                image, actions, width = self._read(f)
            except EpisodeFormatError as e:
                if not skip_bad:
                    raise
                self.bad_files.append((f, str(e)))
                continue
            if image.shape[0] < length:
                raise EpisodeFormatError(f"{f}: episode has {image.shape[0]} frames, shorter than the window "
                                         f"length {length}")
            e = len(self.files)
            self.files.append(f)
            if cache:
                self._episodes[e] = (image, actions)
            shapes.add(image.shape[1:])
            kinds.add("continuous" if actions.ndim == 2 else "discrete")
            if actions.ndim == 2:
                if self.action_dim and actions.shape[1] != self.action_dim:
                    raise EpisodeFormatError(f"{f}: actions have {actions.shape[1]} dims, earlier files "
                                             f"{self.action_dim}")
                self.action_dim = int(actions.shape[1])
            else:
                self.num_actions = max(self.num_actions, width)
            self.index.extend((e, s) for s in range(0, image.shape[0] - length + 1, stride))
        if not self.files:
            raise EpisodeFormatError(f"{root}: split '{split}' has no usable episodes ({len(files)} files, "
                                     f"{len(self.bad_files)} unreadable)")
        if len(shapes) > 1:
            raise EpisodeFormatError(f"{root}: episodes have different frame shapes {sorted(shapes)}")
        if len(kinds) > 1:
            raise EpisodeFormatError(f"{root}: some files have discrete action ids, others continuous vectors")
        self.frame_shape = shapes.pop()  # (H, W, 3)

    def _read(self, f: Path) -> tuple[np.ndarray, np.ndarray, int]:
        """(image (T, H, W, 3) uint8, actions (T,) ids or (T, A) vectors, number of discrete actions)."""
        if self.layout == "episodes":
            ep = load_episode(f)
            return ep["image"], action_indices(ep["action"]), int(ep["action"].shape[1])
        image, actions = load_video_episode(f, self.layout)
        width = 3 if self.layout == "teco" else (int(actions.max()) + 1 if actions.ndim == 1 else 0)
        return image, actions, width

    def _load(self, e: int):
        if e in self._episodes:
            return self._episodes[e]
        image, actions, _ = self._read(self.files[e])
        if self.cache:
            self._episodes[e] = (image, actions)
        return image, actions

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e, s = self.index[i]
        image, actions = self._load(e)
        return {"frames": image_to_frames(image[s:s + self.length]),
                "actions": torch.from_numpy(actions[s:s + self.length].copy())}

    def episode(self, e: int) -> dict:
        """A whole episode as tensors (for rollouts and evaluation)."""
        image, actions = self._load(e)
        return {"frames": image_to_frames(image), "actions": torch.from_numpy(actions.copy())}
