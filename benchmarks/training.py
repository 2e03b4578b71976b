"""Training tokens/s and peak memory vs clip length, hybrid vs full-context transformer."""
from __future__ import annotations

import time

from benchmarks.common import in_subprocess, table, vm


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
    base = vm("VmRSS")
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
            "peak_mem_MiB": round((vm("VmHWM") - base) / 2**20, 1)}


def run() -> dict:
    rows = [in_subprocess("training", "train_cost", v, c) for v in ("hybrid", "full-transformer")
            for c in (16, 64, 256)]
    import torch

    from lssvwm.config import TrainConfig
    from lssvwm.loop import autocast_dtype

    amp = "bf16" if autocast_dtype(TrainConfig(), torch.device("cpu")) else "fp32: this CPU has no fast bf16"
    print(f"training step (forward + backward, autocast {amp}), 'small' preset, batch 1, one CPU thread")
    print(table(rows, ["variant", "clip_frames", "tokens_per_s", "peak_mem_MiB"]))
    return {"rows": rows}
