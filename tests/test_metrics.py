import math

import pytest
import torch

from lssvwm.metrics import psnr, ssim


def test_psnr_known_value():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full((2, 3, 8, 8), 0.2)  # 0.1 on the [0, 1] scale -> MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(b, a), torch.full((2,), 20.0))


def test_ssim_identity_and_constant_images():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(4))
    # constant images c1, c2 on [0, 1]: variances vanish, SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1)
    c1, c2, C1 = 0.3, 0.7, 0.01**2
    a = torch.full((1, 3, 16, 16), c1 * 2 - 1)
    b = torch.full((1, 3, 16, 16), c2 * 2 - 1)
    expected = (2 * c1 * c2 + C1) / (c1**2 + c2**2 + C1)
    assert math.isclose(float(ssim(a, b)), expected, rel_tol=1e-5)


def test_ssim_decreases_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    s = [float(ssim(x + sigma * torch.randn(x.shape, generator=g), x)) for sigma in (0.05, 0.2, 0.6)]
    assert s[0] > s[1] > s[2]


@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (2, 4, 3, 16, 24), (3, 1, 7, 9), (1, 3, 64, 64)])
def test_ssim_equals_its_convolution_reference(shape):
    """The band-matrix SSIM (two matmuls per blur) is the 2-D Gaussian convolution's, window clipped to small
    frames, any leading axes, non-square frames."""
    from lssvwm.metrics import ssim_reference

    g = torch.Generator().manual_seed(0)
    a = torch.rand(shape, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(shape, generator=g)).clamp(-1, 1)
    torch.testing.assert_close(ssim(a, b), ssim_reference(a, b), rtol=1e-6, atol=1e-6)
    assert ssim(a, b).shape == shape[:-3]
