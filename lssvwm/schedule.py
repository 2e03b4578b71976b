"""The noise schedule, in one bottom module that every other one may import: the cosine (variance-preserving)
schedule ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` for a noise level ``t`` in [0, 1]; v-prediction and
its conversions; the training loss weight; the step grids of sampling.

A new training noise schedule has its one home here: every place that turns a level into alpha/sigma (the loss,
the sampler, the EDM preconditioning in denoiser.py) calls :func:`alpha_sigma`.
"""
from __future__ import annotations

import math

import torch


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


def shift_levels(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Levels ``t`` moved so that each one's log-SNR drops by ``2 ln(shift)``: the shifted cosine schedule of
    Hoogeboom et al.'s simple diffusion (and SD3's timestep shift), ``tan(pi t' / 2) = shift * tan(pi t / 2)``.
    ``shift`` > 1 moves levels toward pure noise (2: uniform t's median 0.5 goes to 0.705), < 1 toward clean, 1
    changes nothing; 0 and 1 stay where they are (atan2 in fp64: tan's pole at t = 1 is not crossed)."""
    half = 0.5 * math.pi * t.double()
    moved = torch.atan2(shift * torch.sin(half), torch.cos(half)) * (2 / math.pi)
    return moved.clamp(0.0, 1.0).to(t.dtype)


EDM_SIGMA_MAX, EDM_SIGMA_MIN, EDM_RHO = 80.0, 0.002, 7.0  # Karras et al. (2022)
LOGSNR_RANGE = 6.0  # the logsnr grid's interior levels span log-SNR in [-6, 6] (t from 0.97 down to 0.03)


def sampling_grid(steps: int, schedule: str = "uniform") -> torch.Tensor:
    """Noise levels 1 = t_0 > t_1 > ... > t_steps = 0 (fp64) that a new frame is denoised through.

    - ``uniform``: evenly spaced in t (DDIM's usual grid).
    - ``logsnr``: interior levels evenly spaced in log-SNR over [-6, 6]: more steps near pure noise and near clean.
    - ``edm``: Karras et al.'s grid (sigma_max 80, sigma_min 0.002, rho 7; sigma = tan(pi t / 2) for this
      variance-preserving schedule): most steps at low noise, where the details are drawn.
    Every grid starts from pure noise (t = 1) and ends clean (t = 0)."""
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    if schedule == "uniform":
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if schedule == "logsnr":
        lam = torch.linspace(-LOGSNR_RANGE, LOGSNR_RANGE, steps + 1, dtype=torch.float64)[1:-1]
        inner = torch.atan(torch.exp(-lam / 2)) * 2 / math.pi  # log-SNR = -2 log tan(pi t / 2)
    elif schedule == "edm":
        i = torch.arange(steps, dtype=torch.float64) / max(1, steps - 1)
        sigma = (EDM_SIGMA_MAX ** (1 / EDM_RHO) + i * (EDM_SIGMA_MIN ** (1 / EDM_RHO) - EDM_SIGMA_MAX ** (1 / EDM_RHO))
                 ) ** EDM_RHO
        inner = (torch.atan(sigma) * 2 / math.pi)[1:]
    else:
        raise ValueError(f"unknown sampling schedule {schedule!r}; choose uniform, logsnr or edm")
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    return torch.cat([one, inner, zero])

