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
    text: str = ""  # the whole description, said instead of what + range + note ("a positive number")
    none_ok: bool = False  # None (YAML null) is allowed too

    def ok(self, value) -> bool:
        if value is None:
            return self.none_ok
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
        low, high = (v if v is None or _is_int(v) else f"{v:g}" for v in (self.low, self.high))  # ints as written
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def check(self, value, name: str) -> None:
        if not self.ok(value):
            what = self.text or (f"{self.what + ' ' if self.what else ('an integer ' if self.integer else '')}"
                                 f"{self.range_text()}{self.note}")
            raise ConfigError(f"{name} must be {what}, got {_show(value)}")

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


def allowed(cls, name: str) -> Allowed | None:
    """The declared allowed values of field ``name`` of config class ``cls`` (declared there, or in a base class
    whose field the subclass re-declares with another default), or None."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            for f in fields(klass):
                if f.name == name and "allowed" in f.metadata:
                    return f.metadata["allowed"]
    return None


def check_allowed(cfg, section: str) -> None:
    """Check every field of ``cfg`` that declares its allowed values (ConfigError: '<section>.<field> must be ...')."""
    for f in fields(cfg):
        rule = allowed(type(cfg), f.name)
        if rule is not None:
            rule.check(getattr(cfg, f.name), f"{section}.{f.name}")


def ranged(default, rule: Allowed, **kw):
    """A dataclass field whose allowed values are declared in its metadata."""
    return field(default=default, metadata={"allowed": rule}, **kw)


def at_least(low: int) -> Allowed:
    return Allowed(low, integer=True)


POSITIVE_INT = Allowed(1, integer=True, text="a positive integer")
POSITIVE_NUMBER = Allowed(0.0, low_open=True, text="a positive number")
NONNEG_NUMBER = Allowed(0.0, text="a number >= 0")
PROBABILITY = Allowed(0.0, 1.0, text="a probability in [0, 1]")
FRACTION = Allowed(0.0, 1.0, high_open=True, text="in [0, 1)")
NOISE_LEVEL = Allowed(0.0, 1.0, high_open=True, text="a noise level in [0, 1)")


@dataclass
class ModelConfig:
    """The network's sizes and layer plan. Each field's allowed values are declared once, in its metadata
    (:class:`Allowed`); :meth:`validate` checks them, then the rules that tie fields together."""
    channels: int = ranged(3, POSITIVE_INT)
    frame_size: int = ranged(32, POSITIVE_INT)
    patch_size: int = ranged(4, POSITIVE_INT)
    d_model: int = ranged(128, POSITIVE_INT)
    n_heads: int = ranged(4, POSITIVE_INT)
    mlp_ratio: float = ranged(4.0, POSITIVE_NUMBER)
    d_state: int = ranged(32, POSITIVE_INT)
    expand: int = ranged(2, POSITIVE_INT)
    ssm_headdim: int = ranged(32, POSITIVE_INT)
    ssm_chunk: int = ranged(64, POSITIVE_INT)
    # The scans' step size (dt) at init. "token": Mamba's, log-uniform in [1e-3, 1e-1] per scan step. A block of
    # b_h x b_w tokens takes b_h * b_w steps per frame, so its state forgets that many times faster per frame: a
    # full-frame scan of 8 x 8 tokens starts with most heads forgetting within one frame. "frame": the same range
    # per frame (dt divided by the block's tokens per frame), so every layer's heads start with memories of about
    # one to a thousand frames, whatever the block size.
    ssm_dt_init: str = ranged("token", Allowed(choices=("token", "frame")))
    # frames per attention chunk of the sdpa backend; None = half the window
    attn_chunk: int | None = ranged(None, Allowed(1, integer=True, none_ok=True, text="null or a positive integer"))
    num_actions: int = ranged(6, POSITIVE_INT)  # discrete action ids (plus -1 = none); ignored when action_dim > 0
    # > 0: continuous action vectors of this size
    action_dim: int = ranged(0, Allowed(0, integer=True, text="an integer >= 0 (0 = discrete actions)"))
    layers: list[LayerSpec] = field(default_factory=list)  # one LayerSpec per layer (YAML: {ssm: ..., attn: ...})
    gradient_checkpointing: bool = False
    # frame-local attention kernel: auto (FlexAttention with a block mask on CUDA, per-frame windows on CPU),
    # window (each query frame with exactly its window's keys), sdpa (chunked and masked), flex
    attn_backend: str = ranged("auto", Allowed(choices=("auto", "window", "sdpa", "flex")))
    # Not from the paper (DIAMOND-style): each frame's tokens also embed the previous input frame's patches at the
    # same place, a direct path for "copy and shift what was there" that attention otherwise has to learn.
    prev_frame: bool = False
    # Not from the paper (U-ViT's "extra 3x3 conv" after the linear patch decoder): a residual 3x3 convolution on
    # each predicted frame, zero-initialised, which can smooth the seams between patches.
    final_conv: bool = False
    # What the network's output stands for (lssvwm.denoiser). "v": it is the v-prediction itself (DFoT). "edm":
    # Karras et al.'s preconditioning: the network sees c_in * x and predicts F, and x0 = c_skip * x - c_out * F
    # with sigma_data (the data's std); the denoiser still returns the v that this x0 implies, so the loss (same
    # weighting in x0 space) and the sampler are unchanged. With sigma_data = 1 it is exactly "v" (F = v). "x0": the
    # network predicts the clean frame (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise") and
    # the denoiser returns the v it implies, so again the loss and the sampler are unchanged.
    prediction: str = ranged("v", Allowed(choices=("v", "edm", "x0"), text="'v', 'edm' or 'x0'"))
    sigma_data: float = ranged(0.5, Allowed(0.0, 100.0, low_open=True, text="a positive number (the data's std)"))

    def __post_init__(self):
        if isinstance(self.layers, (list, tuple)):  # parsed once, here; YAML gives mappings
            self.layers = [LayerSpec.parse(layer, f"model.layers[{i}]") for i, layer in enumerate(self.layers)]

    def attention_reach(self) -> int | None:
        """How many frames (the current one included) a frame's output can depend on without the SSM scans: the
        previous-frame input and each windowed attention layer (a window of k adds k - 1, since a layer attends to
        the frames the layer below already mixed). None when a layer attends over every past frame. A model given
        only the last ``attention_reach()`` frames of a history loses exactly what its scans carried from before."""
        if any(spec.attn == "all" for spec in self.layers):
            return None
        return 1 + int(self.prev_frame) + sum(spec.attn - 1 for spec in self.layers if spec.attn is not None)

    def validate(self) -> None:
        check_allowed(self, "model")
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
    min_snr_gamma: float = ranged(5.0, POSITIVE_NUMBER)
    # the training levels' shift (not from the paper): each frame's uniform level t moved to t' with
    # tan(pi t'/2) = level_shift * tan(pi t/2), i.e. log-SNR lowered by 2 ln(level_shift) (Hoogeboom et al.'s shifted
    # cosine schedule); > 1 trains more at high noise, where a frame's layout is decided; 1: uniform t (off)
    level_shift: float = ranged(1.0, POSITIVE_NUMBER)
    long_context_prob: float = ranged(0.5, PROBABILITY)  # the paper's long-context training: P(clean prefix)
    min_clean_prefix: int = ranged(1, at_least(1))
    # the level the context frames of training (the long-context prefix) are labelled and noised with; 0 = clean,
    # the sampler's stabilization level = as committed frames are seen at inference
    context_level: float = ranged(0.0, NOISE_LEVEL)
    # > context_level: each context frame's level is drawn uniformly from [context_level, context_level_max]
    # instead (GameNGen's context-noise augmentation: the model learns to read, and correct, a noised history)
    context_level_max: float = ranged(0.0, Allowed(0.0, 1.0, high_open=True, text=(
        "0 (off) or a noise level in [context_level, 1)")))
    # Training on the model's own rollouts (not in the paper; Self Forcing / BAgger-style, see diffusion.py): with
    # this probability a step replaces 1..own_rollout_frames frames after a true prefix by the model's own free
    # rollout (no gradient) and trains the frames after them against the truth
    own_rollout_prob: float = ranged(0.0, PROBABILITY)
    own_rollout_frames: int = ranged(4, at_least(1))
    # the first step that may train on own rollouts (early rollouts are noise)
    own_rollout_start: int = ranged(0, at_least(0))
    # BAgger (Po et al., arXiv 2512.12080): the own rollout fills the clip's last r frames and the clip is played
    # backwards, so that it starts from the drifted frames and trains the true frames that lead back from them
    own_rollout_reversed: bool = False
    # backpropagation through the own rollout (not in the paper): > 0 makes the rollout with autograd on, so the loss
    # of the frames after it also trains how the model generated its frames (that they serve as its own context),
    # this share of that gradient flowing back through them (1: all of it); costs the rollout's backward too; one
    # training process only
    own_rollout_grad: float = ranged(0.0, Allowed(0.0, 1.0, text="0 (off) to 1 (the whole gradient)"))
    # the reversed clip's actions: per action id, the id that undoes it (-1 where the action set has none); empty:
    # every reversed step gets -1 ("no action"). The built-in maze: [0, -1, 3, 2, -1, -1] (turns undo each other,
    # moves have no inverse; lssvwm.data.maze.INVERSE_ACTIONS)
    inverse_actions: list[int] = field(default_factory=list)
    # classifier-free guidance's unconditional case (not from the paper): each frame's action is replaced by "no
    # action" (id -1, or a zero vector) with this probability, so that sampling.action_guidance has a null action
    # to push away from
    action_dropout: float = ranged(0.0, PROBABILITY)
    # Extras NOT in the paper; off by default.
    clean_frame_prob: float = ranged(0.0, PROBABILITY)  # each frame clean (no loss) with this probability
    state_penalty: float = ranged(0.0, NONNEG_NUMBER)

    def validate(self) -> None:
        check_allowed(self, "diffusion")
        inv = self.inverse_actions
        if not isinstance(inv, list) or not all(isinstance(a, int) and not isinstance(a, bool) and a >= -1
                                                for a in inv):
            raise ConfigError("diffusion.inverse_actions must be a list of action ids (-1 = no inverse), one per "
                              f"action, got {_show(inv)}")
        if 0 < self.context_level_max < self.context_level:
            raise ConfigError("diffusion.context_level_max must be 0 (off) or a noise level in [context_level, 1), "
                              f"got {_show(self.context_level_max)}")


SCHEDULES = ("uniform", "logsnr", "edm")


@dataclass
class SamplingConfig:
    """How frames are generated (diffusion.Sampler). Saved with a run as its defaults; every setting can be
    overridden at inference (``--steps``, ``--stabilization``, ``--seed``, ...). Each field's allowed values are
    declared once, in its metadata (:class:`Allowed`): the config check and the command line's options both read
    them."""
    steps: int = ranged(8, POSITIVE_INT)
    # noise level committed frames are labelled with (Diffusion Forcing / Oasis)
    stabilization: float = field(default=0.0, metadata={"allowed": Allowed(0.0, 1.0, high_open=True,
                                                                               what="a noise level")})
    # step grid: uniform in t | logsnr (uniform in log-SNR) | edm (Karras, rho=7)
    schedule: str = field(default="uniform", metadata={"allowed": Allowed(choices=SCHEDULES)})
    # 0: deterministic DDIM; 1: ancestral (fresh noise each step, DDPM-like)
    eta: float = field(default=0.0, metadata={"allowed": Allowed(0.0, 1.0)})
    seed: int = field(default=0, metadata={"allowed": Allowed(0, integer=True)})
    # the standard deviation of the noise the sampler draws (a new frame's starting noise and, with eta > 0, each
    # step's fresh noise), as Glow's sampling temperature: 1 = the model's distribution; < 1 trades the frames'
    # variety for samples nearer the most likely frame
    temperature: float = field(default=1.0, metadata={"allowed": Allowed(0.0, 2.0, low_open=True,
                                                                             what="a noise scale")})
    # history guidance (DFoT): v = v(history) + w * (v(history) - v(history noised to history_guidance_level));
    # 0 = off (one model call per step), w > 0 costs a second call and a second state
    history_guidance: float = field(default=0.0, metadata={"allowed": Allowed(0.0, 100.0, what="a guidance weight",
                                                                                 note=" (0 = off)")})
    # 1: the history removed (vanilla); < 1: only its detail (fractional)
    history_guidance_level: float = field(default=1.0, metadata={"allowed": Allowed(0.0, 1.0, low_open=True,
                                                                                      what="a noise level")})
    # action guidance (classifier-free, on the new frame's action): v = v(a) + w * (v(a) - v(action_guidance_null));
    # 0 = off, w > 0 costs a second model call per step against the same state. The null action: -1 ("no action",
    # learnt with diffusion.action_dropout > 0) or an action id such as a no-op; continuous actions use zeros
    action_guidance: float = field(default=0.0, metadata={"allowed": Allowed(0.0, 100.0, what="a guidance weight",
                                                                                note=" (0 = off)")})
    action_guidance_null: int = field(default=-1, metadata={"allowed": Allowed(-1, integer=True, what="an action id",
                                                                                  note=" (-1 = no action)")})

    def validate(self) -> None:
        check_allowed(self, "sampling")

    def replace(self, **overrides) -> "SamplingConfig":
        """A copy with the given fields changed (None values are ignored: 'keep the run's setting')."""
        out = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
        out.validate()
        return out


@dataclass(frozen=True)
class SamplingOverrides:
    """Sampling settings given at inference (the command line, DreamEnv, the play server, the evaluations) that
    replace a run's own; a field left None keeps the run's setting. The fields are SamplingConfig's, each checked
    against the range SamplingConfig declares for it."""
    steps: int | None = None
    stabilization: float | None = None
    schedule: str | None = None
    eta: float | None = None
    seed: int | None = None
    temperature: float | None = None
    history_guidance: float | None = None
    history_guidance_level: float | None = None
    action_guidance: float | None = None
    action_guidance_null: int | None = None

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) is not None:
                allowed(SamplingConfig, f.name).check(getattr(self, f.name), f"sampling.{f.name}")

    @classmethod
    def of(cls, value: "SamplingOverrides | dict | None" = None, **given) -> "SamplingOverrides":
        """Overrides from None, a mapping of field names, or overrides, with ``given`` fields on top."""
        if isinstance(value, SamplingOverrides):
            value = value.given()
        merged = {**(value or {}), **given}
        unknown = sorted(set(merged) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown sampling setting(s) {unknown}; known: "
                              f"{', '.join(f.name for f in fields(cls))}")
        return cls(**merged)

    def given(self) -> dict:
        """The fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def apply(self, cfg: SamplingConfig) -> SamplingConfig:
        """``cfg`` with these overrides."""
        return cfg.replace(**self.given())


@dataclass
class LoopConfig:
    """What every training loop here takes (world model and autoencoder): data, optimisation, checkpoints."""
    data: str = "data/maze"
    out: str = "runs/demo"
    # auto | episodes (npz) | teco (Minecraft mp4+npz) | videos (your mp4 + actions)
    data_layout: str = ranged("auto", Allowed(choices=LAYOUTS))
    batch_size: int = ranged(8, at_least(1))
    steps: int = ranged(1000, at_least(1))
    # > 0: stop after this wall-clock time (checkpoint written)
    max_minutes: float = ranged(0.0, Allowed(0.0, text="a number of minutes >= 0 (0 = no limit)"))
    lr: float = ranged(1e-3, POSITIVE_NUMBER)
    min_lr_ratio: float = ranged(0.1, Allowed(0.0, 1.0, text="in [0, 1]"))
    warmup: int = ranged(50, at_least(0))
    weight_decay: float = ranged(0.01, NONNEG_NUMBER)
    grad_clip: float = ranged(1.0, POSITIVE_NUMBER)
    # adamw; muon: Muon (torch.optim.Muon, its update scaled to AdamW's RMS) on the hidden matrices, AdamW on the rest
    optimizer: str = ranged("adamw", Allowed(choices=("adamw", "muon"), text="'adamw' or 'muon'"))
    ema_decay: float = ranged(0.999, FRACTION)
    seed: int = ranged(0, at_least(0))
    val_fraction: float = ranged(0.1, FRACTION)
    # auto: bf16 on CUDA and on CPUs where a bf16 matmul measures clearly faster (loop.cpu_bf16_fast), else fp32
    # (on the CPU attention stays fp32 unless bf16 attention times faster too); bf16; none: fp32
    autocast: str = ranged("auto", Allowed(choices=("auto", "bf16", "none"), text="'auto', 'bf16' or 'none'"))
    ckpt_every: int = ranged(200, at_least(1))
    # with max_minutes > 0: time the first steps, then set `steps` so the LR schedule ends at max_minutes
    # (`steps` is only the first guess; the plan is saved in the checkpoints and a resumed run keeps it)
    fit_steps: bool = False

    def validate(self, section: str = "train") -> None:
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError(f"{section}.data must name the dataset folder, got {_show(self.data)}")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"{section}.out must name the run folder, got {_show(self.out)}")
        check_allowed(self, section)
        if self.fit_steps and not self.max_minutes > 0:
            raise ConfigError(f"{section}.fit_steps=true needs {section}.max_minutes > 0 (the time budget the "
                              f"schedule is fitted to), got max_minutes={_show(self.max_minutes)}")


@dataclass
class TrainConfig(LoopConfig):
    clip_len: int = ranged(16, at_least(1))
    sample_every: int = ranged(0, at_least(0))  # > 0: write a rollout video every N steps
    nan_policy: str = ranged("stop", Allowed(choices=("stop", "skip"), text="'stop' or 'skip'"))
    num_workers: int = ranged(0, at_least(0))  # DataLoader worker processes
    skip_bad_files: bool = False  # skip (and count) unreadable episode files instead of stopping
    autoencoder: str = ""  # a `lssvwm train-ae` run: the world model trains on its latents (model.channels etc.)
    # not from the paper: > 0 grows the clip from clip_len/4 to clip_len over these steps
    curriculum_steps: int = ranged(0, at_least(0))
    tensorboard: bool = False  # also log to RUN/tensorboard (needs the tensorboard package)
    compile: bool = False  # torch.compile the model for training (pays on a GPU; on a CPU compiling costs minutes)
    # fine-tuning: start from these weights (a run or checkpoint folder, an exported folder or a shipped name such
    # as maze-small; its EMA weights), with a fresh optimizer and LR schedule. Ignored when resuming a run.
    init: str = ""

    def validate(self, section: str = "train") -> None:
        super().validate(section)
        if not isinstance(self.autoencoder, str):
            raise ConfigError(f"{section}.autoencoder must be a run folder or empty, got {_show(self.autoencoder)}")
        if not isinstance(self.init, str):
            raise ConfigError(f"{section}.init must be a run folder, weights folder or shipped name, or empty; got "
                              f"{_show(self.init)}")


@dataclass
class AutoencoderConfig:
    """A small convolutional KL autoencoder (:mod:`lssvwm.models.autoencoder`)."""
    channels: int = ranged(3, POSITIVE_INT)
    latent_channels: int = ranged(4, POSITIVE_INT)
    downsample: int = ranged(4, Allowed(choices=(2, 4, 8), text="2, 4 or 8"))  # spatial compression
    width: int = ranged(64, POSITIVE_INT)  # channels of the first stage; doubled per downsampling, up to 4x
    blocks: int = ranged(1, POSITIVE_INT)  # residual blocks per stage
    kl_weight: float = ranged(1e-6, NONNEG_NUMBER)

    def validate(self) -> None:
        check_allowed(self, "autoencoder")

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
