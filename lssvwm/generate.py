"""Roll a trained model out from an episode's context and write ground truth | prediction side by side."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .metrics import psnr, ssim
from .video import side_by_side, to_uint8, upscale, write_video


def start_episode(run, data: str | None = None, split: str | None = None, episode: int = 0) -> dict:
    """The episode a rollout of ``run`` starts from: ``episode`` of the ``split`` (default: where its start clips
    are, see :func:`lssvwm.checkpoint.start_clip_split`) of ``data`` (default: the run's training data)."""
    from .checkpoint import start_clip_split
    from .config import ConfigError
    from .data.dataset import EpisodeWindows

    data = data or run.cfg.train.data
    if not data or not Path(data).is_dir():
        raise ConfigError(f"--data: the run's data folder {data!r} is not on this machine; give --data")
    split = split or start_clip_split(data)
    ds = EpisodeWindows(data, 1, split, run.cfg.train.val_fraction, layout=run.cfg.train.data_layout)
    if episode >= len(ds.files):
        raise ConfigError(f"--episode must be in [0, {len(ds.files)}) for the {len(ds.files)} '{split}' episodes of "
                          f"{data}, got {episode}")
    return ds.episode(episode)


def episode_rollout(sampler, episode: dict, context: int, frames: int, start: int = 0, progress: bool = False,
                    teacher_forcing: bool = False):
    """Context = episode frames [start, start+context); generate the next ``frames`` with the episode's actions.

    ``sampler``: a :class:`~lssvwm.diffusion.Sampler` (``run.sampler()``); it is reseeded with its config's seed,
    so the same call gives the same frames. ``teacher_forcing``: each frame is predicted from the true frames
    before it (see ``Sampler.rollout``). Returns pixels: (context (N,C,H,W), ground truth (M,C,H,W),
    prediction (M,C,H,W)).
    """
    video, actions = episode["frames"], episode["actions"]
    check_window(video.shape[0], context, frames, start)
    ctx = video[start:start + context]
    gt = video[start + context:start + context + frames]
    sampler.reseed(sampler.cfg.seed)
    pred = sampler.rollout(ctx[None], actions[None, start:start + context],
                           actions[None, start + context:start + context + frames],
                           teacher_frames=gt[None] if teacher_forcing else None, progress=progress)
    return ctx, gt, pred[0]


def check_window(total: int, context: int, frames: int, start: int = 0) -> None:
    """A rollout window must lie inside an episode of ``total`` frames (its actions are needed to generate)."""
    if context < 1 or frames < 0 or start < 0:
        raise ValueError(f"context must be >= 1, frames >= 0 and start >= 0 (got context={context}, "
                         f"frames={frames}, start={start})")
    if start + context + frames > total:
        raise ValueError(f"start + context + frames = {start} + {context} + {frames} exceeds the episode's {total} "
                         f"frames (the episode's actions are needed to generate)")


def _border(frames: np.ndarray, color) -> np.ndarray:
    out = frames.copy()
    out[:, :2], out[:, -2:], out[:, :, :2], out[:, :, -2:] = color, color, color, color
    return out


def comparison_video(ctx, gt, pred, scale: int = 4) -> np.ndarray:
    """Frames for a video: left ground truth, right the model. Context frames (shown on both sides) have a
    blue border, generated frames a red one."""
    return comparison_panels(ctx, [gt, pred], scale)


def comparison_panels(ctx, videos: list, scale: int = 4) -> np.ndarray:
    """Side-by-side panels, one per video of ``videos`` (the first: the ground truth, drawn without a border;
    the others: generated frames with a red one), each after the context frames (blue border)."""
    blue, red = (40, 90, 255), (255, 40, 40)
    c = _border(upscale(to_uint8(ctx), scale), blue)
    panels = [np.concatenate([c, upscale(to_uint8(v), scale) if i == 0 else _border(upscale(to_uint8(v), scale),
                                                                                       red)])
              for i, v in enumerate(videos)]
    return side_by_side(*panels, gap=4)


def frame_metrics(gt: torch.Tensor, pred: torch.Tensor) -> dict:
    p, s = psnr(pred, gt), ssim(pred, gt)
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_per_frame": [round(float(v), 3) for v in p],
            "ssim_per_frame": [round(float(v), 4) for v in s]}


def write_sample(model, cfg, path: Path, codec=None) -> dict:
    """A short rollout from the first validation episode (used during training), with the run's sampling: writes
    the video, returns its metrics and ``image``, a strip of ground truth over prediction."""
    from .data.dataset import EpisodeWindows
    from .diffusion import Sampler

    ds = EpisodeWindows(cfg.train.data, 1, "val", cfg.train.val_fraction, layout=cfg.train.data_layout)
    ep = ds.episode(0)
    n = max(1, cfg.train.clip_len // 2)
    m = min(cfg.train.clip_len, ep["frames"].shape[0] - n)
    was_training = model.training
    model.eval()
    ctx, gt, pred = episode_rollout(Sampler(model, cfg.sampling, codec), ep, n, m)
    model.train(was_training)
    write_video(path, comparison_video(ctx, gt, pred), fps=8)
    image = np.concatenate([np.concatenate(list(to_uint8(x)), axis=1) for x in (gt, pred)], axis=0)
    return frame_metrics(gt, pred) | {"image": image}  # image: ground truth frames over predicted ones (H, W, 3)


def write_metrics(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2))
