"""Frame metrics in torch: PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
K2 0.03), for frames in [-1, 1] shaped (..., C, H, W); both computed per frame on the [0, 1] scale."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB (max value 1 on the [0, 1] scale); shape = leading axes."""
    p, t = (pred.float() + 1) / 2, (target.float() + 1) / 2
    mse = (p - t).pow(2).mean(dim=(-3, -2, -1)).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-frame mean SSIM over channels and valid (unpadded) window positions."""
    lead = pred.shape[:-3]
    c, h, w = pred.shape[-3:]
    x = ((pred.double() + 1) / 2).reshape(-1, c, h, w)
    y = ((target.double() + 1) / 2).reshape(-1, c, h, w)
    window = min(window, h, w)
    g = _gaussian(window, sigma).to(x.device)
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    def blur(z):
        return F.conv2d(z, k, groups=c)
    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(lead).float()
