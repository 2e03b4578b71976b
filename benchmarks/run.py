"""Speed and memory benchmarks: ``make bench`` or ``python -m benchmarks.run [maze] [ssm] [rollout]``.

Each benchmark prints a table and writes ``benchmarks/results/<name>.json`` (and a PNG where useful).
Memory is the peak resident set size (Linux VmHWM) of a fresh subprocess, minus its size after set-up,
so every figure comes from its own process and the numbers compared in one table come from one run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, save as _save, table as _table


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _in_subprocess(fn: str, *args) -> dict:
    """Run ``benchmarks.run.<fn>(*args)`` in a fresh single-threaded Python and return its JSON result."""
    code = f"import json, benchmarks.run as b; print(json.dumps(b.{fn}(*{args!r})))"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("BENCH_THREADS", "1"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).parent.parent)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- maze rendering --------------------------------------------------------------------------------------
def maze_fps(resolution: int, steps: int = 2000) -> dict:
    import numpy as np

    from lssvwm.data.maze import ExplorationPolicy, MazeEnv

    env = MazeEnv(resolution=resolution, max_steps=steps + 1)
    env.reset(seed=0)
    pol = ExplorationPolicy(env, np.random.default_rng(0))
    t = time.perf_counter()
    for _ in range(steps):
        env.step(pol())
    dt = time.perf_counter() - t
    return {"resolution": resolution, "frames_per_s": round(steps / dt, 1)}


def bench_maze() -> dict:
    rows = [_in_subprocess("maze_fps", r) for r in (64, 32)]
    print("maze env + exploration policy, one core (target >= 1000 frames/s at 64x64)")
    print(_table(rows, ["resolution", "frames_per_s"]))
    return {"rows": rows, "target_64": 1000}


# -- SSM scan --------------------------------------------------------------------------------------------
def ssm_scan(kind: str, length: int, d_model: int = 256, repeats: int = 3) -> dict:
    import torch

    from lssvwm.models.ssd import ssd_chunked, ssd_reference

    torch.manual_seed(0)
    d_inner, headdim, d_state = 2 * d_model, 64, 64
    h = d_inner // headdim
    x = torch.randn(1, length, h, headdim)
    dt = torch.rand(1, length, h) * 0.1
    A = -torch.rand(h) * 4
    B, C = torch.randn(1, length, d_state), torch.randn(1, length, d_state)
    D = torch.ones(h)
    base = _vm("VmRSS")
    fn = ssd_reference if kind == "reference" else ssd_chunked
    with torch.no_grad():
        times = []
        for _ in range(repeats if kind == "chunked" else 1):
            t = time.perf_counter()
            fn(x, dt, A, B, C, D)
            times.append(time.perf_counter() - t)
    sec = min(times)
    return {"kind": kind, "L": length, "d_model": d_model, "seconds": round(sec, 4),
            "tokens_per_s": round(length / sec), "peak_mem_MiB": round((_vm("VmHWM") - base) / 2**20, 1)}


def bench_ssm() -> dict:
    rows = [_in_subprocess("ssm_scan", "reference", 4096), _in_subprocess("ssm_scan", "chunked", 4096)]
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    mem_rows = [_in_subprocess("ssm_scan", "chunked", L) for L in (1024, 2048, 4096, 8192)]
    print(f"SSD scan on CPU, one thread, L = 4096, d_model 256: chunked is {speedup:.1f}x the reference loop "
          f"(target >= 10x)")
    print(_table(rows, ["kind", "L", "seconds", "tokens_per_s", "peak_mem_MiB"]))
    print("chunked scan, peak memory vs length (should be linear)")
    print(_table(mem_rows, ["L", "seconds", "tokens_per_s", "peak_mem_MiB"]))
    return {"speed": rows, "speedup_chunked_vs_loop": round(speedup, 2), "memory_vs_length": mem_rows}


# -- constant-memory rollout -----------------------------------------------------------------------------
def rollout_memory(preset: str = "small", frames: int = 4000, steps: int = 2, marks=(64, 100, 1000, 2000, 4000)):
    import torch

    from lssvwm.config import SamplingConfig, model_preset
    from lssvwm.diffusion import Sampler
    from lssvwm.models.world_model import WorldModel

    torch.manual_seed(0)
    cfg = model_preset(preset)
    model = WorldModel(cfg).eval()
    sampler = Sampler(model, SamplingConfig(steps=steps))
    shape = (1, cfg.channels, cfg.frame_size, cfg.frame_size)
    action = torch.zeros(1, dtype=torch.long)
    cache = sampler.prefill(torch.zeros(1, 1, *shape[1:]), torch.zeros(1, 1, dtype=torch.long))
    base = _vm("VmRSS")
    rows, times, t_prev = [], [], time.perf_counter()
    for i in range(2, frames + 1):
        _, cache = sampler.step(cache, action)
        now = time.perf_counter()
        times.append(now - t_prev)
        t_prev = now
        if i in marks:
            window = times[-32:]
            rows.append({"frame": i, "ms_per_frame": round(1000 * sorted(window)[len(window) // 2], 2),
                         "cache_KiB": round(cache.nbytes() / 1024, 1),
                         "peak_mem_growth_MiB": round((_vm("VmHWM") - base) / 2**20, 2)})
    return {"preset": preset, "sampling_steps": steps, "rows": rows}


def bench_rollout() -> dict:
    res = _in_subprocess("rollout_memory")
    rows = res["rows"]
    by = {r["frame"]: r for r in rows}
    ratio_t = by[4000]["ms_per_frame"] / by[64]["ms_per_frame"]
    print(f"hybrid '{res['preset']}' rollout on CPU, one thread, {res['sampling_steps']} sampling steps/frame: "
          f"ms/frame at 4000 / at 64 = {ratio_t:.2f}; cache at 4000 vs 100: {by[4000]['cache_KiB']} vs "
          f"{by[100]['cache_KiB']} KiB; peak RSS growth 100 -> 4000: "
          f"{by[4000]['peak_mem_growth_MiB'] - by[100]['peak_mem_growth_MiB']:.2f} MiB")
    print(_table(rows, ["frame", "ms_per_frame", "cache_KiB", "peak_mem_growth_MiB"]))
    try:
        from lssvwm.plots import plot_curves

        plot_curves({"ms per frame": ([r["frame"] for r in rows], [r["ms_per_frame"] for r in rows])},
                    "frame index", "ms per generated frame", RESULTS / "rollout.png", "hybrid rollout cost")
    except Exception as e:  # plotting is a convenience
        print(f"(no plot: {e})")
    return {**res, "ms_ratio_4000_vs_64": round(ratio_t, 3)}


# -- inference vs context length, and training vs clip length (issue: hybrid vs quadratic baselines) -------
def _cache_with_context(model, frames: int):
    """A cache that has seen ``frames`` frames. Per-frame cost depends on the cache's size, not its content,
    so attention caches are filled with random keys/values of the right length (a real prefill of 4096
    frames through full attention is quadratic: hours on a CPU); SSM states are fixed-size anyway."""
    import torch

    from lssvwm.models.attention import KVCache
    from lssvwm.models.world_model import LayerCache, WorldCache

    cfg = model.cfg
    x = torch.zeros(1, 1, cfg.channels, cfg.frame_size, cfg.frame_size)
    _, cache = model(x, torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long))
    layers = []
    for blk, lc in zip(model.blocks, cache.layers):
        kv = lc.kv
        if kv is not None:
            keep = frames if blk.attn.window is None else min(frames, blk.attn.window - 1)
            b, _, n, h, d = kv.k.shape
            kv = KVCache(torch.randn(b, keep, n, h, d), torch.randn(b, keep, n, h, d))
        layers.append(LayerCache(lc.ssm, kv))
    return WorldCache(tuple(layers), frames, cache.last)


def infer_cost(method: str, context: int, preset: str = "small", steps: int = 2, frames: int = 4) -> dict:
    """ms per generated frame after ``context`` frames, and peak memory growth while generating."""
    import torch

    from lssvwm.config import SamplingConfig, model_preset
    from lssvwm.diffusion import Sampler, alpha_sigma
    from lssvwm.models.world_model import WorldModel

    torch.manual_seed(0)
    variant = {"hybrid-cached": "hybrid", "full-cached": "full-transformer", "full-recompute": "full-transformer"}
    cfg = model_preset(preset, variant[method])
    model = WorldModel(cfg).eval()
    sampler = Sampler(model, SamplingConfig(steps=steps))
    shape = (1, cfg.channels, cfg.frame_size, cfg.frame_size)
    a = torch.zeros(1, dtype=torch.long)
    base = _vm("VmRSS")
    times = []
    with torch.no_grad():
        if method == "full-recompute":  # DFoT/Oasis: no cache; every denoising step reruns the whole window
            window = torch.randn(1, context, *shape[1:])
            acts = torch.zeros(1, context + 1, dtype=torch.long)
            levels = torch.zeros(1, context + 1)
            for _ in range(frames):
                t0 = time.perf_counter()
                x = torch.randn(shape)
                for i in range(steps):
                    levels[:, -1] = 1 - i / steps
                    v, _ = model(torch.cat([window, x[:, None]], 1), levels, acts)
                    a_, s_ = alpha_sigma(levels[:, -1])
                    x = (a_ * x - s_ * v[:, -1]).clamp(-1, 1)
                times.append(time.perf_counter() - t0)
        else:
            cache = _cache_with_context(model, context)
            for _ in range(frames):
                t0 = time.perf_counter()
                _, cache = sampler.step(cache, a)
                times.append(time.perf_counter() - t0)
    times = sorted(times[1:]) if len(times) > 1 else times
    return {"method": method, "context": context, "ms_per_frame": round(1000 * times[len(times) // 2], 1),
            "peak_mem_MiB": round((_vm("VmHWM") - base) / 2**20, 1)}


def bench_inference() -> dict:
    rows = []
    for method, contexts in (("hybrid-cached", (64, 256, 1024, 4096)), ("full-cached", (64, 256, 1024, 4096)),
                             ("full-recompute", (64, 256))):
        for n in contexts:
            rows.append(_in_subprocess("infer_cost", method, n))
    by = {(r["method"], r["context"]): r for r in rows}
    flat = by[("hybrid-cached", 4096)]["ms_per_frame"] / by[("hybrid-cached", 64)]["ms_per_frame"]
    speedup = by[("full-cached", 4096)]["ms_per_frame"] / by[("hybrid-cached", 4096)]["ms_per_frame"]
    print("ms per generated frame vs context length, 'small' preset, 2 sampling steps, one CPU thread.\n"
          "full-recompute (no cache, as DFoT/Oasis) beyond 256 frames: not run (quadratic; minutes per frame).\n"
          "Attention caches are filled with random keys/values of the right size (cost does not depend on content).")
    print(_table(rows, ["method", "context", "ms_per_frame", "peak_mem_MiB"]))
    print(f"hybrid frame-4096 / frame-64 cost = {flat:.2f} (target <= 1.1); full-cached / hybrid at 4096 = "
          f"{speedup:.1f}x (target >= 10x)")
    try:
        from lssvwm.plots import plot_curves

        curves = {m: ([r["context"] for r in rows if r["method"] == m], [r["ms_per_frame"] for r in rows
                                                                          if r["method"] == m])
                  for m in ("hybrid-cached", "full-cached", "full-recompute")}
        plot_curves(curves, "context length (frames)", "ms per generated frame", RESULTS / "inference.png",
                    "inference cost vs context")
    except Exception as e:
        print(f"(no plot: {e})")
    return {"rows": rows, "hybrid_ratio_4096_vs_64": round(flat, 3), "full_over_hybrid_at_4096": round(speedup, 2)}


def train_cost(variant: str, clip: int, preset: str = "small") -> dict:
    import torch

    from lssvwm.config import DiffusionConfig, model_preset
    from lssvwm.diffusion import training_loss
    from lssvwm.config import TrainConfig
    from lssvwm.loop import autocast_dtype
    from lssvwm.models.world_model import WorldModel

    torch.manual_seed(0)
    cfg = model_preset(preset, variant)
    model = WorldModel(cfg)
    x = torch.randn(1, clip, cfg.channels, cfg.frame_size, cfg.frame_size)
    a = torch.zeros(1, clip, dtype=torch.long)
    base = _vm("VmRSS")
    amp = autocast_dtype(TrainConfig(), torch.device("cpu"))  # as training's default (autocast: auto)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = training_loss(model, x, a, DiffusionConfig())
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    tokens = clip * (cfg.frame_size // cfg.patch_size) ** 2
    return {"variant": variant, "clip_frames": clip, "tokens_per_s": round(tokens / min(times)),
            "peak_mem_MiB": round((_vm("VmHWM") - base) / 2**20, 1)}


def bench_training() -> dict:
    rows = [_in_subprocess("train_cost", v, c) for v in ("hybrid", "full-transformer") for c in (16, 64, 256)]
    import torch

    from lssvwm.config import TrainConfig
    from lssvwm.loop import autocast_dtype

    amp = "bf16" if autocast_dtype(TrainConfig(), torch.device("cpu")) else "fp32: this CPU has no fast bf16"
    print(f"training step (forward + backward, autocast {amp}), 'small' preset, batch 1, one CPU thread")
    print(_table(rows, ["variant", "clip_frames", "tokens_per_s", "peak_mem_MiB"]))
    return {"rows": rows}


# -- synthetic long-range recall: hybrid vs windowed transformer -------------------------------------------
def recall_experiment(out: str, steps: int = 3000, length: int = 24, clips: int = 1200, window: int = 3,
                      distances=(0, 1, 2, 4, 8, 12, 16, 20), variants=("hybrid", "window-transformer"),
                      seed: int = 0) -> dict:
    """Train tiny models of each variant on the same recall data, steps and seed; recall PSNR vs D."""
    from lssvwm.config import DiffusionConfig, RunConfig, TrainConfig, model_preset
    from lssvwm.checkpoint import load_model
    from lssvwm.data.recall import NUM_ACTIONS, generate_recall_dataset
    from lssvwm.evaluation import recall_psnr
    from lssvwm.train import train

    out = Path(out)
    data = out / "data"
    if not (data / f"ep_{clips - 1:06d}.npz").exists():
        generate_recall_dataset(data, clips, length, seed=seed)
    rows = []
    for variant in variants:
        run = out / variant
        cfg = RunConfig(model=model_preset("tiny", variant, window=window, num_actions=NUM_ACTIONS),
                        diffusion=DiffusionConfig(),
                        train=TrainConfig(data=str(data), out=str(run), clip_len=length, batch_size=16, steps=steps,
                                          lr=2e-3, warmup=50, ckpt_every=steps, seed=seed, val_fraction=0.05))
        if not (run / "checkpoints" / "latest").exists():
            train(cfg, progress=False)
        model, _, _ = load_model(run)
        for d in distances:
            rows.append({"variant": variant, "D": d, "D_over_k": round(d / window, 2),
                         "recall_psnr": round(recall_psnr(model, d, length), 2)})
    return {"window_k": window, "steps": steps, "clip_length": length, "rows": rows}


def bench_recall() -> dict:
    res = recall_experiment(str(RESULTS / "recall"))
    print(f"synthetic recall: cue, D distractor frames, recall; tiny models, {res['steps']} steps each, same data "
          f"and seed; windowed transformer k = {res['window_k']} sees the cue only while D <= k - 2")
    print(_table(res["rows"], ["variant", "D", "D_over_k", "recall_psnr"]))
    try:
        from lssvwm.plots import plot_curves

        curves = {v: ([r["D"] for r in res["rows"] if r["variant"] == v],
                      [r["recall_psnr"] for r in res["rows"] if r["variant"] == v])
                  for v in {r["variant"] for r in res["rows"]}}
        plot_curves(curves, "D (distractor frames between cue and recall)", "recall PSNR (dB)",
                    RESULTS / "recall.png", f"recall vs distance (window k = {res['window_k']})")
    except Exception as e:
        print(f"(no plot: {e})")
    return res


# -- GPU (needs CUDA; not part of `make bench`) -------------------------------------------------------------
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

        def step():
            with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
                loss, _ = training_loss(fwd, x, a, DiffusionConfig())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = _time(step, device, reps=5, warmup=3 if compile else 2)
        flops = step_flops(step)
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


def bench_gpu(smoke: bool = False) -> dict:
    """#15's measurements on one GPU: training tokens/s, MFU and peak memory of the presets at 16- and 64-frame
    clips (each attention backend, with and without torch.compile), decoding frames/s at batch 1 with 4 steps, and
    the kernels against their references. ``smoke`` runs the same code small on the CPU (a test)."""
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
    print(_table(train_rows, [c for c in cols if any(c in r for r in train_rows)]))
    decode_rows = [decode_fps(p, device, frames=4 if smoke else 48) for p in (("tiny",) if smoke else ("small",
                                                                                                          "paper"))]
    print("decoding, batch 1, 4 denoising steps per frame")
    print(_table(decode_rows, ["preset", "steps", "frames_per_s", "ms_per_frame"]))
    kernel_rows = kernels_vs_reference(device, 256, 4, 16) if smoke else kernels_vs_reference(device)
    print(_table(kernel_rows, ["kernel", "L", "ms", "rel_err_vs_ref"]))
    return {"device": name, "autocast": kind, "matmul_peak_tflops": float(f"{peak:.3g}"), "datasheet_tflops": spec, "training": train_rows,
            "decoding": decode_rows, "kernels": kernel_rows}


def bench_gpu_smoke() -> dict:
    return bench_gpu(smoke=True)


def bench_play() -> dict:
    """What a user plays (maze-small and the demo's model at batch 1, 1 and 2 threads): benchmarks/play.py."""
    from benchmarks import play

    return play.run()


def bench_profile() -> dict:
    """The training step of the demo's model and `base` against the measured matmul peak: benchmarks/train_step.py
    (``python -m benchmarks.train_step --against REV`` times another commit side by side)."""
    from benchmarks import train_step

    return train_step.run(rounds=3)


BENCHES = {"maze": bench_maze, "ssm": bench_ssm, "rollout": bench_rollout, "play": bench_play, "profile": bench_profile,
           "inference": bench_inference, "training": bench_training, "recall": bench_recall,
           "gpu": bench_gpu, "gpu-smoke": bench_gpu_smoke}


def main(argv=None):
    names = (argv if argv is not None else sys.argv[1:]) or [n for n in BENCHES if not n.startswith("gpu")]
    for name in names:
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        print(f"\n== {name} ==")
        path = _save(name, BENCHES[name]())
        print(f"-> {path}")


if __name__ == "__main__":
    main()
