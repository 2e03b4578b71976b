"""The real Memory Maze: its offline dataset's file layout (always), and generation in MuJoCo (slow, needs the
``memory-maze`` extra and OpenGL: OSMesa on CPU)."""
import numpy as np
import pytest
import torch

from lssvwm.data.dataset import EpisodeWindows
from lssvwm.data.episodes import load_episode


def _official_file(path, steps=20):
    """An episode with every key of the Memory Maze offline dataset (jurgisp/memory-maze README), T+1 rows."""
    rng = np.random.default_rng(0)
    n = steps + 1
    action = np.zeros((n, 6), np.float32)
    action[np.arange(1, n), rng.integers(0, 6, steps)] = 1.0
    layout = np.ones((9, 9), np.uint8)
    layout[4, 1:8] = 0
    np.savez_compressed(
        path, image=rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8), action=action,
        reward=np.zeros(n, np.float32), terminal=np.zeros(n, bool), maze_layout=np.repeat(layout[None], n, 0),
        agent_pos=rng.uniform(0.1, 8.9, (n, 2)), agent_dir=np.tile([1.0, 0.0], (n, 1)),
        targets_pos=rng.uniform(0, 9, (n, 3, 2)), targets_vec=rng.normal(size=(n, 3, 2)),
        target_pos=rng.uniform(0, 9, (n, 2)), target_vec=rng.normal(size=(n, 2)), target_color=rng.uniform(size=(n, 3)))
    return action


def test_official_layout_loads(tmp_path):
    action = _official_file(tmp_path / "ep.npz")
    ep = load_episode(tmp_path / "ep.npz")
    assert ep["image"].shape == (21, 64, 64, 3)
    ds = EpisodeWindows(tmp_path, 8, "all")
    assert ds.num_actions == 6 and ds.frame_shape == (64, 64, 3)
    acts = ds.episode(0)["actions"]
    assert acts[0] == -1  # the dummy first row
    torch.testing.assert_close(acts[1:], torch.from_numpy(action[1:].argmax(1)))


def test_preview_of_official_file(tmp_path):
    from lssvwm.cli import main

    _official_file(tmp_path / "ep.npz")
    assert main(["data", "preview", str(tmp_path), "--frames", "10", "--out", str(tmp_path / "p.mp4")]) == 0
    assert (tmp_path / "p.mp4").stat().st_size > 0


def test_missing_extra_message(monkeypatch):
    import builtins

    from lssvwm.data import memory_maze

    real = builtins.__import__

    def fake(name, *args, **kw):
        if name == "memory_maze":
            raise ImportError("No module named 'memory_maze'")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"pip install 'lssvwm\[memory-maze\]'"):
        memory_maze.make_env("9x9", 0)


@pytest.mark.slow
def test_generate_real_memory_maze(tmp_path):
    """Two short real episodes: the offline layout, exact replay in the same maze, and a retrieval task."""
    pytest.importorskip("memory_maze", reason="needs: pip install 'lssvwm[memory-maze]' (make test-slow does)")
    from lssvwm.data.episodes import action_indices
    from lssvwm.data.memory_maze import KEYS, MemoryMazeEnv, generate_dataset
    from lssvwm.data.memory_tasks import build_task_episode

    root = generate_dataset(tmp_path / "mm", episodes=2, steps=40, maze="9x9", seed=0, mazes=1, progress=False)
    eps = [load_episode(root / f"ep_{i:06d}.npz") for i in range(2)]
    for ep in eps:
        assert set(ep) == set(KEYS)
        assert all(v.shape[0] == 41 for v in ep.values())
        assert ep["image"].shape == (41, 64, 64, 3) and ep["image"].dtype == np.uint8
        assert ep["maze_layout"].shape == (41, 9, 9) and ep["action"].shape == (41, 6)
        assert not ep["action"][0].any() and np.all(ep["action"][1:].sum(1) == 1)  # dummy row 0, then one-hot
        assert ep["image"].std() > 10  # a rendered view, not a blank frame
    # mazes=1: both episodes in the same maze, on different trajectories
    np.testing.assert_array_equal(eps[0]["maze_layout"][0], eps[1]["maze_layout"][0])
    assert not np.allclose(eps[0]["agent_pos"], eps[1]["agent_pos"])
    # exact re-rendering: the same maze and actions give the same frames
    from lssvwm.data.episodes import fixed_maze_seed

    env = MemoryMazeEnv("9x9")
    obs, _ = env.reset(seed=fixed_maze_seed(0, 1, 0))
    frames = [obs["image"]] + [env.step(a)[0]["image"] for a in action_indices(eps[0]["action"])[1:]]
    env.close()
    np.testing.assert_array_equal(np.stack(frames), eps[0]["image"])
    task = build_task_episode("retrieval", seed=3, context=20, frames=10, resolution=64, world="memory-maze-9x9")
    assert task["image"].shape == (31, 64, 64, 3) and int(task["context_length"]) == 21
    assert len(task["memory_distance"]) == 10
