"""One place builds worlds (data/worlds.py): a dataset's meta.json records every maze setting, and the follow
windows and memory tasks are built in that same world."""
import json

import numpy as np
import pytest

from lssvwm.data.episodes import generate_dataset, generate_episode, read_meta
from lssvwm.data.maze import maze_settings
from lssvwm.data.worlds import World, world_from_meta, world_named

ODD = {"move_step": 0.1, "turn_step_deg": 30.0, "fov_deg": 60.0, "n_objects": 5, "loop_prob": 0.5}


def test_meta_records_every_maze_setting_and_rebuilds_that_world(tmp_path):
    generate_dataset(tmp_path / "d", 2, 10, resolution=16, size=7, seed=3, mazes=2, progress=False, world=ODD)
    meta = read_meta(tmp_path / "d")
    assert meta["world"] == maze_settings(size=7, resolution=16, **ODD)
    world = world_from_meta(meta)
    assert (world.kind, world.seed, world.mazes) == ("maze", 3, 2)
    ep = world.episode(11, 10, world.training_maze(1))
    ref = generate_episode(11, 10, maze_seed=world.training_maze(1), **maze_settings(size=7, resolution=16, **ODD))
    assert np.array_equal(ep["image"], ref["image"])
    default = generate_episode(11, 10, size=7, resolution=16, maze_seed=world.training_maze(1))
    assert not np.array_equal(ep["image"], default["image"])  # the settings matter, and were used


def test_follow_windows_and_memory_tasks_use_the_datasets_world(tmp_path):
    from lssvwm.data.episodes import load_episode
    from lssvwm.data.memory_tasks import build_task_set
    from lssvwm.follow import window_sets

    generate_dataset(tmp_path / "d", 2, 10, resolution=16, seed=0, mazes=1, progress=False, world=ODD)
    world = world_from_meta(read_meta(tmp_path / "d"))
    sets = window_sets(tmp_path / "d", tmp_path / "out", 4, 4, 1, resolution=16)
    spec = json.loads(next((tmp_path / "out").glob("windows_train-mazes_*/spec.json")).read_text())
    assert spec["settings"] == world.settings and set(sets) == {"train-mazes", "unseen-mazes"}
    tasks = build_task_set(tmp_path / "t", "retrieval", 1, 6, 4, 16, world=world)
    assert json.loads((tasks / "meta.json").read_text())["settings"]["fov_deg"] == 60.0
    ep = load_episode(next(tasks.glob("ep_*.npz")))
    assert ep["maze_layout"].shape[-1] == 9  # the recorded size (default 9 here), same mazes as the data's
    env = world.env(5)
    assert env.fov_deg == 60.0 and env.move_step == 0.1


def test_datasets_written_before_world_was_recorded_keep_working(tmp_path):
    generate_dataset(tmp_path / "d", 1, 5, resolution=16, size=7, progress=False)
    meta = read_meta(tmp_path / "d")
    del meta["world"]  # as an older version wrote it
    (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
    assert world_from_meta(meta).settings == maze_settings(size=7, resolution=16)
    generate_dataset(tmp_path / "d", 2, 5, resolution=16, size=7, progress=False)  # resumed, not refused
    assert read_meta(tmp_path / "d")["episodes"] == 2
    with pytest.raises(Exception, match="different settings"):  # but other settings are still refused
        generate_dataset(tmp_path / "d", 2, 5, resolution=16, size=7, progress=False, world={"fov_deg": 50.0})


def test_world_names_and_unknown_settings():
    assert world_named("maze", size=11).settings["size"] == 11 and world_named("memory-maze-9x9").name == \
        "memory-maze-9x9"
    assert world_from_meta({"generator": "teco"}) is None and World().name == "maze"
    with pytest.raises(ValueError, match="world must be"):
        world_named("minecraft")
    with pytest.raises(ValueError, match="unknown maze settings"):
        maze_settings(gravity=9.8)


def test_meta_records_the_exploration_policy_and_tasks_explore_the_same_way(tmp_path):
    from lssvwm.data.maze import policy_settings
    from lssvwm.data.memory_tasks import build_task_episode

    look = {"spin_prob": 1.0, "spin_turns": 1}
    generate_dataset(tmp_path / "d", 1, 150, resolution=16, progress=False, policy=look)
    world = world_from_meta(read_meta(tmp_path / "d"))
    assert world.policy == policy_settings(**look)
    ep = world.episode(5, 150, None)
    assert np.array_equal(ep["action"], generate_episode(5, 150, resolution=16, policy=look)["action"])
    assert not np.array_equal(ep["action"], generate_episode(5, 150, resolution=16)["action"])
    task = build_task_episode("reasoning", 5, 150, 4, 16, world=world)
    plain = build_task_episode("reasoning", 5, 150, 4, 16)
    assert not np.array_equal(task["action"], plain["action"])  # the context explored with the data's policy
    with pytest.raises(Exception, match="different settings"):  # a folder made with another policy is refused
        generate_dataset(tmp_path / "d", 1, 150, resolution=16, progress=False)
    generate_dataset(tmp_path / "old", 1, 20, resolution=16, progress=False)
    meta = read_meta(tmp_path / "old")
    del meta["policy"]  # as an older version wrote it: the default policy
    (tmp_path / "old" / "meta.json").write_text(json.dumps(meta))
    assert world_from_meta(meta).policy == policy_settings()
    generate_dataset(tmp_path / "old", 2, 20, resolution=16, progress=False)  # resumed, not refused
    assert read_meta(tmp_path / "old")["episodes"] == 2
