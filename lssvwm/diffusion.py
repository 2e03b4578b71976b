"""Diffusion Forcing: per-frame noise levels, the long-context training mask, the per-frame sampler, rollout.

Choices (validated by the anchors, see ../shared/research/anchors.md section 5):

- Continuous time ``t`` in [0, 1] per (sample, frame); ``t = 0`` is a clean frame. Cosine schedule
  ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` (variance preserving, ``alpha^2 + sigma^2 = 1``).
- v-prediction (DFoT's default, and what DF v1.5 found to matter): ``v = alpha * eps - sigma * x0``.
- Loss weighting: a min-SNR-style truncation. The v-loss equals ``(SNR + 1)`` times the x0-loss; we cap that
  x0-space weight at ``gamma`` (default 5), i.e. weight ``min(SNR + 1, gamma) / (SNR + 1)`` on the v-loss.
  This keeps full weight at high noise (where the next frame's layout is decided) and stops nearly clean
  frames from dominating. (It differs from Hang et al.'s ``min(SNR, gamma) / (SNR + 1)``, which gives
  almost no weight to the noisiest levels.)
- Long-context training (the paper's): with probability ``long_context_prob`` a random-length prefix of the
  clip is clean (level 0) and carries no loss; otherwise plain Diffusion Forcing (independent levels).
- ``clean_frame_prob`` (ours, not from the paper, off by default): each frame is also kept clean, without
  loss, with this probability, so that "clean history, noisy current frame" (the regime of sampling) is
  common in training rather than a ~10% accident of independent levels.
- Sampling: each new frame starts from pure noise and takes ``steps`` deterministic DDIM steps against a
  fixed cache; the clean result is then committed (optionally labelled with a small stabilization level as
  DF/Oasis do, ``context_noise_level``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .config import DiffusionConfig


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-frame value (B,) or (B, T) over the trailing (C, H, W) axes of x."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)).to(x.dtype)


def add_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    a, s = alpha_sigma(t)
    return _bc(a, x0) * x0 + _bc(s, x0) * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, s = alpha_sigma(t)
    return _bc(a, x0) * noise - _bc(s, x0) * x0


def x0_eps_from_v(xt: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, s = alpha_sigma(t)
    a, s = _bc(a, xt), _bc(s, xt)
    return a * xt - s * v, s * xt + a * v


def loss_weight(t: torch.Tensor, gamma: float) -> torch.Tensor:
    a, s = alpha_sigma(t)
    snr_plus_one = 1.0 / s.clamp(min=1e-6) ** 2  # (a^2 + s^2) / s^2
    return snr_plus_one.clamp(max=gamma) / snr_plus_one


def training_levels(batch: int, frames: int, cfg: DiffusionConfig, generator: torch.Generator | None = None,
                    device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise levels (B, T) and loss mask (B, T): independent levels per frame (Diffusion Forcing), and with
    probability ``long_context_prob`` a clean prefix of random length in [min_clean_prefix, T-1], no loss."""
    levels = torch.rand(batch, frames, generator=generator)
    clean = torch.zeros(batch, frames, dtype=torch.bool)
    if frames > 1 and cfg.long_context_prob > 0:
        use = torch.rand(batch, generator=generator) < cfg.long_context_prob
        lo = min(max(cfg.min_clean_prefix, 1), frames - 1)
        prefix = torch.randint(lo, frames, (batch,), generator=generator)
        clean |= use[:, None] & (torch.arange(frames)[None, :] < prefix[:, None])
    if cfg.clean_frame_prob > 0:  # not from the paper: clean context frames scattered through the clip
        clean |= torch.rand(batch, frames, generator=generator) < cfg.clean_frame_prob
    levels = torch.where(clean, 0.0, levels)
    mask = (~clean).float()
    return levels.to(device), mask.to(device)


def training_noise(shape: tuple, cfg: DiffusionConfig, generator: torch.Generator | None = None):
    """Levels (B, T), loss mask (B, T) and noise (B, T, C, H, W) for a batch of clips of ``shape``.

    Drawn for the whole (global) batch at once, so that processes that each take a slice of the batch
    train exactly as one process would."""
    levels, mask = training_levels(shape[0], shape[1], cfg, generator)
    noise = torch.randn(shape, generator=generator)
    return levels, mask, noise


def diffusion_loss(model, frames: torch.Tensor, actions: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor,
                   noise: torch.Tensor, cfg: DiffusionConfig, normalizer: float | None = None
                   ) -> tuple[torch.Tensor, dict]:
    """Weighted v-prediction loss, masked by the clean frames. ``normalizer`` (default: this batch's count of
    loss frames) divides the sum, so that data-parallel ranks can all divide by the global count."""
    xt = add_noise(frames, levels, noise)
    pred, cache = model(xt, levels, actions)
    err = (pred.float() - v_target(frames, noise, levels).float()).pow(2).mean(dim=(2, 3, 4))  # (B, T)
    w = loss_weight(levels, cfg.min_snr_gamma) * mask
    count = mask.sum().clamp(min=1) if normalizer is None else normalizer
    loss = (err * w).sum() / count
    stats = {"mse_v": float((err.detach() * mask).sum() / mask.sum().clamp(min=1))}
    if cfg.state_penalty > 0:  # not from the paper: pulls SSM states towards small magnitudes
        states = [lc.ssm.ssm for lc in cache.layers if lc.ssm is not None]
        if states:
            pen = torch.stack([s.pow(2).mean() for s in states]).mean()
            loss = loss + cfg.state_penalty * pen
            stats["state_penalty"] = float(pen)
    return loss, stats


def training_loss(model, frames: torch.Tensor, actions: torch.Tensor, cfg: DiffusionConfig,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Draw levels and noise for ``frames`` (B, T, C, H, W), then :func:`diffusion_loss`."""
    levels, mask, noise = training_noise(tuple(frames.shape), cfg, generator)
    dev = frames.device
    return diffusion_loss(model, frames, actions, levels.to(dev), mask.to(dev), noise.to(dev), cfg)


@torch.no_grad()
def sample_frame(model, cache, action: torch.Tensor, shape: tuple, steps: int = 8, context_noise_level: float = 0.0,
                 generator: torch.Generator | None = None, device=None):
    """Generate one frame against ``cache`` (left untouched), then commit it.

    ``model`` is anything with ``step(frame, level, action, cache) -> (v_pred, cache_after)``.
    Returns the clean frame (B, C, H, W) and the cache after committing it.
    """
    x0 = denoise_frame(model, cache, action, shape, steps, generator, device)
    return x0, commit_frame(model, cache, x0, action, context_noise_level, generator)


def denoise_frame(model, cache, action: torch.Tensor, shape: tuple, steps: int = 8,
                  generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """DDIM from pure noise to a clean frame (B, C, H, W) against ``cache``, which is left untouched."""
    b = shape[0]
    params = getattr(model, "parameters", None)
    dtype = next(params()).dtype if params is not None else torch.float32  # fp64 models sample in fp64
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t = torch.full((b,), float(ts[i]), device=device)
        v, _ = model.step(x, t, action, cache)
        x0, eps = x0_eps_from_v(x, v.float(), t)
        x0 = x0.clamp(-1.0, 1.0)
        a, s = alpha_sigma(torch.full((b,), float(ts[i + 1]), device=device))
        x = _bc(a, x) * x0 + _bc(s, x) * eps
    return x  # at t = 0 the last DDIM step returns x0 exactly


def commit_frame(model, cache, frame: torch.Tensor, action: torch.Tensor, context_noise_level: float = 0.0,
                 generator: torch.Generator | None = None):
    """The cache after ``frame`` (B, C, H, W), labelled with (and noised to) the stabilization level."""
    b = frame.shape[0]
    level = torch.full((b,), float(context_noise_level), device=frame.device)
    if context_noise_level > 0:
        frame = add_noise(frame, level, torch.randn(frame.shape, generator=generator).to(frame.device))
    _, cache = model.step(frame, level, action, cache)
    return cache


@torch.no_grad()
def prefill(model, context_frames: torch.Tensor, context_actions: torch.Tensor, context_noise_level: float = 0.0,
            generator: torch.Generator | None = None):
    """Encode the context clip once, in parallel; returns the cache after it."""
    b, n = context_frames.shape[:2]
    levels = torch.full((b, n), float(context_noise_level), device=context_frames.device)
    x = context_frames
    if context_noise_level > 0:
        x = add_noise(x, levels, torch.randn(x.shape, generator=generator).to(x.device))
    _, cache = model(x, levels, context_actions)
    return cache


@torch.no_grad()
def rollout(model, context_frames: torch.Tensor, context_actions: torch.Tensor, future_actions: torch.Tensor,
            steps: int = 8, context_noise_level: float = 0.0, generator: torch.Generator | None = None,
            on_frame: Callable[[int, torch.Tensor], None] | None = None, keep: bool = True,
            progress: bool = False, teacher_frames: torch.Tensor | None = None) -> torch.Tensor | None:
    """Generate ``M = future_actions.shape[1]`` frames after a context of N frames.

    context_frames: (B, N, C, H, W) in [-1, 1]; context_actions: (B, N); future_actions: (B, M).
    The state is fixed-size, so memory does not grow with M (with ``keep=False`` not even the outputs are
    kept; use ``on_frame(i, frame)`` to stream them). Returns (B, M, C, H, W) when ``keep``.

    ``teacher_frames`` (B, M, C, H, W): commit these true frames instead of the generated ones, so every frame
    is a one-step-ahead prediction from the true history (teacher forcing: how well the model predicts, apart
    from how its own errors compound).
    """
    from tqdm import tqdm

    cache = prefill(model, context_frames, context_actions, context_noise_level, generator)
    shape = (context_frames.shape[0],) + tuple(context_frames.shape[2:])
    out = []
    for i in tqdm(range(future_actions.shape[1]), desc="rollout", unit="frame", disable=not progress):
        frame = denoise_frame(model, cache, future_actions[:, i], shape, steps, generator, context_frames.device)
        cache = commit_frame(model, cache, frame if teacher_frames is None else teacher_frames[:, i].to(frame),
                             future_actions[:, i], context_noise_level, generator)
        if on_frame is not None:
            on_frame(i, frame)
        if keep:
            out.append(frame.cpu())
    return torch.stack(out, dim=1) if keep else None
