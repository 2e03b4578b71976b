"""Mamba2 state-space layer with a functional state, and the block-wise spatial scan.

- :class:`Mamba2`: in_proj -> (z, x, B, C, dt); causal depthwise conv1d + SiLU over (x, B, C); the SSD scan
  (:mod:`lssvwm.models.ssd`: ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``, with
  ``dt = softplus(dt_raw + dt_bias)`` and ``A = -exp(A_log)`` one scalar per head); gated RMSNorm
  ``rmsnorm(y * silu(z))``; out_proj. ``y, state = layer(u, state)`` never mutates ``state``: feeding a sequence
  in consecutive pieces with the carried state equals feeding it whole. The conv and the norm are the fused
  Functions of :mod:`lssvwm.models.fused`.
- :class:`BlockwiseSSM`: tokens (B, T, H, W, D) split into (b_h, b_w) spatial blocks, each scanned as one
  sequence in (time, row, col) order with its own state (the batch axis carries the blocks).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .fused import causal_conv1d_silu, packed, rmsnorm_gated
from .ssd import ssd_scan


class SSMState(NamedTuple):
    """Recurrent state of one :class:`Mamba2` layer (for a block-wise scan: one row per block)."""

    conv: torch.Tensor  # (batch, d_conv - 1, conv_dim): the last pre-convolution inputs
    ssm: torch.Tensor  # (batch, nheads, headdim, d_state), fp32


class RMSNormGated(nn.Module):
    """``rmsnorm(y * silu(z)) * weight`` (Mamba2's norm_before_gate=False), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y, z):
        return rmsnorm_gated(y, z, self.weight, self.eps)


# Mamba's step-size init: dt log-uniform in [DT_MIN, DT_MAX] per scan step, at least DT_FLOOR
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4


class Mamba2(nn.Module):
    """Mamba2 mixer over sequences (b, L, d_model) with a functional recurrent state (ngroups = 1)."""

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 32,
                 chunk_size: int = 64, dt_min: float = DT_MIN, dt_max: float = DT_MAX, dt_init_floor: float = DT_FLOOR,
                 A_init_range: tuple[float, float] = (1.0, 16.0), backend: str = "auto"):
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"expand * d_model = {d_inner} must be divisible by headdim = {headdim}")
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, d_inner
        self.headdim, self.nheads, self.chunk_size, self.backend = headdim, d_inner // headdim, chunk_size, backend
        self.conv_dim = d_inner + 2 * d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=True)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = RMSNormGated(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> SSMState:
        return SSMState(torch.zeros(batch, self.d_conv - 1, self.conv_dim, device=device, dtype=dtype),
                        torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device))

    def step_size(self, dt_raw: torch.Tensor) -> torch.Tensor:
        """dt = softplus(dt_raw + dt_bias): each head's step size (b, L, nheads) from the input's projection."""
        return F.softplus(dt_raw + self.dt_bias.to(dt_raw.dtype))

    def log_decay(self, u: torch.Tensor) -> torch.Tensor:
        """u (b, L, d_model) -> dt * A (b, L, nheads), <= 0: after these L steps the state keeps exp(sum) of what it
        held before them (what it added since decays from when it was added)."""
        dt = self.step_size(self.in_proj(u)[..., -self.nheads:])
        return dt * -torch.exp(self.A_log.to(dt.dtype))

    def forward(self, u: torch.Tensor, state: SSMState | None = None) -> tuple[torch.Tensor, SSMState]:
        """u (b, L, d_model) -> (y (b, L, d_model), the state after u)."""
        b, L, _ = u.shape
        if L == 0:  # nothing to scan: an empty output and the state as it was
            return u.new_zeros(b, 0, self.d_model), state or self.initial_state(b, u.device, u.dtype)
        zxbcdt = self.in_proj(u)  # (b, L, 2*d_inner + 2*d_state + nheads)
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if state is None:
            state = self.initial_state(b, u.device, xbc.dtype)
        keep = self.d_conv - 1
        new_conv = packed((torch.cat([state.conv.to(xbc.dtype), xbc], 1) if L < keep else xbc)[:, -keep:])
        xbc = causal_conv1d_silu(xbc, self.conv1d.weight[:, 0], self.conv1d.bias, state.conv)  # (b, L, conv_dim)
        x, B, C = torch.split(xbc, [self.d_inner, self.d_state, self.d_state], dim=-1)
        dt = self.step_size(dt.to(xbc.dtype))  # (b, L, nheads)
        A = -torch.exp(self.A_log.to(xbc.dtype))  # (nheads,)
        x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
        y, ssm = ssd_scan(x, dt, A, B, C, self.D, state.ssm, self.chunk_size, self.backend)
        y = self.norm(rearrange(y, "b l h p -> b l (h p)"), z)
        return self.out_proj(y), SSMState(new_conv, packed(ssm))  # one layout, whichever scan made it


def resolve_block(block, height: int, width: int) -> tuple[int, int]:
    """``None`` / 'full' -> the whole frame; otherwise (b_h, b_w), which must divide the token grid."""
    if block is None or block == "full":
        return height, width
    bh, bw = block
    if bh < 1 or bw < 1 or height % bh or width % bw:
        raise ValueError(f"SSM block size {tuple(block)} must divide the token grid {(height, width)}")
    return bh, bw


class BlockwiseSSM(nn.Module):
    """Block-wise Mamba2 scan over tokens (B, T, H, W, D).

    The H x W grid of each frame is split into (b_h, b_w) blocks. Each block, across all frames, is one
    sequence of T * b_h * b_w tokens in (time, row, col) order with its own state, so temporally adjacent
    tokens are b_h * b_w steps apart rather than H * W. ``block=None`` means one scan over the whole frame.
    The state has one row per (batch, block).
    """

    def __init__(self, d_model: int, block=None, **mamba_kwargs):
        super().__init__()
        self.block = None if block is None or block == "full" else tuple(block)
        self.mamba = Mamba2(d_model, **mamba_kwargs)

    def _sequences(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Tokens (B, T, H, W, D) -> one sequence per (batch, block): ((B nh nw), (T bh bw), D), and bh, bw."""
        _, _, H, W, _ = x.shape
        bh, bw = resolve_block(self.block, H, W)
        return rearrange(x, "b t (nh bh) (nw bw) d -> (b nh nw) (t bh bw) d", bh=bh, bw=bw), bh, bw

    def log_decay_per_frame(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, H, W, D) -> (B * blocks, T, nheads): the log-decay each frame applies to each block's state
        (the sum of dt * A over the frame's b_h * b_w scan steps). -1 / its mean is a head's memory in frames."""
        seq, bh, bw = self._sequences(x)
        return rearrange(self.mamba.log_decay(seq), "s (t k) h -> s t k h", k=bh * bw).sum(2)

    def forward(self, x: torch.Tensor, state: SSMState | None = None) -> tuple[torch.Tensor, SSMState]:
        _, _, H, W, _ = x.shape  # (B, T, H, W, D)
        seq, bh, bw = self._sequences(x)
        y, state = self.mamba(seq, state)
        y = rearrange(y, "(b nh nw) (t bh bw) d -> b t (nh bh) (nw bw) d", nh=H // bh, nw=W // bw, bh=bh, bw=bw)
        return y, state
