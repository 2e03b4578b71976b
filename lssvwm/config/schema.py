"""The typed configs (dataclasses) and their checks: each field's meaning, default and range, and the one error
type (:class:`ConfigError`) whose message names the field and what to change."""
from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass, field, fields
from typing import Any

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


@dataclass(frozen=True)
class Allowed:
    """A config field's allowed values, declared once in the field's metadata: numbers in [low, high] (either end
    open, either end absent), integers only with ``integer``, or one of ``choices``. :meth:`check` is the config's
    check (a ConfigError naming the field); :meth:`parse` is the command line's option type for the same field."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple | None = None
    what: str = ""  # what the value is, for messages ("a noise level")
    note: str = ""  # said after the range (" (0 = off)")

    def ok(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.integer and not _is_int(value):
            return False
        if not self.integer and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                 or not math.isfinite(value)):
            return False
        return ((self.low is None or (value > self.low if self.low_open else value >= self.low))
                and (self.high is None or (value < self.high if self.high_open else value <= self.high)))

    def range_text(self) -> str:
        if self.choices is not None:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, value, name: str) -> None:
        if not self.ok(value):
            what = self.what if self.what == "a positive integer" else (
                f"{self.what + ' ' if self.what else ('an integer ' if self.integer else '')}{self.range_text()}")
            raise ConfigError(f"{name} must be {what}{self.note}, got {_show(value)}")

    def parse(self, text: str):
        """argparse's type for this field: the value, or an ArgumentTypeError saying what is allowed."""
        import argparse

        if self.choices is not None:
            value = text
        else:
            try:
                value = int(text) if self.integer else float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {'an integer' if self.integer else 'a number'}, got "
                                                 f"{text!r}") from None
        if not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.range_text()}, got {text}")
        return value


def allowed(cls, name: str) -> Allowed:
    """The declared allowed values of field ``name`` of config class ``cls``."""
    return next(f.metadata["allowed"] for f in fields(cls) if f.name == name)


def check_allowed(cfg, section: str) -> None:
    """Check every field of ``cfg`` that declares its allowed values (ConfigError: '<section>.<field> must be ...')."""
    for f in fields(cfg):
        if "allowed" in f.metadata:
            f.metadata["allowed"].check(getattr(cfg, f.name), f"{section}.{f.name}")


SCHEDULES = ("uniform", "logsnr", "edm")


@dataclass
class SamplingConfig:
    """How frames are generated (diffusion.Sampler). Saved with a run as its defaults; every setting can be
    overridden at inference (``--steps``, ``--stabilization``, ``--seed``, ...). Each field's allowed values are
    declared once, in its metadata (:class:`Allowed`): the config check and the command line's options both read
    them."""
    steps: int = field(default=8, metadata={"allowed": Allowed(1, integer=True, what="a positive integer")})
    # noise level committed frames are labelled with (Diffusion Forcing / Oasis)
    stabilization: float = field(default=0.0, metadata={"allowed": Allowed(0.0, 1.0, high_open=True,
                                                                               what="a noise level")})
    # step grid: uniform in t | logsnr (uniform in log-SNR) | edm (Karras, rho=7)
    schedule: str = field(default="uniform", metadata={"allowed": Allowed(choices=SCHEDULES)})
    # 0: deterministic DDIM; 1: ancestral (fresh noise each step, DDPM-like)
    eta: float = field(default=0.0, metadata={"allowed": Allowed(0.0, 1.0)})
    seed: int = field(default=0, metadata={"allowed": Allowed(0, integer=True)})
    # history guidance (DFoT): v = v(history) + w * (v(history) - v(history noised to history_guidance_level));
    # 0 = off (one model call per step), w > 0 costs a second call and a second state
    history_guidance: float = field(default=0.0, metadata={"allowed": Allowed(0.0, 100.0, what="a guidance weight",
                                                                                 note=" (0 = off)")})
    # 1: the history removed (vanilla); < 1: only its detail (fractional)
    history_guidance_level: float = field(default=1.0, metadata={"allowed": Allowed(0.0, 1.0, low_open=True,
                                                                                      what="a noise level")})

    def validate(self) -> None:
        check_allowed(self, "sampling")

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
    # auto: bf16 on CUDA and on CPUs where a bf16 matmul measures clearly faster (loop.cpu_bf16_fast), else fp32;
    # bf16; none: fp32
    autocast: str = "auto"
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


@dataclass
class AETrainConfig(LoopConfig):
    out: str = "runs/ae"
    batch_size: int = 32
    steps: int = 2000
    weight_decay: float = 0.0
    ckpt_every: int = 500
