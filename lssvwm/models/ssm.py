"""Mamba2 (SSD) state-space layer with a functional state, and the block-wise spatial scan.

Recurrence per head (state ``h`` of shape (headdim, d_state)), with ``dt = softplus(dt_raw + dt_bias)`` and
``A = -exp(A_log)`` one scalar per head::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T          y_t = h_t C_t + D * x_t

- :func:`ssd_reference`: a plain loop over time. Slow; the ground truth for tests.
- :func:`ssd_chunked`: the chunked SSD algorithm (matmuls inside chunks of ``chunk_size`` steps, then a
  short scan over chunk states). Any length, optional initial state, returns the final state. Runs in
  fp32 whatever the autocast mode (the decay ``exp(cumsum(dt*A))`` is not safe in bf16).
- :func:`ssd_scan`: dispatches to flash-linear-attention's ``chunk_simple_gla`` when the tensors are on
  CUDA and ``fla`` is installed (Mamba2 = simple GLA with q=C, k=B, v=x*dt, g=A*dt, plus D*x), otherwise
  to :func:`ssd_chunked`.
- :class:`Mamba2`: in_proj -> (z, x, B, C, dt); causal depthwise conv1d + SiLU over (x, B, C); SSD scan;
  gated RMSNorm ``rmsnorm(y * silu(z))``; out_proj. ``y, state = layer(u, state)`` never mutates ``state``:
  feeding a sequence in consecutive pieces with the carried state equals feeding it whole.
- :class:`BlockwiseSSM`: tokens (B, T, H, W, D) split into (b_h, b_w) spatial blocks, each scanned as one
  sequence in (time, row, col) order with its own state (the batch axis carries the blocks).
"""
from __future__ import annotations

import functools
import math
import re
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class SSMState(NamedTuple):
    """Recurrent state of one :class:`Mamba2` layer (for a block-wise scan: one row per block)."""

    conv: torch.Tensor  # (batch, conv_dim, d_conv - 1): the last pre-convolution inputs
    ssm: torch.Tensor  # (batch, nheads, headdim, d_state), fp32


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64 (for tight tests); everything else is computed in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ssd_reference(x, dt, A, B, C, D=None, initial_state=None):
    """Sequential SSD recurrence.

    x: (b, L, h, p); dt: (b, L, h) (after softplus); A: (h,) negative; B, C: (b, L, n); D: (h,) or None;
    initial_state: (b, h, p, n) or None. Returns y (b, L, h, p) and the final state (b, h, p, n), fp32.
    """
    b, L, h, p = x.shape
    ct = _compute_dtype(x)
    x, dt, A, B, C = (t.to(ct) for t in (x, dt, A, B, C))
    state = (torch.zeros(b, h, p, B.shape[-1], device=x.device, dtype=ct) if initial_state is None
             else initial_state.to(ct))
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        inp = torch.einsum("bhp,bn->bhpn", x[:, t] * dt[:, t, :, None], B[:, t])
        state = decay[..., None, None] * state + inp
        ys.append(torch.einsum("bhpn,bn->bhp", state, C[:, t]))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    if D is not None:
        y = y + D.to(ct)[:, None] * x
    return y, state


def segsum_exp(a: torch.Tensor) -> torch.Tensor:
    """(..., l) log-decays -> (..., l, l) with entry [i, j] = exp(a_{j+1} + ... + a_i) for j <= i, else 0."""
    cs = a.cumsum(-1)
    seg = cs[..., :, None] - cs[..., None, :]
    causal = torch.ones(a.shape[-1], a.shape[-1], dtype=torch.bool, device=a.device).tril()
    return torch.exp(seg.masked_fill(~causal, float("-inf")))


def ssd_chunked(x, dt, A, B, C, D=None, initial_state=None, chunk_size: int = 64):
    """Chunked SSD scan; same arguments and results as :func:`ssd_reference`.

    Four matmul-shaped steps and no Python loop (so it compiles into few kernels): outputs inside each chunk,
    each chunk's contribution to the state at its end, the recurrence over chunks as a small (chunks+1)^2 decay
    matrix, and the entering state's contribution to every output of its chunk."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    q = max(1, min(chunk_size, L))  # a chunk longer than the sequence would only add padded work (per-frame steps)
    ct = _compute_dtype(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(ct) for t in (x, dt, A, B, C))
        a = (dt * A).transpose(1, 2)  # (b, h, L) log-decay per step, <= 0
        xdt = (x * dt[..., None]).transpose(1, 2)  # (b, h, L, p)
        pad = (-L) % q
        if pad:  # padded steps have a = 0 (decay 1) and no input, so the final state is unchanged
            a, xdt = F.pad(a, (0, pad)), F.pad(xdt, (0, 0, 0, pad))
            B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
        c = (L + pad) // q
        a = a.reshape(b, h, c, q)
        xdt = xdt.reshape(b, h, c, q, p)
        Bc, Cc = B.reshape(b, 1, c, q, n), C.reshape(b, 1, c, q, n)
        acs = a.cumsum(-1)  # (b, h, c, q)

        # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(acs_i - acs_j) xdt_j
        y = ((Cc @ Bc.transpose(-1, -2)) * segsum_exp(a)) @ xdt  # (b, h, c, q, p)
        # 2. Each chunk's contribution to the state at its end: sum_j exp(acs_end - acs_j) B_j xdt_j^T
        states = (Bc.transpose(-1, -2) * torch.exp(acs[..., -1:] - acs)[..., None, :]) @ xdt  # (b, h, c, n, p)
        # 3. The recurrence over chunks as a (c+1) x (c+1) decay matrix (row z: the state entering chunk z)
        s0 = (x.new_zeros(b, h, 1, n, p) if initial_state is None
              else initial_state.to(ct).transpose(-1, -2)[:, :, None])  # ours is (b, h, p, n)
        chunk_decay = segsum_exp(F.pad(acs[..., -1], (1, 0)))  # (b, h, c+1, c+1)
        entering = torch.einsum("bhzc,bhcnp->bhznp", chunk_decay, torch.cat([s0, states], dim=2))
        # 4. The entering state's contribution to every output of its chunk
        y = y + (Cc @ entering[:, :, :-1]) * torch.exp(acs)[..., None]
        y = y.reshape(b, h, c * q, p)[:, :, :L].transpose(1, 2)  # (b, L, h, p)
        if D is not None:
            y = y + D.to(ct)[:, None] * x
    return y, entering[:, :, -1].transpose(-1, -2)


@functools.cache
def _fla_available() -> bool:
    try:
        import fla.ops.simple_gla  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def _fla_backward_ok(device: int | None = None) -> bool:
    """FLA 0.6 refuses the backward of gated chunk kernels on Hopper (sm_90) with Triton >= 3.4, < 3.7.1 (wrong
    results, FLA issue #640) unless tilelang is installed; seen on an H100 with Triton 3.6. Then training takes
    the torch path and only inference uses the kernel. Cached per CUDA device: it is asked on every scan."""
    import triton

    if torch.cuda.get_device_capability(device)[0] != 9:
        return True
    version = tuple(int(v) for v in re.findall(r"\d+", triton.__version__)[:3])
    if not (3, 4, 0) <= version < (3, 7, 1):
        return True
    try:
        import tilelang  # noqa: F401
    except Exception:
        return False
    return True


def _use_fla(x, backend: str, *tensors) -> bool:
    if backend == "fla":
        return True
    if backend != "auto" or not x.is_cuda or not _fla_available():
        return False
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return not needs_grad or _fla_backward_ok(x.device.index)


def ssd_scan(x, dt, A, B, C, D=None, initial_state=None, chunk_size: int = 64, backend: str = "auto"):
    """SSD scan on the fastest available path. ``backend``: 'auto', 'torch' or 'fla' (CUDA only). 'auto' takes
    FLA on CUDA when it is installed, except for a backward FLA cannot do on this GPU (:func:`_fla_backward_ok`)."""
    if _use_fla(x, backend, x, dt, A, B, C, D, initial_state):
        from fla.ops.simple_gla import chunk_simple_gla

        b, L, h, p = x.shape
        q = C[:, :, None, :].expand(b, L, h, C.shape[-1]).float()
        k = B[:, :, None, :].expand(b, L, h, B.shape[-1]).float()
        v = (x.float() * dt.float()[..., None])
        g = dt.float() * A.float()
        init = None if initial_state is None else initial_state.float().transpose(-1, -2).contiguous()
        o, final = chunk_simple_gla(q, k, v, g, scale=1.0, initial_state=init, output_final_state=True)
        if D is not None:
            o = o + D.float()[:, None] * x.float()
        return o, final.transpose(-1, -2)  # FLA's state is (b, h, K=n, V=p); ours is (b, h, p, n)
    return ssd_chunked(x, dt, A, B, C, D, initial_state, chunk_size)


class RMSNormGated(nn.Module):
    """``rmsnorm(y * silu(z)) * weight`` (Mamba2's norm_before_gate=False), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y, z):
        dtype = y.dtype
        ct = _compute_dtype(y)
        y = y.to(ct) * F.silu(z.to(ct))
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(ct)).to(dtype)


class Mamba2(nn.Module):
    """Mamba2 mixer over sequences (b, L, d_model) with a functional recurrent state (ngroups = 1)."""

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 32,
                 chunk_size: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
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
        return SSMState(torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
                        torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device))

    def forward(self, u: torch.Tensor, state: SSMState | None = None) -> tuple[torch.Tensor, SSMState]:
        b, L, _ = u.shape
        if L == 0:  # nothing to scan: an empty output and the state as it was
            return u.new_zeros(b, 0, self.d_model), state or self.initial_state(b, u.device, u.dtype)
        zxbcdt = self.in_proj(u)  # (b, L, 2*d_inner + 2*d_state + nheads)
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if state is None:
            state = self.initial_state(b, u.device, xbc.dtype)
        seq = torch.cat([state.conv.to(xbc.dtype), xbc.transpose(1, 2)], dim=-1)  # (b, conv_dim, d_conv-1+L)
        new_conv = seq[..., seq.shape[-1] - (self.d_conv - 1):]
        xbc = F.silu(F.conv1d(seq, self.conv1d.weight.to(seq.dtype), self.conv1d.bias.to(seq.dtype),
                              groups=self.conv_dim)).transpose(1, 2)  # (b, L, conv_dim)
        x, B, C = torch.split(xbc, [self.d_inner, self.d_state, self.d_state], dim=-1)
        ct = _compute_dtype(u)
        dt = F.softplus(dt.to(ct) + self.dt_bias.to(ct))  # (b, L, nheads)
        A = -torch.exp(self.A_log.to(ct))  # (nheads,)
        x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
        y, ssm = ssd_scan(x, dt, A, B, C, self.D, state.ssm, self.chunk_size, self.backend)
        y = rearrange(y, "b l h p -> b l (h p)").to(z.dtype)
        y = self.norm(y, z)
        return self.out_proj(y), SSMState(new_conv, ssm)


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

    def forward(self, x: torch.Tensor, state: SSMState | None = None) -> tuple[torch.Tensor, SSMState]:
        _, _, H, W, _ = x.shape  # (B, T, H, W, D)
        bh, bw = resolve_block(self.block, H, W)
        seq = rearrange(x, "b t (nh bh) (nw bw) d -> (b nh nw) (t bh bw) d", bh=bh, bw=bw)
        y, state = self.mamba(seq, state)
        y = rearrange(y, "(b nh nw) (t bh bw) d -> b t (nh bh) (nw bw) d", nh=H // bh, nw=W // bw, bh=bh, bw=bw)
        return y, state
