"""Roll a trained model out from an episode's context and write ground truth | prediction side by side."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .diffusion import rollout
from .metrics import psnr, ssim
from .models.autoencoder import PixelCodec
from .video import side_by_side, to_uint8, upscale, write_video


def episode_rollout(model, episode: dict, context: int, frames: int, steps: int = 8, start: int = 0,
                    context_noise_level: float = 0.0, seed: int = 0, device="cpu", progress: bool = False,
                    codec=None, teacher_forcing: bool = False):
    """Context = episode frames [start, start+context); generate the next ``frames`` with the episode's actions.

    ``codec`` (see :func:`lssvwm.models.autoencoder.frame_codec`) maps pixels to what the model works on and back;
    None = pixels. ``teacher_forcing``: each frame is predicted from the true frames before it (see ``rollout``).
    Returns pixels: (context (N,C,H,W), ground truth (M,C,H,W), prediction (M,C,H,W)).
    """
    video, actions = episode["frames"], episode["actions"]
    total = video.shape[0]
    if context < 1 or start + context > total:
        raise ValueError(f"context={context} (from frame {start}) must lie within the episode's {total} frames")
    if start + context + frames > total:
        raise ValueError(f"context + frames = {context + frames} from frame {start} exceeds the episode's "
                         f"{total} frames (its actions are needed to generate)")
    codec = codec or PixelCodec()
    ctx = video[start:start + context]
    gen = torch.Generator().manual_seed(seed)
    pred = rollout(model, codec.encode(ctx[None].to(device)), actions[None, start:start + context].to(device),
                   actions[None, start + context:start + context + frames].to(device), steps=steps,
                   context_noise_level=context_noise_level, generator=gen, progress=progress,
                   teacher_frames=codec.encode(video[None, start + context:start + context + frames].to(device))
                   if teacher_forcing else None)
    gt = video[start + context:start + context + frames]
    return ctx, gt, codec.decode(pred)[0].cpu()


def _border(frames: np.ndarray, color) -> np.ndarray:
    out = frames.copy()
    out[:, :2], out[:, -2:], out[:, :, :2], out[:, :, -2:] = color, color, color, color
    return out


def comparison_video(ctx, gt, pred, scale: int = 4) -> np.ndarray:
    """Frames for a video: left ground truth, right the model. Context frames (shown on both sides) have a
    blue border, generated frames a red one."""
    blue, red = (40, 90, 255), (255, 40, 40)
    c = upscale(to_uint8(ctx), scale)
    g = upscale(to_uint8(gt), scale)
    p = upscale(to_uint8(pred), scale)
    left = np.concatenate([_border(c, blue), g])
    right = np.concatenate([_border(c, blue), _border(p, red)])
    return side_by_side(left, right, gap=4)


def frame_metrics(gt: torch.Tensor, pred: torch.Tensor) -> dict:
    p, s = psnr(pred, gt), ssim(pred, gt)
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_per_frame": [round(float(v), 3) for v in p],
            "ssim_per_frame": [round(float(v), 4) for v in s]}


def write_sample(model, cfg, path: Path, device, codec=None) -> dict:
    """A short rollout from the first validation episode (used during training)."""
    from .data.dataset import EpisodeWindows

    ds = EpisodeWindows(cfg.train.data, 1, "val", cfg.train.val_fraction, layout=cfg.train.data_layout)
    ep = ds.episode(0)
    n = max(1, cfg.train.clip_len // 2)
    m = min(cfg.train.clip_len, ep["frames"].shape[0] - n)
    was_training = model.training
    model.eval()
    ctx, gt, pred = episode_rollout(model, ep, n, m, cfg.diffusion.sampling_steps,
                                    context_noise_level=cfg.diffusion.context_noise_level, device=device,
                                    codec=codec)
    model.train(was_training)
    write_video(path, comparison_video(ctx, gt, pred), fps=8)
    return frame_metrics(gt, pred)


def write_metrics(path: Path, metrics: dict) -> None:
    path.write_text(json.dumps(metrics, indent=2))
