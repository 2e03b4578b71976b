"""Writing what a person would rather watch than read: mp4/gif videos, side-by-side panels, top-down maps."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def to_uint8(frames) -> np.ndarray:
    """(T, C, H, W) float in [-1, 1] (tensor or array) or (T, H, W, 3) uint8 -> (T, H, W, 3) uint8."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().float().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    frames = np.clip((frames + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frames.transpose(0, 2, 3, 1))


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (T, H, W, 3) frames, so small frames are watchable."""
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def side_by_side(*panels: np.ndarray, gap: int = 2) -> np.ndarray:
    """Concatenate (T, H, W, 3) uint8 panels horizontally with a white gap; pads shorter ones by repetition."""
    t = max(p.shape[0] for p in panels)
    h = max(p.shape[1] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.shape[0] < t:
            p = np.concatenate([p, np.repeat(p[-1:], t - p.shape[0], axis=0)])
        if p.shape[1] < h:
            p = np.pad(p, ((0, 0), (0, h - p.shape[1]), (0, 0), (0, 0)))
        out.append(p)
        if gap and i < len(panels) - 1:
            out.append(np.full((t, h, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=2)


def episode_preview(ep: dict, frames: int) -> np.ndarray:
    """The first ``frames`` frames of an episode, enlarged to ~256 px, beside a top-down map of the maze with the
    agent's path where the episode has one: (T, H, W', 3) uint8 for :func:`write_video`."""
    from .data.episodes import top_down

    images = ep["image"][:frames]
    view = upscale(images, max(1, 256 // images.shape[1]))
    mapped = top_down(ep, frames)
    if mapped is None:
        return view
    layout, positions = mapped
    return side_by_side(view, top_down_map(layout, positions, max(4, view.shape[1] // layout.shape[0])))


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 10) -> Path:
    """Write (T, H, W, 3) uint8 frames as .mp4 (H.264 via imageio-ffmpeg) or .gif, atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: a video file must end in .mp4 or .gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames)
    # H.264 wants even sizes.
    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        if path.suffix == ".gif":
            imageio.mimsave(tmp, list(frames), duration=1000 / fps, loop=0)
        else:
            with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                    ffmpeg_log_level="error") as w:
                for f in frames:
                    w.append_data(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (full disk, ...) leaves nothing half-written
    return path


VIDEO_SUFFIXES = (".mp4", ".gif")


def top_down_map(layout: np.ndarray, positions: np.ndarray, cell_px: int, wall_colors: np.ndarray | None = None
                 ) -> np.ndarray:
    """(T, S*cell_px, S*cell_px, 3) frames: the maze from above with the path so far and the agent (red)."""
    s = layout.shape[0]
    base = np.full((s * cell_px, s * cell_px, 3), 230, np.uint8)
    for r, c in np.argwhere(layout == 1):
        color = wall_colors[r, c] if wall_colors is not None else (60, 60, 60)
        base[r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px] = color
    px = np.clip((positions * cell_px).astype(int), 0, s * cell_px - 1)  # (T, 2) as (x, y)
    out = np.empty((len(positions),) + base.shape, np.uint8)
    trail = base.copy()
    for t, (x, y) in enumerate(px):
        trail[y, x] = (40, 40, 220)
        frame = trail.copy()
        frame[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = (220, 30, 30)
        out[t] = frame
    return out
