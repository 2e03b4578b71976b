import dataclasses
import math
import types

import pytest
import torch

from lssvwm.config import ConfigError, DiffusionConfig, SamplingConfig, model_preset
from lssvwm.diffusion import (Sampler, add_noise, alpha_sigma, commit_frame, denoise_frame, loss_weight, prefill,
                              sampling_grid, shift_levels, training_levels, training_loss, v_target, x0_eps_from_v)
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


class Oracle(torch.nn.Module):
    """A perfect denoiser for a known clean frame: v = (alpha * x_t - x0) / sigma. Its cache counts commits."""

    def __init__(self, x0, dtype=torch.float32):
        super().__init__()
        self.x0, self.calls = x0.to(dtype), []
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=dtype))  # sets the sampling dtype
        self.cfg = types.SimpleNamespace(channels=x0.shape[1], frame_size=x0.shape[-1], num_actions=6, action_dim=0)

    def step(self, x, level, action, cache):
        a, s = alpha_sigma(level)
        a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
        self.calls.append(float(level[0]))
        v = (a * x - self.x0) / s.clamp(min=1e-12)
        return v, (cache or 0) + 1


class IdentityLatents:
    """A codec whose space is unbounded (like an autoencoder's calibrated latents)."""

    value_range = None

    def encode(self, x):
        return x

    def decode(self, z):
        return z


def test_sampler_with_oracle_returns_clean_frame():
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    oracle = Oracle(x0)
    frame = denoise_frame(oracle, 0, torch.zeros(2, dtype=torch.long), x0.shape, SamplingConfig(steps=5),
                          torch.Generator().manual_seed(0))
    cache = commit_frame(oracle, 0, frame, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(frame, x0, rtol=1e-5, atol=1e-5)
    assert cache == 1  # only the commit advanced the cache; the 5 denoising calls did not
    assert oracle.calls[:5] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2], abs=1e-6)  # DDIM levels, noisy to clean
    assert oracle.calls[5] == 0.0  # commit with level 0 (no stabilization noise)


@pytest.mark.parametrize("schedule", ["uniform", "logsnr", "edm"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_oracle_returns_unit_std_latents_exactly(schedule, eta):
    """Latents of a calibrated autoencoder have unit std, so many exceed 1 (max ~4.6 seen on maze frames). The
    sampler must not clamp them: with a perfect denoiser every grid and eta returns them to float precision."""
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(2, 4, 8, 8, generator=g) * 1.5
    assert z0.abs().max() > 2
    sampler = Sampler(Oracle(z0), SamplingConfig(steps=4, schedule=schedule, eta=eta), IdentityLatents())
    z, cache = sampler.step(0, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(z, z0, rtol=1e-5, atol=1e-5)
    assert cache == 1
    # pixels: the codec's range is known, so x0 estimates are clamped to [-1, 1]; the result is still exact
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    from lssvwm.models.autoencoder import PixelCodec

    frame, _ = Sampler(Oracle(x0), SamplingConfig(steps=4, schedule=schedule, eta=eta), PixelCodec()).step(
        0, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(frame, x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_temperature_scales_every_draw_and_leaves_a_perfect_denoiser_exact(eta):
    """sampling.temperature scales the noise the sampler draws: the first model call sees the plain run's starting
    noise times T, and with eta > 0 each step's fresh noise is scaled too; a perfect denoiser still returns its
    frame at any temperature."""
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1

    class Spy(Oracle):
        def step(self, x, level, action, cache):
            self.seen = getattr(self, "seen", []) + [x.clone()]
            return super().step(x, level, action, cache)

    def sample(temperature, model=None):
        model = model or Spy(x0)
        cfg = SamplingConfig(steps=4, schedule="edm", eta=eta, temperature=temperature)
        frame = denoise_frame(model, 0, torch.zeros(2, dtype=torch.long), x0.shape, cfg,
                              torch.Generator().manual_seed(0))
        return frame, model

    plain, spy1 = sample(1.0)
    cold, spy07 = sample(0.7)
    torch.testing.assert_close(spy07.seen[0], 0.7 * spy1.seen[0])
    torch.testing.assert_close(plain, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cold, x0, rtol=1e-5, atol=1e-5)

    # a denoiser that predicts x0 = 0 whatever it sees: every step's input is then made of the sampler's own
    # draws only, so with every draw scaled each input is T times the plain run's (with eta > 0 a fresh draw left
    # unscaled would break this from the second step on)
    _, blind1 = sample(1.0, Spy(torch.zeros_like(x0)))
    _, blind07 = sample(0.7, Spy(torch.zeros_like(x0)))
    assert len(blind07.seen) == 4
    for seen07, seen1 in zip(blind07.seen, blind1.seen):
        assert seen1.abs().max() > 1e-3  # the last EDM level is 0.002: small, but far above the tolerance
        torch.testing.assert_close(seen07, 0.7 * seen1)


def test_clamping_would_break_latents():
    """What the sampler used to do for every model: clamp x0 to [-1, 1]. On latents that is wrong by far more
    than float error, which is why only a codec with a known range gets a clamp."""
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 1.5
    z = denoise_frame(Oracle(z0), 0, torch.zeros(2, dtype=torch.long), z0.shape, SamplingConfig(steps=8),
                      torch.Generator().manual_seed(0), clamp=(-1.0, 1.0))
    assert (z - z0).abs().max() > 0.5


def test_fp64_models_sample_in_fp64():
    x0 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sampler = Sampler(Oracle(x0, torch.float64), SamplingConfig(steps=8, schedule="logsnr", eta=0.5))
    frame, _ = sampler.step(0, torch.zeros(2, dtype=torch.long))
    assert frame.dtype == torch.float64
    assert (frame - x0).abs().max() < 1e-12


@pytest.mark.parametrize("schedule", ["uniform", "logsnr", "edm"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_sampling_grids(schedule, steps):
    ts = sampling_grid(steps, schedule)
    assert ts.shape == (steps + 1,) and ts[0] == 1.0 and ts[-1] == 0.0
    assert (ts[1:] < ts[:-1]).all()  # strictly from noisy to clean


def test_sampling_grid_shapes_differ():
    u, lg, e = (sampling_grid(4, s) for s in ("uniform", "logsnr", "edm"))
    assert u.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert lg[1] > u[1] and lg[3] < u[3]  # log-SNR spacing reaches further towards both ends
    assert e[3] < 0.01  # Karras: the last steps sit at very low noise


def test_sampler_refuses_bad_actions_and_settings():
    from lssvwm.config import ConfigError

    model = WorldModel(model_preset("tiny")).eval()
    sampler = Sampler(model, SamplingConfig(steps=1))
    cache = sampler.prefill(torch.zeros(1, 2, 3, 16, 16), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"action ids must be in \[-1, 6\)"):
        sampler.step(cache, torch.tensor([6]))
    with pytest.raises(ValueError, match="integer ids"):
        sampler.step(cache, torch.tensor([1.0]))
    for bad in (dict(steps=0), dict(stabilization=1.0), dict(stabilization=float("nan")), dict(schedule="x"),
                dict(eta=2.0), dict(history_guidance=-1.0), dict(history_guidance=float("inf")),
                dict(history_guidance_level=0.0), dict(history_guidance_level=1.5)):
        with pytest.raises(ConfigError):
            SamplingConfig(steps=1).replace(**bad)


def test_mamba2_empty_input_returns_empty():
    from lssvwm.models.ssm import Mamba2

    layer = Mamba2(16, d_state=8, headdim=8)
    y, state = layer(torch.zeros(2, 0, 16))
    assert y.shape == (2, 0, 16)
    y1, s1 = layer(torch.randn(2, 5, 16))
    y2, s2 = layer(torch.zeros(2, 0, 16), s1)
    assert s2 is s1 or all(torch.equal(a, b) for a, b in zip(s2, s1))


def test_action_and_level_embeddings_start_at_the_same_scale():
    """DiT's init: neither the noise level nor the action dominates the adaLN input at the start."""
    torch.manual_seed(0)
    for preset in ("tiny", "small"):
        model = WorldModel(model_preset(preset))
        levels = torch.rand(4, 8)
        actions = torch.randint(0, 6, (4, 8))
        cond = model.cond
        from lssvwm.models.world_model import timestep_embedding

        with torch.no_grad():
            lv = cond.level_mlp(timestep_embedding(levels, cond.freq_dim)).pow(2).mean().sqrt()
            ac = cond.action(actions).pow(2).mean().sqrt()
        assert 0.1 < float(lv / ac) < 10, (preset, float(lv), float(ac))


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
    # context labelled with the stabilization level instead of clean: same frames chosen, same mask
    lv3, m3 = training_levels(64, 10, DiffusionConfig(long_context_prob=1.0, context_level=0.3),
                              torch.Generator().manual_seed(0))
    assert torch.equal(m3, mask) and (lv3[mask == 0] == 0.3).all() and torch.equal(lv3[mask == 1], levels[mask == 1])
    # context-noise augmentation: each context frame its own level in [context_level, context_level_max]; the
    # frames chosen, the mask and the other frames' levels unchanged
    lv4, m4 = training_levels(64, 10, DiffusionConfig(long_context_prob=1.0, context_level=0.1, context_level_max=0.4),
                              torch.Generator().manual_seed(0))
    ctx = lv4[mask == 0]
    assert torch.equal(m4, mask) and torch.equal(lv4[mask == 1], levels[mask == 1])
    assert ctx.min() >= 0.1 and ctx.max() <= 0.4 and ctx.max() - ctx.min() > 0.25 and len(set(ctx.tolist())) > 100
    with pytest.raises(ConfigError, match="context_level_max"):
        DiffusionConfig(context_level=0.3, context_level_max=0.2).validate()


def test_level_shift_lowers_log_snr_by_twice_its_log():
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)

    def log_snr(x):
        a, s = alpha_sigma(x)
        return 2 * torch.log(a / s)

    for shift in (0.5, 2.0, 3.0):
        moved = shift_levels(t, shift)
        assert torch.allclose(log_snr(moved), log_snr(t) - 2 * math.log(shift), atol=1e-9)
        assert (moved.diff() > 0).all()  # order kept
        assert ((moved > t) if shift > 1 else (moved < t)).all()
    assert torch.allclose(shift_levels(t, 1.0), t, atol=1e-12)
    ends = shift_levels(torch.tensor([0.0, 1.0]), 2.0)  # fp32, where pi/2 rounds past the pole of tan
    assert ends.tolist() == [0.0, 1.0]
    assert shift_levels(torch.tensor(0.5, dtype=torch.float64), 2.0).item() == pytest.approx(2 / math.pi * math.atan(2))


def test_training_levels_shifted_from_the_same_draws():
    plain, mask = training_levels(256, 10, DiffusionConfig(), torch.Generator().manual_seed(3))
    shifted, mask2 = training_levels(256, 10, DiffusionConfig(level_shift=2.0), torch.Generator().manual_seed(3))
    noisy = mask == 1
    assert torch.equal(mask, mask2) and (shifted[~noisy] == 0).all()  # the clean prefix stays clean
    assert torch.allclose(shifted[noisy], shift_levels(plain[noisy], 2.0))
    # uniform levels' median 0.5 -> 0.705 at shift 2: more of the training at high noise
    assert plain[noisy].median() == pytest.approx(0.5, abs=0.03)
    assert shifted[noisy].median() == pytest.approx(2 / math.pi * math.atan(2), abs=0.03)
    with pytest.raises(ConfigError, match="level_shift"):
        DiffusionConfig(level_shift=0.0).validate()


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
    sampler = Sampler(model, SamplingConfig(steps=2))
    out = sampler.rollout(ctx, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 30, dtype=torch.long),
                          on_frame=lambda i, f: None, keep=True)
    assert out.shape == (1, 30, 3, 16, 16)
    sampler = Sampler(model, SamplingConfig(steps=1))
    cache = sampler.prefill(ctx, torch.zeros(1, 4, dtype=torch.long))
    for i in range(40):
        _, cache = sampler.step(cache, torch.zeros(1, dtype=torch.long))
        sizes.append(cache.nbytes())
    assert cache.frames == 44 and len(set(sizes)) == 1
    assert math.isfinite(out.abs().max().item())


def test_teacher_forced_rollout_is_one_step_ahead_prediction():
    """With teacher frames, frame i is predicted from the true context + true frames 0..i-1, exactly as a fresh
    rollout from that longer context would predict it; without them, the model's own frames are committed."""
    torch.manual_seed(0)
    model = WorldModel(model_preset("tiny")).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    video = torch.rand(1, 8, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    acts = torch.randint(0, 6, (1, 8), generator=g)
    cfg = SamplingConfig(steps=2, seed=7)
    tf = Sampler(model, cfg).rollout(video[:, :4], acts[:, :4], acts[:, 4:], teacher_frames=video[:, 4:])
    free = Sampler(model, cfg).rollout(video[:, :4], acts[:, :4], acts[:, 4:])
    gen = torch.Generator().manual_seed(7)
    for i in range(4):
        cache = prefill(model, video[:, :4 + i], acts[:, :4 + i])
        ref = denoise_frame(model, cache, acts[:, 4 + i], (1, 3, 16, 16), cfg, gen).to(torch.float64)
        torch.testing.assert_close(tf[:, i].double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tf[:, 0], free[:, 0])  # the first frame has the same history either way
    assert (tf[:, 1:] - free[:, 1:]).abs().max() > 1e-3


# -- training on the model's own rollouts ------------------------------------------------------------------------
def _noisy_tiny(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = WorldModel(model_preset("tiny")).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_own_rollout_plan():
    from lssvwm.diffusion import own_rollout_plan

    cfg = DiffusionConfig(own_rollout_prob=1.0, own_rollout_frames=4)
    plans = [own_rollout_plan(10, cfg, torch.Generator().manual_seed(i)) for i in range(300)]
    assert all(p is not None and p[0] >= 1 and 1 <= p[1] <= 4 and sum(p) <= 9 for p in plans)
    assert {p[1] for p in plans} == {1, 2, 3, 4} and len({p[0] for p in plans}) >= 5
    half = [own_rollout_plan(10, DiffusionConfig(own_rollout_prob=0.5), torch.Generator().manual_seed(i))
            for i in range(400)]
    assert 0.4 < sum(p is not None for p in half) / 400 < 0.6
    g0, g1 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    own_rollout_plan(10, DiffusionConfig(own_rollout_prob=0.0), g0)
    own_rollout_plan(10, DiffusionConfig(own_rollout_prob=1.0), g1)
    assert torch.equal(torch.rand(4, generator=g0), torch.rand(4, generator=g1))  # the same draws either way


def test_own_rollout_history_is_an_inference_rollout_without_gradient():
    from lssvwm.diffusion import own_rollout_history

    model = _noisy_tiny()
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 8, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    acts = torch.randint(0, 6, (2, 8), generator=g)
    cfg = SamplingConfig(steps=2, stabilization=0.3)
    out = own_rollout_history(model, frames, acts, 3, 2, cfg, [torch.Generator().manual_seed(s) for s in (10, 11)])
    assert not out.requires_grad and out.grad_fn is None  # no gradient through the rollout
    assert torch.equal(out[:, :3], frames[:, :3]) and torch.equal(out[:, 5:], frames[:, 5:])
    assert (out[:, 3:5] - frames[:, 3:5]).abs().max() > 0.1
    for i, seed in enumerate((10, 11)):  # each clip: exactly what the Sampler generates from its context
        ref = Sampler(model, dataclasses.replace(cfg, seed=seed)).rollout(frames[i:i + 1, :3], acts[i:i + 1, :3],
                                                                          acts[i:i + 1, 3:5])
        torch.testing.assert_close(out[i:i + 1, 3:5], ref.to(out), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("stabilization", [0.0, 0.3])
def test_own_rollout_with_gradient_is_the_same_rollout_and_carries_the_later_frames_loss_back(stabilization):
    """grad > 0 makes the same frames from the same draws as the rollout without gradient, and a loss on a frame
    after the rollout reaches the network through the generated frames (not only through the final pass), scaled
    by grad."""
    from lssvwm.diffusion import diffusion_loss, own_rollout_batch, own_rollout_history

    model = _noisy_tiny()
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 8, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    acts = torch.randint(0, 6, (2, 8), generator=g)
    cfg = SamplingConfig(steps=2, stabilization=stabilization)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (10, 11)]  # noqa: E731
    plain = own_rollout_history(model, frames, acts, 3, 2, cfg, gens())
    unrolled = own_rollout_history(model, frames, acts, 3, 2, cfg, gens(), grad=1.0)
    assert unrolled.requires_grad and unrolled.grad_fn is not None
    torch.testing.assert_close(unrolled, plain, rtol=1e-9, atol=1e-9)
    assert torch.equal(unrolled[:, :3], frames[:, :3]) and torch.equal(unrolled[:, 5:], frames[:, 5:])

    # a loss on the frames after the rollout (5-7), with none, all or half of its gradient through the rollout
    levels, mask = torch.full((2, 8), 0.5, dtype=torch.float64), torch.ones(2, 8, dtype=torch.float64)
    noise = torch.randn(frames.shape, generator=g, dtype=torch.float64)

    def grad_of(grad):
        model.zero_grad()
        f2, a2, lv2, m2 = own_rollout_batch(model, frames, acts, levels, mask, (3, 2), cfg, gens(), grad=grad)
        loss, _ = diffusion_loss(model, f2, a2, lv2, m2, noise, DiffusionConfig())
        loss.backward()
        return loss.detach(), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}

    loss0, g0 = grad_of(0.0)
    loss1, g1 = grad_of(1.0)
    torch.testing.assert_close(loss1, loss0, rtol=1e-9, atol=1e-12)  # the same loss value
    diff = max(float((g1[n] - g0[n]).abs().max()) for n in g0)
    assert diff > 1e-3 * max(float(g.abs().max()) for g in g0.values())  # the rollout's own path adds gradient
    _, g_half = grad_of(0.5)  # half of the rollout's share of the gradient
    for n in g0:
        torch.testing.assert_close(g_half[n] - g0[n], 0.5 * (g1[n] - g0[n]), rtol=1e-6, atol=1e-12)


def test_own_rollout_with_gradient_refuses_history_guidance_and_several_processes(tiny_data, tmp_path):
    from lssvwm.config import RunConfig, TrainConfig
    from lssvwm.diffusion import unrolled_rollout
    from lssvwm.train import train_processes

    model = _noisy_tiny()
    frames, acts = torch.zeros(1, 3, 3, 16, 16, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="history guidance"):
        unrolled_rollout(model, frames[:, :2], acts[:, :2], acts[:, 2:], SamplingConfig(history_guidance=1.0))
    cfg = RunConfig(model=model_preset("tiny"), diffusion=DiffusionConfig(own_rollout_prob=0.5, own_rollout_grad=1.0),
                    sampling=SamplingConfig(history_guidance=1.0),
                    train=TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), steps=2, batch_size=2))
    with pytest.raises(ConfigError, match="diffusion.own_rollout_grad.*history guidance"):
        cfg.validate()
    cfg.sampling.history_guidance = 0.0
    with pytest.raises(ConfigError, match="diffusion.own_rollout_grad trains in one process only.*2 processes"):
        train_processes(cfg, 2, progress=False)


def test_own_rollout_loss_touches_only_the_frames_after_the_rollout():
    from lssvwm.diffusion import diffusion_loss, own_rollout_batch

    model = _noisy_tiny()
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(2, 8, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    acts = torch.randint(0, 6, (2, 8), generator=g)
    levels, mask = torch.rand(2, 8, generator=g, dtype=torch.float64), torch.ones(2, 8, dtype=torch.float64)
    noise = torch.randn(frames.shape, generator=g, dtype=torch.float64)
    cfg = SamplingConfig(steps=1, stabilization=0.3)
    f2, a2, lv2, m2 = own_rollout_batch(model, frames, acts, levels, mask, (3, 2), cfg, [torch.Generator()] * 2)
    assert a2 is acts  # forward: the true actions
    assert (lv2[:, :5] == 0.3).all() and (m2[:, :5] == 0).all() and torch.equal(lv2[:, 5:], levels[:, 5:])
    assert (m2[:, 5:] == 1).all()

    class Fixed(torch.nn.Module):
        def __init__(self, pred):
            super().__init__()
            self.pred = pred

        def forward(self, x, lv, a, cache=None):
            return self.pred, None

    pred = torch.randn(frames.shape, dtype=torch.float64)
    base, _ = diffusion_loss(Fixed(pred), f2, acts, lv2, m2, noise, DiffusionConfig())
    garbage = pred.clone()
    garbage[:, :5] += 100.0  # the true prefix and the generated frames: context, no loss
    same, _ = diffusion_loss(Fixed(garbage), f2, acts, lv2, m2, noise, DiffusionConfig())
    assert same == base
    later = pred.clone()
    later[:, 5] += 1.0
    moved, _ = diffusion_loss(Fixed(later), f2, acts, lv2, m2, noise, DiffusionConfig())
    assert moved != base
    # the targets are the true frames: predicting exactly their v gives zero loss on the trained frames
    perfect = v_target(frames, noise, lv2)
    zero, _ = diffusion_loss(Fixed(perfect), f2, acts, lv2, m2, noise, DiffusionConfig())
    assert zero < 1e-20


def _one_step_with_its_noise(sampler, cache, action):
    """A 1-step sampler's frame and state for ``action`` (B,), the pure noise x it started from (replayed from its
    generator), the level t = 1 of that step, and the generator state before it."""
    gen = sampler.generator.get_state()
    frame, new = sampler.step(cache, action)
    noise = torch.Generator()
    noise.set_state(gen)
    x = torch.randn((action.shape[0],) + sampler.frame_shape, generator=noise, dtype=torch.float64)  # its first draw
    return frame, new, x, torch.ones(action.shape[0], dtype=torch.float64), gen


# -- history guidance ---------------------------------------------------------------------------------------------
def test_history_guidance_extrapolates_away_from_the_noised_history():
    """One step from pure noise returns x0 = -v (t = 1); with guidance w, v = v(history) + w (v(history) -
    v(history noised to the guidance level)), each from its own state, both states advanced with every frame."""
    from lssvwm.diffusion import GuidedCache

    model = _noisy_tiny(3)
    g = torch.Generator().manual_seed(0)
    ctx = torch.rand(2, 5, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    acts = torch.randint(0, 6, (2, 7), generator=g)
    w, level = 1.5, 0.6
    sampler = Sampler(model, SamplingConfig(steps=1, history_guidance=w, history_guidance_level=level, seed=3))
    cache = sampler.prefill(ctx, acts[:, :5])
    assert isinstance(cache, GuidedCache) and cache.main.frames == cache.weak.frames == 5
    plain = prefill(model, ctx, acts[:, :5])
    for a, b in zip(cache.main.layers, plain.layers):  # the main state saw the history as an unguided one does
        torch.testing.assert_close(a.ssm.ssm, b.ssm.ssm)
    assert (cache.weak.layers[0].ssm.ssm - plain.layers[0].ssm.ssm).abs().max() > 1e-6  # the weak one did not
    for j in (5, 6):
        frame, new, x, t, gen = _one_step_with_its_noise(sampler, cache, acts[:, j])
        with torch.no_grad():
            v_main, _ = model.step(x, t, acts[:, j], cache.main)
            v_weak, _ = model.step(x, t, acts[:, j], cache.weak)
        a, s = alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
        x0 = a * x - s * (v_main + w * (v_main - v_weak))  # no codec: no clamping
        torch.testing.assert_close(frame, x0, rtol=1e-9, atol=1e-9)
        plain_frame = a * x - s * v_main
        assert (frame - plain_frame).abs().max() > 1e-4  # guidance changed the frame
        assert new.main.frames == new.weak.frames == j + 1 and new.nbytes() == 2 * new.main.nbytes()
        cache = new
    with pytest.raises(ValueError, match="plain cache"):
        sampler.step(plain, acts[:, 5])
    with pytest.raises(ValueError, match="guided cache"):
        Sampler(model, SamplingConfig(steps=1)).step(cache, acts[:, 5])


# -- action guidance ----------------------------------------------------------------------------------------------
def test_action_dropout_drops_each_frames_action_at_its_rate():
    from lssvwm.diffusion import action_dropout_mask, drop_actions

    assert action_dropout_mask(4, 16, DiffusionConfig()) is None  # off: nothing drawn
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    action_dropout_mask(4, 16, DiffusionConfig(), g)
    assert torch.equal(g.get_state(), before)  # off leaves the random stream as it was
    drop = action_dropout_mask(200, 50, DiffusionConfig(action_dropout=0.25), g)
    assert drop.shape == (200, 50) and drop.dtype == torch.bool and abs(drop.float().mean().item() - 0.25) < 0.02
    ids = torch.randint(0, 6, (200, 50), generator=g)
    out = drop_actions(ids, drop)
    assert (out[drop] == -1).all() and torch.equal(out[~drop], ids[~drop])
    vec = torch.rand(200, 50, 3, generator=g) + 0.5
    out = drop_actions(vec, drop)
    assert (out[drop] == 0).all() and torch.equal(out[~drop], vec[~drop])
    assert drop_actions(ids, None) is ids
    # training_loss drops them too: at rate 1 every action is "no action", so the actions given do not matter
    model = _noisy_tiny(1)
    frames = torch.rand(2, 4, 3, 16, 16, dtype=torch.float64) * 2 - 1
    cfg = DiffusionConfig(action_dropout=1.0)
    losses = [training_loss(model, frames, torch.full((2, 4), a), cfg, torch.Generator().manual_seed(5))[0]
              for a in (0, 3, -1)]
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(losses[0], losses[2])
    plain = training_loss(model, frames, torch.full((2, 4), 3), DiffusionConfig(), torch.Generator().manual_seed(5))
    assert (plain[0] - losses[1]).abs() > 1e-8


def test_action_guidance_extrapolates_away_from_the_null_action():
    """One step from pure noise returns x0 = -v (t = 1); with action guidance w, v = v(a) + w (v(a) - v(null)),
    both against the same state, which stays the plain sampler's (one state, committed with the true action)."""
    model = _noisy_tiny(4)
    g = torch.Generator().manual_seed(1)
    ctx = torch.rand(2, 5, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    acts = torch.randint(1, 6, (2, 7), generator=g)  # never the null id 0 of the second case
    for w, null in ((1.5, -1), (0.5, 0)):
        sampler = Sampler(model, SamplingConfig(steps=1, action_guidance=w, action_guidance_null=null, seed=3))
        plain_sampler = Sampler(model, SamplingConfig(steps=1, seed=3))
        cache = sampler.prefill(ctx, acts[:, :5])
        for j in (5, 6):
            frame, new, x, t, gen = _one_step_with_its_noise(sampler, cache, acts[:, j])
            with torch.no_grad():
                v, _ = model.step(x, t, acts[:, j], cache)
                v_null, _ = model.step(x, t, torch.full_like(acts[:, j], null), cache)
            a, s = alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
            torch.testing.assert_close(frame, a * x - s * (v + w * (v - v_null)), rtol=1e-9, atol=1e-9)
            assert (frame - (a * x - s * v)).abs().max() > 1e-4  # guidance changed the frame
            plain_sampler.generator.set_state(gen)
            _, plain_new = plain_sampler.step(cache, acts[:, j])
            assert new.nbytes() == plain_new.nbytes() and new.frames == j + 1  # one state, of the plain size
            # the state after the frame is the one the plain sampler's commit of the same frame gives
            committed = commit_frame(model, cache, frame, acts[:, j])
            for x1, x2 in zip(new.layers, committed.layers):
                torch.testing.assert_close(x1.ssm.ssm, x2.ssm.ssm)
            cache = new
    with pytest.raises(ValueError, match="action_guidance_null"):
        Sampler(model, SamplingConfig(steps=1, action_guidance=1.0, action_guidance_null=6))
    Sampler(model, SamplingConfig(steps=1, action_guidance=0.0, action_guidance_null=6))  # off: not checked


def test_history_guidance_keeps_the_state_fixed_size():
    model = WorldModel(model_preset("tiny")).eval()
    sampler = Sampler(model, SamplingConfig(steps=1, history_guidance=1.0))
    cache = sampler.prefill(torch.zeros(1, 3, 3, 16, 16), torch.zeros(1, 3, dtype=torch.long))
    sizes = []
    for _ in range(12):
        _, cache = sampler.step(cache, torch.zeros(1, dtype=torch.long))
        sizes.append(cache.nbytes())
    assert len(set(sizes)) == 1 and cache.main.frames == 15


def test_compiled_sampler_matches_the_eager_one():
    """Sampler(compile=True) runs each frame's denoising steps and commit through torch.compile: the same frames
    as the eager sampler (float rounding), through the compiled rotary path, the EDM preconditioning and the
    previous-frame input, at batch 1 (play). It compiles once: the state keeps one layout from the prefill on
    (a recompile would cost the player another minute)."""
    from lssvwm.config import ConfigError
    from lssvwm.resources import check_compiler

    try:
        check_compiler("cpu")
    except ConfigError as e:
        pytest.skip(str(e))  # the toolchain, not the code: this machine cannot compile
    torch.manual_seed(0)
    model = WorldModel(model_preset("tiny", prediction="edm", sigma_data=0.5, prev_frame=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = SamplingConfig(steps=2, seed=3, stabilization=0.1)
    g = torch.Generator().manual_seed(1)
    ctx = torch.rand(1, 4, 3, 16, 16, generator=g) * 2 - 1
    acts = torch.randint(0, 6, (1, 10), generator=g)
    eager = Sampler(model, cfg).rollout(ctx, acts[:, :4], acts[:, 4:])
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = Sampler(model, cfg, compile=True).rollout(ctx, acts[:, :4], acts[:, 4:])
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert eager.std() > 0.05  # frames with content, not a constant output


def test_reversed_actions_undo_each_step_into_the_frame_before():
    from lssvwm.data.maze import INVERSE_ACTIONS
    from lssvwm.diffusion import reversed_actions

    # noop, forward, left, right, fwd+left, fwd+right; actions[t] led to frame t (-1: the episode's first frame)
    acts = torch.tensor([[-1, 2, 2, 0, 3, 1], [5, 3, 4, 2, 1, 0]])
    # reversed frame s is frame 5-s, reached from frame 6-s by undoing actions[6-s]; the first frame has none
    assert reversed_actions(acts, INVERSE_ACTIONS).tolist() == [[-1, -1, 2, 0, 3, 3], [-1, 0, -1, 3, -1, 2]]
    assert reversed_actions(acts).tolist() == [[-1] * 6] * 2  # no table: every step "no action"
    assert reversed_actions(torch.full((1, 4), -1)).tolist() == [[-1] * 4]  # a clip without action labels
    cont = torch.randn(2, 4, 3)
    assert torch.equal(reversed_actions(cont), torch.zeros_like(cont))


def test_reversed_own_rollout_starts_drifted_and_trains_the_true_frames_back():
    from lssvwm.data.maze import INVERSE_ACTIONS
    from lssvwm.diffusion import own_rollout_batch, own_rollout_history, own_rollout_plan, reversed_actions

    cfg = DiffusionConfig(own_rollout_prob=1.0, own_rollout_frames=3, own_rollout_reversed=True)
    plans = [own_rollout_plan(8, cfg, torch.Generator().manual_seed(i)) for i in range(100)]
    assert all(n + r == 8 for n, r in plans) and {r for _, r in plans} == {1, 2, 3}  # the rollout ends the clip
    model = _noisy_tiny()
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(2, 8, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    acts = torch.randint(0, 6, (2, 8), generator=g)
    levels, mask = torch.rand(2, 8, generator=g, dtype=torch.float64), torch.ones(2, 8, dtype=torch.float64)
    cfg = SamplingConfig(steps=1, stabilization=0.2)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (4, 5)]  # noqa: E731
    f2, a2, lv2, m2 = own_rollout_batch(model, frames, acts, levels, mask, (6, 2), cfg, gens(), reverse=True,
                                        inverse=INVERSE_ACTIONS)
    generated = own_rollout_history(model, frames, acts, 6, 2, cfg, gens())[:, 6:]
    assert torch.equal(f2[:, :2], generated.flip(1))  # starts from the drifted end, last generated frame first
    assert torch.equal(f2[:, 2:], frames[:, :6].flip(1))  # then the true frames, back to the clip's first
    assert torch.equal(a2, reversed_actions(acts, INVERSE_ACTIONS))
    assert (lv2[:, :2] == 0.2).all() and (m2[:, :2] == 0).all()  # the drifted frames: context, no loss
    assert torch.equal(lv2[:, 2:], levels[:, 2:]) and (m2[:, 2:] == 1).all()
    with pytest.raises(ValueError, match="must end the clip"):
        own_rollout_batch(model, frames, acts, levels, mask, (3, 2), cfg, gens(), reverse=True)


def test_inverse_actions_are_checked_against_the_action_set():
    from lssvwm.config import RunConfig

    RunConfig(diffusion=DiffusionConfig(inverse_actions=[0, -1, 3, 2, -1, -1])).validate()
    for bad in ([0, 1], [0, -1, 3, 2, -1, 6], [0, -2, 3, 2, -1, -1]):
        with pytest.raises(ConfigError, match="diffusion.inverse_actions"):
            RunConfig(diffusion=DiffusionConfig(inverse_actions=bad)).validate()
    with pytest.raises(ConfigError, match="diffusion.inverse_actions"):
        DiffusionConfig(inverse_actions="0 1").validate()
