import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lssvwm.data.dataset import EpisodeWindows
from lssvwm.data.episodes import (EpisodeFormatError, episode_seed, generate_dataset, generate_episode,
                                  load_episode, read_meta, save_episode)


def test_round_trip_exact(tmp_path):
    ep = generate_episode(seed=1, steps=20, resolution=16)
    save_episode(tmp_path / "e.npz", ep)
    back = load_episode(tmp_path / "e.npz")
    assert set(back) == set(ep)
    for k in ep:
        assert np.array_equal(back[k], ep[k]) and back[k].dtype == ep[k].dtype
    assert ep["image"].shape == (21, 16, 16, 3) and ep["action"].shape == (21, 6)
    assert not ep["action"][0].any() and (ep["action"][1:].sum(1) == 1).all()


def test_generation_resumable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_dataset(a, episodes=3, steps=10, resolution=8, seed=5, progress=False)
    # b: an interrupted run: one complete episode, one truncated file, one stale temp file
    generate_dataset(b, episodes=1, steps=10, resolution=8, seed=5, progress=False)
    (b / "meta.json").unlink()
    (b / "ep_000001.npz").write_bytes((a / "ep_000001.npz").read_bytes()[:100])
    (b / "ep_000002.npz.tmp").write_bytes(b"partial")
    generate_dataset(b, episodes=3, steps=10, resolution=8, seed=5, progress=False)
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())
    for i in range(3):
        ea, eb = load_episode(a / f"ep_{i:06d}.npz"), load_episode(b / f"ep_{i:06d}.npz")
        assert all(np.array_equal(ea[k], eb[k]) for k in ea)
    meta = json.loads((a / "meta.json").read_text())
    assert meta["episodes"] == 3 and meta["image_shape"] == [11, 8, 8, 3] and meta["seed"] == 5
    assert episode_seed(5, 0) != episode_seed(5, 1)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture
def good():
    return generate_episode(seed=0, steps=6, resolution=8)


@pytest.mark.parametrize("case, pattern", [
    ("missing", "missing key 'image'"),
    ("dtype", "'image' must be uint8"),
    ("shape", r"'image' must have shape \(T\+1, H, W, 3\)"),
    ("length", "length mismatch: 'image' has 7 frames but 'action' has 6"),
    ("onehot", "must be one-hot"),
    ("truncated", "not a readable .npz"),
    ("pos", "'agent_pos' must have shape"),
])
def test_malformed_files(tmp_path, good, case, pattern):
    p = tmp_path / "bad.npz"
    ep = dict(good)
    if case == "missing":
        del ep["image"]
    elif case == "dtype":
        ep["image"] = ep["image"].astype(np.float32)
    elif case == "shape":
        ep["image"] = ep["image"][..., 0]
    elif case == "length":
        ep["action"] = ep["action"][:-1]
    elif case == "onehot":
        ep["action"] = ep["action"].copy()
        ep["action"][3] = [1, 1, 0, 0, 0, 0]
    elif case == "pos":
        ep["agent_pos"] = ep["agent_pos"][:, :1]
    _write(p, **ep)
    if case == "truncated":
        p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(EpisodeFormatError, match=pattern) as e:
        load_episode(p)
    assert str(p) in str(e.value)


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(EpisodeFormatError, match="no episode files"):
        EpisodeWindows(tmp_path, 4)
    with pytest.raises(EpisodeFormatError, match="not found"):
        EpisodeWindows(tmp_path / "nope", 4)


def test_windows_alignment_and_split(tiny_data):
    train = EpisodeWindows(tiny_data, 8, "train", val_fraction=0.25)
    val = EpisodeWindows(tiny_data, 8, "val", val_fraction=0.25)
    assert not set(train.files) & set(val.files) and len(train.files) == 3 and len(val.files) == 1
    item = train[0]
    assert item["frames"].shape == (8, 3, 16, 16) and item["frames"].dtype == torch.float32
    assert -1 <= item["frames"].min() and item["frames"].max() <= 1
    assert item["actions"][0] == -1  # window at the episode start: dummy first action
    ep = load_episode(train.files[0])
    e, s = train.index[5]
    w = train[5]
    assert np.array_equal(w["actions"].numpy(), ep["action"][s:s + 8].argmax(1))  # action[t] led to frame t
    img = ((w["frames"].permute(0, 2, 3, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
    assert np.array_equal(img, ep["image"][s:s + 8])
    with pytest.raises(EpisodeFormatError, match="shorter than the window"):
        EpisodeWindows(tiny_data, 100)


def test_cli_data_and_preview(tmp_path):
    out = tmp_path / "d"
    cmd = [sys.executable, "-m", "lssvwm", "data", "maze", "--episodes", "2", "--steps", "12", "--resolution", "16",
           "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "lssvwm", "data", "preview", str(out), "--episode", "1"],
                       check=True, capture_output=True, text=True)
    video = out / "preview_000001.mp4"
    assert video.exists() and video.stat().st_size > 1000, r.stdout
    import imageio.v2 as imageio

    frames = imageio.mimread(video)
    assert len(frames) == 13
    bad = subprocess.run([sys.executable, "-m", "lssvwm", "data", "preview", str(tmp_path / "empty")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "dataset folder not found" in bad.stderr
    look = subprocess.run(cmd[:-1] + [str(tmp_path / "look"), "--spin-prob", "0.5", "--spin-turns", "1"],
                          capture_output=True, text=True)
    assert look.returncode == 0, look.stderr
    assert read_meta(tmp_path / "look")["policy"] == {"spin_prob": 0.5, "spin_turns": 1}
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "bad"), "--spin-prob", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--spin-prob" in bad.stderr and not (tmp_path / "bad").exists()


def test_top_down_reads_both_file_formats():
    """Ours: 1 = wall, outer walls included. The real Memory Maze's: 1 = free, no outer walls (targets_pos
    present): inverted and padded, positions shifted into the padded grid."""
    import numpy as np

    from lssvwm.data.episodes import top_down

    layout = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]])
    ours = {"maze_layout": layout, "agent_pos": np.array([[1.5, 1.5], [1.5, 1.6]])}
    lay, pos = top_down(ours)
    assert np.array_equal(lay, layout) and np.array_equal(pos, ours["agent_pos"])
    mm = {"maze_layout": np.ones((2, 2, 2)), "agent_pos": np.array([[0.5, 0.5]]), "targets_pos": np.zeros((3, 2))}
    lay, pos = top_down(mm)
    assert lay.shape == (4, 4) and lay[1:3, 1:3].sum() == 0 and lay.sum() == 12 and np.array_equal(pos, [[1.5, 1.5]])
    assert top_down({"image": np.zeros((2, 8, 8, 3))}) is None
