"""The fast paths of the layers against their plain-PyTorch references, forward and gradients: the fused conv and
gated norm (models/fused.py), the SSD scan's hand-written backward (models/ssd.py), q/k norm + RoPE and the
window attention (models/attention.py)."""
import pytest
import torch

from lssvwm.models.attention import (FrameLocalAttention, frame_local_attention_reference, rmsnorm_rope,
                                     rmsnorm_rope_reference, rope_rotation, window_attention)
from lssvwm.models.fused import (causal_conv1d_silu, causal_conv1d_silu_reference, rmsnorm_gated,
                                 rmsnorm_gated_reference)
from lssvwm.models.ssd import ssd_chunked, ssd_reference

F64 = torch.float64


def _grads(fn, inputs, seed=0):
    """Output and gradients of sum(out * r) w.r.t. every input that requires grad (r a fixed random tensor)."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype)).sum() for o in outs)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return outs, torch.autograd.grad(loss, leaves)


def _leaf(*shape, dtype=F64, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale).requires_grad_()


def _assert_same(fast, ref, inputs, rtol=1e-10, atol=1e-10):
    (o1, g1), (o2, g2) = _grads(fast, inputs), _grads(ref, inputs)
    for a, b in zip(o1 + g1, o2 + g2):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("L", [1, 2, 3, 17])
def test_causal_conv1d_silu_equals_conv1d(L):
    """Channels-last conv with its hand-written backward == F.conv1d channels-first (fp64), with a carried
    state, also when the sequence is shorter than the kernel."""
    b, c, k = 2, 5, 4
    inputs = (_leaf(b, L, c, seed=1), _leaf(c, k, seed=2), _leaf(c, seed=3), _leaf(b, k - 1, c, seed=4))
    _assert_same(causal_conv1d_silu, causal_conv1d_silu_reference, inputs)
    with torch.no_grad():  # the no-grad path (sampling) computes the same
        torch.testing.assert_close(causal_conv1d_silu(*inputs), causal_conv1d_silu_reference(*inputs))


def test_causal_conv1d_silu_is_causal():
    x, w, bias, init = torch.randn(1, 9, 3), torch.randn(3, 4), torch.randn(3), torch.zeros(1, 3, 3)
    y = causal_conv1d_silu(x, w, bias, init)
    x2 = x.clone()
    x2[:, 5] += 1
    y2 = causal_conv1d_silu(x2, w, bias, init)
    assert torch.equal(y[:, :5], y2[:, :5]) and not torch.equal(y[:, 5:], y2[:, 5:])


def test_rmsnorm_gated_equals_reference():
    inputs = (_leaf(2, 7, 12, seed=1), _leaf(2, 7, 12, seed=2), _leaf(12, seed=3), 1e-5)
    _assert_same(rmsnorm_gated, rmsnorm_gated_reference, inputs)
    with torch.no_grad():
        torch.testing.assert_close(rmsnorm_gated(*inputs), rmsnorm_gated_reference(*inputs))


def test_fused_ops_compute_fp32_under_bf16_autocast():
    x, w, bias, init = torch.randn(1, 6, 4), torch.randn(4, 4), torch.randn(4), torch.zeros(1, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = causal_conv1d_silu(x.bfloat16(), w, bias, init)
        z = rmsnorm_gated(x.bfloat16(), x.bfloat16(), torch.ones(4), 1e-5)
    assert y.dtype == z.dtype == torch.float32
    torch.testing.assert_close(y, causal_conv1d_silu_reference(x.bfloat16().float(), w, bias, init))


def test_rmsnorm_rope_equals_reference():
    rot = rope_rotation(torch.arange(5, 8), 6)
    inputs = (_leaf(2, 3, 4, 2, 6, seed=1), _leaf(6, seed=2), rot, 1e-6)
    _assert_same(rmsnorm_rope, rmsnorm_rope_reference, inputs)


@pytest.mark.parametrize("L, chunk, state, with_d", [(1, 8, True, True), (7, 8, False, True), (37, 8, True, True),
                                                     (64, 16, True, False), (100, 32, False, True), (64, 64, True, True)])
def test_chunked_ssd_gradients_equal_reference(L, chunk, state, with_d):
    """The chunked scan's hand-written backward == autograd through the sequential loop (fp64), for every input
    (x, dt, A, B, C, D and the initial state), with padded last chunks and single-chunk sequences."""
    b, h, p, n = 2, 3, 4, 5
    inputs = (_leaf(b, L, h, p, seed=1), (torch.rand(b, L, h, dtype=F64) * 0.3 + 0.01).requires_grad_(),
              (-torch.rand(h, dtype=F64) * 4 - 0.5).requires_grad_(), _leaf(b, L, n, seed=2), _leaf(b, L, n, seed=3),
              _leaf(h, seed=4) if with_d else None, _leaf(b, h, p, n, seed=5) if state else None)
    _assert_same(lambda *a: ssd_chunked(*a, chunk_size=chunk), ssd_reference, inputs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("L, state", [(1, True), (5, False), (64, True)])
def test_ssd_single_chunk_without_grad_equals_reference(L, state):
    """The lean path of sampling steps (one chunk, no gradient) computes what the loop does."""
    g = torch.Generator().manual_seed(L)
    x, B, C = torch.randn(2, L, 3, 4, generator=g, dtype=F64), *torch.randn(2, 2, L, 5, generator=g, dtype=F64)
    dt = torch.rand(2, L, 3, generator=g, dtype=F64) * 0.3
    A, D = -torch.rand(3, generator=g, dtype=F64) * 4, torch.randn(3, generator=g, dtype=F64)
    s0 = torch.randn(2, 3, 4, 5, generator=g, dtype=F64) if state else None
    with torch.no_grad():
        y, s = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=64)
    y_ref, s_ref = ssd_reference(x, dt, A, B, C, D, s0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


def test_chunked_ssd_fp32_gradients_close_to_fp64_and_strong_decay_finite():
    """fp32 gradients track fp64 ones, and a strongly decaying head (exp(cs_i - cs_j) overflowing above the
    diagonal before it is zeroed) gives finite values."""
    b, L, h, p, n = 1, 50, 2, 4, 3
    inputs64 = (_leaf(b, L, h, p, seed=1), (torch.rand(b, L, h, dtype=F64) * 5).requires_grad_(),
                torch.tensor([-30.0, -0.5], dtype=F64, requires_grad=True), _leaf(b, L, n, seed=2),
                _leaf(b, L, n, seed=3), _leaf(h, seed=4), None)
    inputs32 = tuple(None if t is None else t.detach().float().requires_grad_() for t in inputs64)
    (o64, g64) = _grads(lambda *a: ssd_chunked(*a, chunk_size=16), inputs64)
    (o32, g32) = _grads(lambda *a: ssd_chunked(*a, chunk_size=16), inputs32)
    for a, b_ in zip(o32 + g32, o64 + g64):
        assert torch.isfinite(a).all()
        assert (a.double() - b_).abs().max() <= 1e-3 * b_.abs().max() + 1e-4


def _qkv(b, t, n, h, d, past, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, n, h, d, generator=g, dtype=F64, requires_grad=True)
    k = torch.randn(b, past + t, n, h, d, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(b, past + t, n, h, d, generator=g, dtype=F64, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("window, t, past", [(4, 16, 0), (4, 1, 3), (4, 1, 0), (4, 1, 2), (3, 7, 2), (1, 5, 0),
                                             (10, 6, 0), (None, 6, 3), (2, 9, 1)])
def test_window_attention_equals_dense_reference(window, t, past):
    """Per-frame dense windows (no mask; one masked call for the first frames) == a dense masked softmax over all
    frames, forward and gradients of q, k and v, with and without cached frames."""
    q, k, v = _qkv(2, t, 3, 2, 4, past)
    _assert_same(lambda *a: window_attention(*a, window, past),
                 lambda *a: frame_local_attention_reference(*a, window, past), (q, k, v))


@pytest.mark.parametrize("window, chunk, t, past", [(3, 1, 7, 0), (4, 3, 5, 3), (None, None, 6, 4), (1, 1, 5, 3),
                                                    (10, 4, 6, 0), (4, 2, 16, 0), (4, 2, 1, 3)])
def test_attention_backends_window_and_chunked_sdpa_agree(window, chunk, t, past):
    """The layer with the CPU default (window) and the chunked SDPA path: same output, cache and gradients."""
    torch.manual_seed(0)
    attn = FrameLocalAttention(32, 2, window, chunk).double()
    x = torch.randn(2, past + t, 5, 32, dtype=F64, requires_grad=True)
    res = []
    for backend in ("sdpa", "window"):
        attn.backend = backend
        cache = attn(x[:, :past], 0)[1] if past else None
        y, new_cache = attn(x[:, past:], past, cache)
        res.append((y, new_cache, torch.autograd.grad((y ** 2).sum(), [x] + list(attn.parameters()))))
    (y0, c0, g0), (y1, c1, g1) = res
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
    assert all(torch.equal(a, b) for a, b in zip(c0, c1))
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
