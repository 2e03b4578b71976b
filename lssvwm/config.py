"""Typed configs (dataclasses), named presets, and YAML loading with errors that say what to change.

A run is ``RunConfig(model, diffusion, train)``. Model presets (like DiT's size registry) fix the scale;
variants fix the layer plan, so every baseline of the paper is a config, not code:

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
import re
import reprlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

VARIANTS = ("hybrid", "full-transformer", "window-transformer", "mamba2", "mamba2-local")
MAX_WINDOW = 100_000  # frames; a longer window is the same as "all" for any clip that fits in memory
LAYOUTS = ("auto", "episodes", "teco", "videos")


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the field and what to change."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 6, 6, 60, 60, 40


def _show(value) -> str:
    """A short repr for error messages: bounded in depth and length, so a YAML alias bomb or a huge value is never
    expanded."""
    return _REPR.repr(value)


@dataclass(frozen=True)
class LayerSpec:
    """One layer's token mixers. YAML writes it as a mapping: ``{ssm: [4, 4], attn: 8}``."""

    ssm: Any = None  # None (no SSM), "full" (one scan over the whole frame), or (b_h, b_w)
    attn: Any = None  # None (no attention), "all" (every past frame), or a window of k frames

    @classmethod
    def parse(cls, value, where: str) -> "LayerSpec":
        """A LayerSpec from a LayerSpec or a ``{ssm, attn}`` mapping, with errors that name ``where``."""
        if isinstance(value, LayerSpec):
            ssm, attn = value.ssm, value.attn
        elif isinstance(value, dict) and not set(value) - {"ssm", "attn"}:
            ssm, attn = value.get("ssm"), value.get("attn")
        else:
            raise ConfigError(f"{where} must be a mapping with keys 'ssm' and 'attn', got {_show(value)}")
        if ssm is not None and ssm != "full":
            if not (isinstance(ssm, (list, tuple)) and len(ssm) == 2 and all(_is_int(v) for v in ssm)):
                raise ConfigError(f"{where}.ssm must be null, 'full' or [b_h, b_w], got {_show(ssm)}")
            ssm = (int(ssm[0]), int(ssm[1]))
        if attn is not None and attn != "all" and not (_is_int(attn) and 1 <= attn <= MAX_WINDOW):
            raise ConfigError(f"{where}.attn must be null, 'all' or a window of 1 to {MAX_WINDOW} frames, got "
                              f"{_show(attn)}")
        return cls(ssm, attn)


@dataclass
class ModelConfig:
    channels: int = 3
    frame_size: int = 32
    patch_size: int = 4
    d_model: int = 128
    n_heads: int = 4
    mlp_ratio: float = 4.0
    d_state: int = 32
    expand: int = 2
    ssm_headdim: int = 32
    ssm_chunk: int = 64
    attn_chunk: int | None = None  # frames per attention chunk; None = half the window
    num_actions: int = 6  # discrete action ids (plus -1 = none); ignored when action_dim > 0
    action_dim: int = 0  # > 0: continuous action vectors of this size
    layers: list[LayerSpec] = field(default_factory=list)  # one LayerSpec per layer (YAML: {ssm: ..., attn: ...})
    gradient_checkpointing: bool = False
    # frame-local attention kernel: auto (FlexAttention with a block mask on CUDA, chunked SDPA on CPU), sdpa, flex
    attn_backend: str = "auto"
    # Not from the paper (DIAMOND-style): each frame's tokens also embed the previous input frame's patches at the
    # same place, a direct path for "copy and shift what was there" that attention otherwise has to learn.
    prev_frame: bool = False
    # Not from the paper (U-ViT's "extra 3x3 conv" after the linear patch decoder): a residual 3x3 convolution on
    # each predicted frame, zero-initialised, which can smooth the seams between patches.
    final_conv: bool = False
    # What the network's output stands for. "v": it is the v-prediction itself (DFoT). "edm": Karras et al.'s
    # preconditioning: the network sees c_in * x and predicts F, and x0 = c_skip * x - c_out * F with
    # sigma_data (the data's std); the model still returns the v that this x0 implies, so the loss (same
    # weighting in x0 space) and the sampler are unchanged. With sigma_data = 1 it is exactly "v" (F = v).
    prediction: str = "v"
    sigma_data: float = 0.5

    def __post_init__(self):
        if isinstance(self.layers, (list, tuple)):  # parsed once, here; YAML gives mappings
            self.layers = [LayerSpec.parse(layer, f"model.layers[{i}]") for i, layer in enumerate(self.layers)]

    def validate(self) -> None:
        for name in ("channels", "frame_size", "patch_size", "d_model", "n_heads", "d_state", "expand", "ssm_headdim",
                     "ssm_chunk", "num_actions"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {_show(value)}")
        if not _is_int(self.action_dim) or self.action_dim < 0:
            raise ConfigError(f"model.action_dim must be an integer >= 0 (0 = discrete actions), got "
                              f"{_show(self.action_dim)}")
        if self.attn_chunk is not None and (not _is_int(self.attn_chunk) or self.attn_chunk < 1):
            raise ConfigError(f"model.attn_chunk must be null or a positive integer, got {_show(self.attn_chunk)}")
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) or self.mlp_ratio <= 0:
            raise ConfigError(f"model.mlp_ratio must be a positive number, got {_show(self.mlp_ratio)}")
        if self.attn_backend not in ("auto", "sdpa", "flex"):
            raise ConfigError(f"model.attn_backend must be auto, sdpa or flex, got {_show(self.attn_backend)}")
        if self.prediction not in ("v", "edm"):
            raise ConfigError(f"model.prediction must be 'v' or 'edm', got {_show(self.prediction)}")
        if not _finite_in(self.sigma_data, 0.0, 100.0) or self.sigma_data <= 0:
            raise ConfigError(f"model.sigma_data must be a positive number (the data's std), got "
                              f"{_show(self.sigma_data)}")
        if not isinstance(self.layers, list):
            raise ConfigError(f"model.layers must be a list of {{ssm, attn}} mappings, got {_show(self.layers)}")
        self.__post_init__()  # layers assigned after construction are parsed too
        if self.frame_size % self.patch_size:
            raise ConfigError(f"model.frame_size={self.frame_size} must be divisible by model.patch_size="
                              f"{self.patch_size}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"model.d_model={self.d_model} must split into model.n_heads={self.n_heads} heads "
                              f"of even size")
        if (self.expand * self.d_model) % self.ssm_headdim:
            raise ConfigError(f"model.expand*model.d_model={self.expand * self.d_model} must be divisible by "
                              f"model.ssm_headdim={self.ssm_headdim}")
        if not self.layers:
            raise ConfigError("model.layers is empty: give a layer plan or use a preset/variant")
        grid = self.frame_size // self.patch_size
        for i, spec in enumerate(self.layers):  # (a layer with neither mixer is an MLP-only layer: allowed)
            if isinstance(spec.ssm, tuple) and (min(spec.ssm) < 1 or grid % spec.ssm[0] or grid % spec.ssm[1]):
                raise ConfigError(f"model.layers[{i}].ssm block {list(spec.ssm)} must divide the token grid "
                                  f"{grid}x{grid} (frame_size/patch_size)")


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


def model_preset(name: str, variant: str = "hybrid", window: int | None = None, **overrides) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {_show(name)}; choose one of {', '.join(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[name]
    cfg = ModelConfig(**{**preset.fields, **overrides})
    if window is not None and not (_is_int(window) and 1 <= window <= MAX_WINDOW):
        raise ConfigError(f"attention window must be 1 to {MAX_WINDOW} frames, got {_show(window)}")
    cfg.layers = layer_plan(variant, preset.layers, cfg.frame_size // cfg.patch_size, window or preset.window)
    cfg.validate()
    return cfg


@dataclass
class DiffusionConfig:
    # v-prediction, cosine schedule alpha=cos(pi t/2), sigma=sin(pi t/2), min-SNR-5 weighting: see diffusion.py
    min_snr_gamma: float = 5.0
    long_context_prob: float = 0.5  # the paper's long-context training: P(clean prefix)
    min_clean_prefix: int = 1
    # the level the context frames of training (the long-context prefix) are labelled and noised with; 0 = clean,
    # the sampler's stabilization level = as committed frames are seen at inference
    context_level: float = 0.0
    # > context_level: each context frame's level is drawn uniformly from [context_level, context_level_max]
    # instead (GameNGen's context-noise augmentation: the model learns to read, and correct, a noised history)
    context_level_max: float = 0.0
    # Training on the model's own rollouts (not in the paper; Self Forcing / BAgger-style, see diffusion.py): with
    # this probability a step replaces 1..own_rollout_frames frames after a true prefix by the model's own free
    # rollout (no gradient) and trains the frames after them against the truth
    own_rollout_prob: float = 0.0
    own_rollout_frames: int = 4
    own_rollout_start: int = 0  # the first step that may train on own rollouts (early rollouts are noise)
    # Extras NOT in the paper; off by default.
    clean_frame_prob: float = 0.0  # each frame clean (no loss) with this probability, see diffusion.py
    state_penalty: float = 0.0

    def validate(self) -> None:
        for name in ("long_context_prob", "own_rollout_prob", "clean_frame_prob"):
            if not _finite_in(getattr(self, name), 0.0, 1.0):
                raise ConfigError(f"diffusion.{name} must be a probability in [0, 1], got {_show(getattr(self, name))}")
        if not _finite_in(self.context_level, 0.0, 1.0, high_open=True):
            raise ConfigError(f"diffusion.context_level must be a noise level in [0, 1), got {_show(self.context_level)}")
        if not _finite_in(self.context_level_max, 0.0, 1.0, high_open=True) or (
                0 < self.context_level_max < self.context_level):
            raise ConfigError("diffusion.context_level_max must be 0 (off) or a noise level in [context_level, 1), "
                              f"got {_show(self.context_level_max)}")
        if not _finite_in(self.min_snr_gamma, 0.0, float("inf"), high_open=True) or self.min_snr_gamma <= 0:
            raise ConfigError(f"diffusion.min_snr_gamma must be a positive number, got {_show(self.min_snr_gamma)}")
        if not _finite_in(self.state_penalty, 0.0, float("inf"), high_open=True):
            raise ConfigError(f"diffusion.state_penalty must be a number >= 0, got {_show(self.state_penalty)}")
        for name, low in (("min_clean_prefix", 1), ("own_rollout_frames", 1), ("own_rollout_start", 0)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                raise ConfigError(f"diffusion.{name} must be an integer >= {low}, got {_show(getattr(self, name))}")


SCHEDULES = ("uniform", "logsnr", "edm")


@dataclass
class SamplingConfig:
    """How frames are generated (diffusion.Sampler). Saved with a run as its defaults; every setting can be
    overridden at inference (``--steps``, ``--stabilization``, ``--seed``, ...)."""
    steps: int = 8  # denoising steps per frame
    stabilization: float = 0.0  # noise level committed frames are labelled with (Diffusion Forcing / Oasis)
    schedule: str = "uniform"  # step grid: uniform in t | logsnr (uniform in log-SNR) | edm (Karras, rho=7)
    eta: float = 0.0  # 0: deterministic DDIM; 1: ancestral (fresh noise each step, DDPM-like)
    seed: int = 0
    # history guidance (DFoT): v = v(history) + w * (v(history) - v(history noised to history_guidance_level));
    # 0 = off (one model call per step), w > 0 costs a second call and a second state
    history_guidance: float = 0.0
    history_guidance_level: float = 1.0  # 1: the history removed (vanilla); < 1: only its detail (fractional)

    def validate(self) -> None:
        if not _is_int(self.steps) or self.steps < 1:
            raise ConfigError(f"sampling.steps must be a positive integer, got {_show(self.steps)}")
        if not _finite_in(self.stabilization, 0.0, 1.0, high_open=True):
            raise ConfigError(f"sampling.stabilization must be a noise level in [0, 1), got {_show(self.stabilization)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"sampling.schedule must be one of {', '.join(SCHEDULES)}, got {_show(self.schedule)}")
        if not _finite_in(self.eta, 0.0, 1.0):
            raise ConfigError(f"sampling.eta must be in [0, 1], got {_show(self.eta)}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"sampling.seed must be an integer >= 0, got {_show(self.seed)}")
        if not _finite_in(self.history_guidance, 0.0, 100.0):
            raise ConfigError(f"sampling.history_guidance must be a guidance weight in [0, 100] (0 = off), got "
                              f"{_show(self.history_guidance)}")
        if not _finite_in(self.history_guidance_level, 0.0, 1.0) or self.history_guidance_level <= 0:
            raise ConfigError(f"sampling.history_guidance_level must be a noise level in (0, 1], got "
                              f"{_show(self.history_guidance_level)}")

    def replace(self, **overrides) -> "SamplingConfig":
        """A copy with the given fields changed (None values are ignored: 'keep the run's setting')."""
        out = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
        out.validate()
        return out


def _finite_in(value, low: float, high: float, high_open: bool = False) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return False
    return low <= value < high if high_open else low <= value <= high


@dataclass
class LoopConfig:
    """What every training loop here takes (world model and autoencoder): data, optimisation, checkpoints."""
    data: str = "data/maze"
    out: str = "runs/demo"
    data_layout: str = "auto"  # auto | episodes (npz) | teco (Minecraft mp4+npz) | videos (your mp4 + actions)
    batch_size: int = 8
    steps: int = 1000
    max_minutes: float = 0.0  # > 0: stop after this wall-clock time (checkpoint written)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    val_fraction: float = 0.1
    autocast: str = "auto"  # auto: bf16 on CUDA and on CPUs with fast bf16 (AMX/AVX512-BF16), else fp32; bf16; none: fp32
    ckpt_every: int = 200

    def validate(self, section: str = "train") -> None:
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"{section}.data must name the dataset folder, got {_show(self.data)}")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"{section}.out must name the run folder, got {_show(self.out)}")
        if self.data_layout not in LAYOUTS:
            raise ConfigError(f"{section}.data_layout must be one of {', '.join(LAYOUTS)}, got {_show(self.data_layout)}")
        if self.autocast not in ("auto", "bf16", "none"):
            raise ConfigError(f"{section}.autocast must be 'auto', 'bf16' or 'none', got {_show(self.autocast)}")
        for name, low in (("batch_size", 1), ("steps", 1), ("ckpt_every", 1), ("warmup", 0), ("seed", 0)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                raise ConfigError(f"{section}.{name} must be an integer >= {low}, got {_show(getattr(self, name))}")
        inf = float("inf")
        checks = (("lr", 0.0, inf, "a positive number", lambda v: v > 0), ("grad_clip", 0.0, inf, "a positive number",
                  lambda v: v > 0), ("weight_decay", 0.0, inf, "a number >= 0", None),
                  ("max_minutes", 0.0, inf, "a number of minutes >= 0 (0 = no limit)", None),
                  ("min_lr_ratio", 0.0, 1.0, "in [0, 1]", None),
                  ("ema_decay", 0.0, 1.0, "in [0, 1)", lambda v: v < 1), ("val_fraction", 0.0, 1.0, "in [0, 1)",
                                                                       lambda v: v < 1))
        for name, low, high, what, extra in checks:
            v = getattr(self, name)
            if not _finite_in(v, low, high, high_open=high == inf) or (extra is not None and not extra(v)):
                raise ConfigError(f"{section}.{name} must be {what}, got {_show(v)}")


@dataclass
class TrainConfig(LoopConfig):
    clip_len: int = 16
    sample_every: int = 0  # > 0: write a rollout video every N steps
    nan_policy: str = "stop"  # stop | skip
    num_workers: int = 0  # DataLoader worker processes
    skip_bad_files: bool = False  # skip (and count) unreadable episode files instead of stopping
    autoencoder: str = ""  # a `lssvwm train-ae` run: the world model trains on its latents (model.channels etc.)
    curriculum_steps: int = 0  # not from the paper: > 0 grows the clip from clip_len/4 to clip_len over these steps
    tensorboard: bool = False  # also log to RUN/tensorboard (needs the tensorboard package)
    compile: bool = False  # torch.compile the model for training (pays on a GPU; on a CPU compiling costs minutes)
    # fine-tuning: start from these weights (a run or checkpoint folder, an exported folder or a shipped name such
    # as maze-small; its EMA weights), with a fresh optimizer and LR schedule. Ignored when resuming a run.
    init: str = ""

    def validate(self, section: str = "train") -> None:
        super().validate(section)
        for name, low in (("clip_len", 1), ("sample_every", 0), ("num_workers", 0), ("curriculum_steps", 0)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                raise ConfigError(f"{section}.{name} must be an integer >= {low}, got {_show(getattr(self, name))}")
        if self.nan_policy not in ("stop", "skip"):
            raise ConfigError(f"{section}.nan_policy must be 'stop' or 'skip', got {_show(self.nan_policy)}")
        if not isinstance(self.autoencoder, str):
            raise ConfigError(f"{section}.autoencoder must be a run folder or empty, got {_show(self.autoencoder)}")
        if not isinstance(self.init, str):
            raise ConfigError(f"{section}.init must be a run folder, weights folder or shipped name, or empty; got "
                              f"{_show(self.init)}")


class _YamlSections:
    """Whole-run configs: printed at the start of a run and saved as YAML beside every checkpoint."""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


@dataclass
class RunConfig(_YamlSections):
    model: ModelConfig = field(default_factory=lambda: model_preset("small"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Every section's values, with errors that name the field (also for configs built in Python)."""
        self.model.validate()
        self.diffusion.validate()
        self.sampling.validate()
        self.train.validate()


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if cls is not RunConfig else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name} must be true/false, got {_show(value)}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}.{name} must be a number, got {_show(value)}")
            value = type(default)(value) if isinstance(default, float) else value
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{name} must be a string, got {_show(value)}")
        kwargs[name] = value
    return cls(**kwargs)


def _section(data: dict, name: str):
    """A copy of a config section (empty when absent); a non-mapping is returned as is for _build to refuse."""
    value = data.get(name) or {}
    return dict(value) if isinstance(value, dict) else value


def config_from_dict(data: dict) -> RunConfig:
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping with sections model/diffusion/train, got {type(data).__name__}")
    unknown = set(data) - {"model", "diffusion", "sampling", "train", "preset", "variant"}
    if unknown:
        raise ConfigError(f"config: unknown section(s) {sorted(unknown)}; known: model, diffusion, sampling, train, "
                          f"preset, variant")
    diffusion, sampling = _section(data, "diffusion"), _section(data, "sampling")
    train = _section(data, "train")
    if isinstance(diffusion, dict) and isinstance(sampling, dict):  # runs saved before the sampling section
        for old, new in LEGACY_SAMPLING_FIELDS.items():
            if old in diffusion:
                sampling.setdefault(new, diffusion.pop(old))
    if isinstance(diffusion, dict) and isinstance(train, dict) and "curriculum_steps" in diffusion:
        train.setdefault("curriculum_steps", diffusion.pop("curriculum_steps"))  # moved to train
    model_data = dict(data.get("model") or {})
    if "preset" in data or "variant" in data or not model_data:  # preset (default small), then overrides
        base = model_preset(data.get("preset", "small"), data.get("variant", "hybrid"))
        model = dataclasses.replace(base, **{k: v for k, v in _build(ModelConfig, model_data, "model").__dict__.items()
                                             if k in model_data})
    else:
        model = _build(ModelConfig, model_data, "model")
    model.validate()
    sampling_cfg = _build(SamplingConfig, sampling, "sampling")
    sampling_cfg.validate()
    cfg = RunConfig(model=model, diffusion=_build(DiffusionConfig, diffusion, "diffusion"), sampling=sampling_cfg,
                    train=_build(TrainConfig, train, "train"))
    cfg.validate()
    return cfg


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.steps=500", "model.d_model=64"]`` -> ``{"train": {"steps": 500}, "model": {"d_model": 64}}``
    (values are YAML: numbers, true/false, lists ...)."""
    out: dict = {}
    for pair in pairs or []:
        key = pair.split("=", 1)[0]
        if "=" not in pair or "." not in key or not all(key.split(".", 1)):
            raise ConfigError(f"--set expects section.field=value (e.g. train.steps=500), got {_show(pair)}")
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = parse_yaml(pair.split("=", 1)[1], f"--set {key}")
    return out


def layered_config(kind: str, config: str | Path | None = None, preset: str | None = None,
                   variant: str | None = None, overrides: list[str] | dict | None = None, data: str | None = None,
                   out: str | None = None, resume: bool = False) -> "RunConfig | AERunConfig":
    """A run config built in layers, the way ``lssvwm train`` and ``lssvwm train-ae`` build theirs: the YAML
    ``config`` (with ``resume`` and no config: the run's own ``out/config.yaml``; else defaults), then the named
    ``preset`` (and ``variant``) replacing the model (``kind="run"``) or autoencoder (``kind="ae"``) section, then
    ``overrides`` (``section.field=value`` strings or a dict of sections), then ``data`` and ``out``."""
    if kind not in ("run", "ae"):
        raise ValueError(f"kind must be 'run' or 'ae', got {kind!r}")
    load = load_config if kind == "run" else load_ae_config
    if not config and resume and out and (Path(out) / "config.yaml").exists():
        config = Path(out) / "config.yaml"
    base = load(config).to_dict() if config else {}
    section = "model" if kind == "run" else "autoencoder"
    if preset or variant or not config:
        if kind == "run":
            base[section] = asdict(model_preset(preset or "small", variant or "hybrid"))
        else:
            base[section] = asdict(autoencoder_preset(preset or "memory-maze"))
    sets = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    for name, values in sets.items():
        if not isinstance(base.setdefault(name, {}), dict) or not isinstance(values, dict):
            raise ConfigError(f"--set {name}: {name} is not a config section")
        base[name].update(values)
    base.setdefault("train", {})
    if data:
        base["train"]["data"] = str(data)
    if out:
        base["train"]["out"] = str(out)
    return config_from_dict(base) if kind == "run" else ae_config_from_dict(base)


# diffusion.<old> in configs saved before SamplingConfig existed -> sampling.<new>
LEGACY_SAMPLING_FIELDS = {"sampling_steps": "steps", "context_noise_level": "stabilization"}


MAX_YAML_BYTES = 1 << 20


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reads YAML 1.1, where ``1e-3`` (no dot) is a string; a config means the number, as
    YAML 1.2 and every other reader do. This loader resolves such scientific notation to floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text: str, where: str):
    """YAML text -> plain data, or a ConfigError that says what is wrong with it (never a traceback): not YAML,
    nested too deeply, or larger than any config needs."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters is not a config (more than {MAX_YAML_BYTES})")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(e).split())[:300]}") from e
    except RecursionError as e:
        raise ConfigError(f"{where}: YAML nested too deeply") from e


def read_yaml(path: str | Path):
    """A YAML file -> plain data, or a ConfigError naming the file: missing, unreadable, binary, not YAML."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is not a config file (more than {MAX_YAML_BYTES})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{path}: is a folder, not a config file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from e
    return parse_yaml(text, str(path))


def load_config(path: str | Path) -> RunConfig:
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError as e:
        raise ConfigError(e if str(e).startswith(str(path)) else f"{path}: {e}") from e


@dataclass
class AutoencoderConfig:
    """A small convolutional KL autoencoder (:mod:`lssvwm.models.autoencoder`)."""
    channels: int = 3
    latent_channels: int = 4
    downsample: int = 4  # spatial compression: 2, 4 or 8
    width: int = 64  # channels of the first stage; doubled per downsampling, up to 4x
    blocks: int = 1  # residual blocks per stage
    kl_weight: float = 1e-6

    def validate(self) -> None:
        for name in ("channels", "latent_channels", "width", "blocks"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ConfigError(f"autoencoder.{name} must be a positive integer, got {_show(v)}")
        if self.downsample not in (2, 4, 8):
            raise ConfigError(f"autoencoder.downsample must be 2, 4 or 8, got {_show(self.downsample)}")
        if not _finite_in(self.kl_weight, 0.0, float("inf"), high_open=True):
            raise ConfigError(f"autoencoder.kl_weight must be a number >= 0, got {_show(self.kl_weight)}")

    def latent_shape(self, h: int, w: int, c: int) -> tuple[int, int, int]:
        """(h, w, c) of the latents of (h, w, c) frames; a ConfigError when these frames do not fit."""
        if c != self.channels or h % self.downsample or w % self.downsample:
            raise ConfigError(f"data frames are {h}x{w}x{c}, but the autoencoder takes {self.channels} channels and "
                              f"frame sizes divisible by {self.downsample} (autoencoder.channels, "
                              f"autoencoder.downsample)")
        return h // self.downsample, w // self.downsample, self.latent_channels


AUTOENCODER_PRESETS = {
    "tiny": dict(width=16, downsample=4),
    "memory-maze": dict(width=64, downsample=4),  # 64x64x3 -> 16x16x4 (the `memory-maze` model preset)
    "minecraft": dict(width=64, downsample=8),  # 128x128x3 -> 16x16x4 (the `minecraft` model preset)
}


@dataclass
class AETrainConfig(LoopConfig):
    out: str = "runs/ae"
    batch_size: int = 32
    steps: int = 2000
    weight_decay: float = 0.0
    ckpt_every: int = 500


@dataclass
class AERunConfig(_YamlSections):
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    train: AETrainConfig = field(default_factory=AETrainConfig)

    def validate(self) -> None:
        self.autoencoder.validate()
        self.train.validate()


def autoencoder_preset(name: str, **overrides) -> AutoencoderConfig:
    if name not in AUTOENCODER_PRESETS:
        raise ConfigError(f"unknown autoencoder preset {_show(name)}; known: {sorted(AUTOENCODER_PRESETS)}")
    cfg = AutoencoderConfig(**{**AUTOENCODER_PRESETS[name], **overrides})
    cfg.validate()
    return cfg


def ae_config_from_dict(data: dict) -> AERunConfig:
    data = data or {}
    if not isinstance(data, dict) or set(data) - {"autoencoder", "train"}:
        raise ConfigError(f"autoencoder config must be a mapping with sections autoencoder/train, got "
                          f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    cfg = AERunConfig(autoencoder=_build(AutoencoderConfig, _section(data, "autoencoder"), "autoencoder"),
                      train=_build(AETrainConfig, _section(data, "train"), "train"))
    cfg.validate()
    return cfg


def load_ae_config(path: str | Path) -> AERunConfig:
    try:
        return ae_config_from_dict(read_yaml(path))
    except ConfigError as e:
        raise ConfigError(e if str(e).startswith(str(path)) else f"{path}: {e}") from e
