"""Diffusion Forcing: per-frame noise levels, the long-context training mask, the per-frame sampler, rollout.

Choices (the anchors are Diffusion Forcing, DFoT, Oasis and DIAMOND; see docs/architecture.md):

- Continuous time ``t`` in [0, 1] per (sample, frame); ``t = 0`` is a clean frame. Cosine schedule
  ``alpha = cos(pi t / 2)``, ``sigma = sin(pi t / 2)`` (variance preserving, ``alpha^2 + sigma^2 = 1``); its math
  (and the step grids) lives in :mod:`lssvwm.schedule`, imported here.
- v-prediction (DFoT's default, and what DF v1.5 found to matter): ``v = alpha * eps - sigma * x0``.
- Loss weighting: a min-SNR-style truncation. The v-loss equals ``(SNR + 1)`` times the x0-loss; we cap that
  x0-space weight at ``gamma`` (default 5), i.e. weight ``min(SNR + 1, gamma) / (SNR + 1)`` on the v-loss.
  This keeps full weight at high noise (where the next frame's layout is decided) and stops nearly clean
  frames from dominating. (It differs from Hang et al.'s ``min(SNR, gamma) / (SNR + 1)``, which gives
  almost no weight to the noisiest levels.)
- Long-context training (the paper's): with probability ``long_context_prob`` a random-length prefix of the
  clip is clean (level 0) and carries no loss; otherwise plain Diffusion Forcing (independent levels).
- ``clean_frame_prob`` (ours, not from the paper, off by default): each frame is also kept clean, without
  loss, with this probability, so that "clean history, noisy current frame" (the regime of sampling) is
  common in training rather than a ~10% accident of independent levels.
- Sampling (:class:`Sampler`, settings in :class:`~lssvwm.config.SamplingConfig`): each new frame starts from
  pure noise and is denoised through ``steps`` levels of a step grid (:func:`sampling_grid`) with DDIM
  (``eta > 0`` adds fresh noise per step) against a fixed cache; the clean result is then committed, labelled
  with (and noised to) a small stabilization level as DF and Oasis do.
- History guidance (DFoT, off by default): a second state sees the same history noised to a level (1: none of
  it), and each step's prediction is extrapolated away from that history-poor prediction.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch

from .config import DiffusionConfig, SamplingConfig
from .denoiser import Denoiser, as_denoiser, compiled_step
from .models.world_model import check_action_ids
from .resources import check_compiler
from .schedule import add_noise, alpha_sigma, loss_weight, sampling_grid, shift_levels, v_target, x0_eps_from_v


def training_levels(batch: int, frames: int, cfg: DiffusionConfig, generator: torch.Generator | None = None,
                    device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise levels (B, T) and loss mask (B, T): independent levels per frame (Diffusion Forcing), and with
    probability ``long_context_prob`` a clean prefix of random length in [min_clean_prefix, T-1], no loss. Context
    frames are labelled (and noised) with ``context_level`` (0: clean; the sampler's stabilization level: as the
    context is seen at inference), or, with ``context_level_max`` above it, each with its own level drawn uniformly
    between the two (GameNGen's context-noise augmentation). ``level_shift`` other than 1 moves the independent
    levels' log-SNR by ``-2 ln(level_shift)`` (:func:`~lssvwm.schedule.shift_levels`; > 1: more training at high
    noise), from the same draws."""
    levels = torch.rand(batch, frames, generator=generator)
    if cfg.level_shift != 1.0:
        levels = shift_levels(levels, cfg.level_shift)
    clean = torch.zeros(batch, frames, dtype=torch.bool)
    if frames > 1 and cfg.long_context_prob > 0:
        use = torch.rand(batch, generator=generator) < cfg.long_context_prob
        lo = min(max(cfg.min_clean_prefix, 1), frames - 1)
        prefix = torch.randint(lo, frames, (batch,), generator=generator)
        clean |= use[:, None] & (torch.arange(frames)[None, :] < prefix[:, None])
    if cfg.clean_frame_prob > 0:  # not from the paper: clean context frames scattered through the clip
        clean |= torch.rand(batch, frames, generator=generator) < cfg.clean_frame_prob
    context = torch.full((batch, frames), float(cfg.context_level))
    if cfg.context_level_max > cfg.context_level:  # drawn only when on: old configs keep their random stream
        span = cfg.context_level_max - cfg.context_level
        context = context + span * torch.rand(batch, frames, generator=generator)
    levels = torch.where(clean, context, levels)
    mask = (~clean).float()
    return levels.to(device), mask.to(device)


def training_noise(shape: tuple, cfg: DiffusionConfig, generator: torch.Generator | None = None):
    """Levels (B, T), loss mask (B, T) and noise (B, T, C, H, W) for a batch of clips of ``shape``.

    Drawn for the whole (global) batch at once, so that processes that each take a slice of the batch
    train exactly as one process would."""
    levels, mask = training_levels(shape[0], shape[1], cfg, generator)
    noise = torch.randn(shape, generator=generator)
    return levels, mask, noise


def null_actions(actions: torch.Tensor, null_id: int = -1) -> torch.Tensor:
    """"No action" in the shape of ``actions`` (ids of any shape, or vectors (..., A)): ``null_id`` everywhere
    (default -1, the model's "no action" id), or zero vectors, continuous actions' "no action". Action guidance's
    weak condition, action dropout's and the reversed clips' missing actions."""
    if actions.is_floating_point():
        return torch.zeros_like(actions)
    return torch.full_like(actions, null_id)


def action_dropout_mask(batch: int, frames: int, cfg: DiffusionConfig, generator: torch.Generator | None = None
                        ) -> torch.Tensor | None:
    """(B, T) True where a training frame's action is replaced by "no action" (:func:`drop_actions`), each frame
    with probability ``cfg.action_dropout``; None (and nothing drawn) when that is 0. Drawn for the global batch."""
    if cfg.action_dropout <= 0:
        return None
    return torch.rand(batch, frames, generator=generator) < cfg.action_dropout


def drop_actions(actions: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    """``actions`` (B, T) ids or (B, T, A) vectors with the frames where ``drop`` (B, T) is True set to "no
    action": id -1, or a zero vector. ``drop`` None: unchanged."""
    if drop is None:
        return actions
    drop = drop.to(actions.device)
    return torch.where(drop[..., None] if actions.is_floating_point() else drop, null_actions(actions), actions)


def own_rollout_plan(frames: int, cfg: DiffusionConfig, generator: torch.Generator | None = None
                     ) -> tuple[int, int] | None:
    """Whether this training step trains on the model's own rollout (probability ``own_rollout_prob``) and, if so,
    ``(n, r)``: ``n >= 1`` true context frames, then ``r`` in ``1..own_rollout_frames`` generated ones, leaving at
    least one frame after them to train. Always draws the same numbers from ``generator`` (exact resume)."""
    u, ur, un = torch.rand(3, generator=generator).tolist()
    if cfg.own_rollout_prob <= 0 or frames < 3 or u >= cfg.own_rollout_prob:
        return None
    r = 1 + int(ur * min(cfg.own_rollout_frames, frames - 2))  # 1 .. min(R, T-2)
    if cfg.own_rollout_reversed:  # BAgger: the rollout fills the clip's end, which the reversed clip starts from
        return frames - r, r
    n = 1 + int(un * (frames - 1 - r))  # 1 .. T-1-r
    return n, r


def own_rollout_history(model, frames: torch.Tensor, actions: torch.Tensor, n: int, r: int, sampling: SamplingConfig,
                        generators: list[torch.Generator] | None = None, clamp: tuple[float, float] | None = None,
                        grad: float = 0.0) -> torch.Tensor:
    """``frames`` (B, T, C, H, W) with frames ``n .. n+r-1`` replaced by the model's own free rollout from the true
    frames ``0 .. n-1``, by the :class:`Sampler` as at inference (``sampling``, history guidance included;
    ``clamp``: the value range of the space the frames are in, the codec's). ``generators``: one per clip, so that a
    clip's rollout does not depend on which process (or batch) it is in.

    No gradient flows through the rollout, unless ``grad > 0``: then it is the same rollout (the same draws, the
    same frames) made with autograd on (:func:`unrolled_rollout`), so that a loss on the frames after it also
    reaches the network through every denoising step and commit of the generated frames (backpropagation through
    the rollout: the model learns to make frames that serve as its own context), that gradient scaled by ``grad``
    (the frames' values unchanged)."""
    net = getattr(model, "module", model)  # not through DDP: its hooks expect one forward per backward
    if grad > 0:
        out = unrolled_rollout(net, frames[:, :n], actions[:, :n], actions[:, n:n + r], sampling, generators, clamp)
        if grad < 1:  # the same values, grad times the gradient
            out = grad * out + (1 - grad) * out.detach()
        return torch.cat([frames[:, :n], out.to(frames.dtype), frames[:, n + r:]], dim=1)
    sampler = Sampler(net, sampling, clamp=clamp)
    if generators is not None:
        sampler.generator = generators
    out = frames.clone()
    with torch.no_grad():
        out[:, n:n + r] = sampler.rollout(frames[:, :n], actions[:, :n], actions[:, n:n + r], to_cpu=False).to(out)
    return out


def unrolled_rollout(model, context: torch.Tensor, context_actions: torch.Tensor, actions: torch.Tensor,
                     sampling: SamplingConfig, generator=None, clamp: tuple[float, float] | None = None
                     ) -> torch.Tensor:
    """The frames (B, M, C, H, W) a free rollout generates after ``context`` (B, N, C, H, W) for ``actions``
    (B, M), with autograd on: :class:`Sampler`'s rollout (prefill, then per frame :func:`denoise_frame` and
    :func:`commit_frame`, drawing from ``generator`` in the same order) without its ``no_grad``, so the frames
    are differentiable in the network's weights and in the context. History guidance is not supported here."""
    if sampling.history_guidance > 0:
        raise ValueError("a rollout with gradient does not support history guidance: set "
                         "sampling.history_guidance=0 or diffusion.own_rollout_grad=0")
    den = as_denoiser(model)
    cache = prefill(den, context, context_actions, sampling.stabilization, generator)
    out = []
    for i in range(actions.shape[1]):
        frame = denoise_frame(den, cache, actions[:, i], context.shape[:1] + context.shape[2:], sampling, generator,
                              context.device, clamp)
        cache = commit_frame(den, cache, frame, actions[:, i], sampling.stabilization, generator)
        out.append(frame)
    return torch.stack(out, dim=1)


def reversed_actions(actions: torch.Tensor, inverse: list[int] | tuple[int, ...] = ()) -> torch.Tensor:
    """The actions of clips (B, T) played backwards. ``actions[:, t]`` led to frame ``t``, so the reversed clip's
    frame ``s`` (frame ``T-1-s``) is reached from frame ``T-s`` by undoing ``actions[:, T-s]``: its action is
    ``inverse[actions[:, T-s]]``, -1 ("no action") where ``inverse`` gives none or is empty, and for the first frame.
    Continuous actions (B, T, A) reverse to zero vectors, their "no action"."""
    if actions.is_floating_point() or not inverse:
        return null_actions(actions)
    table = torch.tensor(list(inverse), dtype=actions.dtype, device=actions.device)
    undone = torch.where(actions < 0, -1, table[actions.clamp(min=0)])  # (B, T): undoes the step into frame t
    return torch.cat([null_actions(actions[:, :1]), undone[:, 1:].flip(1)], dim=1)


def own_rollout_batch(model, frames: torch.Tensor, actions: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor,
                      plan: tuple[int, int], sampling: SamplingConfig, generators=None, clamp=None,
                      reverse: bool = False, inverse: list[int] | tuple[int, ...] = (), grad: float = 0.0):
    """A training batch on the model's own rollout: frames ``n .. n+r-1`` generated (see
    :func:`own_rollout_history`); the first ``n + r`` frames are context labelled with the stabilization level
    (as at inference) and carry no loss; the frames after them keep their levels and are trained against the
    true frames. Returns (frames, actions, levels, mask).

    ``reverse`` (BAgger, Po et al. arXiv 2512.12080; needs ``n + r == T``): the clip is then played backwards, so
    that it starts from its ``r`` generated (drifted) frames, as context without loss, and trains the true frames
    that lead back from them; its actions are undone with ``inverse`` (:func:`reversed_actions`). ``grad`` > 0: the
    rollout is made with autograd on, that share of the gradient flowing through it (:func:`own_rollout_history`)."""
    n, r = plan
    frames = own_rollout_history(model, frames, actions, n, r, sampling, generators, clamp, grad)
    levels, mask = levels.clone(), mask.clone()
    if reverse:
        if n + r != frames.shape[1]:
            raise ValueError(f"a reversed own rollout must end the clip: n + r = {n + r}, clip {frames.shape[1]}")
        frames, actions, n = frames.flip(1), reversed_actions(actions, inverse), 0
    levels[:, :n + r] = sampling.stabilization
    mask[:, :n + r] = 0.0
    return frames, actions, levels, mask


def diffusion_loss(model, frames: torch.Tensor, actions: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor,
                   noise: torch.Tensor, cfg: DiffusionConfig, normalizer: float | None = None
                   ) -> tuple[torch.Tensor, dict]:
    """Weighted v-prediction loss, masked by the clean frames. ``normalizer`` (default: this batch's count of
    loss frames) divides the sum, so that data-parallel ranks can all divide by the global count."""
    xt = add_noise(frames, levels, noise)
    pred, cache = as_denoiser(model)(xt, levels, actions)
    err = (pred.float() - v_target(frames, noise, levels).float()).pow(2).mean(dim=(2, 3, 4))  # (B, T)
    w = loss_weight(levels, cfg.min_snr_gamma) * mask
    count = mask.sum().clamp(min=1) if normalizer is None else normalizer
    loss = (err * w).sum() / count
    stats = {"mse_v": float((err.detach() * mask).sum() / mask.sum().clamp(min=1))}
    if cfg.state_penalty > 0:  # not from the paper: pulls SSM states towards small magnitudes
        states = [lc.ssm.ssm for lc in cache.layers if lc.ssm is not None]
        if states:
            pen = torch.stack([s.pow(2).mean() for s in states]).mean()
            loss = loss + cfg.state_penalty * pen
            stats["state_penalty"] = float(pen)
    return loss, stats


def training_loss(model, frames: torch.Tensor, actions: torch.Tensor, cfg: DiffusionConfig,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Draw levels, noise and dropped actions for ``frames`` (B, T, C, H, W), then :func:`diffusion_loss`."""
    levels, mask, noise = training_noise(tuple(frames.shape), cfg, generator)
    actions = drop_actions(actions, action_dropout_mask(frames.shape[0], frames.shape[1], cfg, generator))
    dev = frames.device
    return diffusion_loss(model, frames, actions, levels.to(dev), mask.to(dev), noise.to(dev), cfg)


# ---------------------------------------------------------------------------------------------------- sampling

def randn(shape: tuple, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal noise drawn on the CPU (reproducible on any device); ``generator`` may be one generator or
    a list of one per row of the batch (then each row's draws depend only on its own generator)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        x = torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in generator])
    else:
        x = torch.randn(shape, generator=generator, dtype=dtype)
    return x.to(device)


def _model_dtype(model) -> torch.dtype:
    if isinstance(model, Denoiser):
        model = model.net
    params = getattr(model, "parameters", None)
    return next(params()).dtype if params is not None else torch.float32  # fp64 models sample in fp64


def denoise_frame(model, cache, action: torch.Tensor, shape: tuple, cfg: SamplingConfig,
                  generator: torch.Generator | None = None, device=None,
                  clamp: tuple[float, float] | None = None, guide_cache=None) -> torch.Tensor:
    """A new frame (B, C, H, W), from pure noise to clean through ``cfg.steps`` levels of ``cfg.schedule``,
    against ``cache`` (left untouched). DDIM; with ``cfg.eta > 0`` part of each step's noise is drawn afresh
    (eta = 1: ancestral sampling); every draw is scaled by ``cfg.temperature``. ``clamp``: the data's value range,
    applied to each x0 estimate; only for spaces whose range is known (pixels in [-1, 1]), never for latents.
    ``guide_cache``: the state after a history noised to ``cfg.history_guidance_level``; each step's prediction is
    then pushed away from that history-poor prediction by ``cfg.history_guidance`` (history guidance). With
    ``cfg.action_guidance > 0`` each step's prediction is also pushed away from the prediction for the null action
    (:func:`null_actions`) against the same cache (classifier-free guidance on the action). Both guidances add up,
    each measured from the plain prediction."""
    b = shape[0]
    dtype = _model_dtype(model)
    model = as_denoiser(model)
    x = randn(shape, generator, dtype, device) * cfg.temperature
    ts = sampling_grid(cfg.steps, cfg.schedule)
    null = null_actions(action, cfg.action_guidance_null) if cfg.action_guidance > 0 else None
    for i in range(cfg.steps):
        t = torch.full((b,), float(ts[i]), device=device, dtype=dtype)
        v, _ = model.step(x, t, action, cache)
        v = v_cond = v.to(dtype)
        if guide_cache is not None and cfg.history_guidance > 0:
            v_weak, _ = model.step(x, t, action, guide_cache)
            v = v + cfg.history_guidance * (v_cond - v_weak.to(dtype))
        if null is not None:
            v_null, _ = model.step(x, t, null, cache)
            v = v + cfg.action_guidance * (v_cond - v_null.to(dtype))
        x0, eps = x0_eps_from_v(x, v, t)
        if clamp is not None:
            x0 = x0.clamp(*clamp)
        a, s = (float(v) for v in alpha_sigma(ts[i]))
        a_next, s_next = (float(v) for v in alpha_sigma(ts[i + 1]))
        c = 0.0
        if cfg.eta > 0 and s_next > 0:  # DDIM's sigma_t(eta), in this schedule's alpha/sigma
            c = cfg.eta * (s_next / s) * math.sqrt(max(0.0, 1.0 - (a / a_next) ** 2))
        x = a_next * x0 + math.sqrt(max(0.0, s_next**2 - c**2)) * eps
        if c > 0:
            x = x + (c * cfg.temperature) * randn(shape, generator, dtype, device)
    return x  # at t = 0 the last step returns x0 exactly


def commit_frame(model, cache, frame: torch.Tensor, action: torch.Tensor, stabilization: float = 0.0,
                 generator: torch.Generator | None = None):
    """The cache after ``frame`` (B, C, H, W), labelled with (and noised to) the stabilization level."""
    b = frame.shape[0]
    level = torch.full((b,), float(stabilization), device=frame.device, dtype=frame.dtype)
    if stabilization > 0:
        frame = add_noise(frame, level, randn(frame.shape, generator, frame.dtype, frame.device))
    _, cache = as_denoiser(model).step(frame, level, action, cache)
    return cache


def prefill(model, context_frames: torch.Tensor, context_actions: torch.Tensor, stabilization: float = 0.0,
            generator: torch.Generator | None = None):
    """Encode the context clip (B, N, C, H, W) once, in parallel, labelled with the stabilization level; returns
    the cache after it. Autograd follows the caller, as in :func:`denoise_frame` and :func:`commit_frame`
    (:meth:`Sampler.prefill` runs it without gradient, :func:`unrolled_rollout` with it)."""
    b, n = context_frames.shape[:2]
    x = context_frames.to(_model_dtype(model))
    levels = torch.full((b, n), float(stabilization), device=x.device, dtype=x.dtype)
    if stabilization > 0:
        x = add_noise(x, levels, randn(x.shape, generator, x.dtype, x.device))
    _, cache = as_denoiser(model)(x, levels, context_actions)
    return cache


class GuidedCache(NamedTuple):
    """The sampler's state under history guidance: the state after the history as it is (``main``) and after the
    same history noised to the guidance level (``weak``). Twice the fixed size of one state."""

    main: Any
    weak: Any

    @property
    def frames(self) -> int:
        return self.main.frames

    def nbytes(self) -> int:
        return self.main.nbytes() + self.weak.nbytes()


class Sampler:
    """Generates frames with a trained world model: the one place where sampling settings and the frame codec
    meet the model.

        sampler = Sampler(model, SamplingConfig(steps=4, stabilization=0.3), codec)
        cache = sampler.prefill(context_frames, context_actions)       # pixels (B, N, C, H, W)
        frame, cache = sampler.step(cache, action)                     # pixels (B, C, H, W)
        video = sampler.rollout(context_frames, context_actions, future_actions)   # (B, M, C, H, W)

    Frames go in and come out as pixels in [-1, 1]; ``codec`` (a PixelCodec or LatentCodec, see
    :func:`lssvwm.checkpoint.frame_codec`) maps them to the space the model works in. Without a codec the
    model's own space is used as is, with ``clamp`` its value range where it has one (pixels: (-1, 1)). The
    state (``cache``) is fixed-size and never mutated: ``step`` returns the cache after committing the new frame.
    Random draws come from ``self.generator`` (seeded by ``cfg.seed``; ``reseed`` starts a new stream).

    With ``cfg.history_guidance > 0`` (history guidance, after DFoT) the state is a :class:`GuidedCache`: a
    second state sees the same frames noised to ``cfg.history_guidance_level``, and each denoising step
    extrapolates from that history-poor prediction towards the one with the full history.
    """

    def __init__(self, model, cfg: SamplingConfig | None = None, codec=None, device=None,
                 clamp: tuple[float, float] | None = None, compile: bool = False):
        self.model, self.cfg, self.codec = model, cfg or SamplingConfig(), codec
        self.cfg.validate()
        params = getattr(model, "parameters", None)
        self.device = torch.device(device) if device is not None else (
            next(params()).device if params is not None else torch.device("cpu"))
        # compile: the per-frame step (every denoising step and the commit) through torch.compile; prefill stays eager
        if compile:
            check_compiler(self.device.type, "Sampler(compile=True)")
        self.denoiser = compiled_step(model) if compile else as_denoiser(model)
        # pixels: (-1, 1); latents: None (unbounded)
        self.clamp = getattr(codec, "value_range", None) if codec is not None else clamp
        self.num_actions = getattr(getattr(model, "cfg", None), "num_actions", None)
        self.action_dim = getattr(getattr(model, "cfg", None), "action_dim", 0)
        if (self.cfg.action_guidance > 0 and self.num_actions is not None and not self.action_dim
                and self.cfg.action_guidance_null >= self.num_actions):
            raise ValueError(f"sampling.action_guidance_null must be -1 (no action) or an action id in [0, "
                             f"{self.num_actions}) for this model, got {self.cfg.action_guidance_null}")
        self.reseed(self.cfg.seed)

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(self.device)
        return frames if self.codec is None else self.codec.encode(frames)

    def _decode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames if self.codec is None else self.codec.decode(frames)

    def _actions(self, actions: torch.Tensor) -> torch.Tensor:
        if self.num_actions is not None and not self.action_dim:
            check_action_ids(actions, self.num_actions)
        return actions.to(self.device)

    @property
    def guided(self) -> bool:
        return self.cfg.history_guidance > 0

    @torch.no_grad()
    def prefill(self, context_frames: torch.Tensor, context_actions: torch.Tensor):
        """The cache after a context clip: frames (B, N, C, H, W) in [-1, 1], actions (B, N) or (B, N, A)."""
        frames, actions = self._encode(context_frames), self._actions(context_actions)
        cache = prefill(self.model, frames, actions, self.cfg.stabilization, self.generator)
        if not self.guided:
            return cache
        return GuidedCache(cache, prefill(self.model, frames, actions, self.cfg.history_guidance_level,
                                          self.generator))

    @torch.no_grad()
    def step(self, cache, action: torch.Tensor, teacher_frame: torch.Tensor | None = None):
        """Generate the frame that ``action`` (B,) or (B, A) leads to; returns it (pixels (B, C, H, W)) and the
        cache after committing it. ``teacher_frame`` (pixels): commit this true frame instead (teacher forcing)."""
        action = self._actions(action)
        guided = isinstance(cache, GuidedCache)
        if self.guided != guided:
            raise ValueError(f"a {'guided' if guided else 'plain'} cache given to a sampler with history_guidance="
                             f"{self.cfg.history_guidance}: use the cache this sampler's prefill returned")
        main, weak = (cache.main, cache.weak) if guided else (cache, None)
        shape = (action.shape[0],) + self.frame_shape
        frame = denoise_frame(self.denoiser, main, action, shape, self.cfg, self.generator, self.device,
                              self.clamp, guide_cache=weak)
        committed = frame if teacher_frame is None else self._encode(teacher_frame).to(frame)
        main = commit_frame(self.denoiser, main, committed, action, self.cfg.stabilization, self.generator)
        if not guided:
            return self._decode(frame), main
        weak = commit_frame(self.denoiser, weak, committed, action, self.cfg.history_guidance_level,
                            self.generator)
        return self._decode(frame), GuidedCache(main, weak)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the frames the model works on (latents for a latent model)."""
        m = self.model.cfg
        return m.channels, m.frame_size, m.frame_size

    @torch.no_grad()
    def rollout(self, context_frames: torch.Tensor, context_actions: torch.Tensor, future_actions: torch.Tensor,
                teacher_frames: torch.Tensor | None = None, on_frame: Callable[[int, torch.Tensor], None] | None = None,
                keep: bool = True, progress: bool = False, to_cpu: bool = True) -> torch.Tensor | None:
        """Generate ``M = future_actions.shape[1]`` frames after a context of N frames (pixels, (B, N, C, H, W)).

        The state is fixed-size, so memory does not grow with M (with ``keep=False`` not even the outputs are
        kept; use ``on_frame(i, frame)`` to stream them). Returns (B, M, C, H, W) pixels when ``keep``, on the CPU
        unless ``to_cpu=False``.

        ``teacher_frames`` (B, M, C, H, W): commit these true frames instead of the generated ones, so every frame
        is a one-step-ahead prediction from the true history (teacher forcing: how well the model predicts, apart
        from how its own errors compound).
        """
        from tqdm import tqdm

        future_actions = self._actions(future_actions)
        cache = self.prefill(context_frames, context_actions)
        out = []
        for i in tqdm(range(future_actions.shape[1]), desc="rollout", unit="frame", disable=not progress):
            frame, cache = self.step(cache, future_actions[:, i],
                                     None if teacher_frames is None else teacher_frames[:, i])
            if on_frame is not None:
                on_frame(i, frame)
            if keep:
                out.append(frame.cpu() if to_cpu else frame)
        return torch.stack(out, dim=1) if keep else None

