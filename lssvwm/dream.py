"""Play a trained world model: ``DreamEnv``, a Gymnasium environment whose observations are generated frames.

The model keeps a fixed-size state (SSM states + a k-frame KV cache), so every ``step`` costs the same time
and memory however long the episode runs; only an active recording grows (it keeps what it records).

    env = DreamEnv("runs/demo/run")              # context: first validation episode of the run's data
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(1)   # 1 = forward in the maze's action set
"""
from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from .config import SamplingOverrides
from .video import to_uint8


class Recording:
    """Frames and actions of a play session, saved in the standard episode format (+ an mp4)."""

    def __init__(self, first_frame: np.ndarray, num_actions: int):
        self.frames = [first_frame]
        self.actions: list[int] = []
        self.num_actions = num_actions

    def add(self, action: int, frame: np.ndarray) -> None:
        self.actions.append(int(action))
        self.frames.append(frame)

    def episode(self) -> dict:
        t = len(self.actions)
        onehot = np.zeros((t + 1, self.num_actions), np.float32)
        onehot[np.arange(1, t + 1), self.actions] = 1.0  # action[0] is the all-zero dummy
        return {"image": np.stack(self.frames), "action": onehot, "reward": np.zeros(t + 1, np.float32),
                "terminal": np.zeros(t + 1, bool)}

    def save(self, path: str | os.PathLike, fps: int = 8) -> tuple[Path, Path]:
        from .data.episodes import save_episode
        from .video import upscale, write_video

        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        ep = self.episode()
        save_episode(path, ep)
        try:
            video = write_video(path.with_suffix(".mp4"), upscale(ep["image"], max(1, 256 // ep["image"].shape[1])),
                                fps)
        except BaseException:
            path.unlink(missing_ok=True)  # both files or neither: no half recording looks like one
            raise
        return path, video


class DreamEnv(gym.Env):
    """A Gymnasium env backed by a trained world model.

    ``checkpoint``: run or checkpoint folder. ``context``: ``None`` (an episode of the run's validation data),
    a dataset folder, an episode ``.npz``, or a dict with ``frames`` (T, C, H, W) in [-1, 1] and ``actions``
    (T,). ``reset(seed)`` starts from a clip of ``context_frames`` frames of it (the episode is chosen by the
    seed when ``context`` is a folder). ``max_steps=0`` means unbounded. ``compile=True``: the model's per-frame
    step through ``torch.compile`` (needs a C++ compiler on the CPU; the first step compiles, a minute or more).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, checkpoint, context=None, context_frames: int = 16, max_steps: int = 0, device: str = "cpu",
                 ema: bool = True, sampling: SamplingOverrides | dict | None = None, compile: bool = False, **given):
        from .checkpoint import load_run

        # the run's sampling settings; any given here (``sampling``, or fields such as steps=4) replace them
        overrides = SamplingOverrides.of(sampling, **given)  # checked before the checkpoint is read
        run = load_run(checkpoint, device=device, ema=ema)
        self.model, self.cfg, self.ckpt, self.codec = run.model, run.cfg, run.checkpoint, run.codec
        self.sampler = run.sampler(overrides, compile=compile)
        m = self.cfg.model
        if not isinstance(context_frames, int) or isinstance(context_frames, bool) or context_frames < 1:
            raise ValueError(f"context_frames must be a positive integer, got {context_frames!r}")
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 0:
            raise ValueError(f"max_steps must be an integer >= 0 (0 = unbounded), got {max_steps!r}")
        self.device, self.context_frames, self.max_steps = torch.device(device), context_frames, max_steps
        self.context = context if context is not None else self.cfg.train.data
        self.num_actions = m.num_actions
        if m.action_dim > 0:
            self.action_space = gym.spaces.Box(-np.inf, np.inf, (m.action_dim,), np.float32)
        else:
            self.action_space = gym.spaces.Discrete(m.num_actions)
        channels, h, w = run.pixel_shape
        self.observation_space = gym.spaces.Box(0, 255, (h, w, channels), np.uint8)
        self.cache = None
        self.recording: Recording | None = None

    def _context_clip(self, rng: np.random.Generator) -> dict:
        ctx = self.context
        if isinstance(ctx, dict):
            return ctx
        path = Path(ctx)
        if path.is_dir():
            from .checkpoint import start_clip_split
            from .data.dataset import EpisodeWindows

            ds = EpisodeWindows(path, self.context_frames, start_clip_split(path), self.cfg.train.val_fraction,
                                layout=self.cfg.train.data_layout)
            return ds.episode(int(rng.integers(len(ds.files))))
        from .data.episodes import episode_tensors, load_episode

        return episode_tensors(load_episode(path))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        clip = self._context_clip(self.np_random)
        n = min(self.context_frames, clip["frames"].shape[0])
        start = int(self.np_random.integers(0, clip["frames"].shape[0] - n + 1))
        frames = clip["frames"][start:start + n][None].to(self.device)
        actions = clip["actions"][start:start + n][None].to(self.device)
        self.sampler.reseed(int(self.np_random.integers(2**31)))
        self.cache = self.sampler.prefill(frames, actions)
        self.t = 0
        self.frame = to_uint8(frames[0, -1:])[0]
        if self.recording is not None:
            self.recording = Recording(self.frame, self.num_actions)
        return self.frame, {"context_frames": n, "frames_in_state": self.cache.frames}

    def step(self, action):
        if self.cache is None:
            raise RuntimeError("call reset() before step()")
        if isinstance(self.action_space, gym.spaces.Discrete):
            if not self.action_space.contains(int(action)):
                raise ValueError(f"action must be an integer in [0, {self.num_actions}), got {action!r}")
            a = torch.tensor([int(action)], device=self.device)
        else:
            a = torch.as_tensor(np.asarray(action, np.float32)[None], device=self.device)
        frame, self.cache = self.sampler.step(self.cache, a)
        self.frame = to_uint8(frame)[0]
        self.t += 1
        if self.recording is not None:
            self.recording.add(int(action) if a.dtype == torch.long else 0, self.frame)
        truncated = bool(self.max_steps) and self.t >= self.max_steps
        return self.frame, 0.0, False, truncated, {"frames_in_state": self.cache.frames}

    def render(self):
        return self.frame

    def start_recording(self) -> None:
        """Record from the current frame on (``reset`` starts a new recording while one is active)."""
        self.recording = Recording(self.frame, self.num_actions)

    def stop_recording(self, path: str | os.PathLike | None = None):
        """Stop; with ``path`` save the episode (``.npz``) and an ``.mp4`` beside it. Returns the paths. A save that
        fails (a full disk) raises and keeps the recording going, so nothing recorded is lost: stop again to retry,
        or save elsewhere."""
        rec = self.recording
        if rec is None:
            raise RuntimeError("no recording in progress: call start_recording() first")
        paths = rec.save(path) if path is not None else None
        self.recording = None
        return paths
