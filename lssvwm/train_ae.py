"""Train the frame autoencoder (``lssvwm train-ae``): single process, CPU or GPU, exact resume.

Uses the training machinery of :mod:`lssvwm.loop` (batch sampler, LR schedule, autocast, EMA, the loop skeleton)
and atomic checkpoints; a
checkpoint folder holds ``model.safetensors``, ``ema.safetensors``, ``config.yaml`` (an AERunConfig) and
``state.pt``. After training, ``metrics.json`` reports the validation reconstruction PSNR beside two trivial
baselines, and ``reconstructions.png`` shows originals over reconstructions.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .config import AERunConfig
from .data.dataset import EpisodeWindows
from .metrics import psnr
from .models.autoencoder import Autoencoder
from .resources import default_device
from .loop import (Loop, StepBatchSampler, autocast_dtype, check_data_folder, init_training, optimizer_step,
                   stable_seed)
from .writer_lock import one_writer


def _frames(ds: EpisodeWindows, n: int) -> torch.Tensor:
    """``n`` frames spread evenly over the dataset (a fixed set, for calibration and validation)."""
    idx = torch.linspace(0, len(ds) - 1, min(n, len(ds))).long().tolist()
    return torch.cat([ds[i]["frames"] for i in idx])  # (n, C, H, W)


@torch.no_grad()
def evaluate_reconstruction(ae: Autoencoder, frames: torch.Tensor, train_mean: torch.Tensor) -> dict:
    """Validation PSNR of the autoencoder vs (a) the mean training frame, (b) bilinear down/up sampling by the
    same factor (3 channels per latent position, close to the autoencoder's 4)."""
    ae.eval()
    f = ae.cfg.downsample
    recon = torch.cat([ae.decode(ae.encode(x)) for x in frames.split(64)])
    small = torch.nn.functional.interpolate(frames, scale_factor=1 / f, mode="area")
    bilinear = torch.nn.functional.interpolate(small, scale_factor=f, mode="bilinear", align_corners=False)
    return {"psnr": float(psnr(recon, frames).mean()),
            "psnr_mean_frame": float(psnr(train_mean.expand_as(frames), frames).mean()),
            "psnr_bilinear": float(psnr(bilinear.clamp(-1, 1), frames).mean()),
            "frames": int(frames.shape[0])}


def train_autoencoder(cfg: AERunConfig, resume: bool = False, progress: bool = True,
                      stop_after: int | None = None) -> Path:
    """Train the frame autoencoder; returns the run folder, held by this process while it trains."""
    cfg.validate()
    with one_writer(cfg.train.out, "autoencoder training run"):
        return _train_autoencoder(cfg, resume, progress, stop_after)


def _train_autoencoder(cfg: AERunConfig, resume: bool, progress: bool, stop_after: int | None) -> Path:
    tc, a = cfg.train, cfg.autoencoder
    run = Path(tc.out)
    device = default_device()
    check_data_folder(tc, resume)
    ds = EpisodeWindows(tc.data, 1, "train", tc.val_fraction, layout=tc.data_layout)
    h, w, _ = ds.frame_shape
    lh, lw, lc = a.latent_shape(*ds.frame_shape)
    amp = autocast_dtype(tc, device)
    torch.manual_seed(tc.seed)
    model = Autoencoder(a).to(device)
    ema, opt, start, state = init_training(model, tc, run, resume)
    run.mkdir(parents=True, exist_ok=True)
    cfg.save(run / "config.yaml")
    print(f"lssvwm train-ae: {run} | {model.num_params() / 1e6:.2f}M params | {len(ds)} frames {h}x{w} -> latents "
          f"{lc}x{lh}x{lw} | device {device} | autocast {amp}\n"
          f"{cfg.to_yaml()}", flush=True)
    calib = _frames(ds, 256).to(device)
    val_ds = EpisodeWindows(tc.data, 1, "val", tc.val_fraction, layout=tc.data_layout)
    val = _frames(val_ds, 256).to(device)
    train_mean = calib.mean(dim=0, keepdim=True)

    loader = torch.utils.data.DataLoader(ds, batch_sampler=StepBatchSampler(len(ds), tc.batch_size, tc.seed, start,
                                                                            None))  # the loop stops
    batches = iter(loader)
    loop = Loop(tc, run, start, opt, "train-ae", progress, stop_after=stop_after, state=state)
    done = start
    for step in loop:
        x = next(batches)["frames"][:, 0].to(device)  # (B, C, H, W)
        gen = torch.Generator().manual_seed(stable_seed(tc.seed, step, 2))
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, stats = model.loss(x, gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step}: autoencoder loss is {loss.item()}; lower train.lr")
        optimizer_step(model, ema, opt, loss, step, tc)
        done = step + 1
        if loop.end_step(step, {"loss": loss.item(), **stats}, frames=tc.batch_size):
            for m in (model, ema):
                m.calibrate(calib)
            save_checkpoint(run, step + 1, cfg, model, ema, opt, loop.state())
    loop.close()
    metrics = evaluate_reconstruction(ema, val, train_mean)
    metrics["step"] = done
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _reconstruction_png(ema, val[:8], run / "reconstructions.png")
    print(f"validation reconstruction PSNR {metrics['psnr']:.2f} dB (bilinear {a.downsample}x down/up "
          f"{metrics['psnr_bilinear']:.2f} dB, mean frame {metrics['psnr_mean_frame']:.2f} dB) on "
          f"{metrics['frames']} frames -> {run}", flush=True)
    return run


@torch.no_grad()
def _reconstruction_png(ae: Autoencoder, frames: torch.Tensor, path: Path) -> Path:
    import imageio.v2 as imageio
    import numpy as np

    from .video import to_uint8, upscale

    recon = ae.decode(ae.encode(frames))
    top, bottom = to_uint8(frames), to_uint8(recon)
    rows = [np.concatenate(list(r), axis=1) for r in (top, bottom)]
    img = upscale(np.concatenate(rows, axis=0)[None], max(1, 256 // frames.shape[-1]))[0]
    imageio.imwrite(path, img)
    return path
