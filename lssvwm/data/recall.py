"""A synthetic long-range recall task, small enough to train on 2 CPU cores in minutes.

Each clip: ``cue_frames`` frames of one bright solid colour (the cue, action 0), then ``D`` distractor frames
(action 1), each a random dark solid colour (new content every frame, but cheap to model, so the loss is
not dominated by hard-to-predict distractors), then one **recall** frame (action 2) that shows the cue colour
again, then distractors up to the clip length. To render the recall frame a model must remember the cue
across D frames: a model that sees only the last k frames cannot once D >= k. There is one recall frame per
clip, so no earlier recall can relay the cue. Clips are written in the standard episode format.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CUE, DISTRACTOR, RECALL = 0, 1, 2
NUM_ACTIONS = 3
PALETTE = np.array([[230, 40, 40], [40, 200, 60], [40, 90, 230], [240, 220, 40], [230, 60, 220], [40, 220, 220],
                    [250, 140, 30], [245, 245, 245]], dtype=np.uint8)


def recall_clip(rng: np.random.Generator, length: int, distance: int, size: int = 16, cue_frames: int = 2) -> dict:
    """One clip with ``distance`` = D distractor frames between the last cue frame and the recall frame
    (recall at index ``cue_frames + D``). A model attending to the last k frames sees the cue iff D <= k - 2."""
    if cue_frames + distance >= length:
        raise ValueError(f"cue_frames + distance = {cue_frames + distance} must be < length = {length}")
    cue = PALETTE[rng.integers(len(PALETTE))]
    images = np.empty((length, size, size, 3), np.uint8)
    actions = np.full(length, DISTRACTOR)
    for t in range(length):
        if t < cue_frames or t == cue_frames + distance:
            images[t] = cue
            actions[t] = CUE if t < cue_frames else RECALL
        else:
            images[t] = rng.integers(0, 90, size=3, dtype=np.uint8)  # dark: never a palette colour
    onehot = np.zeros((length, NUM_ACTIONS), np.float32)
    onehot[np.arange(1, length), actions[1:]] = 1.0  # action[0]: the all-zero dummy of the episode format
    return {"image": images, "action": onehot, "recall_index": np.array(cue_frames + distance),
            "cue_color": cue.copy()}


def generate_recall_dataset(out: str | os.PathLike, clips: int, length: int, seed: int = 0, size: int = 16,
                            cue_frames: int = 2) -> Path:
    """``clips`` clips with the recall distance uniform in [1, length - cue_frames - 1]."""
    from .episodes import save_episode

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(clips):
        d = int(rng.integers(1, length - cue_frames))
        save_episode(out / f"ep_{i:06d}.npz", recall_clip(rng, length, d, size, cue_frames))
    return out
