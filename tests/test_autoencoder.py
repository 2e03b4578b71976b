"""The frame autoencoder and latent world modelling."""
import json

import numpy as np
import pytest
import torch

from lssvwm.config import AERunConfig, AETrainConfig, ConfigError, autoencoder_preset
from lssvwm.checkpoint import load_autoencoder
from lssvwm.models.autoencoder import Autoencoder, LatentCodec


@pytest.mark.parametrize("down", [2, 4, 8])
def test_shapes_round_trip(down):
    ae = Autoencoder(autoencoder_preset("tiny", downsample=down)).eval()
    x = torch.rand(2, 3, 3, 32, 32) * 2 - 1  # (B, T, C, H, W)
    codec = LatentCodec(ae, chunk=4)
    z = codec.encode(x)
    assert z.shape == (2, 3, 4, 32 // down, 32 // down)
    y = codec.decode(z)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    # chunking does not change results
    torch.testing.assert_close(z, LatentCodec(ae, chunk=64).encode(x))


def test_calibrate_gives_unit_scale():
    torch.manual_seed(0)
    ae = Autoencoder(autoencoder_preset("tiny"))
    frames = torch.rand(16, 3, 16, 16) * 2 - 1
    scale = ae.calibrate(frames)
    assert scale > 0 and abs(float(ae.encode(frames).detach().std()) - 1.0) < 1e-4
    # decode undoes the scale: decoding scaled latents equals decoding the raw posterior mean
    mean, _ = ae.posterior(frames)
    torch.testing.assert_close(ae.decode(ae.encode(frames)), ae.decoder(mean).clamp(-1, 1), atol=1e-5, rtol=1e-4)


def test_config_errors():
    with pytest.raises(ConfigError, match="autoencoder.downsample must be 2, 4 or 8, got 3"):
        autoencoder_preset("tiny", downsample=3)
    with pytest.raises(ConfigError, match="unknown autoencoder preset 'huge'"):
        autoencoder_preset("huge")


def _ae_cfg(data, out, steps):
    return AERunConfig(autoencoder=autoencoder_preset("tiny"),
                       train=AETrainConfig(data=str(data), out=str(out), steps=steps, batch_size=16, lr=2e-3,
                                           warmup=5, val_fraction=0.25, autocast="none", ckpt_every=10, ema_decay=0.9))


@pytest.fixture(scope="module")
def ae_run(tiny_data, tmp_path_factory):
    from lssvwm.train_ae import train_autoencoder

    return train_autoencoder(_ae_cfg(tiny_data, tmp_path_factory.mktemp("ae") / "run", 100), progress=False)


def test_training_beats_trivial_baseline(ae_run):
    m = json.loads((ae_run / "metrics.json").read_text())
    assert m["step"] == 100
    # after 100 steps the autoencoder reconstructs held-out frames better than the mean training frame
    assert m["psnr"] > m["psnr_mean_frame"] + 2, m
    assert (ae_run / "reconstructions.png").exists()
    ae, cfg = load_autoencoder(ae_run)
    assert cfg.train.steps == 100 and float(ae.latent_scale) != 1.0


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    from lssvwm.train_ae import train_autoencoder

    full = train_autoencoder(_ae_cfg(tiny_data, tmp_path / "full", 20), progress=False)
    part = _ae_cfg(tiny_data, tmp_path / "part", 20)
    train_autoencoder(part, progress=False, stop_after=10)  # "killed" after the step-10 checkpoint
    train_autoencoder(part, resume=True, progress=False)
    losses = [[json.loads(x)["loss"] for x in (r / "log.jsonl").read_text().splitlines()] for r in (full, tmp_path / "part")]
    assert len(losses[1]) == 20
    assert losses[0] == losses[1]


def test_latent_world_model_trains_and_rolls_out(ae_run, tiny_data, tmp_path):
    from lssvwm.config import RunConfig, SamplingConfig, TrainConfig, model_preset
    from lssvwm.data.dataset import EpisodeWindows
    from lssvwm.checkpoint import load_run
    from lssvwm.generate import episode_rollout
    from lssvwm.train import train

    # tiny AE: 16x16x3 frames -> 4x4x4 latents
    model = model_preset("tiny", channels=4, frame_size=4, patch_size=1)
    cfg = RunConfig(model=model, sampling=SamplingConfig(steps=2),
                    train=TrainConfig(data=str(tiny_data), out=str(tmp_path / "wm"), steps=3, clip_len=6,
                                      batch_size=2, val_fraction=0.25, autocast="none",
                                      autoencoder=str(ae_run)))
    train(cfg, progress=False)
    run = load_run(tmp_path / "wm")
    assert run.codec.value_range is None  # latents: the sampler never clamps them
    ep = EpisodeWindows(tiny_data, 1, "val", 0.25).episode(0)
    ctx, gt, pred = episode_rollout(run.sampler(steps=2), ep, 5, 3)
    assert ctx.shape == (5, 3, 16, 16) and gt.shape == pred.shape == (3, 3, 16, 16)
    from lssvwm.dream import DreamEnv  # play: the model runs on latents, the player sees decoded pixels

    env = DreamEnv(tmp_path / "wm", context_frames=4, steps=1)
    frame, _ = env.reset(seed=0)
    frame, *_ = env.step(1)
    assert frame.shape == env.observation_space.shape == (16, 16, 3) and frame.dtype == np.uint8
    bad = RunConfig(model=model_preset("tiny"), train=TrainConfig(data=str(tiny_data), out=str(tmp_path / "bad"),
                                                                  autoencoder=str(ae_run)))
    with pytest.raises(ConfigError, match="the autoencoder's latents are 4x4x4 but model.frame_size=16"):
        train(bad, progress=False)


@pytest.mark.parametrize("name,pixels", [("memory-maze", 64), ("minecraft", 128)])
def test_shipped_latent_configs_fit_their_autoencoders(name, pixels):
    from pathlib import Path

    from lssvwm.config import load_ae_config, load_config

    root = Path(__file__).parent.parent / "configs"
    run, ae = load_config(root / f"{name}.yaml"), load_ae_config(root / f"ae-{name}.yaml")
    assert run.model.frame_size * ae.autoencoder.downsample == pixels
    assert run.model.channels == ae.autoencoder.latent_channels
    assert run.train.autoencoder == ae.train.out
    z = Autoencoder(ae.autoencoder).encode(torch.zeros(1, 3, pixels, pixels))
    assert z.shape == (1, run.model.channels, run.model.frame_size, run.model.frame_size)
