"""Muon (``torch.optim.Muon``'s update, step for step) with the Newton-Schulz orthogonalisation batched: the
matrices of one shape (after turning the tall ones on their side, as Muon does) go through the five iterations
together as one stack of batched matmuls, and the momentum buffers move in one fused op per parameter group.

Why: a model of small hidden matrices (the demo's, 96 wide: 31 matrices of 9 shapes) spends much of Muon's step
in per-matrix op overhead (measured in docs/speed.md). The reference is ``torch.optim.Muon`` itself
(``tests/test_muon.py`` holds the two equal over several steps); the state (``momentum_buffer`` per matrix) and
the state dict are torch's, so runs and checkpoints of either resume with the other."""
from __future__ import annotations

import math
from collections import defaultdict

import torch


def muon_lr_scale(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """The factor Muon multiplies the learning rate by for a matrix of ``shape`` (rows, cols): "original"
    (Jordan et al.: sqrt(max(1, rows / cols))) or "match_rms_adamw" (Moonlight: 0.2 sqrt(max(rows, cols)), which
    brings the orthogonalised update to AdamW's typical RMS)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"adjust_lr_fn: expected None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")


def orthogonalize(updates: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int,
                  eps: float, dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    """Muon's quintic Newton-Schulz iteration on each matrix of ``updates``, the matrices of one shape as one batch,
    computed in ``dtype`` (bf16, as torch's Muon; fp32 on CPUs that only emulate bf16). Each matrix is scaled to
    Frobenius norm 1 first and worked on as (short side, long side); the results come back in the input's order
    and orientation."""
    a, b, c = coefficients
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, u in enumerate(updates):
        groups[(min(u.shape), max(u.shape))].append(i)
    turned = [u.shape[0] > u.shape[1] for u in updates]  # tall: worked on as its transpose
    out: list[torch.Tensor | None] = [None] * len(updates)
    for members in groups.values():
        x = torch.stack([updates[i].T if turned[i] else updates[i] for i in members]).to(dtype)  # (N, short, long)
        x = x / x.flatten(1).norm(dim=1).clamp(min=eps)[:, None, None]
        for _ in range(steps):
            gram = x @ x.mT  # (N, short, short)
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        for i, o in zip(members, x.unbind(0)):
            out[i] = o.T if turned[i] else o
    return out


class BatchedMuon(torch.optim.Muon):
    """``torch.optim.Muon`` with :func:`orthogonalize` (same arguments, defaults, state and update). ``ns_dtype``:
    the type of the Newton-Schulz matmuls (torch's: bf16). It is not part of the state dict, so a run resumes with
    whichever type its machine computes fastest."""

    def __init__(self, params, *args, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)  # torch's: checks, and zero buffers on the first step
            if not params:
                continue
            lr, momentum = float(group["lr"]), group["momentum"]  # a 1-element tensor lr too, as torch's
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            updates = orthogonalize(updates, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                    self.ns_dtype)
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            for p, u in zip(params, updates):
                p.add_(u, alpha=-lr * muon_lr_scale(p.shape, group["adjust_lr_fn"]))
        return loss
