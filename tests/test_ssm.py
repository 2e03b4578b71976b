"""SSM: chunked == reference, piecewise-with-state == whole, causality, block independence."""
import pytest
import torch

from lssvwm.models.ssd import _fla_available, ssd_chunked, ssd_reference, ssd_scan
from lssvwm.models.ssm import BlockwiseSSM, Mamba2


def inputs(b, L, h, p, n, dtype=torch.float64, seed=0, state=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x, B, C = r(b, L, h, p), r(b, L, n), r(b, L, n)
    dt = torch.rand(b, L, h, generator=g, dtype=dtype) * 0.3 + 0.01
    A = -torch.rand(h, generator=g, dtype=dtype) * 4 - 0.5
    D = r(h)
    s0 = r(b, h, p, n) if state else None
    return x, dt, A, B, C, D, s0


@pytest.mark.parametrize("L, chunk, state", [(1, 8, True), (7, 8, False), (37, 8, True), (64, 16, True),
                                             (100, 32, False)])
def test_chunked_equals_reference_fp64(L, chunk, state):
    args = inputs(2, L, 3, 4, 5, state=state, seed=L)
    y1, s1 = ssd_reference(*args)
    y2, s2 = ssd_chunked(*args, chunk_size=chunk)
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, s1, rtol=1e-10, atol=1e-10)


def test_chunked_equals_reference_fp32_and_gradients():
    args = [t.float().requires_grad_() if t is not None else None for t in inputs(2, 45, 2, 4, 6, seed=3)]
    y1, s1 = ssd_reference(*args)
    g1 = torch.autograd.grad((y1 ** 2).sum() + s1.sum(), [a for a in args if a is not None])
    y2, s2 = ssd_chunked(*args, chunk_size=16)
    g2 = torch.autograd.grad((y2 ** 2).sum() + s2.sum(), [a for a in args if a is not None])
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, s1, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_scan_runs_fp32_under_bf16_autocast():
    x, dt, A, B, C, D, s0 = (t.float() for t in inputs(1, 40, 2, 4, 4, seed=9))
    y_ref, _ = ssd_reference(x, dt, A, B, C, D, s0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = ssd_scan(x, dt, A, B, C, D, s0, chunk_size=16)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_layer_bf16_close_to_fp32():
    """Whole layer under bf16 autocast vs fp32: looser, relative error of the output below 3%."""
    torch.manual_seed(0)
    m = Mamba2(32, d_state=16, headdim=16, chunk_size=16)
    u = torch.randn(2, 50, 32)
    y32, _ = m(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, _ = m(u)
    rel = (y16.float() - y32).norm() / y32.norm()
    assert rel < 0.03, rel


def test_layer_init():
    m = Mamba2(64, d_state=16, headdim=16)
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt >= 1e-4 - 1e-9) & (dt <= 0.1 + 1e-6)).all()
    A = torch.exp(m.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    assert torch.equal(m.D, torch.ones_like(m.D))
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.D, m.dt_bias))


@pytest.mark.parametrize("cuts", [[21, 22], [1, 2, 3], [10, 30, 49]])
def test_layer_piecewise_equals_whole(cuts):
    torch.manual_seed(1)
    m = Mamba2(32, d_state=8, headdim=8, chunk_size=8).double()
    u = torch.randn(2, 50, 32, dtype=torch.float64)
    y, s = m(u)
    state, ys, prev = None, [], 0
    for c in cuts + [50]:
        yi, state = m(u[:, prev:c], state)
        ys.append(yi)
        prev = c
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.ssm, s.ssm)
    torch.testing.assert_close(state.conv, s.conv)


def test_state_is_not_mutated():
    m = Mamba2(16, d_state=8, headdim=8)
    _, s = m(torch.randn(1, 10, 16))
    before = [t.clone() for t in s]
    y1, _ = m(torch.randn(1, 3, 16), s)
    y2, _ = m(torch.randn(1, 3, 16), s)
    for a, b in zip(before, s):
        assert torch.equal(a, b)


def test_layer_causal():
    torch.manual_seed(2)
    m = Mamba2(16, d_state=8, headdim=8, chunk_size=8).double()
    u = torch.randn(1, 30, 16, dtype=torch.float64)
    y, _ = m(u)
    u2 = u.clone()
    u2[:, 17] += 1.0
    y2, _ = m(u2)
    assert torch.equal(y[:, :17], y2[:, :17])
    assert (y[:, 17:] - y2[:, 17:]).abs().max() > 1e-3


def blockwise(block, seed=3):
    torch.manual_seed(seed)
    return BlockwiseSSM(16, block=block, d_state=8, headdim=8, chunk_size=16).double()


@pytest.mark.parametrize("block", [None, (2, 2), (1, 4), (4, 4)])
def test_blockwise_frame_by_frame_equals_whole(block):
    m = blockwise(block)
    x = torch.randn(2, 6, 4, 4, 16, dtype=torch.float64)  # (B, T, H, W, D)
    y, s = m(x)
    state, ys = None, []
    for t in range(6):
        yt, state = m(x[:, t:t + 1], state)
        ys.append(yt)
    torch.testing.assert_close(torch.cat(ys, 1), y, rtol=1e-10, atol=1e-10)
    n_blocks = 1 if block is None else (4 // block[0]) * (4 // block[1])
    assert state.ssm.shape[0] == 2 * n_blocks  # one state per (batch, block)


def test_blockwise_causal_over_frames():
    m = blockwise((2, 2))
    x = torch.randn(1, 5, 4, 4, 16, dtype=torch.float64)
    y, _ = m(x)
    x2 = x.clone()
    x2[:, 3] += 1.0
    y2, _ = m(x2)
    assert torch.equal(y[:, :3], y2[:, :3])
    assert (y[:, 3:] - y2[:, 3:]).abs().max() > 1e-3


def test_block_independence():
    """Inside one SSM layer no information crosses spatial blocks."""
    m = blockwise((2, 2))
    x = torch.randn(1, 4, 4, 4, 16, dtype=torch.float64)
    y, _ = m(x)
    x2 = x.clone()
    x2[:, 0, 0, 1] += 5.0  # a token in the top-left block (rows 0-1, cols 0-1)
    y2, _ = m(x2)
    diff = (y2 - y).abs().amax(dim=(0, 1, 4))  # (H, W): largest change at each position, any time
    assert diff[:2, :2].max() > 1e-3  # its own block changes
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:2, :2] = False
    assert diff[mask].max() == 0  # the other three blocks do not


def test_full_frame_scan_mixes_blocks():
    m = blockwise(None)
    x = torch.randn(1, 2, 4, 4, 16, dtype=torch.float64)
    y, _ = m(x)
    x2 = x.clone()
    x2[:, 0, 0, 0] += 5.0
    y2, _ = m(x2)
    assert (y2 - y)[:, :, 3, 3].abs().max() > 1e-6  # a full-frame scan carries it to the last position


def close_to_tf32(a, b, what):
    """FLA's Triton kernels multiply fp32 inputs on TF32 tensor cores (10-bit mantissa), so they match the fp32
    torch path to TF32 precision, not to fp32's: the error is measured relative to the tensor's scale."""
    err = (a.float() - b.float()).abs()
    rel_max, rel_mean = float(err.max() / b.abs().max()), float(err.mean() / b.abs().mean())
    print(f"{what}: max |diff| / max |ref| = {rel_max:.2e}, mean |diff| / mean |ref| = {rel_mean:.2e}")
    assert rel_max < 1e-2 and rel_mean < 2e-3, f"{what}: {rel_max:.2e}, {rel_mean:.2e}"


@pytest.mark.skipif(not (torch.cuda.is_available() and _fla_available()), reason="needs CUDA and flash-linear-attention")
def test_fla_kernel_matches_torch_path():
    """The FLA kernel (q=C, k=B, v=x*dt, g=A*dt, plus D*x) equals the torch chunked scan: outputs and final state,
    with and without an initial state; and the gradients of every input where FLA's backward runs on this GPU.
    Where it does not (Hopper with Triton < 3.7.1), 'auto' must fall back to the torch path for training."""
    from lssvwm.models.ssm import _fla_backward_ok

    for init in (False, True):
        args = [t if t is None else t.float().cuda() for t in inputs(2, 300, 4, 16, 32, seed=4, state=init)]
        with torch.no_grad():
            y1, s1 = ssd_scan(*args, backend="torch")
            y2, s2 = ssd_scan(*args, backend="fla")
            y3, _ = ssd_scan(*args, backend="auto")
        close_to_tf32(y2, y1, f"output (initial state: {init})")
        close_to_tf32(s2, s1, f"final state (initial state: {init})")
        assert torch.equal(y3, y2)  # inference takes the kernel
        backends = ("torch", "fla") if _fla_backward_ok() else ("torch", "auto")
        outs = []
        for backend in backends:
            leaves = [a.clone().requires_grad_(True) if a is not None else None for a in args]
            y, s = ssd_scan(*leaves, backend=backend)
            (y.square().mean() + s.square().mean()).backward()
            outs.append((y.detach(), [a.grad for a in leaves if a is not None]))
        (y1, g1), (y2, g2) = outs
        if backends[1] == "auto":
            assert torch.equal(y2, y1)  # the fallback is the torch path
        for name, a, b in zip("x dt A B C D s0".split(), g2, g1):
            close_to_tf32(a, b, f"grad {name} via {backends[1]} (initial state: {init})")


@pytest.mark.skipif(not (torch.cuda.is_available() and _fla_available()), reason="needs CUDA and flash-linear-attention")
def test_fla_layer_on_cuda():
    """A whole Mamba2 layer on CUDA under bf16 autocast: the FLA path is close to the torch path, and fed in
    pieces with its state (the inference path) it equals itself run whole."""
    torch.manual_seed(5)
    m = Mamba2(64, d_state=16, headdim=16, chunk_size=16).cuda()
    u = torch.randn(2, 130, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        m.backend = "torch"
        y_torch, s_torch = m(u)
        m.backend = "fla"
        y, s = m(u)
        state, ys, prev = None, [], 0
        for c in (1, 64, 65, 130):
            yi, state = m(u[:, prev:c], state)
            ys.append(yi)
            prev = c
    scale = y_torch.float().abs().mean()
    assert (y.float() - y_torch.float()).abs().mean() / scale < 0.03
    assert (s.ssm - s_torch.ssm).abs().max() / s_torch.ssm.abs().max() < 0.03
    assert (torch.cat(ys, 1).float() - y.float()).abs().mean() / scale < 0.03
    torch.testing.assert_close(state.ssm, s.ssm, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_chunked_equals_reference_long_sequence():
    """L = 4096 (the benchmark's length): no drift accumulates over many chunks, fp64 and fp32."""
    args = inputs(1, 4096, 4, 16, 16, seed=11)
    y1, s1 = ssd_reference(*args)
    y2, s2 = ssd_chunked(*args, chunk_size=64)
    torch.testing.assert_close(y2, y1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s2, s1, rtol=1e-9, atol=1e-9)
    f32 = [t.float() for t in args]
    y3, _ = ssd_chunked(*f32, chunk_size=64)
    torch.testing.assert_close(y3, y1.float(), rtol=1e-4, atol=1e-4)
