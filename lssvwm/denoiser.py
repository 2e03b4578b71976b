"""The denoiser: the world-model network with the preconditioning around it that makes its output a
v-prediction (as DIAMOND's ``Denoiser`` wraps its inner model). Training and sampling call this, never the
network directly; the network (:mod:`lssvwm.models.world_model`) knows no noise schedule.

``model.prediction`` says what the network's output stands for:

- ``"v"``: the network's output is the v-prediction itself (DFoT).
- ``"edm"``: Karras et al.'s preconditioning, written for this variance-preserving schedule (alpha, sigma from
  :func:`lssvwm.schedule.alpha_sigma`): the network sees ``c_in x`` with ``c_in = 1 / sqrt(sigma^2 + (alpha
  sigma_data)^2)`` (unit variance at every level) and its output ``F`` gives ``x0 = c_skip x - c_out F`` with
  ``c_skip = sigma_data^2 alpha / norm``, ``c_out = sigma sigma_data / sqrt(norm)``; the denoiser returns the v
  that this x0 implies (``x0 = alpha x - sigma v``). With ``sigma_data = 1`` this is exactly ``"v"``.
- ``"x0"``: the network's output is the clean frame x0 itself (x-prediction: Li & He 2025, "Back to Basics: Let
  Denoising Generative Models Denoise"), and the denoiser returns the v it implies, ``v = (alpha x - x0) /
  sigma``, with sigma floored at :data:`X0_SIGMA_FLOOR` (the paper's clip: near t = 0 the division would blow
  the network's errors up without bound). The v-loss on that v is the x0 error times 1 / sigma^2, the same loss
  as v-prediction's for the same x0; only what the network has to output changes: a clean frame, never noise.
"""
from __future__ import annotations

import torch

from .schedule import alpha_sigma

X0_SIGMA_FLOOR = 0.05  # "x0" prediction: the least sigma that v = (alpha x - x0) / sigma divides by


def network_config(net):
    """The ModelConfig of a network, also through a DistributedDataParallel wrapper (None for a network
    without one, such as a test double: it is taken as a v-prediction network)."""
    return getattr(getattr(net, "module", net), "cfg", None)


class Denoiser:
    """``Denoiser(net)(x, levels, actions, cache)`` -> (v-prediction, cache after these frames), with the shapes
    and caches of :meth:`WorldModel.forward`; :meth:`step` for one frame. ``net`` may be wrapped in DDP."""

    def __init__(self, net):
        self.net = net
        cfg = network_config(net)
        self.prediction = getattr(cfg, "prediction", "v")
        self.sigma_data = float(getattr(cfg, "sigma_data", 1.0))

    def __call__(self, x: torch.Tensor, levels: torch.Tensor, actions: torch.Tensor, cache=None):
        """x (B, T, C, H, W) noisy frames, levels (B, T) in [0, 1], actions (B, T) or (B, T, A)."""
        if self.prediction == "v":
            return self.net(x, levels, actions, cache)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        a, s = alpha_sigma(levels.to(dtype)[:, :, None, None, None])  # (B, T, 1, 1, 1)
        xr = x.to(dtype)
        if self.prediction == "x0":
            x0, cache = self.net(x, levels, actions, cache)
            x0, floor = x0.to(dtype), X0_SIGMA_FLOOR
        else:  # "edm"
            sd = self.sigma_data
            norm = s**2 + (a * sd) ** 2
            out, cache = self.net(x / torch.sqrt(norm).to(x.dtype), levels, actions, cache)  # c_in x
            # F's sign makes sigma_data = 1 exactly v-prediction (F = v)
            x0, floor = (sd**2 * a / norm) * xr - (s * sd / torch.sqrt(norm)) * out.to(dtype), 1e-4
        return (a * xr - x0) / s.clamp(min=floor), cache  # the v this clean-frame estimate implies

    def step(self, frame: torch.Tensor, level: torch.Tensor, action: torch.Tensor, cache):
        """One frame: frame (B, C, H, W), level (B,), action (B,) or (B, A) -> (v, cache after this frame)."""
        if self.prediction == "v":
            return self.net.step(frame, level, action, cache)
        pred, cache = self(frame[:, None], level[:, None], action[:, None], cache)
        return pred[:, 0], cache


def as_denoiser(model) -> Denoiser:
    """``model`` itself when it is a Denoiser, else the denoiser around that network."""
    return model if isinstance(model, Denoiser) else Denoiser(model)


def compiled_step(model) -> Denoiser:
    """A denoiser of ``model``'s network whose one-frame :meth:`Denoiser.step` runs through ``torch.compile``
    (dynamic shapes: one compilation serves every frame index, and every batch size and cache length above 1; a
    size of 1 is compiled apart). The elementwise work between the matmuls is fused into generated kernels, which
    pays at batch 1, where a frame is thousands of small ops. The first call compiles (a minute or more on a CPU); the numbers match the eager step to float rounding."""
    d = Denoiser(model.net if isinstance(model, Denoiser) else model)
    d.step = torch.compile(d.step, dynamic=True)
    return d
