"""How much of a dataset asks for memory beyond an attention reach of R frames.

For each frame of each training clip: the share of its view (directions across the field of view, seen from the
agent's cell) that was in sight earlier in the clip, but only R or more frames earlier, never in the last R - 1.
Only a memory can predict that part of a frame; everything else is in the frames the attention sees (or never in
the clip at all). A coarse measure: a place seen from a neighbouring cell does not count.

    python -m benchmarks.memory_need DATA [DATA ...] [--reach 6] [--clips 16 32 64] [--episodes 16]

Prints a table (one row per dataset, one column per clip length) and writes ``results/memory_need.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .common import save, table


def recall_share(positions: np.ndarray, headings_deg: np.ndarray, fov_deg: float, clip: int, reach: int,
                 columns: int = 32) -> float:
    """Mean over the frames of consecutive ``clip``-frame clips (the first of each excluded) of the share of the
    view, ``columns`` directions across ``fov_deg``, that was in sight from the same cell ``reach`` or more frames
    earlier in the clip and not in the ``reach - 1`` frames just before."""
    cells = np.floor(positions).astype(int)
    cols = np.linspace(-fov_deg / 2, fov_deg / 2, columns)
    shares = []
    for s in range(0, len(cells) - clip + 1, clip):
        for t in range(s + 1, s + clip):
            dirs = headings_deg[t] + cols  # (columns,)
            same = np.flatnonzero((cells[s:t] == cells[t]).all(1)) + s  # earlier frames in this cell
            in_view = np.abs((dirs[None] - headings_deg[same][:, None] + 180) % 360 - 180) <= fov_deg / 2
            old, recent = in_view[same <= t - reach].any(0), in_view[same > t - reach].any(0)
            shares.append(float((old & ~recent).mean()))
    return float(np.mean(shares)) if shares else 0.0


def dataset_share(data: Path, clip: int, reach: int, episodes: int) -> float:
    from lssvwm.data.episodes import episode_files, load_episode, read_meta

    fov = float(read_meta(data).get("world", {}).get("fov_deg", 80.0))
    vals = []
    for f in episode_files(data)[:episodes]:
        ep = load_episode(f)
        if "agent_pos" not in ep or "agent_dir" not in ep:
            raise SystemExit(f"{f}: needs agent_pos and agent_dir (a dataset made by lssvwm data maze)")
        heading = np.degrees(np.arctan2(ep["agent_dir"][:, 1], ep["agent_dir"][:, 0]))
        vals.append(recall_share(ep["agent_pos"], heading, fov, clip, reach))
    return float(np.mean(vals))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="dataset folders (lssvwm data maze)")
    p.add_argument("--reach", type=int, default=6, help="frames the attention reaches (default 6: the cpu preset)")
    p.add_argument("--clips", type=int, nargs="+", default=[16, 32, 64], help="training clip lengths")
    p.add_argument("--episodes", type=int, default=16, help="episodes read per dataset (default 16)")
    a = p.parse_args(argv)
    rows = [{"data": d, **{f"clip {c}": f"{dataset_share(Path(d), c, a.reach, a.episodes):.3f}" for c in a.clips}}
            for d in a.data]
    print(f"share of each frame's view in sight in its clip only {a.reach}+ frames earlier")
    print(table(rows, ["data"] + [f"clip {c}" for c in a.clips]))
    print("->", save("memory_need", {"reach": a.reach, "episodes": a.episodes, "rows": rows}))


if __name__ == "__main__":
    main()
