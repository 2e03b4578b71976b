"""Where a generated frame puts the agent: pose search in the built-in maze.

A free rollout can leave the true path in two ways: it draws frames that are no view of the maze at all (smeared,
a wall that is not there), or true views of the maze from the wrong place (it lost track of the agent's pose).
SSIM against the true frame cannot tell these apart. Here each frame is matched against a bank of views rendered
at every pose of a grid over the maze's free space, at every heading the agent can face (:func:`view_bank`): the
best match's SSIM says how much the frame looks like some view of this maze (*view SSIM*), and its pose, against
the true one, how far the rollout has drifted from where the agent is (*position and heading error*).

Matching (:func:`locate`): the bank's views, 2x2-average-pooled, are compared with the frame's by squared
distance (one matmul for all frames); the ``top`` nearest are scored by SSIM at full size; around the best few,
positions a quarter and half a grid spacing away are rendered and scored too (a grid of 0.2 cells then finds
poses to 0.05), and the best of all is kept. Calibration: the true frames, located the same way, should land
on their own poses; the follow benchmark reports how often they do (``--pose``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data.episodes import image_to_frames
from .data.maze import MazeEnv, turn_steps
from .metrics import ssim

# a frame is "on pose" when its best match lies within this distance (cells) and heading (degrees) of the truth
ON_POSE_CELLS = 0.5
ON_POSE_DEGREES = 15.0
# a frame "faces a wall" when the wall straight ahead of its pose is this close (cells): the close-up view that
# free rollouts tend to settle on (walking into it changes nothing)
WALL_AHEAD_CELLS = 0.5
# near_truth's neighbourhood of the true pose: positions within this many cells, headings within these degrees
NEAR_CELLS = 0.2
NEAR_DEGREES = 45.0
# the pose grid's spacing in cells: finer than 0.02 would render hundreds of thousands of views per maze
GRID_RANGE = (0.02, 1.0)


@dataclass(frozen=True)
class ViewBank:
    """Views of one maze at a grid of poses: ``poses`` (N, 3) as x, y, heading (radians); ``views`` (N, H, W, 3)
    uint8 as rendered; ``coarse`` (N, 3 * H/2 * W/2) the views in [-1, 1], 2x2-average-pooled and flattened; ``grid`` their
    spacing in cells; ``env`` the environment that renders (and refines) them."""
    poses: np.ndarray
    views: np.ndarray
    coarse: torch.Tensor
    grid: float
    env: MazeEnv


def grid_poses(env: MazeEnv, grid: float = 0.2) -> np.ndarray:
    """(N, 3) poses: the points of a ``grid``-spaced lattice (offset by half a spacing from the cell corners) where
    the agent fits (the environment's own collision test), each at every heading of the maze's turn lattice
    (starting headings are multiples of 90 degrees; a turn adds one turn step), or at 24 headings when the turn
    step does not divide a full turn."""
    if env.layout is None:
        raise RuntimeError("reset the environment (build its maze) before making poses for it")
    if not GRID_RANGE[0] <= grid <= GRID_RANGE[1]:
        raise ValueError(f"grid must be in [{GRID_RANGE[0]}, {GRID_RANGE[1]}] cells, got {grid}")
    size = env.layout.shape[0]
    ticks = np.arange(grid / 2, size, grid)
    points = [(x, y) for y in ticks for x in ticks if env.fits(x, y)]
    turns = turn_steps(env)
    exact = abs(turns * env.turn_step - 2 * np.pi) < 1e-9 and (turns % 4 == 0)
    headings = np.arange(turns) * env.turn_step if exact else np.arange(24) * (2 * np.pi / 24)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.concatenate([np.repeat(pts, len(headings), 0), np.tile(headings, len(pts))[:, None]], 1)


def view_bank(env: MazeEnv, grid: float = 0.2) -> ViewBank:
    """Every view of ``env``'s maze at :func:`grid_poses` (rendered by the environment's own raycaster)."""
    poses = grid_poses(env, grid)
    views = render_poses(env, poses)  # (N, H, W, 3) uint8
    coarse = torch.cat([_coarse(image_to_frames(views[i:i + 4096])) for i in range(0, len(views), 4096)])
    return ViewBank(poses, views, coarse, grid, env)


def render_poses(env: MazeEnv, poses: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8: ``env``'s view at each of ``poses`` (N, 3) (x, y, heading in radians)."""
    return np.stack([env.render_view(p[:2], float(p[2])) for p in poses])


def _coarse(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3 * H/2 * W/2) float32: the matching's first, cheap look."""
    return F.avg_pool2d(frames.float(), 2).flatten(1)


def locate(frames: torch.Tensor, bank: ViewBank, top: int = 32, refine: int = 3) -> tuple[np.ndarray, torch.Tensor]:
    """The pose each of ``frames`` (F, 3, H, W) in [-1, 1] shows best: (poses (F, 3), SSIM (F,) with it). The
    ``top`` bank views nearest in squared distance at half size are scored by SSIM; then around the ``refine``
    best of them, the positions a quarter and half a grid spacing away (same heading) are rendered and scored."""
    shape = (bank.views.shape[3], *bank.views.shape[1:3])  # (C, H, W)
    if tuple(frames.shape[-3:]) != shape:
        raise ValueError(f"frames of shape {tuple(frames.shape[-3:])} against a bank of views of shape {shape}")
    q = _coarse(frames)  # (F, D)
    dist = (q * q).sum(1, keepdim=True) - 2 * q @ bank.coarse.T + (bank.coarse * bank.coarse).sum(1)  # (F, N)
    k = min(top, bank.coarse.shape[0])
    cand = dist.topk(k, dim=1, largest=False).indices  # (F, k)
    views = image_to_frames(bank.views[cand.flatten().numpy()]).unflatten(0, cand.shape)
    scores = ssim(views, frames[:, None].expand_as(views))  # (F, k)
    poses = bank.poses[cand.numpy()]  # (F, k, 3)
    if refine > 0:
        steps = np.array([-0.5, -0.25, 0.0, 0.25, 0.5]) * bank.grid
        offsets = np.stack(np.meshgrid(steps, steps), -1).reshape(-1, 2)  # (25, 2), (0, 0) among them
        best = scores.topk(min(refine, k), dim=1).indices.numpy()  # (F, r)
        seeds = np.take_along_axis(poses, best[..., None], 1)  # (F, r, 3)
        near = np.concatenate([seeds[:, :, None, :2] + offsets[None, None], np.broadcast_to(
            seeds[:, :, None, 2:], (*seeds.shape[:2], len(offsets), 1))], -1).reshape(len(frames), -1, 3)
        free = np.array([[bank.env.fits(x, y) for x, y, _ in row] for row in near])  # (F, r * 25)
        views = image_to_frames(render_poses(bank.env, near.reshape(-1, 3))).unflatten(0, near.shape[:2])
        near_scores = ssim(views, frames[:, None].expand_as(views)).masked_fill(~torch.from_numpy(free), -1.0)
        poses, scores = np.concatenate([poses, near], 1), torch.cat([scores, near_scores], 1)
    best = scores.argmax(1)
    rows = torch.arange(frames.shape[0])
    return poses[rows.numpy(), best.numpy()], scores[rows, best]


def near_truth(frames: torch.Tensor, env: MazeEnv, poses: np.ndarray, cells: float = NEAR_CELLS,
               degrees: float = NEAR_DEGREES) -> tuple[np.ndarray, np.ndarray]:
    """How much each of ``frames`` (M, 3, H, W) in [-1, 1] looks like a view from near its true pose (``poses``
    (M, 3)): the best SSIM over views rendered at positions within ``cells`` (a 5 x 5 grid, where the agent fits)
    and headings within ``degrees`` (31 evenly spaced) of the truth, and that view's offset (M, 3) (dx, dy in
    cells, heading in degrees). Beside :func:`locate`'s view SSIM (the best view anywhere) it splits a bad frame
    in two: a degraded view from the right place scores low on both, a clean view from the wrong place high on
    view SSIM only. Position and heading trade off in a small frame (a step sideways looks like a slight turn), so
    the offset is read as a whole."""
    ticks = np.linspace(-cells, cells, 5)
    turns = np.linspace(-degrees, degrees, 31)
    grid = np.array([(dx, dy, d) for dx in ticks for dy in ticks for d in turns])  # (G, 3)
    fit, offset = np.zeros(len(frames)), np.zeros((len(frames), 3))
    for t, (frame, pose) in enumerate(zip(frames, poses)):
        cand = grid[[env.fits(pose[0] + dx, pose[1] + dy) for dx, dy, _ in grid]]
        if not len(cand):  # the true pose itself always fits; this only guards a wrong pose passed in
            raise ValueError(f"pose {tuple(pose)} has no free point within {cells} cells")
        views = image_to_frames(render_poses(env, pose + np.c_[cand[:, :2], np.radians(cand[:, 2])]))
        scores = ssim(views, frame.float()[None].expand_as(views))
        best = int(scores.argmax())
        fit[t], offset[t] = float(scores[best]), cand[best]
    return fit, offset


def pose_errors(found: np.ndarray, true_pos: np.ndarray, true_heading: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (cells) and absolute heading difference (degrees, 0..180) of ``found`` (..., 3) poses from the true
    positions (..., 2) and headings (..., radians)."""
    dist = np.linalg.norm(found[..., :2] - true_pos, axis=-1)
    turn = np.angle(np.exp(1j * (found[..., 2] - true_heading)))
    return dist, np.degrees(np.abs(turn))


def wall_distance(layout: np.ndarray, poses: np.ndarray, step: float = 0.02, far: float = 3.0) -> np.ndarray:
    """(N,) distance (cells, capped at ``far``) from each pose (N, 3) to the first wall straight ahead, marched in
    steps of ``step`` cells."""
    t = np.arange(step, far + step / 2, step)  # (S,)
    xs = poses[:, None, 0] + t * np.cos(poses[:, None, 2])  # (N, S)
    ys = poses[:, None, 1] + t * np.sin(poses[:, None, 2])
    size = layout.shape[0]
    rows, cols = np.clip(np.floor(ys).astype(int), 0, size - 1), np.clip(np.floor(xs).astype(int), 0, size - 1)
    hit = layout[rows, cols] == 1  # (N, S)
    return np.where(hit.any(1), t[hit.argmax(1)], far)


def track(frames: torch.Tensor, envs: list[MazeEnv], poses: np.ndarray, grid: float = 0.2, top: int = 32
          ) -> dict[str, np.ndarray]:
    """Per-frame pose tracking of windows of frames (W, M, 3, H, W) in [-1, 1], window i in ``envs[i]``'s maze,
    against the true ``poses`` (W, M, 3) (x, y, heading): {"view_ssim", "position_error", "heading_error",
    "on_pose", "at_wall"} (the found pose faces a wall within :data:`WALL_AHEAD_CELLS`), each (W, M)."""
    return track_all({"frames": frames}, envs, poses, grid, top)["frames"]


def track_all(videos: dict[str, torch.Tensor], envs: list[MazeEnv], poses: np.ndarray, grid: float = 0.2,
              top: int = 32) -> dict[str, dict[str, np.ndarray]]:
    """:func:`track` for several videos of the same windows ({name: (W, M_name, 3, H, W)}, e.g. the truth and each
    model's rollouts; ``poses`` (W, >= M_name, 3)), one maze at a time: each maze's bank is rendered once, used for
    every video and window in that maze, and dropped before the next (at most one bank in memory)."""
    keys = ("view_ssim", "position_error", "heading_error", "on_pose", "at_wall")
    out = {name: {k: np.zeros(v.shape[:2]) for k in keys} for name, v in videos.items()}
    mazes: dict[tuple, list[int]] = {}
    for i, env in enumerate(envs):
        mazes.setdefault(bank_key(env, grid), []).append(i)
    for windows in mazes.values():
        bank = view_bank(envs[windows[0]], grid)
        for name, video in videos.items():
            m, res = video.shape[1], out[name]
            for i in windows:
                found, score = locate(video[i].float(), bank, top)
                dist, turn = pose_errors(found, poses[i, :m, :2], poses[i, :m, 2])
                res["view_ssim"][i], res["position_error"][i], res["heading_error"][i] = score.numpy(), dist, turn
                res["on_pose"][i] = (dist <= ON_POSE_CELLS) & (turn <= ON_POSE_DEGREES + 1e-6)
                res["at_wall"][i] = wall_distance(bank.env.layout, found) <= WALL_AHEAD_CELLS
        del bank
    return out


def bank_bytes(env: MazeEnv, grid: float) -> int:
    """An upper bound of one bank's memory: every grid point of the maze, free or not, at every heading."""
    points = (env.layout.shape[0] / grid) ** 2
    return int(points * max(turn_steps(env), 24) * 2 * 3 * env.resolution ** 2)


def bank_key(env: MazeEnv, grid: float) -> tuple:
    """What makes two banks the same: the maze (layout, wall colours, objects), the frame size and the grid."""
    return (env.layout.tobytes(), env.wall_colors.tobytes(), env.objects.tobytes(), env.resolution, env.turn_step,
            env.fov_deg, env.radius, grid)
