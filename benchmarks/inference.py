"""Per-frame cost vs context length: the hybrid (cached), the full-context transformer (growing KV cache) and
sliding-window recompute (no cache, as DFoT/Oasis)."""
from __future__ import annotations

import time

from benchmarks.common import RESULTS, in_subprocess, table, vm


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
    base = vm("VmRSS")
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
            "peak_mem_MiB": round((vm("VmHWM") - base) / 2**20, 1)}


def run() -> dict:
    rows = []
    for method, contexts in (("hybrid-cached", (64, 256, 1024, 4096)), ("full-cached", (64, 256, 1024, 4096)),
                             ("full-recompute", (64, 256))):
        for n in contexts:
            rows.append(in_subprocess("inference", "infer_cost", method, n))
    by = {(r["method"], r["context"]): r for r in rows}
    flat = by[("hybrid-cached", 4096)]["ms_per_frame"] / by[("hybrid-cached", 64)]["ms_per_frame"]
    speedup = by[("full-cached", 4096)]["ms_per_frame"] / by[("hybrid-cached", 4096)]["ms_per_frame"]
    print("ms per generated frame vs context length, 'small' preset, 2 sampling steps, one CPU thread.\n"
          "full-recompute (no cache, as DFoT/Oasis) beyond 256 frames: not run (quadratic; minutes per frame).\n"
          "Attention caches are filled with random keys/values of the right size (cost does not depend on content).")
    print(table(rows, ["method", "context", "ms_per_frame", "peak_mem_MiB"]))
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
