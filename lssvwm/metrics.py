"""Frame metrics in torch: PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
K2 0.03), for frames in [-1, 1] shaped (..., C, H, W); both computed per frame on the [0, 1] scale. And the
best-context-frame oracle that the follow benchmark and the memory tasks score as a baseline."""
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


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n - len(g) + 1, n): row i holds ``g`` at columns i .. i + len(g) - 1, so ``band @ z`` is the valid 1-D
    correlation of z's rows with ``g``."""
    k = g.shape[0]
    band = torch.zeros(n - k + 1, n, dtype=g.dtype, device=g.device)
    for i in range(n - k + 1):
        band[i, i:i + k] = g
    return band


def _ssim(pred: torch.Tensor, target: torch.Tensor, window: int, sigma: float, make_blur) -> torch.Tensor:
    """Per-frame mean SSIM; ``make_blur(g, c, h, w)`` returns the Gaussian blur (valid positions) of (N, C, H, W)
    frames for the 1-D window ``g``."""
    lead = pred.shape[:-3]
    c, h, w = pred.shape[-3:]
    x = ((pred.double() + 1) / 2).reshape(-1, c, h, w)
    y = ((target.double() + 1) / 2).reshape(-1, c, h, w)
    blur = make_blur(_gaussian(min(window, h, w), sigma).to(x.device), c, h, w)
    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(lead).float()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-frame mean SSIM over channels and valid (unpadded) window positions. The Gaussian window is separable,
    so each blur is two fp64 matmuls with band matrices (:func:`ssim_reference`: the same as a 2-D convolution)."""
    def band_blur(g, c, h, w):
        rows, cols = _band(h, g), _band(w, g).T  # (h', h), (w, w')
        return lambda z: rows @ z @ cols  # (N, C, H, W) -> (N, C, H', W')

    return _ssim(pred, target, window, sigma, band_blur)


def ssim_reference(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """:func:`ssim` with the blur as a depthwise 2-D convolution with the Gaussian window (slow on a CPU in fp64:
    im2col buffers per frame)."""
    def conv_blur(g, c, h, w):
        k = (g[:, None] * g[None, :]).expand(c, 1, g.shape[0], g.shape[0])
        return lambda z: F.conv2d(z, k, groups=c)

    return _ssim(pred, target, window, sigma, conv_blur)


def best_context_frames(context: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(W, M, C, H, W): for each true frame, the context frame (of (W, N, C, H, W)) with the highest SSIM to it,
    picked with the truth (an oracle baseline: retrieval from the context, no new view rendered)."""
    rows = torch.arange(context.shape[0])
    picks = [context[rows, ssim(context, truth[:, i:i + 1].expand_as(context)).argmax(1)]
             for i in range(truth.shape[1])]
    return torch.stack(picks, 1)
