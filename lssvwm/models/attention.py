"""Frame-local attention with a fixed-size, functional KV cache.

A token of frame ``i`` attends to every token of frames ``i-k+1 .. i``: dense within a frame, causal across
frames. ``window=None`` means every past frame (a full causal transformer); ``window=1`` is per-frame
spatial attention. Frames are processed in chunks of ``chunk`` frames: each chunk's queries see the keys of
their own chunk and of the ``k-1`` frames before it, so memory and compute are O(T * (k + chunk) * N^2) for
N tokens per frame, never O((T*N)^2) (except for ``window=None``, the quadratic baseline by design).

Frame order is encoded with rotary embeddings (RoPE) over the absolute frame index; since RoPE scores
depend only on index differences, the cached and the parallel paths agree exactly.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class KVCache(NamedTuple):
    """Rotated keys and values of the last ``frames`` committed frames of one attention layer."""

    k: torch.Tensor  # (B, heads, frames, N, head_dim)
    v: torch.Tensor  # (B, heads, frames, N, head_dim)


def rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels of ``x`` (..., F, N, hd) by angles ``pos[f] * base^(-2i/hd)``."""
    hd = x.shape[-1]
    freqs = base ** (-torch.arange(0, hd, 2, device=x.device, dtype=torch.float64) / hd)  # (hd/2,)
    ang = pos.to(torch.float64)[:, None] * freqs[None]  # (F, hd/2), fp64: frame 10^5 keeps its precision
    cos = torch.cos(ang).to(x.dtype)[:, None, :]  # (F, 1, hd/2)
    sin = torch.sin(ang).to(x.dtype)[:, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


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


ATTN_BACKENDS = ("auto", "sdpa", "flex")


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
        b, t, n, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "b t n (three h d) -> three b h t n d", three=3, h=self.n_heads)
        pos = torch.arange(t0, t0 + t, device=x.device)
        q = rope(self.q_norm(q), pos)
        k = rope(self.k_norm(k), pos)
        past = 0 if cache is None else cache.k.shape[2]
        if cache is not None:
            k = torch.cat([cache.k.to(k.dtype), k], dim=2)
            v = torch.cat([cache.v.to(v.dtype), v], dim=2)
        keep = k.shape[2] if self.window is None else min(self.window - 1, k.shape[2])
        new_cache = KVCache(k[:, :, k.shape[2] - keep:], v[:, :, k.shape[2] - keep:])
        use_flex = self.backend == "flex" or (self.backend == "auto" and x.is_cuda)
        out = (self._attend_flex if use_flex else self._attend)(q, k, v, t0, past)  # (B, heads, T, N, hd)
        return self.proj(rearrange(out, "b h t n d -> b t n (h d)")), new_cache

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
            out = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3), attn_mask=mask)
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
        out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask)  # (B*chunks, h, c*N, d)
        out = out.reshape(b, n_chunks, h, c, n, d).transpose(1, 2).flatten(2, 3)  # (B, h, chunks*c, N, d)
        return out[:, :, :t]
