"""The SSD scan of Mamba2 (the state-space recurrence below), three ways that give the same numbers.

Recurrence per head (state ``h`` of shape (headdim, d_state)), ``A`` one negative scalar per head::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T          y_t = h_t C_t + D * x_t

- :func:`ssd_reference`: a plain loop over time. Slow; the ground truth for tests.
- :func:`ssd_chunked`: the chunked SSD algorithm (matmuls inside chunks of ``chunk_size`` steps, the chunks'
  states, then the recurrence over chunks as a small decay matrix), as one autograd Function with a hand-written
  backward: every intermediate is laid out for the matmul that reads it, and the backward reuses the forward's
  decay matrices instead of differentiating through them op by op. Any length, optional initial state; returns
  the final state. Runs in fp32 whatever the autocast mode (the decay ``exp(cumsum(dt*A))`` is not safe in bf16),
  fp64 for fp64 inputs.
- :func:`ssd_scan`: dispatches to flash-linear-attention's ``chunk_simple_gla`` when the tensors are on CUDA and
  ``fla`` is installed (Mamba2 = simple GLA with q=C, k=B, v=x*dt, g=A*dt, plus D*x), otherwise to
  :func:`ssd_chunked`.

Shapes: x (b, L, h, p); dt (b, L, h) (after softplus); A (h,); B, C (b, L, n); D (h,) or None; states (b, h, p, n).
"""
from __future__ import annotations

import functools
import re

import torch
import torch.nn.functional as F

from .fused import compute_dtype


def ssd_reference(x, dt, A, B, C, D=None, initial_state=None):
    """Sequential SSD recurrence. Returns y (b, L, h, p) and the final state (b, h, p, n), fp32 (fp64 for fp64)."""
    b, L, h, p = x.shape
    ct = compute_dtype(x)
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


def _decay_matrix(cs: torch.Tensor) -> torch.Tensor:
    """(..., l) cumulative log-decays -> (..., l, l) with [i, j] = exp(cs_i - cs_j) for j <= i, else 0. Above the
    diagonal the exponent is >= 0 and may overflow to inf before ``tril_`` zeroes it (no inf * 0 is ever formed).
    ``cs`` must be contiguous: an elementwise op lays its output out like its inputs, and a transposed ``cs``
    would give a matrix whose rows are not contiguous (every later op on it a strided one)."""
    return torch.exp(cs[..., :, None] - cs[..., None, :]).tril_()


def _seg_grad(g: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``cs`` (..., l) of a loss whose gradient w.r.t. the exponents ``cs_i - cs_j`` is ``g``."""
    return g.sum(-1) - g.sum(-2)


def _rev_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """out_k = sum_{i >= k} x_i along ``dim`` (the backward of a cumsum)."""
    return x + x.sum(dim, keepdim=True) - x.cumsum(dim)


class _ChunkedSSD(torch.autograd.Function):
    """Chunk length q, c chunks. Layouts: per-chunk sequences (b, c, q, ...) as the input is laid out; the
    per-head q x q decay and mixing matrices (b, c, h, q, q); chunk states (b, c, n, h*p), so that the matmuls with
    B and C (shared by all heads) run over every head at once."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, s0, q: int):
        b, L, h, p = x.shape
        n = B.shape[-1]
        ct = compute_dtype(x)
        dtypes = tuple(None if t is None else t.dtype for t in (x, dt, A, B, C, D, s0))
        with torch.autocast(x.device.type, enabled=False):
            x, dt, A, B, C = (t.to(ct) for t in (x, dt, A, B, C))
            pad = (-L) % q
            c = (L + pad) // q
            xdt, a = x * dt[..., None], dt * A  # (b, L, h, p), (b, L, h) log-decay per step, <= 0
            if pad:  # padded steps have a = 0 (decay 1) and no input, so the final state is unchanged
                xdt, a = F.pad(xdt, (0, 0, 0, 0, 0, pad)), F.pad(a, (0, 0, 0, pad))
                B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
            Bc, Cc = B.reshape(b, c, q, n), C.reshape(b, c, q, n)
            xdt = xdt.view(b, c, q, h, p)
            acs = a.view(b, c, q, h).cumsum(2)  # (b, c, q, h)
            # 1. within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(acs_i - acs_j) xdt_j
            Lm = _decay_matrix(acs.transpose(2, 3).contiguous())  # (b, c, h, q, q), contiguous like its inputs
            CB = Cc @ Bc.transpose(-1, -2)  # (b, c, q, q)
            M = Lm * CB[:, :, None]
            xdt_t = xdt.transpose(2, 3).contiguous()  # (b, c, h, q, p)
            y = (M @ xdt_t).transpose(2, 3)  # (b, c, q, h, p)
            # 2. each chunk's contribution to the state at its end: S = B^T (exp(acs_end - acs) xdt)
            ds = torch.exp(acs[:, :, -1:] - acs)  # (b, c, q, h)
            W = (xdt * ds[..., None]).view(b, c, q, h * p)
            S = Bc.transpose(-1, -2) @ W  # (b, c, n, h*p)
            # 3. the recurrence over chunks as a (c+1) x (c+1) decay matrix per (b, h): row z = state entering z
            s0_ = (x.new_zeros(b, 1, n, h * p) if s0 is None
                   else s0.to(ct).permute(0, 3, 1, 2).reshape(b, 1, n, h * p))
            states = torch.cat([s0_, S], 1).view(b, c + 1, n, h, p).permute(0, 3, 1, 2, 4).contiguous()  # (b,h,c+1,n,p)
            Dm = _decay_matrix(F.pad(acs[:, :, -1].transpose(1, 2), (1, 0)).cumsum(-1))  # (b, h, c+1, c+1)
            H = (Dm @ states.reshape(b, h, c + 1, n * p)).view(b, h, c + 1, n, p)
            # 4. the entering state's contribution to every output of its chunk: exp(acs_i) C_i^T H
            Hc = H[:, :, :c].permute(0, 2, 3, 1, 4).reshape(b, c, n, h * p)
            yi = (Cc @ Hc).view(b, c, q, h, p)
            ea = torch.exp(acs)
            y = torch.addcmul(y, yi, ea[..., None]).reshape(b, c * q, h, p)[:, :L]
            if D is not None:
                y = y + D.to(ct)[:, None] * x
            final = H[:, :, c].transpose(-1, -2)  # (b, h, p, n)
        ctx.save_for_backward(x, dt, A, Bc, Cc, D, acs, Lm, CB, M, xdt, xdt_t, ds, W, states, Dm, Hc, yi, ea)
        ctx.meta = (L, q, pad, dtypes)
        return y, final

    @staticmethod
    def backward(ctx, gy, gfinal):
        x, dt, A, Bc, Cc, D, acs, Lm, CB, M, xdt, xdt_t, ds, W, states, Dm, Hc, yi, ea = ctx.saved_tensors
        L, q, pad, dtypes = ctx.meta
        b, c, _, n = Bc.shape
        h, p = x.shape[2:]
        ct = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            gy = gy.to(ct) if gy is not None else x.new_zeros(b, L, h, p)
            gD = (gy * x).sum((0, 1, 3)) if D is not None else None
            gyc = (F.pad(gy, (0, 0, 0, 0, 0, pad)) if pad else gy).reshape(b, c, q, h, p)
            # 4. y += exp(acs) (C @ H)
            gyi = gyc * ea[..., None]  # (b, c, q, h, p)
            g_acs = (gyi * yi).sum(-1)  # (b, c, q, h)
            gyi = gyi.reshape(b, c, q, h * p)
            gC = gyi @ Hc.transpose(-1, -2)  # (b, c, q, n)
            gH = (Cc.transpose(-1, -2) @ gyi).reshape(b, c, n, h, p).permute(0, 3, 1, 2, 4)  # (b, h, c, n, p)
            gH = torch.cat([gH, (gfinal.to(ct).transpose(-1, -2) if gfinal is not None
                                 else x.new_zeros(b, h, n, p))[:, :, None]], 2).reshape(b, h, c + 1, n * p)
            # 3. H = Dm @ states
            g_states = (Dm.transpose(-1, -2) @ gH).reshape(b, h, c + 1, n, p)
            g_cs = _seg_grad((gH @ states.reshape(b, h, c + 1, n * p).transpose(-1, -2)).mul_(Dm))  # (b, h, c+1)
            g_end = _rev_cumsum(g_cs, -1)[..., 1:].transpose(1, 2)  # (b, c, h): w.r.t. acs[:, :, -1]
            gs0 = g_states[:, :, 0].transpose(-1, -2) if dtypes[6] is not None else None  # (b, h, p, n)
            gS = g_states[:, :, 1:].permute(0, 2, 3, 1, 4).reshape(b, c, n, h * p)
            # 2. S = B^T W, W = exp(acs_end - acs) xdt
            gW = (Bc @ gS).reshape(b, c, q, h, p)
            gB = W @ gS.transpose(-1, -2)  # (b, c, q, n)
            g_ds = (gW * xdt).sum(-1).mul_(ds)  # w.r.t. the exponent acs_end - acs
            g_acs -= g_ds
            g_end = g_end + g_ds.sum(2)
            gxdt = gW.mul_(ds[..., None])
            # 1. y = (Lm * CB) @ xdt
            gyt = gyc.transpose(2, 3).contiguous()  # (b, c, h, q, p)
            gM = gyt @ xdt_t.transpose(-1, -2)  # (b, c, h, q, q)
            gxdt += (M.transpose(-1, -2) @ gyt).transpose(2, 3)
            gCB = (gM * Lm).sum(2)  # (b, c, q, q)
            g_acs += _seg_grad(gM.mul_(M)).transpose(2, 3)  # d M_ij / d (acs_i - acs_j) = M_ij
            gC += gCB @ Bc
            gB += gCB.transpose(-1, -2) @ Cc
            g_acs[:, :, -1] += g_end
            g_a = _rev_cumsum(g_acs, 2).reshape(b, c * q, h)[:, :L]  # through the cumsum
            gxdt = gxdt.reshape(b, c * q, h, p)[:, :L]
            gx = gxdt * dt[..., None]
            if D is not None:
                gx += D[:, None] * gy
            gdt = torch.addcmul((gxdt * x).sum(-1), g_a, A)
            gA = (g_a * dt).sum((0, 1))
            gB, gC = gB.reshape(b, c * q, n)[:, :L], gC.reshape(b, c * q, n)[:, :L]
        grads = (gx, gdt, gA, gB, gC, gD, gs0)
        return tuple(None if g is None else g.to(d) for g, d in zip(grads, dtypes)) + (None,)


def _one_chunk(x, dt, A, B, C, D, s0):
    """The scan of a sequence no longer than one chunk, without gradients (the per-frame steps of sampling): the
    chunked algorithm's four parts with one chunk, in a third of the ops."""
    ct = compute_dtype(x)
    x, dt, A, B, C = (t.to(ct) for t in (x, dt, A, B, C))
    acs = (dt * A).cumsum(1).transpose(1, 2).contiguous()  # (b, h, L)
    xdt = (x * dt[..., None]).transpose(1, 2)  # (b, h, L, p)
    y = (_decay_matrix(acs) * (C @ B.transpose(1, 2))[:, None]) @ xdt  # (b, h, L, p)
    final = ((acs[..., -1:] - acs).exp_()[..., None] * xdt).transpose(-1, -2) @ B[:, None]  # (b, h, p, n)
    if s0 is not None:
        s0 = s0.to(ct)
        y = torch.addcmul(y, acs.exp()[..., None], C[:, None] @ s0.transpose(-1, -2))
        final = torch.addcmul(final, acs[..., -1].exp()[..., None, None], s0)
    y = y.transpose(1, 2)
    return (y if D is None else torch.addcmul(y, D.to(ct)[:, None], x)), final


def ssd_chunked(x, dt, A, B, C, D=None, initial_state=None, chunk_size: int = 64):
    """Chunked SSD scan; same arguments and results as :func:`ssd_reference` (see :class:`_ChunkedSSD`)."""
    q = max(1, min(chunk_size, x.shape[1]))  # a chunk longer than the sequence would only add padded work
    if q == x.shape[1] and not (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, dt, A, B, C, D, initial_state))):
        with torch.autocast(x.device.type, enabled=False):
            return _one_chunk(x, dt, A, B, C, D, initial_state)
    return _ChunkedSSD.apply(x, dt, A, B, C, D, initial_state, q)


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
