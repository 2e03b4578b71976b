"""The world-model backbone: patch embedding, adaLN-Zero blocks (block-wise SSM -> frame-local attention ->
MLP), conditioned per frame on (noise level + action), with a parallel and a cached per-frame path.

``model(x, levels, actions)`` runs a whole clip (training). ``model(..., cache=c)`` continues from a cache
and returns the cache after the given frames, so ``model.step(frame, level, action, cache)`` is the same
code with T = 1. Caches are immutable: running several noise levels of one frame against the same cache
leaves it untouched; the caller commits a frame by keeping the returned cache.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ConfigError, LayerSpec, ModelConfig
from ..resources import available_memory, check_fits
from .attention import FrameLocalAttention, KVCache
from .fused import packed
from .ssm import DT_FLOOR, DT_MAX, DT_MIN, BlockwiseSSM, SSMState, resolve_block


class LayerCache(NamedTuple):
    ssm: SSMState | None
    kv: KVCache | None


class WorldCache(NamedTuple):
    """Everything inference keeps: per-layer SSM states and KV caches, the number of frames seen, and (for
    ``model.prev_frame``) the last input frame (B, C, H, W)."""

    layers: tuple[LayerCache, ...]
    frames: int
    last: torch.Tensor | None = None

    def nbytes(self) -> int:
        extra = 0 if self.last is None else self.last.numel() * self.last.element_size()
        return extra + sum(t.numel() * t.element_size() for layer in self.layers for part in layer
                           if part is not None for t in part)


NORM_EPS = 1e-6  # the adaLN LayerNorms (no affine)


def layernorm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: LayerNorm over the last axis (no affine), then ``* (1 + scale) + shift`` (per frame, broadcast)."""
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=NORM_EPS), 1 + scale)


def timestep_embedding(level: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a noise level in [0, 1] (scaled to [0, 1000]); level: (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=level.device, dtype=torch.float32) / half)
    args = level.float()[..., None] * 1000.0 * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Conditioning(nn.Module):
    """Per-frame condition = noise-level embedding + action embedding (discrete ids or continuous vectors)."""

    def __init__(self, d_model: int, num_actions: int, action_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.level_mlp = nn.Sequential(nn.Linear(freq_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.num_actions, self.action_dim = num_actions, action_dim
        if action_dim > 0:
            self.action = nn.Sequential(nn.Linear(action_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        else:  # one extra row: id -1 = "no action" (the dummy first step of an episode)
            self.action = nn.Embedding(num_actions + 1, d_model)

    def forward(self, levels: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        c = self.level_mlp(timestep_embedding(levels, self.freq_dim).to(self.level_mlp[0].weight.dtype))  # (B,T,D)
        if self.action_dim > 0:
            return c + self.action(actions.to(c.dtype))
        if torch.compiler.is_compiling():
            pass  # a host sync would break the compiled graph; the Sampler checks the ids it is given
        elif actions.device.type == "cpu":  # a clear message, and free: CPU ops are synchronous anyway
            check_action_ids(actions, self.num_actions)
        else:  # no host sync per denoising step on an accelerator: the check runs on the device
            torch._assert_async(((actions >= -1) & (actions < self.num_actions)).all())
        return c + self.action(torch.where(actions < 0, self.num_actions, actions))


def check_action_ids(actions: torch.Tensor, num_actions: int) -> None:
    """Discrete action ids must be integers in [-1, num_actions) (-1 = no action)."""
    if actions.dtype.is_floating_point:
        raise ValueError(f"discrete actions must be integer ids, got {actions.dtype}")
    if actions.numel() and (int(actions.min()) < -1 or int(actions.max()) >= num_actions):
        raise ValueError(f"action ids must be in [-1, {num_actions}) (-1 = no action), got "
                         f"[{int(actions.min())}, {int(actions.max())}]")


class Mlp(nn.Module):
    def __init__(self, d_model: int, ratio: float):
        super().__init__()
        hidden = int(d_model * ratio)
        self.fc1, self.fc2 = nn.Linear(d_model, hidden), nn.Linear(hidden, d_model)

    def forward(self, x):
        # the exact (erf) GELU, not the tanh form: torch's tanh is slow on AVX2-only CPUs (docs/results.md, CPU round 2)
        return self.fc2(F.gelu(self.fc1(x)))


def ssm_dt_range(cfg: ModelConfig, spec: LayerSpec) -> dict:
    """The Mamba2 step-size init range of a layer (``cfg.ssm_dt_init``): Mamba's per scan step ("token"), or the
    same per frame ("frame": divided by the scan steps a frame takes in this layer's blocks)."""
    steps = 1
    if cfg.ssm_dt_init == "frame":
        grid = cfg.frame_size // cfg.patch_size
        bh, bw = resolve_block(spec.ssm, grid, grid)
        steps = bh * bw
    return dict(dt_min=DT_MIN / steps, dt_max=DT_MAX / steps, dt_init_floor=DT_FLOOR / steps)


class Block(nn.Module):
    """adaLN-Zero(cond) -> [block-wise SSM] -> adaLN -> [frame-local attention] -> adaLN -> MLP, residuals."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec):
        super().__init__()
        d = cfg.d_model
        self.ssm = None if spec.ssm is None else BlockwiseSSM(
            d, block=spec.ssm, d_state=cfg.d_state, expand=cfg.expand, headdim=cfg.ssm_headdim,
            chunk_size=cfg.ssm_chunk, **ssm_dt_range(cfg, spec))
        self.attn = None if spec.attn is None else FrameLocalAttention(
            d, cfg.n_heads, window=None if spec.attn == "all" else int(spec.attn), chunk=cfg.attn_chunk,
            backend=cfg.attn_backend)
        self.mixers = [m for m in ("ssm", "attn") if getattr(self, m) is not None] + ["mlp"]
        self.mlp = Mlp(d, cfg.mlp_ratio)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(d, 3 * len(self.mixers) * d))
        nn.init.zeros_(self.adaLN[1].weight)
        nn.init.zeros_(self.adaLN[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, t0: int, cache: LayerCache | None):
        """x: (B, T, H, W, D); c: (B, T, D). Returns x and the layer cache after these frames."""
        b, t, hh, ww, d = x.shape
        mods = self.adaLN(c)[:, :, None, None, :].chunk(3 * len(self.mixers), dim=-1)
        ssm_state, kv = (None, None) if cache is None else cache
        for i, name in enumerate(self.mixers):
            shift, scale, gate = mods[3 * i:3 * i + 3]
            h = layernorm_modulate(x, shift, scale)  # LayerNorm (no affine) * (1 + scale) + shift
            if name == "ssm":
                h, ssm_state = self.ssm(h, ssm_state)
            elif name == "attn":
                h, kv = self.attn(h.reshape(b, t, hh * ww, d), t0, kv)
                h = h.reshape(b, t, hh, ww, d)
            else:
                h = self.mlp(h)
            x = torch.addcmul(x, gate, h)
        return x, LayerCache(ssm_state, kv)


def parameter_count(cfg: ModelConfig) -> int:
    """The number of parameters of ``WorldModel(cfg)``, counted on a copy built on the meta device: nothing is
    allocated, so absurd sizes can be refused before they are. Sizes whose tensors torch cannot even describe
    (over 2^63 bytes) are a ConfigError."""
    try:
        with torch.device("meta"):
            return WorldModel(cfg, check_memory=False).num_params()
    except RuntimeError as e:
        if "overflow" not in str(e):
            raise
        avail = available_memory()
        raise ConfigError(f"a model with these sizes has tensors larger than torch can index (over 2^63 bytes), "
                          f"far more than the {'?' if avail is None else f'{avail / 2**30:.1f}'} GiB of memory is "
                          f"available; choose smaller model sizes (model.d_model, model.layers, model.mlp_ratio, ...)"
                          ) from None


class WorldModel(nn.Module):
    def __init__(self, cfg: ModelConfig, check_memory: bool = True):
        """``check_memory``: refuse (ConfigError) a model whose weights alone exceed the memory available."""
        super().__init__()
        cfg.validate()
        if check_memory:
            n = parameter_count(cfg)
            check_fits(f"a model with {n:,} parameters", 4 * n,
                       "choose smaller model sizes (model.d_model, model.layers, model.mlp_ratio, ...)")
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.d_model
        self.grid = (cfg.frame_size // p, cfg.frame_size // p)
        for spec in cfg.layers:
            if spec.ssm is not None:
                resolve_block(spec.ssm, *self.grid)
        self.patch = nn.Conv2d(cfg.channels, d, p, stride=p)
        # zero-initialised, so a fresh model with prev_frame equals one without
        self.prev_patch = nn.Conv2d(cfg.channels, d, p, stride=p) if cfg.prev_frame else None
        self.pos = nn.Parameter(torch.randn(1, 1, *self.grid, d) * 0.02)  # learned 2D position embedding
        self.cond = Conditioning(d, cfg.num_actions, cfg.action_dim)
        self.blocks = nn.ModuleList(Block(cfg, spec) for spec in cfg.layers)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, p * p * cfg.channels)
        self.out.weight._output_layer = True  # optimizers for hidden matrices (Muon) leave it to AdamW
        self.final_conv = nn.Conv2d(cfg.channels, cfg.channels, 3, padding=1) if cfg.final_conv else None
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():  # DiT: xavier linears; zero adaLN and output (the model starts as zero)
            if isinstance(m, nn.Linear) and not any(m is blk.ssm.mamba.in_proj or m is blk.ssm.mamba.out_proj
                                                    for blk in self.blocks if blk.ssm is not None):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN[1].weight)
            nn.init.zeros_(blk.adaLN[1].bias)
        extra = tuple(m for m in (self.prev_patch, self.final_conv) if m is not None)
        for m in (self.final_adaLN[1], self.out) + extra:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        # DiT: the noise-level MLP and the action (label) embedding both start at std 0.02, so neither drowns the
        # other in the adaLN input (an N(0, 1) action table would be ~50x the level's share)
        nn.init.normal_(self.cond.level_mlp[0].weight, std=0.02)
        nn.init.normal_(self.cond.level_mlp[2].weight, std=0.02)
        if isinstance(self.cond.action, nn.Embedding):
            nn.init.normal_(self.cond.action.weight, std=0.02)
        else:  # continuous actions: the same small scale for their MLP's output layer
            nn.init.normal_(self.cond.action[2].weight, std=0.02)

    def empty_cache(self) -> WorldCache:
        return WorldCache(tuple(LayerCache(None, None) for _ in self.blocks), 0)

    def forward(self, x: torch.Tensor, levels: torch.Tensor, actions: torch.Tensor,
                cache: WorldCache | None = None) -> tuple[torch.Tensor, WorldCache]:
        """x: (B, T, C, H, W) noisy frames; levels: (B, T) in [0, 1]; actions: (B, T) ids or (B, T, A).

        Returns the network's output (B, T, C, H, W) and the cache after these T frames. What the output stands
        for (``cfg.prediction``) and the input scaling it expects are the business of :mod:`lssvwm.denoiser`.
        """
        b, t, ch, hgt, wid = x.shape
        if (ch, hgt, wid) != (self.cfg.channels, self.cfg.frame_size, self.cfg.frame_size):
            raise ValueError(f"frames must be (B, T, {self.cfg.channels}, {self.cfg.frame_size}, "
                             f"{self.cfg.frame_size}) for this model, got {tuple(x.shape)}")
        cache = cache or self.empty_cache()
        tokens = self.patch(x.flatten(0, 1))  # (B*T, D, h, w)
        # one copy into (B, T, h, w, D) order: the permuted view would pass its channels-first strides on to the
        # whole residual stream (elementwise ops keep their inputs' layout), and every LayerNorm over D, every
        # SSM rearrange and attention reshape would copy it again
        tokens = rearrange(tokens, "(b t) d h w -> b t h w d", b=b).contiguous() + self.pos  # (B, T, h, w, D)
        if self.prev_patch is not None:  # frame t also sees input frame t-1 (zeros before the first frame)
            first = cache.last if cache.last is not None else torch.zeros_like(x[:, 0])
            prev = torch.cat([first[:, None].to(x.dtype), x[:, :-1]], dim=1)  # (B, T, C, H, W)
            tokens = tokens + rearrange(self.prev_patch(prev.flatten(0, 1)), "(b t) d h w -> b t h w d", b=b)
        c = self.cond(levels, actions)  # (B, T, D)
        new_layers = []
        for blk, layer_cache in zip(self.blocks, cache.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens, lc = checkpoint(blk, tokens, c, cache.frames, layer_cache, use_reentrant=False)
            else:
                tokens, lc = blk(tokens, c, cache.frames, layer_cache)
            new_layers.append(lc)
        shift, scale = self.final_adaLN(c)[:, :, None, None, :].chunk(2, dim=-1)
        out = self.out(layernorm_modulate(tokens, shift, scale))  # (B, T, h, w, p*p*C)
        p = self.cfg.patch_size
        out = rearrange(out, "b t h w (p q c) -> b t c (h p) (w q)", p=p, q=p, c=ch)
        if self.final_conv is not None:  # per frame: no mixing across time
            out = out + self.final_conv(out.flatten(0, 1)).unflatten(0, (b, t))
        # the last frame on its own: a view would keep the whole clip alive in the cache
        last = packed(x[:, -1].detach()) if self.prev_patch is not None else None
        return out, WorldCache(tuple(new_layers), cache.frames + t, last)

    def step(self, frame: torch.Tensor, level: torch.Tensor, action: torch.Tensor, cache: WorldCache
             ) -> tuple[torch.Tensor, WorldCache]:
        """One frame: frame (B, C, H, W), level (B,), action (B,) or (B, A). Returns (prediction, cache after
        committing this frame). Discard the returned cache to leave the state where it was."""
        pred, cache = self(frame[:, None], level[:, None], action[:, None], cache)
        return pred[:, 0], cache

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # The file layout and the hub live in lssvwm.checkpoint, above this module; it registers itself here when the
    # package is imported (PRETRAINED_IO), so the model delegates to it without importing upward.
    def save_pretrained(self, folder, run_config=None, dtype: torch.dtype | None = None):
        """Save in the Hugging Face layout: ``config.json`` + ``model.safetensors``. ``run_config``: the whole
        :class:`~lssvwm.config.RunConfig` (sampling defaults included); default: this model's config only."""
        from ..config import RunConfig

        return PRETRAINED_IO["save"](self, run_config or RunConfig(model=self.cfg), folder, dtype)

    @classmethod
    def from_pretrained(cls, name_or_path, device="cpu") -> "WorldModel":
        """A model from a Hugging Face-layout folder, shipped weights (``"maze-small"``), a hub repo id
        (``"user/repo"``) or a run folder. For its sampling settings and frame codec too, use
        :func:`lssvwm.checkpoint.load_run`."""
        return PRETRAINED_IO["load"](name_or_path, device=device)[0]

    def push_to_hub(self, repo_id: str, run_config=None, private: bool = False, token: str | None = None) -> str:
        """Save to a temporary folder in the Hugging Face layout and upload it (needs huggingface_hub)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return PRETRAINED_IO["push"](self.save_pretrained(tmp, run_config), repo_id, private, token)


# save / load / push of the Hugging Face layout, filled in by lssvwm.checkpoint (imported with the package)
PRETRAINED_IO: dict = {}
