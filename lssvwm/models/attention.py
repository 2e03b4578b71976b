"""Frame-local attention with a fixed-size, functional KV cache.

A token of frame ``i`` attends to every token of frames ``i-k+1 .. i``: dense within a frame, causal across
frames. ``window=None`` means every past frame (a full causal transformer); ``window=1`` is per-frame
spatial attention. Frame order is encoded with rotary embeddings (RoPE) over the absolute frame index; since RoPE
scores depend only on index differences, the cached and the parallel paths agree exactly.

Three ways to compute it (``backend``), all equal to :func:`frame_local_attention_reference` (a dense masked
softmax, for tests):

- ``window`` (the CPU default): each query frame with exactly the keys of its window, gathered into a dense block
  (B*frames, heads, tokens, k*tokens) and given to SDPA's fused kernel without a mask; only the first frames of a
  clip, which see fewer than k frames, take one small masked call. No key outside a window is ever scored.
- ``sdpa``: frames in chunks of ``chunk``; each chunk's queries see the keys of their chunk and of the ``k-1``
  frames before it, with a mask (O(T * (k + chunk) * N^2), never O((T*N)^2)).
- ``flex`` (the CUDA default): one FlexAttention call with a frame block mask; blocks outside the window are
  skipped by the fused kernel.

Layout: tokens (B, T, N, D) -> q, k, v (B, T, N, heads, head_dim), the order the qkv projection writes them in;
the KV cache keeps the rotated keys and the values of the last ``k-1`` frames in the same layout.

Under bf16 autocast on the CPU, SDPA runs in bf16 only where its fused kernel is faster in bf16 than in fp32
(:func:`cpu_bf16_attention_fast`, timed once per process); elsewhere autocast is lifted around it and it takes
its inputs in fp32, the type the normed and rotated q and k come in. The matmuls around it keep autocast.
"""
from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..resources import bf16_speedup
from .fused import compute_dtype, packed


class KVCache(NamedTuple):
    """Rotated keys and values of the last ``frames`` committed frames of one attention layer."""

    k: torch.Tensor  # (B, frames, N, heads, head_dim)
    v: torch.Tensor  # (B, frames, N, heads, head_dim)


def rope_angles(pos: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Angles (F, head_dim/2) in fp64 by which channel pair i of frame ``pos[f]`` turns: ``pos[f] *
    base^(-2i/head_dim)`` (fp64, so frame 10^5 keeps its precision)."""
    freqs = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float64) / head_dim)
    return pos.to(torch.float64)[:, None] * freqs[None]


def rope_rotation(pos: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Unit complex numbers (F, head_dim/2) that rotate channel pair i of frame ``pos[f]`` by its
    :func:`rope_angles`."""
    ang = rope_angles(pos, head_dim, base)
    return torch.polar(torch.ones_like(ang), ang)


@functools.lru_cache(maxsize=8)
def _frames_rotation(t0: int, t: int, head_dim: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """:func:`rope_rotation` of frames t0 .. t0+t-1 in ``dtype``, cached: every layer and every denoising step of
    a frame asks for the same one. A few entries only, so that a long rollout holds no more than a short one."""
    return rope_rotation(torch.arange(t0, t0 + t, device=device), head_dim).to(dtype)


def rmsnorm_rope(x: torch.Tensor, weight: torch.Tensor, rot: torch.Tensor, eps: float) -> torch.Tensor:
    """x (B, F, N, h, d) -> RMSNorm over d (in fp32, fp64 for fp64), then channel pairs (2i, 2i+1) of frame f
    rotated by ``rot[f]`` (:func:`rope_rotation`) as one complex multiply."""
    ct = compute_dtype(x)
    x = F.rms_norm(x.to(ct), x.shape[-1:], weight.to(ct), eps)
    xc = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rot.to(xc.dtype)[:, None, None, :]).flatten(-2)


def _rmsnorm_rope_frames(x, weight, t0: int, eps: float):
    """:func:`rmsnorm_rope` for frames t0 .. t0 + x.shape[1] - 1. Under ``torch.compile`` the rotation is done
    in real numbers (:func:`rmsnorm_rope_pairs`, angles computed in the graph): the compiler generates no code
    for complex tensors, and a cached rotation per frame index would recompile at every frame."""
    if torch.compiler.is_compiling():
        ang = rope_angles(torch.arange(t0, t0 + x.shape[1], device=x.device), x.shape[-1])
        return rmsnorm_rope_pairs(x, weight, ang.cos(), ang.sin(), eps)
    ct = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    return rmsnorm_rope(x, weight, _frames_rotation(t0, x.shape[1], x.shape[-1], str(x.device), ct), eps)


def rmsnorm_rope_pairs(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """:func:`rmsnorm_rope` written out in real numbers: the norm by hand, then the even and odd channels turned
    by angles whose cosines and sines (F, d/2) are given."""
    ct = compute_dtype(x)
    x = x.to(ct)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(ct)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(ct)[:, None, None, :], sin.to(ct)[:, None, None, :]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def rmsnorm_rope_reference(x: torch.Tensor, weight: torch.Tensor, rot: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`rmsnorm_rope` written out (:func:`rmsnorm_rope_pairs` with the rotation's real and imaginary
    parts)."""
    return rmsnorm_rope_pairs(x, weight, rot.real, rot.imag, eps)


def frame_local_attention_reference(q, k, v, window: int | None, past: int = 0):
    """Dense masked softmax attention: q (B, T, N, h, d) for frames ``past ..``; k, v (B, past + T, N, h, d).
    Query frame ``past + i`` sees key frames ``past + i - window + 1 .. past + i`` (all earlier for None)."""
    b, t, n, h, d = q.shape
    fq = torch.arange(past, past + t, device=q.device).repeat_interleave(n)
    fk = torch.arange(past + t, device=q.device).repeat_interleave(n)
    allowed = fk[None, :] <= fq[:, None]
    if window is not None:
        allowed &= fk[None, :] > fq[:, None] - window
    scores = torch.einsum("bqhd,bkhd->bhqk", q.flatten(1, 2), k.flatten(1, 2)) * d**-0.5
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v.flatten(1, 2)).unflatten(1, (t, n))


class _FrameWindows(torch.autograd.Function):
    """k (B, F, N, h, d) -> (B, Q, w, N, h, d) contiguous: window i is frames ``start + i .. start + i + w - 1``.
    The backward adds each window's gradient back onto its frames (w slice additions, no scatter)."""

    @staticmethod
    def forward(ctx, k, w: int, start: int, Q: int):
        ctx.meta = (k.shape[1], w, start, Q)
        return k[:, start:start + Q + w - 1].unfold(1, w, 1).permute(0, 1, 5, 2, 3, 4).contiguous()

    @staticmethod
    def backward(ctx, g):
        frames, w, start, Q = ctx.meta
        out = g.new_zeros(g.shape[0], frames, *g.shape[3:])
        for j in range(w):
            out[:, start + j:start + j + Q] += g[:, :, j]
        return out, None, None, None


@functools.lru_cache(maxsize=None)
def cpu_bf16_attention_fast() -> bool:
    """Whether SDPA's fused CPU kernel, forward and backward, runs clearly (1.2x) faster on bf16 inputs than on
    fp32 ones: timed once per process (best of 5, at the thread count in use) at the shape of the demo model's
    frame windows (64 tokens against 4 frames of keys, 4 heads of 24 channels). A fast bf16 matmul does not settle
    it: on an AVX512-BF16 CPU without AMX the bf16 matmul is about twice as fast as fp32 and the bf16 attention
    kernel about half as fast (docs/speed.md)."""
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):  # wherever called
        qkv = [torch.randn(16, 4, n, 24, generator=g) for n in (64, 256, 256)]
        return bf16_speedup(_attention_step, qkv) > 1.2


def _attention_step(*qkv: torch.Tensor) -> None:
    """One SDPA forward + backward pass (what the timing above measures)."""
    F.scaled_dot_product_attention(*(t.requires_grad_() for t in qkv)).sum().backward()


def _sdpa_precision(x: torch.Tensor):
    """The autocast state SDPA runs in: as it is, except on the CPU under bf16 autocast where bf16 attention is
    not faster (:func:`cpu_bf16_attention_fast`): there autocast is lifted and SDPA computes in its inputs' type."""
    if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not cpu_bf16_attention_fast()):
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


def _sdpa(q, k, v, mask=None):
    """q (G, Lq, h, d), k/v (G, Lk, h, d) (tokens before heads, as the projections lay them out) -> (G, Lq, h, d)."""
    with _sdpa_precision(q):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def window_attention(q, k, v, window: int | None, past: int = 0):
    """The ``window`` backend: same arguments and result as :func:`frame_local_attention_reference`."""
    b, t, n, h, d = q.shape
    w = past + t if window is None else min(window, past + t)  # no key lies further back than past + t frames
    head = min(t, w - 1 - past) if w - 1 > past else 0  # the first frames see fewer than w frames
    outs = []
    if head:  # one masked call: query frame past + i sees key frames 0 .. past + i
        fq = torch.arange(past, past + head, device=q.device).repeat_interleave(n)
        fk = torch.arange(past + head, device=q.device).repeat_interleave(n)
        mask = fk[None, :] <= fq[:, None]
        outs.append(_sdpa(q[:, :head].flatten(1, 2), k[:, :past + head].flatten(1, 2),
                          v[:, :past + head].flatten(1, 2), mask).unflatten(1, (head, n)))
    if head < t:  # every later query frame sees exactly w frames: a dense block each, no mask
        Q = t - head
        if Q == 1 and k.shape[1] == w:  # one frame whose window is all the keys (a sampling step): as they are
            kw, vw = k.flatten(1, 2), v.flatten(1, 2)
        else:
            kw = _FrameWindows.apply(k, w, past + head - w + 1, Q).flatten(0, 1).flatten(1, 2)  # (B*Q, w*N, h, d)
            vw = _FrameWindows.apply(v, w, past + head - w + 1, Q).flatten(0, 1).flatten(1, 2)
        outs.append(_sdpa(q[:, head:].reshape(b * Q, n, h, d), kw, vw).unflatten(0, (b, Q)))
    return torch.cat(outs, 1) if len(outs) > 1 else outs[0]


@functools.lru_cache(maxsize=64)
def frame_block_mask(queries: int, keys: int, tokens: int, past: int, window: int | None, device: str):
    """FlexAttention block mask of frame-local attention: query frame f (counted from the first key frame: ``past``
    + its index) sees key frames ``f - window + 1 .. f`` (all earlier ones for ``window=None``). Built from the mask
    function, never as a dense (queries x keys) tensor; cached per shape."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        fq = past + q_idx // tokens
        fk = kv_idx // tokens
        causal = fk <= fq
        return causal if window is None else causal & (fk > fq - window)

    return create_block_mask(mask_mod, None, None, queries * tokens, keys * tokens, device=device)


@functools.cache
def _flex_fn(device_type: str):
    """flex_attention, compiled where that pays (CUDA); eager elsewhere (correct, slower: for tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


ATTN_BACKENDS = ("auto", "window", "sdpa", "flex")


class FrameLocalAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, window: int | None, chunk: int | None = None,
                 backend: str = "auto"):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model={d_model} must split into {n_heads} heads of even size")
        if window is not None and window < 1:
            raise ValueError(f"attention window must be >= 1 frame or None (all frames), got {window}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"attention backend must be one of {ATTN_BACKENDS}, got {backend!r}")
        self.window, self.backend = window, backend
        self.chunk = chunk or max(1, (window or 2) // 2)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, t0: int = 0, cache: KVCache | None = None
                ) -> tuple[torch.Tensor, KVCache]:
        """x: (B, T, N, D) tokens of frames t0 .. t0+T-1. Returns the output and the cache after them."""
        b, t, n, d_model = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, self.head_dim)).unbind(3)  # (B, T, N, h, d) each
        q = _rmsnorm_rope_frames(q, self.q_norm.weight, t0, self.q_norm.eps)  # fp32 (fp64 for fp64 models)
        k = _rmsnorm_rope_frames(k, self.k_norm.weight, t0, self.k_norm.eps)
        v = v.to(k.dtype)
        past = 0 if cache is None else cache.k.shape[1]
        if cache is not None:
            k = torch.cat([cache.k.to(k.dtype), k], dim=1)
            v = torch.cat([cache.v.to(v.dtype), v], dim=1)
        keep = k.shape[1] if self.window is None else min(self.window - 1, k.shape[1])
        new_cache = KVCache(packed(k[:, k.shape[1] - keep:]), packed(v[:, v.shape[1] - keep:]))
        backend = self.backend if self.backend != "auto" else ("flex" if x.is_cuda else "window")
        if backend == "window":
            out = window_attention(q, k, v, self.window, past)
        else:  # the chunked and flex paths take (B, h, frames, N, d): views of the same tensors
            q, k, v = (z.permute(0, 3, 1, 2, 4) for z in (q, k, v))
            out = (self._attend_flex if backend == "flex" else self._attend)(q, k, v, t0, past)
            out = out.permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(b, t, n, d_model).to(x.dtype)), new_cache

    def _attend_flex(self, q, k, v, t0: int, past: int):
        """One FlexAttention call over all frames with the frame block mask (no dense mask, no padding): blocks
        outside the window are skipped, so the fused kernel runs on CUDA. Same inputs and result as _attend."""
        b, h, t, n, d = q.shape
        mask = frame_block_mask(t, k.shape[2], n, past, self.window, str(q.device))
        out = _flex_fn(q.device.type)(q.flatten(2, 3), k.flatten(2, 3).to(q.dtype), v.flatten(2, 3).to(q.dtype),
                                      block_mask=mask)
        return out.unflatten(2, (t, n))

    def _attend(self, q, k, v, t0: int, past: int):
        """q: (B, h, T, N, d) for frames t0..; k, v: (B, h, past + T, N, d) for frames t0-past.."""
        b, h, t, n, d = q.shape
        qi = torch.arange(t0, t0 + t, device=q.device)  # absolute frame index of each query frame
        kj = torch.arange(t0 - past, t0 + t, device=q.device)
        if self.window is None:  # full causal attention over every frame (quadratic baseline)
            mask = (kj[None, :] <= qi[:, None]).repeat_interleave(n, 0).repeat_interleave(n, 1)
            with _sdpa_precision(q):
                out = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3),
                                                     attn_mask=mask)
            return out.unflatten(2, (t, n))
        w, c = min(self.window, past + t), min(self.chunk, t)  # no key lies further back than past + t frames
        n_chunks = -(-t // c)
        end_pad = n_chunks * c - t
        lead = w - 1 - past  # left-pad the keys to exactly w-1 past frames (padding is masked out)
        if lead > 0:
            k = F.pad(k, (0, 0, 0, 0, lead, 0))
            v = F.pad(v, (0, 0, 0, 0, lead, 0))
            kj = torch.cat([torch.full((lead,), -(1 << 40), device=q.device), kj])
        elif lead < 0:  # more cached frames than the window needs
            k, v, kj = k[:, :, -lead:], v[:, :, -lead:], kj[-lead:]
        if end_pad:  # padded query frames at the end only see themselves and real frames; dropped below
            q = F.pad(q, (0, 0, 0, 0, 0, end_pad))
            k = F.pad(k, (0, 0, 0, 0, 0, end_pad))
            v = F.pad(v, (0, 0, 0, 0, 0, end_pad))
            qi = torch.arange(t0, t0 + t + end_pad, device=q.device)
            kj = torch.cat([kj, qi[t:]])
        span = c + w - 1
        # Chunk m's queries are frames [m*c, m*c + c); its keys are padded frames [m*c, m*c + span).
        # Chunks go into the batch axis: 4-D inputs let SDPA use its fused CPU/GPU kernels with a mask.
        kc = k.unfold(2, span, c).permute(0, 2, 1, 5, 3, 4).reshape(b * n_chunks, h, span * n, d)
        vc = v.unfold(2, span, c).permute(0, 2, 1, 5, 3, 4).reshape(b * n_chunks, h, span * n, d)
        qc = q.unflatten(2, (n_chunks, c)).transpose(1, 2).reshape(b * n_chunks, h, c * n, d)
        qf = qi.view(n_chunks, c)  # (chunks, c)
        kf = kj.unfold(0, span, c)  # (chunks, span)
        allowed = (kf[:, None, :] <= qf[:, :, None]) & (kf[:, None, :] > qf[:, :, None] - w)  # (chunks, c, span)
        mask = allowed.repeat_interleave(n, 1).repeat_interleave(n, 2)  # (chunks, c*N, span*N)
        mask = mask[None].expand(b, -1, -1, -1).reshape(b * n_chunks, 1, c * n, span * n)
        with _sdpa_precision(q):
            out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask)  # (B*chunks, h, c*N, d)
        out = out.reshape(b, n_chunks, h, c, n, d).transpose(1, 2).flatten(2, 3)  # (B, h, chunks*c, N, d)
        return out[:, :, :t]
