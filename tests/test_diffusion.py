import math

import pytest
import torch

from lssvwm.config import DiffusionConfig, model_preset
from lssvwm.diffusion import (add_noise, alpha_sigma, loss_weight, rollout, sample_frame, training_levels,
                              training_loss, v_target, x0_eps_from_v)
from lssvwm.models.world_model import WorldModel


def test_v_parameterisation_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 3, 8, 8, generator=g), torch.randn(2, 3, 3, 8, 8, generator=g)
    t = torch.rand(2, 3, generator=g) * 0.98 + 0.01
    xt = add_noise(x0, t, eps)
    x0_hat, eps_hat = x0_eps_from_v(xt, v_target(x0, eps, t), t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-5, atol=1e-5)
    a, s = alpha_sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t))


def test_loss_weight_truncation():
    t = torch.tensor([0.01, 0.2, 0.5, 0.99])
    w = loss_weight(t, 5.0)
    a, s = alpha_sigma(t)
    snr1 = 1 / s**2
    torch.testing.assert_close(w, torch.minimum(snr1, torch.tensor(5.0)) / snr1)
    assert w[-1] > 0.99 and w[0] < 0.01


class Oracle:
    """A perfect denoiser for a known clean frame: v = (alpha * x_t - x0) / sigma."""

    def __init__(self, x0):
        self.x0, self.calls = x0, []

    def step(self, x, level, action, cache):
        a, s = alpha_sigma(level)
        a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
        self.calls.append(float(level[0]))
        v = (a * x - self.x0) / s.clamp(min=1e-12)
        return v, (cache or 0) + 1


def test_sampler_with_oracle_returns_clean_frame():
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    oracle = Oracle(x0)
    frame, cache = sample_frame(oracle, 0, torch.zeros(2, dtype=torch.long), x0.shape, steps=5,
                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frame, x0, rtol=1e-5, atol=1e-5)
    assert cache == 1  # only the commit advanced the cache; the 5 denoising calls did not
    assert oracle.calls[:5] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2], abs=1e-6)  # DDIM levels, noisy to clean
    assert oracle.calls[5] == 0.0  # commit with level 0 (no stabilization noise)


def test_long_context_prefix_is_clean_and_masked():
    cfg = DiffusionConfig(long_context_prob=1.0)
    levels, mask = training_levels(64, 10, cfg, torch.Generator().manual_seed(0))
    prefix = (mask == 0).sum(1)
    assert ((prefix >= 1) & (prefix <= 9)).all() and len(set(prefix.tolist())) > 4
    for i in range(64):
        p = int(prefix[i])
        assert (levels[i, :p] == 0).all() and (mask[i, :p] == 0).all() and (mask[i, p:] == 1).all()
    lv, m = training_levels(4000, 10, DiffusionConfig(long_context_prob=0.3), torch.Generator().manual_seed(1))
    frac = ((m == 0).any(1)).float().mean()
    assert abs(frac - 0.3) < 0.03
    _, m0 = training_levels(100, 10, DiffusionConfig(long_context_prob=0.0), torch.Generator().manual_seed(1))
    assert (m0 == 1).all()


class Fixed(torch.nn.Module):
    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x, levels, actions, cache=None):
        return self.pred, None


def test_no_loss_on_clean_prefix():
    cfg = DiffusionConfig(long_context_prob=1.0)
    frames = torch.randn(3, 6, 3, 4, 4)
    levels, mask = training_levels(3, 6, cfg, torch.Generator().manual_seed(7))
    pred = torch.randn(3, 6, 3, 4, 4)
    l1, _ = training_loss(Fixed(pred), frames, None, cfg, torch.Generator().manual_seed(7))
    pred2 = pred.clone()
    pred2[mask == 0] += 100.0  # garbage predictions on the clean prefix only
    l2, _ = training_loss(Fixed(pred2), frames, None, cfg, torch.Generator().manual_seed(7))
    assert l1 == l2
    pred3 = pred.clone()
    pred3[mask == 1] += 1.0
    l3, _ = training_loss(Fixed(pred3), frames, None, cfg, torch.Generator().manual_seed(7))
    assert l3 != l1


def test_loss_decreases_when_overfitting_one_clip():
    from lssvwm.data.episodes import action_indices, generate_episode

    torch.manual_seed(0)
    model = WorldModel(model_preset("tiny"))
    ep = generate_episode(seed=0, steps=5, resolution=16)
    frames = torch.from_numpy(ep["image"]).permute(0, 3, 1, 2).float()[None] / 127.5 - 1  # (1, 6, 3, 16, 16)
    actions = torch.from_numpy(action_indices(ep["action"]))[None]
    batch = frames.expand(8, -1, -1, -1, -1), actions.expand(8, -1)
    cfg = DiffusionConfig()

    def eval_loss():  # the same noise and levels every time
        with torch.no_grad():
            return training_loss(model, *batch, cfg, torch.Generator().manual_seed(12345))[0].item()

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for i in range(150):
        loss, _ = training_loss(model, *batch, cfg, torch.Generator().manual_seed(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


def test_rollout_state_is_constant_size():
    torch.manual_seed(0)
    model = WorldModel(model_preset("tiny")).eval()
    sizes = []
    ctx = torch.rand(1, 4, 3, 16, 16) * 2 - 1
    out = rollout(model, ctx, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 30, dtype=torch.long), steps=2,
                  on_frame=lambda i, f: None, keep=True)
    assert out.shape == (1, 30, 3, 16, 16)
    from lssvwm.diffusion import prefill

    cache = prefill(model, ctx, torch.zeros(1, 4, dtype=torch.long))
    for i in range(40):
        _, cache = sample_frame(model, cache, torch.zeros(1, dtype=torch.long), (1, 3, 16, 16), steps=1)
        sizes.append(cache.nbytes())
    assert cache.frames == 44 and len(set(sizes)) == 1
    assert math.isfinite(out.abs().max().item())


def test_teacher_forced_rollout_is_one_step_ahead_prediction():
    """With teacher frames, frame i is predicted from the true context + true frames 0..i-1, exactly as a fresh
    rollout from that longer context would predict it; without them, the model's own frames are committed."""
    from lssvwm.diffusion import denoise_frame, prefill

    torch.manual_seed(0)
    model = WorldModel(model_preset("tiny")).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    video = torch.rand(1, 8, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    acts = torch.randint(0, 6, (1, 8), generator=g)
    tf = rollout(model, video[:, :4], acts[:, :4], acts[:, 4:], steps=2, teacher_frames=video[:, 4:],
                 generator=torch.Generator().manual_seed(7))
    free = rollout(model, video[:, :4], acts[:, :4], acts[:, 4:], steps=2, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    for i in range(4):
        cache = prefill(model, video[:, :4 + i], acts[:, :4 + i])
        ref = denoise_frame(model, cache, acts[:, 4 + i], (1, 3, 16, 16), 2, gen).to(torch.float64)
        torch.testing.assert_close(tf[:, i].double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tf[:, 0], free[:, 0])  # the first frame has the same history either way
    assert (tf[:, 1:] - free[:, 1:]).abs().max() > 1e-3
