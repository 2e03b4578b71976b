"""A hybrid rollout to frame 4,000: ms/frame, cache size and peak memory along the way (constant state)."""
from __future__ import annotations

import time

from benchmarks.common import RESULTS, in_subprocess, table, vm


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
    base = vm("VmRSS")
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
                         "peak_mem_growth_MiB": round((vm("VmHWM") - base) / 2**20, 2)})
    return {"preset": preset, "sampling_steps": steps, "rows": rows}


def run() -> dict:
    res = in_subprocess("rollout", "rollout_memory")
    rows = res["rows"]
    by = {r["frame"]: r for r in rows}
    ratio_t = by[4000]["ms_per_frame"] / by[64]["ms_per_frame"]
    print(f"hybrid '{res['preset']}' rollout on CPU, one thread, {res['sampling_steps']} sampling steps/frame: "
          f"ms/frame at 4000 / at 64 = {ratio_t:.2f}; cache at 4000 vs 100: {by[4000]['cache_KiB']} vs "
          f"{by[100]['cache_KiB']} KiB; peak RSS growth 100 -> 4000: "
          f"{by[4000]['peak_mem_growth_MiB'] - by[100]['peak_mem_growth_MiB']:.2f} MiB")
    print(table(rows, ["frame", "ms_per_frame", "cache_KiB", "peak_mem_growth_MiB"]))
    try:
        from lssvwm.plots import plot_curves

        plot_curves({"ms per frame": ([r["frame"] for r in rows], [r["ms_per_frame"] for r in rows])},
                    "frame index", "ms per generated frame", RESULTS / "rollout.png", "hybrid rollout cost")
    except Exception as e:  # plotting is a convenience
        print(f"(no plot: {e})")
    return {**res, "ms_ratio_4000_vs_64": round(ratio_t, 3)}
