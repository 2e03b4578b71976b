"""Pose search: which view of the maze a frame shows, and how far that is from where the agent is."""
import numpy as np
import pytest
import torch

from lssvwm.data.episodes import generate_episode, image_to_frames
from lssvwm.data.maze import MazeEnv
from lssvwm.pose_search import (grid_poses, locate, near_truth, pose_errors, render_poses, track, track_all,
                                view_bank, wall_distance)


@pytest.fixture(scope="module")
def maze():
    env = MazeEnv(size=7, resolution=16)
    env.reset(seed=0, options={"maze_seed": 5})
    return env


@pytest.fixture(scope="module")
def bank(maze):
    return view_bank(maze, grid=0.2)


def test_grid_poses_are_free_and_on_the_turn_lattice(maze):
    poses = grid_poses(maze, grid=0.2)
    assert len(poses) > 100 and poses.shape[1] == 3
    assert all(maze.fits(x, y) for x, y, _ in poses)
    steps = poses[:, 2] / maze.turn_step  # 15-degree turns from a heading that is a multiple of 90 degrees
    assert np.allclose(steps, np.round(steps)) and set(np.round(steps).astype(int)) == set(range(24))
    with pytest.raises(ValueError, match="grid must be in"):
        grid_poses(maze, grid=0.001)


def test_a_bank_view_is_found_at_its_own_pose(maze, bank):
    picks = np.random.default_rng(0).choice(len(bank.poses), 12, replace=False)
    frames = image_to_frames(bank.views[picks])
    found, score = locate(frames, bank)
    assert torch.allclose(score, torch.ones(12), atol=1e-5)
    # a view can repeat at another pose (a plain wall seen square-on); the one found must render the same view
    same = [np.array_equal(maze.render_view(p[:2], p[2]), maze.render_view(q[:2], q[2]))
            for p, q in zip(found, bank.poses[picks])]
    assert all(same)


def test_true_frames_of_an_episode_are_located_near_their_poses(maze, bank):
    ep = generate_episode(seed=11, steps=40, size=7, resolution=16, maze_seed=5)
    frames = image_to_frames(ep["image"])
    heading = np.arctan2(ep["agent_dir"][:, 1], ep["agent_dir"][:, 0])
    found, score = locate(frames, bank)
    dist, turn = pose_errors(found, ep["agent_pos"], heading)
    # off the grid by at most half a diagonal (0.14 cells): nearly every frame lands on its own pose
    on = (dist <= 0.5) & (turn <= 15 + 1e-6)
    assert on.mean() >= 0.9, (dist, turn)
    assert float(score.mean()) > 0.8


def test_near_truth_finds_a_view_from_beside_the_true_pose():
    ep = generate_episode(seed=11, steps=12, size=7, resolution=16, maze_seed=5)
    env = MazeEnv(size=7, resolution=16)
    env.reset(seed=0, options={"maze_seed": 5})
    heading = np.arctan2(ep["agent_dir"][:, 1], ep["agent_dir"][:, 0])
    poses = np.c_[ep["agent_pos"], heading]  # (M, 3)
    frames = image_to_frames(ep["image"])
    fit, offset = near_truth(frames, env, poses)
    assert fit == pytest.approx(np.ones(len(frames)), abs=1e-5)
    # the truth itself, or a neighbour that renders the same view
    for pose, off, frame in zip(poses, offset, ep["image"]):
        assert np.array_equal(env.render_view(pose[:2] + off[:2], pose[2] + np.radians(off[2])), frame)
    # frames rendered 0.1 cells aside and 12 degrees turned (on the neighbourhood's grid): found there, SSIM 1
    moved = [p + np.array([0.1, 0.0, np.radians(12)]) for p in poses if env.fits(p[0] + 0.1, p[1])]
    shifted = image_to_frames(render_poses(env, np.stack(moved)))
    true = np.stack([p for p in poses if env.fits(p[0] + 0.1, p[1])])
    fit, offset = near_truth(shifted, env, true)
    assert len(moved) >= 6 and fit == pytest.approx(np.ones(len(moved)), abs=1e-5)
    for pose, off, frame in zip(true, offset, shifted):
        view = render_poses(env, (pose + np.r_[off[:2], np.radians(off[2])])[None])
        assert torch.equal(image_to_frames(view)[0], frame)
    # a frame turned further than the neighbourhood reaches, or noise: no view near the truth matches it
    far = image_to_frames(render_poses(env, poses + np.r_[0.0, 0.0, np.pi]))
    noise = torch.rand_like(frames) * 2 - 1
    assert near_truth(far, env, poses)[0].mean() < 0.5 and near_truth(noise, env, poses)[0].max() < 0.3
    with pytest.raises(ValueError, match="no free point within 0.2 cells"):  # a pose inside the outer wall
        near_truth(frames[:1], env, np.array([[0.5, 0.5, 0.0]]))


def test_pose_errors_wrap_the_heading():
    found = np.array([[1.0, 1.0, np.radians(350)], [4.0, 5.0, 0.0]])
    dist, turn = pose_errors(found, np.array([[1.0, 2.0], [1.0, 1.0]]), np.radians(np.array([10.0, 180.0])))
    assert dist == pytest.approx([1.0, 5.0]) and turn == pytest.approx([20.0, 180.0])


def test_track_measures_how_far_a_late_frame_is_from_an_early_pose(maze):
    ep = generate_episode(seed=11, steps=40, size=7, resolution=16, maze_seed=5)
    poses = np.concatenate([ep["agent_pos"], np.arctan2(ep["agent_dir"][:, 1:], ep["agent_dir"][:, :1])], 1)
    frames = image_to_frames(ep["image"])
    both = track_all({"right": frames[None, 20:30], "late": frames[None, 30:40]}, [maze], poses[None, 20:30],
                     grid=0.2)
    right, late = both["right"], both["late"]  # the late frames are 10 frames ahead of the poses
    single = track(frames[None, 20:30], [maze], poses[None, 20:30], grid=0.2)
    assert all(np.array_equal(single[k], right[k]) for k in right)  # the same, one video at a time
    assert right["on_pose"].mean() >= 0.9
    moved = np.linalg.norm(poses[30:40, :2] - poses[20:30, :2], axis=1)
    far = moved > 0.8  # where the agent went on by more than a cell in those 10 frames
    assert far.any()
    assert (late["on_pose"][0, far] == 0).all()
    # the late frames are found at the same poses either way: the error against the early poses is the distance
    # the agent moved, up to how far each was found from its own (triangle inequality)
    own = track(frames[None, 30:40], [maze], poses[None, 30:40], grid=0.2)
    assert np.all(np.abs(late["position_error"][0] - moved) <= own["position_error"][0] + 1e-9)
    assert own["on_pose"].mean() >= 0.9 and right["view_ssim"].shape == (1, 10)


def test_locate_refuses_frames_of_another_size(bank):
    with pytest.raises(ValueError, match="frames of shape"):
        locate(torch.zeros(2, 3, 32, 32), bank)


def test_wall_distance_marches_to_the_first_wall_ahead():
    layout = np.ones((5, 5), np.uint8)
    layout[1:4, 1:4] = 0  # a 3 x 3 room inside walls: free x, y in [1, 4)
    poses = np.array([[1.5, 2.5, 0.0], [1.5, 2.5, np.pi], [2.5, 1.2, -np.pi / 2], [2.5, 2.5, np.pi / 2]])
    d = wall_distance(layout, poses, step=0.01)
    assert d == pytest.approx([2.5, 0.5, 0.2, 1.5], abs=0.011)
    assert wall_distance(layout, poses[:1], far=1.0)[0] == pytest.approx(1.0)  # nothing within reach


def test_track_all_renders_each_maze_once(monkeypatch):
    import lssvwm.pose_search as ps

    envs = []
    for maze_seed in (5, 5, 6):  # two windows in one maze, one in another
        env = MazeEnv(size=5, resolution=8)
        env.reset(seed=0, options={"maze_seed": maze_seed})
        envs.append(env)
    made = []
    real = ps.view_bank
    monkeypatch.setattr(ps, "view_bank", lambda env, grid: made.append(env) or real(env, grid))
    poses = np.tile(np.array([[1.5, 1.5, 0.0]]), (3, 4, 1))
    frames = torch.zeros(3, 4, 3, 8, 8)
    out = ps.track_all({"a": frames, "b": frames[:, :2]}, envs, poses, grid=0.5)
    assert len(made) == 2 and made[0] is envs[0] and made[1] is envs[2]
    assert out["a"]["on_pose"].shape == (3, 4) and out["b"]["view_ssim"].shape == (3, 2)
