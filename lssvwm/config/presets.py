"""Named presets (like DiT's size registry) and the layer plans of the model variants, so that every baseline of
the paper is a config, not code:

==================== =================================================================================
variant              layer plan
==================== =================================================================================
hybrid               block-wise SSM (full-frame and small blocks alternating) + frame-local attention (k)
full-transformer     no SSM, causal attention over all frames (quadratic upper bound)
window-transformer   no SSM, causal attention over the last k frames (sliding-window baseline)
mamba2               one full-frame SSM scan per layer, no attention
mamba2-local         one full-frame SSM scan per layer + frame-local attention (no block-wise scan)
==================== =================================================================================
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .schema import MAX_WINDOW, VARIANTS, AutoencoderConfig, ConfigError, LayerSpec, ModelConfig, _is_int, _show

def layer_plan(variant: str, n_layers: int, grid: int, window: int) -> list[LayerSpec]:
    """The per-layer (SSM block, attention window) plan of a model variant; see the module docstring."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown model variant {_show(variant)}; choose one of {', '.join(VARIANTS)}")
    half, quarter = max(1, grid // 2), max(1, grid // 4)
    blocks = ["full", (half, half), "full", (quarter, quarter)]  # hybrid: full-frame and small blocks alternate
    plan = {"hybrid": lambda i: LayerSpec(blocks[i % len(blocks)], window),
            "full-transformer": lambda i: LayerSpec(None, "all"),
            "window-transformer": lambda i: LayerSpec(None, window),
            "mamba2": lambda i: LayerSpec("full", None),
            "mamba2-local": lambda i: LayerSpec("full", window)}[variant]
    return [plan(i) for i in range(n_layers)]


@dataclass(frozen=True)
class Preset:
    """A named model size: ModelConfig fields, the number of layers and the attention window."""

    fields: dict
    layers: int
    window: int


# The paper's scale: a 768-wide, 12-layer hybrid on 16x16x4 autoencoder latents (Memory Maze: 6 actions)
PAPER = Preset(dict(channels=4, frame_size=16, patch_size=1, d_model=768, n_heads=12, d_state=64, ssm_headdim=64),
               layers=12, window=10)
MODEL_PRESETS: dict[str, Preset] = {
    "tiny": Preset(dict(frame_size=16, patch_size=4, d_model=32, n_heads=2, d_state=16, ssm_headdim=16, ssm_chunk=16),
                   layers=2, window=3),
    "small": Preset(dict(frame_size=32, patch_size=4, d_model=128, n_heads=4, d_state=32, ssm_headdim=32),
                    layers=4, window=8),
    "base": Preset(dict(frame_size=64, patch_size=4, d_model=384, n_heads=6, d_state=64, ssm_headdim=64),
                   layers=12, window=10),
    "paper": PAPER,
    "memory-maze": PAPER,
    "minecraft": dataclasses.replace(PAPER, fields={**PAPER.fields, "num_actions": 3}),  # TECO: 3 actions
}


MAX_LAYERS = 256


def model_preset(name: str, variant: str = "hybrid", window: int | None = None, n_layers: int | None = None,
                 **overrides) -> ModelConfig:
    """The named preset as a ModelConfig: ``variant``'s layer plan over ``n_layers`` layers (the preset's depth
    unless given) with attention window ``window`` (the preset's unless given); ``overrides`` set other fields."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {_show(name)}; choose one of {', '.join(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[name]
    cfg = ModelConfig(**{**preset.fields, **overrides})
    if window is not None and not (_is_int(window) and 1 <= window <= MAX_WINDOW):
        raise ConfigError(f"attention window must be 1 to {MAX_WINDOW} frames, got {_show(window)}")
    if n_layers is not None and not (_is_int(n_layers) and 1 <= n_layers <= MAX_LAYERS):
        raise ConfigError(f"the number of layers must be 1 to {MAX_LAYERS}, got {_show(n_layers)}")
    cfg.layers = layer_plan(variant, n_layers or preset.layers, cfg.frame_size // cfg.patch_size,
                            window or preset.window)
    cfg.validate()
    return cfg


AUTOENCODER_PRESETS = {
    "tiny": dict(width=16, downsample=4),
    "memory-maze": dict(width=64, downsample=4),  # 64x64x3 -> 16x16x4 (the `memory-maze` model preset)
    "minecraft": dict(width=64, downsample=8),  # 128x128x3 -> 16x16x4 (the `minecraft` model preset)
}


def autoencoder_preset(name: str, **overrides) -> AutoencoderConfig:
    if name not in AUTOENCODER_PRESETS:
        raise ConfigError(f"unknown autoencoder preset {_show(name)}; known: {sorted(AUTOENCODER_PRESETS)}")
    cfg = AutoencoderConfig(**{**AUTOENCODER_PRESETS[name], **overrides})
    cfg.validate()
    return cfg
