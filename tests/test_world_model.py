"""Backbone: parallel == cached per-frame path for every variant, causality, window, adaLN-Zero, cache size."""
import pytest
import torch

from lssvwm.config import VARIANTS, ConfigError, ModelConfig, model_preset
from lssvwm.models.attention import FrameLocalAttention
from lssvwm.models.world_model import Block, WorldModel


def make(variant, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    m = WorldModel(model_preset("tiny", variant, **kw)).to(dtype)
    with torch.no_grad():  # move away from the zero init so every path contributes to the output
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def stepwise(m, x, lv, a):
    """The cached path, one frame at a time from an empty cache: (outputs (B, T, ...), final cache)."""
    cache, ys = m.empty_cache(), []
    for t in range(x.shape[1]):
        yt, cache = m.step(x[:, t], lv[:, t], a[:, t], cache)
        ys.append(yt)
    return torch.stack(ys, 1), cache


def clip(b=2, t=7, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, 3, 16, 16, generator=g, dtype=dtype), torch.rand(b, t, generator=g, dtype=dtype),
            torch.randint(-1, 6, (b, t), generator=g))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_parallel_equals_step(variant, dtype, tol):
    m = make(variant, dtype)
    x, lv, a = clip(dtype=dtype)
    with torch.no_grad():
        y, cache_par = m(x, lv, a)
        ys, cache = stepwise(m, x, lv, a)
    assert y.abs().mean() > 1e-2
    torch.testing.assert_close(ys, y, rtol=tol, atol=tol)
    assert cache.frames == cache_par.frames == 7 and cache.nbytes() == cache_par.nbytes()


@pytest.mark.parametrize("variant", ["hybrid", "full-transformer"])
def test_prefill_then_parallel_continuation(variant):
    m = make(variant)
    x, lv, a = clip(t=9)
    with torch.no_grad():
        y, _ = m(x, lv, a)
        _, cache = m(x[:, :4], lv[:, :4], a[:, :4])
        y2, _ = m(x[:, 4:], lv[:, 4:], a[:, 4:], cache)
    torch.testing.assert_close(y2, y[:, 4:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_over_frames(variant):
    m = make(variant)
    x, lv, a = clip(t=6)
    with torch.no_grad():
        y, _ = m(x, lv, a)
        x2, a2 = x.clone(), a.clone()
        x2[:, 4] += 1.0
        a2[:, 5] = (a2[:, 5] + 1) % 6
        y2, _ = m(x2, lv, a2)
    assert torch.equal(y[:, :4], y2[:, :4])
    assert (y[:, 4:] - y2[:, 4:]).abs().max() > 1e-4


def test_attention_window():
    torch.manual_seed(0)
    att = FrameLocalAttention(16, 2, window=3, chunk=2).double()
    x = torch.randn(1, 8, 4, 16, dtype=torch.float64)  # (B, T, N, D)
    y, _ = att(x)
    for frame, changes in ((4, False), (5, True)):  # output of frame 7 sees frames 5, 6, 7 only
        x2 = x.clone()
        x2[:, frame] += 1.0
        y2, _ = att(x2)
        assert ((y2[:, 7] - y[:, 7]).abs().max() > 1e-6) == changes
    # window 1: per-frame spatial attention
    att1 = FrameLocalAttention(16, 2, window=1).double()
    y, _ = att1(x)
    x2 = x.clone()
    x2[:, 6] += 1.0
    y2, _ = att1(x2)
    assert torch.equal(y[:, 7], y2[:, 7])


@pytest.mark.parametrize("variant, prev_frame, window", [("window-transformer", False, 3),
                                                       ("window-transformer", True, 2), ("mamba2-local", True, 3),
                                                       ("mamba2", False, None), ("hybrid", False, 3)])
def test_attention_reach_is_what_a_frame_sees_without_the_scans(variant, prev_frame, window):
    """The last frame's output changes with the frame attention_reach() - 1 before it and, without a scan, not with
    the one before that; a model with scans depends on both."""
    m = make(variant, window=window, prev_frame=prev_frame)
    r = m.cfg.attention_reach()
    assert r == 1 + prev_frame + len(m.cfg.layers) * ((window or 1) - 1) * (variant != "mamba2")
    x, lv, a = clip(b=1, t=r + 2)
    with torch.no_grad():
        y, _ = m(x, lv, a)
        for frame, inside in ((x.shape[1] - r, True), (x.shape[1] - r - 1, False)):
            x2 = x.clone()
            x2[:, frame] += 1.0
            changed = (m(x2, lv, a)[0][:, -1] - y[:, -1]).abs().max() > 1e-9
            assert changed == (inside or variant in ("hybrid", "mamba2", "mamba2-local")), (frame, r)
    assert model_preset("tiny", "full-transformer").attention_reach() is None


def test_model_info_says_how_far_the_attention_reaches(capsys):
    from lssvwm.cli import main

    for variant, says in (("window-transformer", "depends on its last 5 frames"), ("mamba2", "depends on itself only"),
                          ("full-transformer", "depends on every past frame")):
        assert main(["model", "info", "tiny", "--variant", variant]) == 0
        assert says in capsys.readouterr().out


@pytest.mark.parametrize("dt_init", ["token", "frame"])
def test_ssm_dt_init_per_scan_step_or_per_frame(dt_init):
    """At init every head's step size lies in Mamba's [1e-3, 1e-1] per scan step ("token"), or per frame ("frame":
    divided by the steps a frame takes in the layer's blocks: 64 for a full 8 x 8 frame, 16 for 4 x 4 blocks, 4 for
    2 x 2), so that the state's memory in frames starts the same in every layer."""
    torch.manual_seed(0)
    m = WorldModel(model_preset("small", "hybrid", ssm_dt_init=dt_init))
    steps = {"full": 64, (4, 4): 16, (2, 2): 4}
    seen = set()
    for blk, spec in zip(m.blocks, m.cfg.layers):
        dt = torch.nn.functional.softplus(blk.ssm.mamba.dt_bias.detach().double())
        per = dt * (steps[spec.ssm] if dt_init == "frame" else 1)
        assert per.min() >= 1e-3 * (1 - 1e-5) and per.max() <= 1e-1 * (1 + 1e-5), (spec.ssm, per)
        seen.add(spec.ssm)
    assert seen == set(steps)


def test_adaln_zero_block_is_identity():
    cfg = model_preset("tiny")
    for spec in cfg.layers:
        blk = Block(cfg, spec)
        x = torch.randn(2, 3, 4, 4, cfg.d_model)
        c = torch.randn(2, 3, cfg.d_model)
        y, _ = blk(x, c, 0, None)
        assert torch.equal(y, x)
    m = WorldModel(cfg)
    x, lv, a = clip(dtype=torch.float32)
    y, _ = m(x, lv, a)
    assert torch.equal(y, torch.zeros_like(y))  # zero-initialised output layer


def test_step_does_not_change_cache():
    m = make("hybrid")
    x, lv, a = clip(t=5)
    with torch.no_grad():
        _, cache = m(x[:, :4], lv[:, :4], a[:, :4])
        snapshot = [t.clone() for layer in cache.layers for part in layer if part is not None for t in part]
        p1, _ = m.step(x[:, 4], torch.full((2,), 0.9, dtype=torch.float64), a[:, 4], cache)
        m.step(x[:, 4] * 2, torch.full((2,), 0.3, dtype=torch.float64), a[:, 4], cache)
        p3, _ = m.step(x[:, 4], torch.full((2,), 0.9, dtype=torch.float64), a[:, 4], cache)
    after = [t for layer in cache.layers for part in layer if part is not None for t in part]
    assert all(torch.equal(s, t) for s, t in zip(snapshot, after))
    assert torch.equal(p1, p3)


@pytest.mark.parametrize("variant, grows", [("hybrid", False), ("window-transformer", False), ("mamba2", False),
                                            ("mamba2-local", False), ("full-transformer", True)])
def test_cache_size_constant_except_full_attention(variant, grows):
    m = make(variant, torch.float32)
    b = 1
    x = torch.randn(b, 99, 3, 16, 16)
    lv, a = torch.zeros(b, 99), torch.zeros(b, 99, dtype=torch.long)
    with torch.no_grad():
        _, c10 = m(x[:, :10], lv[:, :10], a[:, :10])
        cache = m.empty_cache()
        for _ in range(10):  # 1000 frames, fed 99 at a time through the cached path (+ 10 more)
            _, cache = m(x, lv, a, cache)
        _, cache = m(x[:, :10], lv[:, :10], a[:, :10], cache)
    assert cache.frames == 1000
    assert (cache.nbytes() > c10.nbytes()) == grows
    if not grows:
        assert cache.nbytes() == c10.nbytes()


def test_gradient_checkpointing_same_gradients():
    x, lv, a = clip(dtype=torch.float32)
    grads = []
    for ckpt in (False, True):
        m = make("hybrid", torch.float32)
        m.gradient_checkpointing = ckpt
        m.train()
        y, _ = m(x, lv, a)
        y.pow(2).mean().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(layers=[{"ssm": [3, 3], "attn": 4}]), r"must divide the token grid 4x4"),
    (dict(layers=[{"ssm": None, "attn": 0}]), r"window of 1 to"),
    (dict(layers=[{"ssm": "half", "attn": 2}]), r"layers\[0\]\.ssm must be null, 'full' or \[b_h, b_w\]"),
    (dict(layers=[]), r"model.layers is empty"),
    (dict(frame_size=18, layers=[{"ssm": "full", "attn": 2}]), "divisible by model.patch_size"),
])
def test_config_validation(kwargs, pattern):
    base = dict(model_preset("tiny").__dict__)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=pattern):
        WorldModel(ModelConfig(**base))


def test_unknown_preset_and_variant():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        model_preset("huge")
    with pytest.raises(ConfigError, match="unknown model variant"):
        model_preset("tiny", "rnn")
    with pytest.raises(ValueError, match=r"action ids must be in \[-1, 6\)"):
        m = WorldModel(model_preset("tiny"))
        m(torch.zeros(1, 2, 3, 16, 16), torch.zeros(1, 2), torch.tensor([[0, 6]]))


def test_preset_depth_and_width():
    """model_preset(n_layers=...) repeats the variant's plan to that depth; the demo's model takes both."""
    from lssvwm.demo import demo_model
    from lssvwm.models.world_model import parameter_count

    base, deep = model_preset("small"), model_preset("small", n_layers=6, d_model=96)
    assert len(base.layers) == 4 and len(deep.layers) == 6 and deep.d_model == 96
    assert deep.layers[:4] == base.layers and deep.layers[4:] == base.layers[:2]  # the plan goes on alternating
    assert parameter_count(deep) == WorldModel(deep).num_params()
    m = demo_model(d_model=128, n_layers=2)
    assert (m.d_model, len(m.layers), m.prev_frame) == (128, 2, False)  # the recipe's input, too
    for bad in (0, -1, 2.5, True, 10**6):
        with pytest.raises(ConfigError, match="the number of layers must be 1 to"):
            model_preset("small", n_layers=bad)


def test_continuous_actions():
    torch.manual_seed(0)
    m = WorldModel(model_preset("tiny", action_dim=5)).double()
    for p in m.parameters():
        p.data += 0.05 * torch.randn_like(p)
    x, lv, _ = clip()
    a = torch.randn(2, 7, 5, dtype=torch.float64)
    y, _ = m(x, lv, a)
    a2 = a.clone()
    a2[:, 3] += 1
    y2, _ = m(x, lv, a2)
    assert torch.equal(y[:, :3], y2[:, :3]) and (y[:, 3] - y2[:, 3]).abs().max() > 1e-4


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_prev_frame_input_parallel_equals_step_and_is_causal(dtype, tol):
    m = make("hybrid", dtype, prev_frame=True)
    x, lv, a = clip(dtype=dtype)
    with torch.no_grad():
        y, _ = m(x, lv, a)
        ys, cache = stepwise(m, x, lv, a)
        torch.testing.assert_close(ys, y, rtol=tol, atol=tol)
        # prefill + continuation carries the last frame across the cut
        _, c3 = m(x[:, :3], lv[:, :3], a[:, :3])
        y2, _ = m(x[:, 3:], lv[:, 3:], a[:, 3:], c3)
        torch.testing.assert_close(y2, y[:, 3:], rtol=tol, atol=tol)
        # frame t's input reaches frame t+1 through the prev-frame path even with every mixer cut off
        x2 = x.clone()
        x2[:, 4] += 1.0
        y3, _ = m(x2, lv, a)
    assert torch.equal(y[:, :4], y3[:, :4]) and (y[:, 5] - y3[:, 5]).abs().max() > 1e-4
    assert m.prev_patch is not None and cache.last.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("prev_frame", [False, True])
def test_residual_stream_is_contiguous_in_every_block(prev_frame):
    """The token stream (B, T, h, w, D) enters every block contiguous, D last, training and per-frame step alike.
    The patch embedding is a permuted view of a channels-first conv output; elementwise ops keep their inputs'
    layout, so without one copy at the embedding every LayerNorm over D, SSM rearrange and attention reshape of
    every layer copied the stream again (a CPU training step paid ~10% for it)."""
    m = make("hybrid", torch.float32, prev_frame=prev_frame)
    seen = []
    for blk in m.blocks:
        blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous()))
    x, lv, a = clip(dtype=torch.float32)
    m.train()
    m(x, lv, a)[0].sum().backward()
    with torch.no_grad():
        m.step(x[:, 0], lv[:, 0], a[:, 0], m.empty_cache())
        m(x[:1, :1], lv[:1, :1], a[:1, :1])  # batch 1, one frame: the shape of a play step
    assert len(seen) == 3 * len(m.blocks) and all(seen)


def test_prev_frame_zero_init_changes_nothing_until_trained():
    plain = make("hybrid", torch.float64)
    prev = WorldModel(model_preset("tiny", "hybrid", prev_frame=True)).double().eval()
    missing, unexpected = prev.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["prev_patch.weight", "prev_patch.bias"] and not unexpected
    x, lv, a = clip()
    with torch.no_grad():
        y = plain(x, lv, a)[0]
        torch.testing.assert_close(prev(x, lv, a)[0], y, rtol=0, atol=0)
        prev.prev_patch.weight.add_(0.05 * torch.randn_like(prev.prev_patch.weight))
        assert (prev(x, lv, a)[0] - y)[:, 1:].abs().max() > 1e-4


def test_final_conv_parallel_equals_step_and_starts_as_identity():
    m = make("hybrid", torch.float64, final_conv=True)
    x, lv, a = clip()
    with torch.no_grad():
        y, _ = m(x, lv, a)
        ys, cache = stepwise(m, x, lv, a)
    torch.testing.assert_close(ys, y, rtol=1e-10, atol=1e-10)
    fresh = WorldModel(model_preset("tiny", final_conv=True))
    assert torch.all(fresh.final_conv.weight == 0) and torch.all(fresh.final_conv.bias == 0)


def _both_backends(attn, x, past, grad: bool):
    outs = []
    for backend in ("sdpa", "flex"):
        attn.backend = backend
        cache = attn(x[:, :past], 0)[1] if past else None
        y, new_cache = attn(x[:, past:], past, cache)
        g = torch.autograd.grad(y.float().square().sum(), x)[0] if grad else None
        outs.append((y, new_cache, g))
    return outs


@pytest.mark.filterwarnings("ignore::UserWarning")  # flex_attention without torch.compile on CPU: slow but exact
@pytest.mark.parametrize("window, chunk, t, past", [(3, 1, 7, 0), (4, 3, 5, 3), (None, None, 1, 4), (1, 1, 5, 3),
                                                    (10, 4, 6, 0)])
def test_flex_attention_path_equals_chunked_sdpa(window, chunk, t, past):
    """The mask-free path (FlexAttention with a frame block mask, CUDA's default) computes what the CPU path does
    (forward here: FlexAttention has no CPU backward; the gradients are checked on CUDA below)."""
    torch.manual_seed(0)
    attn = FrameLocalAttention(32, 2, window, chunk).double()
    x = torch.randn(2, past + t, 5, 32, dtype=torch.float64)
    with torch.no_grad():
        (y0, c0, _), (y1, c1, _) = _both_backends(attn, x, past, grad=False)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
    assert all(torch.equal(a, b) for a, b in zip(c0, c1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (FlexAttention's backward and kernel)")
@pytest.mark.parametrize("window, t, past", [(4, 16, 0), (10, 8, 9), (None, 12, 0)])
def test_flex_attention_on_cuda_matches_with_gradients(window, t, past):
    torch.manual_seed(0)
    attn = FrameLocalAttention(256, 4, window).cuda()
    x = torch.randn(2, past + t, 64, 256, device="cuda", requires_grad=True)
    (y0, _, g0), (y1, _, g1) = _both_backends(attn, x, past, grad=True)
    torch.testing.assert_close(y1, y0, rtol=2e-3, atol=2e-3)  # TF32 matmuls in the fused kernels
    torch.testing.assert_close(g1, g0, rtol=2e-3, atol=2e-3)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_model_with_flex_backend_equals_default():
    m = make("hybrid")
    x, lv, a = clip()
    with torch.no_grad():
        y, _ = m(x, lv, a)
        for blk in m.blocks:
            blk.attn.backend = "flex"
        y_flex, _ = m(x, lv, a)
    torch.testing.assert_close(y_flex, y, rtol=1e-10, atol=1e-10)


def test_huge_window_costs_no_padding():
    attn = FrameLocalAttention(16, 2, 10**5)
    y, cache = attn(torch.randn(1, 4, 3, 16))  # would pad 10^5 frames of keys if the window were not capped
    assert y.shape == (1, 4, 3, 16) and cache.k.shape[1] == 4


def test_edm_preconditioning():
    """model.prediction='edm': with sigma_data 1 it is exactly v-prediction (same weights, same outputs); with
    sigma_data 0.5 the returned v is the one implied by x0 = c_skip x - c_out F, for the network's F on c_in x.
    The preconditioning lives in the Denoiser around the network, which itself returns F whatever the setting."""
    import math

    from lssvwm.config import ConfigError, model_preset
    from lssvwm.denoiser import Denoiser

    torch.manual_seed(0)
    cfg_v = model_preset("tiny")
    v_model = WorldModel(cfg_v).double()
    with torch.no_grad():
        for p in v_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 5, 3, 16, 16, dtype=torch.float64)
    levels = torch.rand(2, 5, dtype=torch.float64) * 0.98 + 0.01
    acts = torch.randint(0, 6, (2, 5))
    ref, _ = v_model(x, levels, acts)

    def edm(sd):
        cfg = model_preset("tiny")
        cfg.prediction, cfg.sigma_data = "edm", sd
        m = WorldModel(cfg).double()
        m.load_state_dict(v_model.state_dict())
        return Denoiser(m)

    out1, _ = edm(1.0)(x, levels, acts)
    torch.testing.assert_close(out1, ref, rtol=1e-10, atol=1e-10)
    sd = 0.5
    out, cache = edm(sd)(x, levels, acts)
    a = torch.cos(0.5 * math.pi * levels)[..., None, None, None]
    s = torch.sin(0.5 * math.pi * levels)[..., None, None, None]
    norm = s**2 + (a * sd) ** 2
    f, _ = v_model(x / torch.sqrt(norm), levels, acts)  # the same network on c_in x
    x0 = sd**2 * a / norm * x - s * sd / torch.sqrt(norm) * f
    torch.testing.assert_close(out, (a * x - x0) / s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(edm(sd).net(x, levels, acts)[0], v_model(x, levels, acts)[0])  # the bare network
    # one frame at a time (the sampler's path) gives the same as the clip at once
    m, c = edm(sd), None
    steps = []
    for i in range(5):
        o, c = m.step(x[:, i], levels[:, i], acts[:, i], c or m.net.empty_cache())
        steps.append(o)
    torch.testing.assert_close(torch.stack(steps, 1), out, rtol=1e-8, atol=1e-8)
    for bad in (dict(prediction="eps"), dict(sigma_data=0.0), dict(sigma_data=float("nan"))):
        c2 = model_preset("tiny")
        for k, v in bad.items():
            setattr(c2, k, v)
        with pytest.raises(ConfigError, match="model.prediction|model.sigma_data"):
            c2.validate()


def test_x0_prediction_returns_the_v_its_clean_frame_implies():
    """model.prediction='x0': the network's output is taken as the clean frame and the denoiser returns the v it
    implies, (alpha x - x0) / sigma with sigma floored at X0_SIGMA_FLOOR; a network that outputs the true clean
    frame gives the true v target above the floor; the sampler's per-frame path matches the clip at once."""
    from lssvwm.denoiser import X0_SIGMA_FLOOR, Denoiser
    from lssvwm.schedule import add_noise, alpha_sigma, v_target

    torch.manual_seed(0)
    m = WorldModel(model_preset("tiny", prediction="x0")).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 5, 3, 16, 16, dtype=torch.float64)
    levels = torch.tensor([[0.0, 0.01, 0.3, 0.7, 1.0], [0.5, 0.02, 0.04, 0.9, 0.2]], dtype=torch.float64)
    acts = torch.randint(0, 6, (2, 5))
    d = Denoiser(m)
    out, _ = d(x, levels, acts)
    f, _ = m(x, levels, acts)
    a, s = alpha_sigma(levels[..., None, None, None])
    torch.testing.assert_close(out, (a * x - f) / s.clamp(min=X0_SIGMA_FLOOR), rtol=1e-12, atol=1e-12)
    steps, c = [], m.empty_cache()
    for i in range(5):
        o, c = d.step(x[:, i], levels[:, i], acts[:, i], c)
        steps.append(o)
    torch.testing.assert_close(torch.stack(steps, 1), out, rtol=1e-9, atol=1e-9)

    class Oracle(torch.nn.Module):  # outputs the true clean frame
        cfg = model_preset("tiny", prediction="x0")

        def forward(self, xt, lv, ac, cache=None):
            return x0, cache

    x0, eps = torch.randn_like(x), torch.randn_like(x)
    xt = add_noise(x0, levels, eps)
    v, _ = Denoiser(Oracle())(xt, levels, acts)
    above = alpha_sigma(levels)[1] >= X0_SIGMA_FLOOR  # (B, T)
    torch.testing.assert_close(v[above], v_target(x0, eps, levels)[above], rtol=1e-9, atol=1e-9)
    x0_back = a * xt - s * v  # what the sampler takes from v: x0 itself where sigma is above the floor
    torch.testing.assert_close(x0_back[above], x0[above], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("overrides", [{}, {"prev_frame": True, "final_conv": True}, {"action_dim": 3},
                                       {"expand": 3, "mlp_ratio": 2.5}])
@pytest.mark.parametrize("variant", ["hybrid", "full-transformer", "mamba2"])
def test_parameter_count_on_the_meta_device_equals_the_built_model(variant, overrides):
    from lssvwm.models.world_model import parameter_count

    cfg = model_preset("tiny", variant, **overrides)
    assert parameter_count(cfg) == WorldModel(cfg).num_params()


def test_absurd_model_is_refused_before_anything_is_allocated():
    """1e12 parameters would take 4 TB: refused from the meta-device count, in well under a second."""
    import time

    from lssvwm.config import ConfigError

    t = time.time()
    with pytest.raises(ConfigError, match=r"a model with [\d,]+ parameters needs about .* GiB"):
        WorldModel(model_preset("tiny", d_model=2**20, n_heads=2))
    assert time.time() - t < 5


@pytest.mark.parametrize("past", [0, 2])
def test_cpu_autocast_keeps_attention_in_fp32_where_bf16_attention_is_slow(monkeypatch, past):
    """Under bf16 autocast on the CPU, SDPA computes in fp32 where its bf16 kernel is not faster: the result and
    the gradients are exactly those of attention run without autocast; where it is faster, autocast applies."""
    from lssvwm.models import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 5, 2, 8, generator=g) for n in (6, past + 6, past + 6))

    def run(amp: bool):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = attention.window_attention(*leaves, window=3, past=past)
        return out, torch.autograd.grad(out.float().square().sum(), leaves)

    ref, ref_grads = run(amp=False)
    monkeypatch.setattr(attention, "cpu_bf16_attention_fast", lambda: False)
    out, grads = run(amp=True)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    monkeypatch.setattr(attention, "cpu_bf16_attention_fast", lambda: True)
    out, _ = run(amp=True)
    assert out.dtype == torch.bfloat16 and not torch.equal(out.float(), ref)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("backend, window", [("window", 3), ("sdpa", 3), ("sdpa", None)])
def test_every_cpu_attention_call_follows_the_bf16_choice(monkeypatch, backend, window):
    """Each SDPA call of both CPU backends (masked first frames, dense windows, chunks, full causal) runs with
    autocast lifted and fp32 inputs where bf16 attention is slow, and under autocast where it is fast."""
    from lssvwm.models import attention

    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((torch.is_autocast_enabled("cpu"), q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    attn = FrameLocalAttention(32, 2, window, chunk=2, backend=backend)
    x = torch.randn(2, 7, 5, 32, requires_grad=True)
    for fast in (False, True):
        monkeypatch.setattr(attention, "cpu_bf16_attention_fast", lambda: fast)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = attn(x)
        y.float().sum().backward()
        assert seen and all(s == (fast, torch.float32, torch.float32, torch.float32) for s in seen), seen


def test_bf16_attention_timing_runs_anywhere():
    """The timing is made wherever it is first asked for: inside autocast, without gradients, in inference mode."""
    from lssvwm.models.attention import cpu_bf16_attention_fast

    cpu_bf16_attention_fast.cache_clear()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = cpu_bf16_attention_fast()
    assert fast in (True, False)
    cpu_bf16_attention_fast.cache_clear()
