"""Fused elementwise pieces of the Mamba2 layer: one autograd Function each, with a hand-written backward that
makes a few passes over memory where autograd would make one per op (a CPU training step is bound by memory
passes, not by arithmetic). Each has a plain-PyTorch reference next to it (``*_reference``); tests hold the two
equal, forward and gradients. Both compute in fp32 (fp64 for fp64 inputs) whatever the autocast mode. Kept only
where the benchmark says so: an op PyTorch already fuses (LayerNorm, RMSNorm) is used as it is.

- :func:`causal_conv1d_silu`: Mamba2's causal depthwise conv + SiLU on channels-last sequences (b, L, C).
- :func:`rmsnorm_gated`: Mamba2's ``rmsnorm(y * silu(z)) * weight``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The type the layers' fp32 parts compute in: fp64 stays fp64 (for tight tests), everything else fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def packed(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of a fresh tensor of its shape (a copy only where they differ). ``.contiguous()``
    keeps a view's strides along axes of size 1 (batch 1), so a state carried from frame to frame would change
    layout between a prefill and a step, and ``torch.compile``, which guards on strides, would compile again.
    The inference state (SSM states, KV caches, the last frame) goes through this."""
    stride, expected = 1, []
    for size in reversed(t.shape):
        expected.append(stride)
        stride *= size
    return t if t.stride() == tuple(reversed(expected)) else t.clone(memory_format=torch.contiguous_format)


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------- causal conv + SiLU
def causal_conv1d_silu_reference(x, weight, bias, init):
    """x (b, L, C); weight (C, K); bias (C,); init (b, K-1, C) the inputs before x. Returns silu(conv) (b, L, C)."""
    ct = compute_dtype(x)
    seq = torch.cat([init.to(ct), x.to(ct)], 1).transpose(1, 2)  # (b, C, K-1+L)
    out = F.conv1d(seq, weight.to(ct)[:, None], bias.to(ct), groups=weight.shape[0])
    return F.silu(out).transpose(1, 2)


def _conv_forward(x, weight, bias, init):
    """-> (silu(conv), the padded input (b, K-1+L, C), the weight as (K, C), the pre-activation)."""
    ct = compute_dtype(x)
    L, K = x.shape[1], weight.shape[1]
    xp = torch.cat([init.to(ct), x.to(ct)], 1)  # (b, K-1+L, C)
    wt = weight.to(ct).t().contiguous()  # (K, C)
    pre = torch.addcmul(bias.to(ct), xp[:, :L], wt[0])
    for k in range(1, K):
        pre.addcmul_(xp[:, k:k + L], wt[k])
    return F.silu(pre), xp, wt, pre


class _CausalConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, init):
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype, init.dtype)
        with _no_autocast(x):
            out, xp, wt, pre = _conv_forward(x, weight, bias, init)
        ctx.save_for_backward(xp, wt, pre)
        return out

    @staticmethod
    def backward(ctx, g):
        xp, wt, pre = ctx.saved_tensors
        K, L = wt.shape[0], pre.shape[1]
        with _no_autocast(g):
            gp = torch.ops.aten.silu_backward(g.to(pre.dtype).contiguous(), pre)
            gxp = torch.zeros_like(xp)
            gw = torch.empty_like(wt)
            for k in range(K):
                gxp[:, k:k + L].addcmul_(gp, wt[k])
                gw[k] = (gp * xp[:, k:k + L]).sum((0, 1))
            gb = gp.sum((0, 1))
        dx, dw, db, di = ctx.dtypes
        return gxp[:, K - 1:].to(dx), gw.t().to(dw), gb.to(db), gxp[:, :K - 1].to(di)


def causal_conv1d_silu(x, weight, bias, init):
    """Same arguments and result as :func:`causal_conv1d_silu_reference`; channels-last all the way (the
    reference's conv1d works channels-first and its backward pays for the transposes)."""
    if _needs_grad(x, weight, bias, init):
        return _CausalConvSiLU.apply(x, weight, bias, init)
    with _no_autocast(x):
        return _conv_forward(x, weight, bias, init)[0]


# ------------------------------------------------------------------------------------------- gated RMSNorm
def rmsnorm_gated_reference(y, z, weight, eps: float):
    ct = compute_dtype(y)
    y = y.to(ct) * F.silu(z.to(ct))
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * weight.to(ct)


def _gated_forward(y, z, weight, eps):
    """-> (output, y, z, the normalised gated input n, 1/rms r, weight), in the compute type."""
    ct = compute_dtype(y)
    y, z, w = y.to(ct), z.to(ct), weight.to(ct)
    yg = y * F.silu(z)
    r = torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + eps)
    n = yg.mul_(r)
    return n * w, y, z, n, r, w


class _RMSNormGated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, eps):
        ctx.dtypes = (y.dtype, z.dtype, weight.dtype)
        with _no_autocast(y):
            out, *saved = _gated_forward(y, z, weight, eps)
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, g):
        y, z, n, r, w = ctx.saved_tensors
        with _no_autocast(y):
            g = g.to(y.dtype)
            gw = (g * n).flatten(0, -2).sum(0)
            gn = g * w
            gyg = (gn - n * (gn * n).mean(-1, keepdim=True)).mul_(r)
            sz = F.silu(z)
            gy = gyg * sz
            gz = torch.ops.aten.silu_backward(gyg.mul_(y), z)
        dy, dz, dw = ctx.dtypes
        return gy.to(dy), gz.to(dz), gw.to(dw), None


def rmsnorm_gated(y, z, weight, eps: float):
    """``rmsnorm(y * silu(z)) * weight`` over the last axis; same result as :func:`rmsnorm_gated_reference`."""
    if _needs_grad(y, z, weight):
        return _RMSNormGated.apply(y, z, weight, eps)
    with _no_autocast(y):
        return _gated_forward(y, z, weight, eps)[0]
