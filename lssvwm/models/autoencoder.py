"""A small convolutional KL autoencoder for latent world modelling, and the frame codec the world model uses.

The paper (like DFoT and Oasis) runs the world model on VAE latents, not pixels. This is a compact version of
the Stable-Diffusion-style KL autoencoder: residual conv stages with stride-2 downsampling to ``downsample``x
smaller latents of ``latent_channels`` channels, a diagonal Gaussian posterior (mean, log-variance) with a small
KL weight, and a mirrored decoder with nearest upsampling. The loss is L1 + MSE on pixels + ``kl_weight`` * KL;
there is no perceptual or adversarial term (no network weights are downloaded), so reconstructions are a little
soft.

``latent_scale`` (a buffer saved with the weights) is set after training to 1 / std of the latent means on
training frames, so the world model sees latents of unit scale, as its noise schedule assumes.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..config import AutoencoderConfig


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c // 4) if c >= 8 else 1, c)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.n1, self.c1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.n2, self.c2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


def _widths(cfg: AutoencoderConfig) -> list[int]:
    n = int(math.log2(cfg.downsample))
    return [cfg.width * min(2 ** i, 4) for i in range(n + 1)]  # one width per resolution level


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        w = _widths(cfg)
        self.stem = nn.Conv2d(cfg.channels, w[0], 3, padding=1)
        layers = []
        for i in range(len(w) - 1):
            layers += [ResBlock(w[i], w[i]) for _ in range(cfg.blocks)]
            layers.append(nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1))
        layers += [ResBlock(w[-1], w[-1]) for _ in range(cfg.blocks)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x):  # (N, C, H, W) -> (N, 2c, H/f, W/f)
        return self.out(self.body(self.stem(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        w = _widths(cfg)[::-1]
        self.stem = nn.Conv2d(cfg.latent_channels, w[0], 3, padding=1)
        layers = []
        for i in range(len(w) - 1):
            layers += [ResBlock(w[i], w[i]) for _ in range(cfg.blocks)]
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[i], w[i + 1], 3, padding=1)]
        layers += [ResBlock(w[-1], w[-1]) for _ in range(cfg.blocks)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], cfg.channels, 3, padding=1))

    def forward(self, z):  # (N, c, h, w) -> (N, C, H, W)
        return self.out(self.body(self.stem(z)))


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.register_buffer("latent_scale", torch.ones(()))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) in [-1, 1] -> mean, log-variance, each (N, c, H/f, W/f), unscaled."""
        mean, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: returns (reconstruction, KL per element averaged)."""
        mean, logvar = self.posterior(x)
        noise = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * noise
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return self.decoder(z), kl

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        recon, kl = self(x, generator)
        recon = recon.float()
        l1, mse = (recon - x).abs().mean(), (recon - x).pow(2).mean()
        loss = l1 + mse + self.cfg.kl_weight * kl
        return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}

    # The world model's view: scaled latents, deterministic (posterior mean).
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) pixels in [-1, 1] -> (..., c, H/f, W/f) scaled latents."""
        lead = frames.shape[:-3]
        mean, _ = self.posterior(frames.reshape(-1, *frames.shape[-3:]))
        return (mean * self.latent_scale).reshape(*lead, *mean.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., c, h, w) scaled latents -> (..., C, H, W) pixels, clamped to [-1, 1]."""
        lead = latents.shape[:-3]
        z = latents.reshape(-1, *latents.shape[-3:]).float() / self.latent_scale
        return self.decoder(z).float().clamp(-1, 1).reshape(*lead, self.cfg.channels, *self._pixels(z))

    def _pixels(self, z) -> tuple[int, int]:
        f = self.cfg.downsample
        return z.shape[-2] * f, z.shape[-1] * f

    @torch.no_grad()
    def calibrate(self, frames: torch.Tensor) -> float:
        """Set ``latent_scale`` = 1 / std of the unscaled latent means of ``frames`` (N, C, H, W); returns it."""
        mean, _ = self.posterior(frames)
        scale = 1.0 / float(mean.std().clamp(min=1e-6))
        self.latent_scale.fill_(scale)
        return scale


class PixelCodec:
    """The identity codec: the world model works on pixels."""

    value_range = (-1.0, 1.0)  # known: the sampler may clamp its x0 estimates to it

    def encode(self, frames):
        return frames

    def decode(self, frames):
        return frames

    def pixel_shape(self, model_cfg) -> tuple[int, int, int]:
        """(C, H, W) of the frames a model with this ``ModelConfig`` shows."""
        return model_cfg.channels, model_cfg.frame_size, model_cfg.frame_size


class LatentCodec:
    """Frames <-> latents of a frozen autoencoder, in chunks (so long videos fit in memory)."""

    value_range = None  # latents are unbounded (unit std after calibration, with tails well past 1): never clamp

    def __init__(self, ae: Autoencoder, chunk: int = 64):
        self.ae, self.chunk = ae.eval().requires_grad_(False), chunk

    def pixel_shape(self, model_cfg) -> tuple[int, int, int]:
        """(C, H, W) of the decoded frames of a model whose frames are this autoencoder's latents."""
        size = model_cfg.frame_size * self.ae.cfg.downsample
        return self.ae.cfg.channels, size, size

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W) or (T, C, H, W)
        flat = rearrange(frames, "... c h w -> (...) c h w")
        z = torch.cat([self.ae.encode(x) for x in flat.split(self.chunk)])
        return z.reshape(*frames.shape[:-3], *z.shape[1:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        flat = rearrange(latents, "... c h w -> (...) c h w")
        x = torch.cat([self.ae.decode(z) for z in flat.split(self.chunk)])
        return x.reshape(*latents.shape[:-3], *x.shape[1:])
