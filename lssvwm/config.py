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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

VARIANTS = ("hybrid", "full-transformer", "window-transformer", "mamba2", "mamba2-local")


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the field and what to change."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class LayerSpec:
    ssm: Any = None  # None (no SSM), "full" (one scan over the whole frame), or (b_h, b_w)
    attn: Any = None  # None (no attention), "all" (every past frame), or a window of k frames


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
    layers: list = field(default_factory=list)  # [{"ssm": ..., "attn": ...}, ...]
    gradient_checkpointing: bool = False
    # Not from the paper (DIAMOND-style): each frame's tokens also embed the previous input frame's patches at the
    # same place, a direct path for "copy and shift what was there" that attention otherwise has to learn.
    prev_frame: bool = False
    # Not from the paper (U-ViT's "extra 3x3 conv" after the linear patch decoder): a residual 3x3 convolution on
    # each predicted frame, zero-initialised, which can smooth the seams between patches.
    final_conv: bool = False

    def layer_specs(self) -> list[LayerSpec]:
        out = []
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, dict) or set(layer) - {"ssm", "attn"}:
                raise ConfigError(f"model.layers[{i}] must be a mapping with keys 'ssm' and 'attn', got {layer!r}")
            ssm, attn = layer.get("ssm"), layer.get("attn")
            if ssm is not None and ssm != "full":
                if not (isinstance(ssm, (list, tuple)) and len(ssm) == 2 and all(isinstance(v, int) for v in ssm)):
                    raise ConfigError(f"model.layers[{i}].ssm must be null, 'full' or [b_h, b_w], got {ssm!r}")
                ssm = tuple(ssm)
            if attn is not None and attn != "all" and not (isinstance(attn, int) and attn >= 1):
                raise ConfigError(f"model.layers[{i}].attn must be null, 'all' or a window >= 1 frame, got {attn!r}")
            out.append(LayerSpec(ssm, attn))
        return out

    def validate(self) -> None:
        for name in ("channels", "frame_size", "patch_size", "d_model", "n_heads", "d_state", "expand", "ssm_headdim",
                     "ssm_chunk", "num_actions"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if not _is_int(self.action_dim) or self.action_dim < 0:
            raise ConfigError(f"model.action_dim must be an integer >= 0 (0 = discrete actions), got "
                              f"{self.action_dim!r}")
        if self.attn_chunk is not None and (not _is_int(self.attn_chunk) or self.attn_chunk < 1):
            raise ConfigError(f"model.attn_chunk must be null or a positive integer, got {self.attn_chunk!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) or self.mlp_ratio <= 0:
            raise ConfigError(f"model.mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if not isinstance(self.layers, list):
            raise ConfigError(f"model.layers must be a list of {{ssm, attn}} mappings, got {self.layers!r}")
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
        for i, spec in enumerate(self.layer_specs()):
            if isinstance(spec.ssm, tuple) and (grid % spec.ssm[0] or grid % spec.ssm[1] or min(spec.ssm) < 1):
                raise ConfigError(f"model.layers[{i}].ssm block {list(spec.ssm)} must divide the token grid "
                                  f"{grid}x{grid} (frame_size/patch_size)")
            if spec.ssm is None and spec.attn is None:
                pass  # an MLP-only layer is allowed


def layer_plan(variant: str, n_layers: int, grid: int, window: int) -> list[dict]:
    """The per-layer (SSM block, attention window) plan of a model variant; see the module docstring."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown model variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    half, quarter = max(1, grid // 2), max(1, grid // 4)
    blocks = ["full", [half, half], "full", [quarter, quarter]]
    plan = []
    for i in range(n_layers):
        if variant == "hybrid":
            plan.append({"ssm": blocks[i % len(blocks)], "attn": window})
        elif variant == "full-transformer":
            plan.append({"ssm": None, "attn": "all"})
        elif variant == "window-transformer":
            plan.append({"ssm": None, "attn": window})
        elif variant == "mamba2":
            plan.append({"ssm": "full", "attn": None})
        else:
            plan.append({"ssm": "full", "attn": window})
    return plan


# name -> (model fields, n_layers, window)
MODEL_PRESETS: dict[str, tuple[dict, int, int]] = {
    "tiny": (dict(frame_size=16, patch_size=4, d_model=32, n_heads=2, d_state=16, ssm_headdim=16, ssm_chunk=16), 2, 3),
    "small": (dict(frame_size=32, patch_size=4, d_model=128, n_heads=4, d_state=32, ssm_headdim=32), 4, 8),
    "base": (dict(frame_size=64, patch_size=4, d_model=384, n_heads=6, d_state=64, ssm_headdim=64), 12, 10),
    "paper": (dict(channels=4, frame_size=16, patch_size=1, d_model=768, n_heads=12, d_state=64, ssm_headdim=64),
              12, 10),
    "memory-maze": (dict(channels=4, frame_size=16, patch_size=1, d_model=768, n_heads=12, d_state=64,
                         ssm_headdim=64, num_actions=6), 12, 10),
    "minecraft": (dict(channels=4, frame_size=16, patch_size=1, d_model=768, n_heads=12, d_state=64,
                       ssm_headdim=64, num_actions=3), 12, 10),
}


def model_preset(name: str, variant: str = "hybrid", window: int | None = None, **overrides) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
    fields_, n_layers, default_window = MODEL_PRESETS[name]
    cfg = ModelConfig(**{**fields_, **overrides})
    if window is not None and window < 1:
        raise ConfigError(f"attention window must be >= 1 frame, got {window}")
    cfg.layers = layer_plan(variant, n_layers, cfg.frame_size // cfg.patch_size, window or default_window)
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
    # Training on the model's own rollouts (not in the paper; Self Forcing / BAgger-style, see diffusion.py): with
    # this probability a step replaces 1..own_rollout_frames frames after a true prefix by the model's own free
    # rollout (no gradient) and trains the frames after them against the truth
    own_rollout_prob: float = 0.0
    own_rollout_frames: int = 4
    # Extras NOT in the paper; off by default.
    clean_frame_prob: float = 0.0  # each frame clean (no loss) with this probability, see diffusion.py
    state_penalty: float = 0.0
    curriculum_steps: int = 0  # > 0: clip length grows linearly from clip_len/4 to clip_len over these steps

    def validate(self) -> None:
        for name in ("long_context_prob", "own_rollout_prob", "clean_frame_prob"):
            if not _finite_in(getattr(self, name), 0.0, 1.0):
                raise ConfigError(f"diffusion.{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        if not _finite_in(self.context_level, 0.0, 1.0, high_open=True):
            raise ConfigError(f"diffusion.context_level must be a noise level in [0, 1), got {self.context_level!r}")
        if not _finite_in(self.min_snr_gamma, 0.0, float("inf"), high_open=True) or self.min_snr_gamma <= 0:
            raise ConfigError(f"diffusion.min_snr_gamma must be a positive number, got {self.min_snr_gamma!r}")
        if not _finite_in(self.state_penalty, 0.0, float("inf"), high_open=True):
            raise ConfigError(f"diffusion.state_penalty must be a number >= 0, got {self.state_penalty!r}")
        for name, low in (("min_clean_prefix", 1), ("own_rollout_frames", 1), ("curriculum_steps", 0)):
            if not _is_int(getattr(self, name)) or getattr(self, name) < low:
                raise ConfigError(f"diffusion.{name} must be an integer >= {low}, got {getattr(self, name)!r}")


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

    def validate(self) -> None:
        if not _is_int(self.steps) or self.steps < 1:
            raise ConfigError(f"sampling.steps must be a positive integer, got {self.steps!r}")
        if not _finite_in(self.stabilization, 0.0, 1.0, high_open=True):
            raise ConfigError(f"sampling.stabilization must be a noise level in [0, 1), got {self.stabilization!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"sampling.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not _finite_in(self.eta, 0.0, 1.0):
            raise ConfigError(f"sampling.eta must be in [0, 1], got {self.eta!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"sampling.seed must be an integer >= 0, got {self.seed!r}")

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
    autocast: str = "auto"  # auto: bf16 on CUDA and CPU; none: fp32
    ckpt_every: int = 200


@dataclass
class TrainConfig(LoopConfig):
    clip_len: int = 16
    sample_every: int = 0  # > 0: write a rollout video every N steps
    nan_policy: str = "stop"  # stop | skip
    num_workers: int = 0  # DataLoader worker processes
    skip_bad_files: bool = False  # skip (and count) unreadable episode files instead of stopping
    autoencoder: str = ""  # a `lssvwm train-ae` run: the world model trains on its latents (model.channels etc.)


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
            raise ConfigError(f"{where}.{name} must be true/false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}.{name} must be a number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) else value
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{name} must be a string, got {value!r}")
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
    if isinstance(diffusion, dict) and isinstance(sampling, dict):  # runs saved before the sampling section
        for old, new in LEGACY_SAMPLING_FIELDS.items():
            if old in diffusion:
                sampling.setdefault(new, diffusion.pop(old))
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
    diffusion_cfg = _build(DiffusionConfig, diffusion, "diffusion")
    diffusion_cfg.validate()
    return RunConfig(model=model, diffusion=diffusion_cfg, sampling=sampling_cfg,
                     train=_build(TrainConfig, data.get("train") or {}, "train"))


# diffusion.<old> in configs saved before SamplingConfig existed -> sampling.<new>
LEGACY_SAMPLING_FIELDS = {"sampling_steps": "steps", "context_noise_level": "stabilization"}


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


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
                raise ConfigError(f"autoencoder.{name} must be a positive integer, got {v!r}")
        if self.downsample not in (2, 4, 8):
            raise ConfigError(f"autoencoder.downsample must be 2, 4 or 8, got {self.downsample!r}")
        if self.kl_weight < 0:
            raise ConfigError(f"autoencoder.kl_weight must be >= 0, got {self.kl_weight!r}")

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


def autoencoder_preset(name: str, **overrides) -> AutoencoderConfig:
    if name not in AUTOENCODER_PRESETS:
        raise ConfigError(f"unknown autoencoder preset {name!r}; known: {sorted(AUTOENCODER_PRESETS)}")
    cfg = AutoencoderConfig(**{**AUTOENCODER_PRESETS[name], **overrides})
    cfg.validate()
    return cfg


def ae_config_from_dict(data: dict) -> AERunConfig:
    data = data or {}
    if not isinstance(data, dict) or set(data) - {"autoencoder", "train"}:
        raise ConfigError(f"autoencoder config must be a mapping with sections autoencoder/train, got "
                          f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    ae = _build(AutoencoderConfig, data.get("autoencoder") or {}, "autoencoder")
    ae.validate()
    return AERunConfig(autoencoder=ae, train=_build(AETrainConfig, data.get("train") or {}, "train"))


def load_ae_config(path: str | Path) -> AERunConfig:
    path = Path(path)
    try:
        return ae_config_from_dict(yaml.safe_load(path.read_text()))
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except (yaml.YAMLError, ConfigError) as e:
        raise ConfigError(f"{path}: {e}") from e
