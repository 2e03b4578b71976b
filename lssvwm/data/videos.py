"""Video datasets: folders of ``*.mp4`` with a sibling action file per video.

Two layouts are read; both become the same in-memory episode as the ``.npz`` episodes of
:mod:`lssvwm.data.episodes` (frames plus ``actions[t]`` = the action that *led to* frame ``t``, -1 = none):

**TECO Minecraft** (``layout="teco"``)::

    root/train/<worker>/<i>.mp4    128x128 RGB frames
    root/train/<worker>/<i>.npz    key "actions": int, 0 = dummy/none, 1 = forward, 2 = left, 3 = right
    root/test/...                  the same (our "val" split)

  The collector stores the reset frame plus 300 steps, with ``actions[0] = 0`` as the reset dummy and
  ``actions[t]`` the action that led to observation ``t``. Released files hold 300 or 301 frames, with 300 or 301
  actions. Equal lengths are aligned as stored. When there is one action more than there are frames, the mp4 lacks
  the reset frame: the dummy ``actions[0]`` is dropped (as Diffusion Forcing's loader does), so frame ``t`` gets
  ``actions[t + 1]``. Ids become 0 = forward, 1 = left, 2 = right (3 actions) and the dummy becomes -1.

**Your own data** (``layout="videos"``)::

    root/<name>.mp4     any size (square frames for the models here), any number of frames T
    root/<name>.npz     key "actions" (or "action"); or root/<name>.json: a list, or {"actions": [...]}

  ``actions[t]`` is the action taken *at* frame ``t`` (it leads to frame ``t + 1``), as most recorders write it.
  Length T (the last action has no visible effect and is dropped) or T - 1. Shape ``(T,)`` of integers: discrete
  ids ``0 .. A-1``; shape ``(T, A)`` of numbers: continuous action vectors (the first frame then gets a zero vector).

Every problem raises :class:`EpisodeFormatError` naming the file, the field and what was expected.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .episodes import EpisodeFormatError, npz_headers, regular_file

TECO_ACTION_NAMES = ("forward", "left", "right")
VIDEO_SUFFIX = ".mp4"


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a whole video -> (T, H, W, 3) uint8 (imageio-ffmpeg; PyAV is used instead when installed)."""
    path = Path(path)
    regular_file(path, "video file")
    try:
        try:
            import av  # noqa: F401
            import imageio.v3 as iio

            frames = iio.imread(path, plugin="pyav")
        except ImportError:
            import imageio.v2 as imageio

            with imageio.get_reader(path, format="ffmpeg") as r:
                frames = np.stack([np.asarray(f) for f in r])
    except Exception as e:  # noqa: BLE001 - decoders raise many types; all mean "unreadable"
        raise _unreadable(path, e) from e
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise EpisodeFormatError(f"{path}: expected RGB frames (T, H, W, 3), decoded {frames.shape}")
    return frames.astype(np.uint8, copy=False)


def probe_video(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, height, width) of a video without keeping its frames: PyAV's container count when installed,
    else ffmpeg counts them (it decodes, at C speed: ~0.1 s for 300 frames of 128x128)."""
    path = Path(path)
    regular_file(path, "video file")
    try:
        try:
            import av

            with av.open(str(path)) as c:
                s = c.streams.video[0]
                if s.frames > 0:
                    return int(s.frames), int(s.codec_context.height), int(s.codec_context.width)
        except ImportError:
            pass
        import imageio.v2 as imageio
        import imageio_ffmpeg

        with imageio.get_reader(path, format="ffmpeg") as r:
            w, h = r.get_meta_data()["size"]
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except Exception as e:  # noqa: BLE001
        raise _unreadable(path, e) from e
    return int(n), int(h), int(w)


def _unreadable(path: Path, e: Exception) -> EpisodeFormatError:
    """One line: ffmpeg's errors carry its whole banner; keep the last line that says something."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.lower().startswith(("ffmpeg version", "built with", "configuration:",
                                                               "lib", "copyright"))]
    reason = (useful or lines or [type(e).__name__])[-1][:200]
    return EpisodeFormatError(f"{path}: unreadable video (corrupt or not an mp4?): {reason}")


def _actions(video: str | os.PathLike, layout: str):
    """(raw actions, their file, the aligner for ``layout``), read before any video decoding."""
    if layout not in ("teco", "videos"):
        raise ValueError(f"layout must be 'teco' or 'videos', got {layout!r}")
    afile = action_file(video)
    return read_actions(afile), afile, teco_actions if layout == "teco" else own_actions


def probe_video_episode(video: str | os.PathLike, layout: str) -> tuple[tuple, np.ndarray]:
    """((T, H, W, 3), aligned actions) of a video episode, without decoding its frames into memory."""
    raw, afile, align = _actions(video, layout)
    n, h, w = probe_video(video)
    return (n, h, w, 3), align(raw, n, afile)


def action_file(video: str | os.PathLike) -> Path:
    """The sibling action file of a video: ``<stem>.npz``, else ``<stem>.json``."""
    video = Path(video)
    for suffix in (".npz", ".json"):
        p = video.with_suffix(suffix)
        if p.exists():
            return p
    raise EpisodeFormatError(f"{video}: no action file beside it (expected {video.with_suffix('.npz').name} with "
                             f"key 'actions', or {video.with_suffix('.json').name})")


def read_actions(path: str | os.PathLike) -> np.ndarray:
    """The raw action array of an ``.npz`` (key ``actions`` or ``action``) or ``.json`` (list or {"actions": list})."""
    path = Path(path)
    if path.suffix == ".json":
        regular_file(path, "action file")
    else:
        npz_headers(path)  # a regular file whose arrays fit in memory
    try:
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except RecursionError as e:
                raise EpisodeFormatError(f"{path}: JSON nested too deeply for an action list") from e
            if isinstance(data, dict):
                if "actions" not in data:
                    raise EpisodeFormatError(f"{path}: missing key 'actions' (found keys: {sorted(data)})")
                data = data["actions"]
            try:
                arr = np.asarray(data)
            except (ValueError, RecursionError) as e:  # ragged or deeply nested lists
                raise EpisodeFormatError(f"{path}: 'actions' must be a list of numbers or of equal-length lists") from e
        else:
            with np.load(path, allow_pickle=False) as z:
                key = "actions" if "actions" in z.files else "action" if "action" in z.files else None
                if key is None:
                    raise EpisodeFormatError(f"{path}: missing key 'actions' (found keys: {sorted(z.files)})")
                arr = z[key]
    except EpisodeFormatError:
        raise
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise EpisodeFormatError(f"{path}: unreadable action file: {e}") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise EpisodeFormatError(f"{path}: field 'actions' must be numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise EpisodeFormatError(f"{path}: field 'actions' has a NaN or infinite value (row {bad})")
    return arr


def teco_actions(raw: np.ndarray, n_frames: int, path) -> np.ndarray:
    """TECO's stored actions -> ids aligned with the ``n_frames`` video frames (see the module docstring)."""
    if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
        raise EpisodeFormatError(f"{path}: field 'actions' must be a 1-d integer array (0 = none, 1 forward, "
                                 f"2 left, 3 right), got shape {raw.shape} dtype {raw.dtype}")
    if raw.size and (raw.min() < 0 or raw.max() > 3):
        raise EpisodeFormatError(f"{path}: field 'actions' values must be in 0..3, got [{raw.min()}, {raw.max()}]")
    if len(raw) == n_frames + 1:
        raw = raw[1:]
    elif len(raw) != n_frames:
        raise EpisodeFormatError(f"{path}: length mismatch: the video has {n_frames} frames but 'actions' has "
                                 f"{len(raw)} entries (expected {n_frames} or {n_frames + 1})")
    return raw.astype(np.int64) - 1


def own_actions(raw: np.ndarray, n_frames: int, path) -> np.ndarray:
    """Your own actions (``actions[t]`` taken at frame ``t``) -> our alignment (``actions[t]`` led to frame t)."""
    if raw.ndim not in (1, 2) or (raw.ndim == 1 and not np.issubdtype(raw.dtype, np.integer)):
        raise EpisodeFormatError(
            f"{path}: field 'actions' has unknown shape {raw.shape} dtype {raw.dtype}: expected (T,) integer ids "
            f"or (T, A) continuous vectors")
    if raw.ndim == 1 and raw.size and raw.min() < 0:
        raise EpisodeFormatError(f"{path}: discrete action ids must be >= 0, got {raw.min()}")
    if len(raw) not in (n_frames, n_frames - 1):
        raise EpisodeFormatError(f"{path}: length mismatch: the video has {n_frames} frames but 'actions' has "
                                 f"{len(raw)} rows (expected {n_frames} or {n_frames - 1}: actions[t] is taken at "
                                 f"frame t)")
    raw = raw[:n_frames - 1]
    if raw.ndim == 1:
        return np.concatenate([[-1], raw.astype(np.int64)])
    return np.concatenate([np.zeros((1, raw.shape[1])), raw]).astype(np.float32)


def load_video_episode(video: str | os.PathLike, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """One video and its actions -> (image (T, H, W, 3) uint8, actions (T,) int64 ids or (T, A) float32)."""
    raw, afile, align = _actions(video, layout)
    image = read_video(video)
    return image, align(raw, image.shape[0], afile)


def detect_layout(root: str | os.PathLike) -> str:
    """'teco' (train/ or test/ holding <worker>/<i>.mp4), 'videos' (*.mp4 at the top) or 'episodes' (npz)."""
    root = Path(root)
    if not root.is_dir():
        raise EpisodeFormatError(f"{root}: dataset folder not found")
    found = []
    if any(root.glob(f"train/*/*{VIDEO_SUFFIX}")) or any(root.glob(f"test/*/*{VIDEO_SUFFIX}")):
        found.append("teco")
    if any(root.glob(f"*{VIDEO_SUFFIX}")):
        found.append("videos")
    # episode files: .npz that are not a video's action file, at the top level or one level down
    if any(not p.with_suffix(VIDEO_SUFFIX).exists() for p in root.glob("*.npz")) or any(root.glob("*/*.npz")):
        found.append("episodes")
    if len(found) > 1:
        raise EpisodeFormatError(f"{root}: holds more than one data layout ({', '.join(found)}): keep one per folder, "
                                 f"or set train.data_layout to the one to read")
    return found[0] if found else "episodes"


def video_files(root: str | os.PathLike, layout: str, split: str | None = None) -> list[Path]:
    """Sorted videos of a folder. For TECO, split 'train' -> train/, 'val' -> test/, None or 'all' -> both."""
    root = Path(root)
    if layout == "teco":
        parts = {"train": ["train"], "val": ["test"]}.get(split, ["train", "test"])
        files = [f for p in parts for f in sorted((root / p).glob(f"*/*{VIDEO_SUFFIX}"))]
    else:
        files = sorted(root.glob(f"*{VIDEO_SUFFIX}"))
    if not files:
        where = "/".join(parts) if layout == "teco" else "the top level"
        raise EpisodeFormatError(f"{root}: no videos (*{VIDEO_SUFFIX}) found in {where} of the dataset folder")
    return files


def write_video_episode(path: str | os.PathLike, frames: np.ndarray, actions: np.ndarray, fps: int = 20) -> Path:
    """Write an mp4 and its sibling ``.npz`` (key ``actions``), as a recorder would (used by tests and examples)."""
    from ..video import write_video

    path = Path(path)
    write_video(path, frames, fps=fps)
    np.savez(path.with_suffix(".npz"), actions=np.asarray(actions))
    return path
