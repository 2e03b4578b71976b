"""Video datasets: TECO Minecraft's layout and your own mp4 + actions, on tiny files in the exact layouts."""
import json

import numpy as np
import pytest
import torch

from lssvwm.data.dataset import EpisodeWindows
from lssvwm.data.episodes import EpisodeFormatError
from lssvwm.data.videos import detect_layout, load_video_episode, read_video, write_video_episode


def _frames(t: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth moving colour gradients (codec-friendly), distinct per frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 1, 3)
    out = [np.stack([(np.sin(2 * np.pi * (x + 0.1 * i + base[c]) + 3 * y * c) + 1) * 110 + 10 * c
                     for c in range(3)], -1) for i in range(t)]
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def _teco(root, frames: int = 12, actions: int = 13, workers: int = 2, per: int = 2):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for w in range(workers):
            for i in range(per):
                a = rng.integers(1, 4, size=actions)
                a[0] = 0  # the reset dummy
                write_video_episode(root / split / str(w) / f"{i:06d}.mp4", _frames(frames, seed=i + 10 * w), a)
    return root


def test_video_round_trip_close(tmp_path):
    frames = _frames(10)
    write_video_episode(tmp_path / "a.mp4", frames, np.arange(10) % 3)
    back = read_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape and back.dtype == np.uint8
    # H.264 (yuv420p) is lossy, so compare distances: decoded frame i is nearest to original frame i, in order
    d = np.abs(back[:, None].astype(float) - frames[None].astype(float)).mean(axis=(2, 3, 4))  # (10, 10)
    np.testing.assert_array_equal(d.argmin(axis=1), np.arange(10))
    assert d.diagonal().mean() < 10, d.diagonal()


@pytest.mark.parametrize("n_actions", [12, 13])
def test_teco_layout_300_vs_301(tmp_path, n_actions):
    root = _teco(tmp_path / "mc", frames=12, actions=n_actions)
    assert detect_layout(root) == "teco"
    image, ids = load_video_episode(root / "train" / "0" / "000000.mp4", "teco")
    raw = np.load(root / "train" / "0" / "000000.npz")["actions"]
    assert image.shape == (12, 32, 32, 3)
    expect = raw[1:] - 1 if n_actions == 13 else raw - 1  # one extra action: the dummy is dropped
    np.testing.assert_array_equal(ids, expect)
    if n_actions == 12:
        assert ids[0] == -1  # the dummy of the reset frame means "no action"
    train, val = EpisodeWindows(root, 5, "train"), EpisodeWindows(root, 5, "val")
    assert train.layout == "teco" and train.num_actions == 3 and train.action_dim == 0
    assert all("/train/" in str(f) for f in train.files) and all("/test/" in str(f) for f in val.files)
    assert len(train.files) == 4 and len(train) == 4 * (12 - 5 + 1)
    item = train[3]
    assert item["frames"].shape == (5, 3, 32, 32) and item["actions"].dtype == torch.int64
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1


def _own(tmp_path, actions, name="clip", frames=10, suffix="npz"):
    root = tmp_path / "own"
    root.mkdir(parents=True, exist_ok=True)
    write_video_episode(root / f"{name}.mp4", _frames(frames), np.zeros(frames, np.int64))
    (root / f"{name}.npz").unlink()
    if suffix == "npz":
        np.savez(root / f"{name}.npz", actions=actions)
    else:
        (root / f"{name}.json").write_text(json.dumps(actions))
    return root


@pytest.mark.parametrize("length", [10, 9])
def test_own_discrete_actions_shift_by_one(tmp_path, length):
    acts = np.arange(length) % 4
    root = _own(tmp_path, acts)
    assert detect_layout(root) == "videos"
    _, ids = load_video_episode(root / "clip.mp4", "videos")
    # actions[t] is taken at frame t, so frame t+1 carries it; frame 0 has none
    np.testing.assert_array_equal(ids, np.concatenate([[-1], acts[:9]]))


def test_own_json_and_continuous(tmp_path):
    root = _own(tmp_path, {"actions": [1, 2, 0, 1, 2, 0, 1, 2, 0, 1]}, suffix="json")
    assert load_video_episode(root / "clip.mp4", "videos")[1].tolist() == [-1, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    vec = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    root2 = _own(tmp_path / "c", vec)
    ds = EpisodeWindows(root2, 4, "all")
    assert ds.action_dim == 2
    ep = ds.episode(0)
    assert ep["actions"].shape == (10, 2) and torch.all(ep["actions"][0] == 0)
    torch.testing.assert_close(ep["actions"][1:], torch.from_numpy(vec[:9]))


def test_train_on_own_videos_continuous(tmp_path):
    from lssvwm.config import ConfigError, RunConfig, TrainConfig, model_preset
    from lssvwm.train import train

    root = tmp_path / "own"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_video_episode(root / f"c{i}.mp4", _frames(12, size=16, seed=i), rng.normal(size=(12, 3)))
    cfg = RunConfig(model=model_preset("tiny"), train=TrainConfig(data=str(root), out=str(tmp_path / "run"),
                                                                  steps=2, clip_len=6, batch_size=2, autocast="none"))
    with pytest.raises(ConfigError, match="continuous 3-d actions but model.action_dim=0"):
        train(cfg, progress=False)
    cfg.model = model_preset("tiny", action_dim=3)
    run = train(cfg, progress=False)
    assert (run / "checkpoints" / "latest").exists()


@pytest.mark.parametrize("case,pattern", [
    ("wrong_key", r"c\.npz: missing key 'actions' \(found keys: \['acts'\]\)"),
    ("teco_length", r"length mismatch: the video has 8 frames but 'actions' has 5 entries"),
    ("teco_range", r"values must be in 0..3"),
    ("own_length", r"length mismatch: the video has 8 frames but 'actions' has 3 rows"),
    ("own_shape", r"unknown shape \(8, 2, 2\)"),
    ("float_ids", r"unknown shape \(8,\) dtype float"),
    ("corrupt_mp4", r"c\.mp4: unreadable video"),
    ("no_actions", r"c\.mp4: no action file beside it"),
    ("bad_json", r"c\.json: unreadable action file"),
])
def test_malformed_video_files(tmp_path, case, pattern):
    layout = "teco" if case.startswith("teco") else "videos"
    mp4 = tmp_path / "c.mp4"
    write_video_episode(mp4, _frames(8), np.ones(8, np.int64))
    npz = mp4.with_suffix(".npz")
    if case == "wrong_key":
        np.savez(npz, acts=np.ones(8))
    elif case == "teco_length":
        np.savez(npz, actions=np.ones(5, np.int64))
    elif case == "teco_range":
        np.savez(npz, actions=np.full(8, 7))
    elif case == "own_length":
        np.savez(npz, actions=np.ones(3, np.int64))
    elif case == "own_shape":
        np.savez(npz, actions=np.ones((8, 2, 2)))
    elif case == "float_ids":
        np.savez(npz, actions=np.ones(8) * 0.5)
    elif case == "corrupt_mp4":
        mp4.write_bytes(b"\x00\x00\x00 ftypisom" + bytes(np.random.default_rng(0).integers(0, 255, 500, np.uint8)))
    elif case == "no_actions":
        npz.unlink()
    elif case == "bad_json":
        npz.unlink()
        mp4.with_suffix(".json").write_text("[1, 2,")
    with pytest.raises(EpisodeFormatError, match=pattern):
        load_video_episode(mp4, layout)


def test_empty_video_folder(tmp_path):
    (tmp_path / "train" / "0").mkdir(parents=True)
    with pytest.raises(EpisodeFormatError, match="no episode files"):
        EpisodeWindows(tmp_path, 4)  # nothing here: neither videos nor npz episodes


def test_lazy_loading_equals_cached(tmp_path, tiny_data):
    """Datasets too big for memory are indexed from headers and read per item; items are the same."""
    root = _teco(tmp_path / "mc", frames=12, actions=13)
    for data in (tiny_data, root):
        eager = EpisodeWindows(data, 5, "train", 0.25)
        lazy = EpisodeWindows(data, 5, "train", 0.25, max_cache_gb=0)
        assert eager.cache and not lazy.cache and not lazy._episodes
        assert lazy.index == eager.index and lazy.num_actions == eager.num_actions
        assert lazy.frame_shape == eager.frame_shape
        for i in (0, len(eager) // 2, len(eager) - 1):
            a, b = eager[i], lazy[i]
            assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["actions"], b["actions"])
        assert not lazy._episodes  # nothing kept


def test_lazy_errors_name_the_file(tmp_path, tiny_data):
    import shutil

    from lssvwm.data.episodes import load_episode

    for f in sorted(tiny_data.glob("*.npz")):
        shutil.copy(f, tmp_path / f.name)
    files = sorted(tmp_path.glob("*.npz"))
    files[0].write_bytes(files[0].read_bytes()[:300])  # truncated: caught while indexing
    with pytest.raises(EpisodeFormatError, match=rf"{files[0].name}: not a readable .npz"):
        EpisodeWindows(tmp_path, 4, "all", max_cache_gb=0)
    ds = EpisodeWindows(tmp_path, 4, "all", max_cache_gb=0, skip_bad=True)
    assert [f.name for f, _ in ds.bad_files] == [files[0].name]
    files[0].unlink()
    ep = load_episode(files[1])
    ep["action"][5] = 0.5  # not one-hot: only visible when the file is read
    np.savez(files[1], **ep)
    ds = EpisodeWindows(tmp_path, 4, "all", max_cache_gb=0)
    with pytest.raises(EpisodeFormatError, match=rf"{files[1].name}: field 'action' must be one-hot"):
        ds[0]
