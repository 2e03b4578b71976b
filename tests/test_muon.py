"""lssvwm.muon: the batched Muon against its reference, torch.optim.Muon, step for step."""
import pytest
import torch

from lssvwm.muon import BatchedMuon, muon_lr_scale, orthogonalize

# repeated shapes (one batch), a tall and a wide matrix that share a batch once turned, a square one, odd sizes
SHAPES = [(8, 16), (16, 8), (8, 16), (24, 8), (5, 5), (16, 40), (3, 7)]


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    ref = [torch.nn.Parameter(torch.randn(*s)) for s in SHAPES]
    return ref, [torch.nn.Parameter(p.detach().clone()) for p in ref]


def _steps(opts, params, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=g) for p in params[0]]
        for ps in params:
            for p, grad in zip(ps, grads):
                p.grad = grad.clone()
        for o in opts:
            o.step()


@pytest.mark.parametrize("adjust_lr_fn,nesterov", [("match_rms_adamw", True), ("original", True), (None, False)])
def test_batched_muon_matches_torch_muon(adjust_lr_fn, nesterov):
    """Five steps of BatchedMuon land where five of torch.optim.Muon do (parameters and momentum buffers), for
    matrices of every orientation, shapes that repeat and shapes that share a batch only once turned."""
    ref, new = _pair()
    start = [p.detach().clone() for p in ref]
    kw = dict(lr=2e-2, weight_decay=0.1, adjust_lr_fn=adjust_lr_fn, nesterov=nesterov)
    o_ref, o_new = torch.optim.Muon(ref, **kw), BatchedMuon(new, **kw)
    _steps([o_ref, o_new], [ref, new], 5)
    for a, b, s in zip(ref, new, start):
        assert (a.detach() - s).abs().max() > 100 * 1e-5  # the steps moved it well beyond the tolerance below
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-5)
        torch.testing.assert_close(o_new.state[b]["momentum_buffer"], o_ref.state[a]["momentum_buffer"],
                                   rtol=0, atol=1e-6)


def test_batched_muon_resumes_torch_muon_state():
    """The state dict is torch's: a run of torch.optim.Muon resumes as BatchedMuon (and back) and goes on as if
    it had not switched; a tensor learning rate works as in torch's."""
    ref, new = _pair()
    o_ref = torch.optim.Muon(ref, lr=1e-2, adjust_lr_fn="match_rms_adamw")
    o_mid = torch.optim.Muon(new, lr=1e-2, adjust_lr_fn="match_rms_adamw")
    _steps([o_ref, o_mid], [ref, new], 2)
    o_new = BatchedMuon(new, lr=1e-2, adjust_lr_fn="match_rms_adamw")
    o_new.load_state_dict(o_mid.state_dict())
    _steps([o_ref, o_new], [ref, new], 3, seed=2)
    for a, b in zip(ref, new):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-5)
    back = torch.optim.Muon(new, lr=1e-2, adjust_lr_fn="match_rms_adamw")
    back.load_state_dict(o_new.state_dict())
    assert all(torch.equal(back.state[p]["momentum_buffer"], o_new.state[p]["momentum_buffer"]) for p in new)

    ref, new = _pair(3)
    o_ref = torch.optim.Muon(ref, lr=torch.tensor(1e-2))
    o_new = BatchedMuon(new, lr=torch.tensor(1e-2))
    _steps([o_ref, o_new], [ref, new], 2)
    for a, b in zip(ref, new):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-5)


def test_orthogonalize_flattens_the_spectrum_in_input_order():
    """Each result keeps its input's shape and place; a gradient whose singular values span 1 to ~100 comes back
    with them all near 1 (the quintic iteration leaves them within about 0.5-1.5, Jordan et al.)."""
    m, n = 12, 30
    u, v = torch.linalg.qr(torch.randn(m, m))[0], torch.linalg.qr(torch.randn(n, m))[0]
    wide = u @ torch.diag(torch.logspace(0, 2, m)) @ v.T  # (12, 30)
    tall = torch.randn(30, 12)
    out = orthogonalize([wide, tall, wide.T.contiguous()], (3.4445, -4.7750, 2.0315), 5, 1e-7)
    assert [o.shape for o in out] == [(12, 30), (30, 12), (30, 12)]
    s = torch.linalg.svdvals(out[0].float())
    assert s.min() > 0.3 and s.max() < 1.6
    torch.testing.assert_close(out[2].float(), out[0].float().T, rtol=0, atol=0)  # the same matrix, turned


def test_orthogonalize_computes_in_the_type_asked():
    """``dtype``: the Newton-Schulz matmuls run in that type (fp32 on CPUs that emulate bf16): in fp32 the result
    matches an fp64 run to fp32 rounding, in bf16 (torch's default) only to bf16's, and it comes back in that type."""
    g = torch.Generator().manual_seed(0)
    updates = [torch.randn(s, generator=g) for s in SHAPES]
    coeffs = (3.4445, -4.7750, 2.0315)
    exact = orthogonalize([u.double() for u in updates], coeffs, 5, 1e-7, dtype=torch.float64)
    fp32 = orthogonalize(updates, coeffs, 5, 1e-7, dtype=torch.float32)
    bf16 = orthogonalize(updates, coeffs, 5, 1e-7)
    assert all(o.dtype == torch.float32 for o in fp32) and all(o.dtype == torch.bfloat16 for o in bf16)
    err32 = max((a.double() - e).abs().max().item() for a, e in zip(fp32, exact))
    err16 = max((a.double() - e).abs().max().item() for a, e in zip(bf16, exact))
    assert err32 < 1e-5 < 1e-3 < err16


def test_batched_muon_in_fp32_steps_as_torch_muon_up_to_bf16_rounding():
    """BatchedMuon with ``ns_dtype`` fp32 takes torch.optim.Muon's steps but for the bf16 rounding of its
    orthogonalisation: a step apart by far less than the step itself; the state dict has no trace of the type."""
    ref, new = _pair()
    start = [p.detach().clone() for p in ref]
    kw = dict(lr=2e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    o_ref, o_new = torch.optim.Muon(ref, **kw), BatchedMuon(new, ns_dtype=torch.float32, **kw)
    _steps([o_ref, o_new], [ref, new], 1)
    for a, b, s in zip(ref, new, start):
        step, gap = (a.detach() - s).abs().max(), (b.detach() - a.detach()).abs().max()
        assert 0 < gap < 0.05 * step
    assert o_new.state_dict()["param_groups"][0].keys() == o_ref.state_dict()["param_groups"][0].keys()


def test_muon_lr_scale():
    assert muon_lr_scale(torch.Size([96, 384]), "match_rms_adamw") == pytest.approx(0.2 * 384 ** 0.5)
    assert muon_lr_scale(torch.Size([384, 96]), "original") == pytest.approx(2.0)
    assert muon_lr_scale(torch.Size([96, 384]), None) == 1.0
    with pytest.raises(ValueError, match="adjust_lr_fn: expected None, 'original' or 'match_rms_adamw'"):
        muon_lr_scale(torch.Size([2, 2]), "rms")
