"""GPU measurements (needs CUDA; not part of `make bench`; ``gpu-smoke`` runs the same code small on the CPU):
training tokens/s, MFU against the matmul peak measured in the same run, peak memory; decoding frames/s; the
kernels against their references."""
from __future__ import annotations

import time

from benchmarks.common import table


# dense bf16 peak of the datasheets (TFLOP/s), for reference beside the peak measured in the same run
SPEC_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, reps: int = 5, warmup: int = 2) -> float:
    """Median seconds per call after a warm-up (CUDA: synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_peak(device, n: int = 8192, dtype=None) -> float:
    """Measured matmul TFLOP/s on this device in ``dtype`` (default bf16): the peak that MFU is reported against."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype or torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.bfloat16)
    return 2 * n**3 / _time(lambda: a @ b, device, reps=10) / 1e12


def step_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention): the model FLOPs of MFU."""
    from benchmarks.train_step import count_flops

    return count_flops(fn)


def train_throughput(preset: str, batch: int, clip: int, device, attn_backend: str = "auto", compile: bool = False,
                     peak_tflops: float | None = None, amp=None) -> dict:
    """One training step (forward + backward + fused AdamW) of a preset under autocast ``amp`` (default bf16; fp32
    when torch.float32): time, tokens/s, MFU, peak memory."""
    import torch

    amp = amp or torch.bfloat16

    from lssvwm.config import DiffusionConfig, model_preset
    from lssvwm.diffusion import training_loss
    from lssvwm.models.world_model import WorldModel

    row = {"preset": preset, "batch": batch, "clip": clip, "attention": attn_backend, "compile": compile}
    torch.manual_seed(0)
    cfg = model_preset(preset, attn_backend=attn_backend)
    tokens = batch * clip * (cfg.frame_size // cfg.patch_size) ** 2
    try:
        model = WorldModel(cfg).to(device)
        fwd = torch.compile(model) if compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        x = torch.randn(batch, clip, cfg.channels, cfg.frame_size, cfg.frame_size, device=device)
        a = torch.randint(0, cfg.num_actions, (batch, clip), device=device)

        def step(net=fwd):
            with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
                loss, _ = training_loss(net, x, a, DiffusionConfig())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = _time(step, device, reps=5, warmup=3 if compile else 2)
        # FlopCounterMode cannot count inside compiled code (the model, FlexAttention): count the eager model on the
        # chunked attention path, which does the same window's work
        from lssvwm.models.attention import FrameLocalAttention
        attns = [m for m in model.modules() if isinstance(m, FrameLocalAttention)]
        for m in attns:
            m.backend = "window" if m.backend in ("flex", "auto") else m.backend
        flops = step_flops(lambda: step(model))
        for m in attns:
            m.backend = attn_backend
        row.update(ms_per_step=round(1000 * sec, 1), ktokens_per_s=round(tokens / sec / 1e3, 1),
                   model_tflops=float(f"{flops / sec / 1e12:.3g}"))
        if peak_tflops:
            row["mfu_%"] = float(f"{100 * flops / sec / 1e12 / peak_tflops:.3g}")
        if device.type == "cuda":
            row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except torch.OutOfMemoryError:
        row["ms_per_step"] = "OOM"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def decode_fps(preset: str, device, steps: int = 4, frames: int = 48, context: int = 16) -> dict:
    """Interactive decoding: frames/s at batch 1 with ``steps`` denoising steps per frame (the Sampler's step)."""
    import torch

    from lssvwm.config import SamplingConfig, model_preset
    from lssvwm.diffusion import Sampler
    from lssvwm.models.world_model import WorldModel

    torch.manual_seed(0)
    cfg = model_preset(preset)
    model = WorldModel(cfg).to(device).eval()
    sampler = Sampler(model, SamplingConfig(steps=steps, stabilization=0.1))
    shape = (1, context, cfg.channels, cfg.frame_size, cfg.frame_size)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        cache = sampler.prefill(torch.zeros(shape, device=device), torch.zeros(1, context, dtype=torch.long))
        action = torch.ones(1, dtype=torch.long)
        box = [cache]

        def one():
            _, box[0] = sampler.step(box[0], action)

        sec = _time(one, device, reps=frames, warmup=5)
    return {"preset": preset, "steps": steps, "frames_per_s": round(1 / sec, 1), "ms_per_frame": round(1000 * sec, 2)}


def kernels_vs_reference(device, L: int = 4096, frames: int = 32, tokens: int = 64) -> list[dict]:
    """The fast paths against their references: SSD (torch chunked, FLA) vs the loop; attention (FlexAttention vs
    chunked SDPA): largest error relative to the output's scale, and time."""
    import torch

    from lssvwm.models.attention import FrameLocalAttention
    from lssvwm.models.ssd import _fla_available, ssd_reference, ssd_scan

    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    b, h, p, n = 2, 8, 64, 64
    x = torch.randn(b, L, h, p, device=device, generator=g)
    dt = torch.rand(b, L, h, device=device, generator=g) * 0.1 + 0.01
    A = -torch.rand(h, device=device, generator=g) - 0.5
    B, C = (torch.randn(b, L, n, device=device, generator=g) for _ in range(2))
    ref, _ = ssd_reference(x[:, :512], dt[:, :512], A, B[:, :512], C[:, :512])
    for backend in ["torch"] + (["fla"] if device.type == "cuda" and _fla_available() else []):
        y, _ = ssd_scan(x[:, :512], dt[:, :512], A, B[:, :512], C[:, :512], backend=backend)
        sec = _time(lambda: ssd_scan(x, dt, A, B, C, backend=backend), device)
        rows.append({"kernel": f"ssd:{backend}", "L": L, "ms": round(1000 * sec, 2),
                     "rel_err_vs_ref": float(f"{float((y - ref).abs().max() / ref.abs().max()):.2e}")})
    attn = FrameLocalAttention(256, 4, 10).to(device)
    xs = torch.randn(2, frames, tokens, 256, device=device)
    with torch.no_grad():
        outs = {}
        for backend in ("sdpa", "window", "flex"):
            attn.backend = backend
            outs[backend] = attn(xs)[0]
            sec = _time(lambda: attn(xs), device)
            rows.append({"kernel": f"attention:{backend}", "L": frames * tokens, "ms": round(1000 * sec, 2),
                         "rel_err_vs_ref": float(f"{float((outs[backend] - outs['sdpa']).abs().max()):.2e}")})
    return rows


def run(smoke: bool = False, quick: bool = False) -> dict:
    """#15's measurements on one GPU: training tokens/s, MFU and peak memory of the presets at 16- and 64-frame
    clips (each attention backend, with and without torch.compile), decoding frames/s at batch 1 with 4 steps, and
    the kernels against their references. ``quick`` (about a minute, for a lease of minutes) times eager steps
    only: ``small`` at the demo's batch (8 x 16 frames, each attention backend) and at the GPU config's (32 x 32),
    ``base`` at 8 x 16; it decodes ``small`` and ``paper``. ``smoke`` runs the same code small on the CPU (a
    test)."""
    import torch

    if smoke:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("bench gpu needs CUDA (python -m benchmarks.run gpu-smoke runs it small on the CPU)")
    else:
        device = torch.device("cuda")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    from lssvwm.config import TrainConfig
    from lssvwm.loop import autocast_dtype

    # the type training runs in (autocast: auto) and the matmul peak measured in that type
    amp = autocast_dtype(TrainConfig(), device) or torch.float32
    kind = "bf16" if amp == torch.bfloat16 else "fp32"
    peak = matmul_peak(device, 512 if smoke else 8192, amp)
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in name), None) if device.type == "cuda" else None
    print(f"{name}: {kind} matmul measured {peak:.3g} TFLOP/s" + (f" (datasheet {spec:.0f})" if spec else ""))
    if smoke:
        plan = [("tiny", 2, 4, "sdpa", False)]
    elif quick:
        plan = [("small", 8, 16, "sdpa", False), ("small", 8, 16, "flex", False), ("small", 32, 32, "flex", False),
                ("base", 8, 16, "flex", False)]
    else:
        plan = [(p, b, c, att, comp) for p, b in (("small", 8), ("base", 8), ("paper", 8)) for c in (16, 64)
                for att, comp in (("sdpa", False), ("flex", False), ("flex", True))]
    train_rows = []
    for preset, batch, clip, att, comp in plan:
        row = train_throughput(preset, batch, clip, device, att, comp, peak, amp)
        train_rows.append(row)
        print(row, flush=True)
    cols = ["preset", "batch", "clip", "attention", "compile", "ms_per_step", "ktokens_per_s", "model_tflops", "mfu_%",
            "peak_mem_GiB"]
    print(f"training step (forward + backward + AdamW), {kind} autocast; MFU against the measured {peak:.3g} TFLOP/s")
    print(table(train_rows, [c for c in cols if any(c in r for r in train_rows)]))
    decode_rows = [decode_fps(p, device, frames=4 if smoke else 48) for p in (("tiny",) if smoke else ("small",
                                                                                                          "paper"))]
    print("decoding, batch 1, 4 denoising steps per frame")
    print(table(decode_rows, ["preset", "steps", "frames_per_s", "ms_per_frame"]))
    kernel_rows = kernels_vs_reference(device, 256, 4, 16) if smoke else kernels_vs_reference(device)
    print(table(kernel_rows, ["kernel", "L", "ms", "rel_err_vs_ref"]))
    return {"device": name, "autocast": kind, "matmul_peak_tflops": float(f"{peak:.3g}"), "datasheet_tflops": spec,
            "training": train_rows,
            "decoding": decode_rows, "kernels": kernel_rows}


def run_smoke() -> dict:
    return run(smoke=True)


def run_quick() -> dict:
    return run(quick=True)
