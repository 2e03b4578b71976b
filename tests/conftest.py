import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """4 maze episodes of 40 steps at 16x16 (the `tiny` preset's frame size)."""
    from lssvwm.data.episodes import generate_dataset

    root = tmp_path_factory.mktemp("maze16")
    generate_dataset(root, episodes=4, steps=40, resolution=16, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    from lssvwm.config import RunConfig, SamplingConfig, TrainConfig, model_preset
    from lssvwm.train import train

    out = tmp_path_factory.mktemp("play") / "run"
    cfg = RunConfig(model=model_preset("tiny"), sampling=SamplingConfig(steps=1),
                    train=TrainConfig(data=str(tiny_data), out=str(out), steps=3, clip_len=6, batch_size=2,
                                      val_fraction=0.25, autocast="none"))
    train(cfg, progress=False)
    return out
