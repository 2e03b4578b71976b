"""Reporting the follow benchmark's results (:mod:`lssvwm.follow` scores them): the table, the strips of generated
frames, the side-by-side videos and the SSIM-vs-frame plot."""
from __future__ import annotations

from pathlib import Path

import torch

STRIP_FRAMES = (1, 2, 4, 8, 16, 24, 32, 48, 100, 200)  # the generated frames a strip shows


def write_report(results: dict, strips: dict, first_context: dict, out: Path, videos: bool = True) -> str:
    """Write ``strip_<set>.png`` for every window set (rows: (label, (W, M, C, H, W)) frames), with ``videos`` the
    first window's ``rollout_<set>.gif`` and ``next_frame_<set>.gif`` (ground truth beside each model's free /
    one-step-ahead frames, after ``first_context[set]``), and ``ssim_vs_frame.png``; print the table and where
    everything went. Returns the table."""
    frames, long = results["frames"], results["long"]
    for set_name, rows in strips.items():
        write_strip(rows, out / f"strip_{set_name}.png", long)
        if videos:
            free_rows = [rows[0]] + [r for r in rows[1:] if r[0].endswith(": free")]
            tf_rows = [rows[0]] + [r for r in rows[1:] if r[0].endswith("one step ahead")]
            write_side_by_side(first_context[set_name], free_rows, out / f"rollout_{set_name}.gif", frames=None)
            write_side_by_side(first_context[set_name], tf_rows, out / f"next_frame_{set_name}.gif", frames=frames)
    _plot(results, out / "ssim_vs_frame.png")
    table = follow_table(results)
    pictures = [out / f"strip_{s}.png" for s in strips] + [out / "ssim_vs_frame.png"]
    if any("pose" in r for r in results["sets"].values()):
        table += "\n\n" + pose_table(results)
        _plot_pose(results, out / "pose_vs_frame.png")
        pictures.append(out / "pose_vs_frame.png")
    print(f"follow: {results['context']} context frames, then {frames} and {long} generated ({results['lpips']})")
    print(table)
    print(f"results: {out / 'results.json'}\npictures: " + ", ".join(str(p) for p in pictures))
    return table


def follow_table(results: dict) -> str:
    """A text table: per model and window set, free-rollout SSIM by bin, drift, PSNR, teacher-forced SSIM."""
    shown, long = results["frames"], results["long"]
    head = (f"{'model':<22} {'windows':<13} {'SSIM 1-8':>8} {'9-24':>6} {'25-48':>6} {f'all{shown}':>6} {'drift':>6} "
            f"{f'PSNR{shown}':>7} {'TF SSIM':>7} {f'SSIM{long}':>7}")
    lines = [head]
    rows = []
    for n, m in results["models"].items():
        rows += [(n, s, r["free"], r["teacher_forced"]) for s, r in m["sets"].items()]
        rows += [(f"{n[:12]} shuffled†", s, r["shuffled_actions"], None) for s, r in m["sets"].items()]
    rows += [("repeat last frame", s, r["repeat_last_frame"], None) for s, r in results["sets"].items()]
    rows += [("best context frame*", s, r["best_context_frame"], None) for s, r in results["sets"].items()]
    for name, set_name, free, tf in rows:
        ssim = free["ssim"]
        tf_ssim = f"{tf['ssim']['all']:7.3f}" if tf else f"{'':>7}"
        long_all = free.get("ssim_long", {}).get("all")
        lines.append(f"{name[:22]:<22} {set_name:<13} {ssim.get('1-8', float('nan')):8.3f} "
                     f"{ssim.get('9-24', float('nan')):6.3f} {ssim.get('25-48', float('nan')):6.3f} "
                     f"{ssim['all']:6.3f} {free.get('ssim_drift', float('nan')):6.3f} {free['psnr']['all']:7.2f} "
                     f"{tf_ssim} {'' if long_all is None else f'{long_all:7.3f}':>7}")
    lines.append("† the same model and context, each window's actions shuffled in time: where its SSIM meets the model's "
                 "row, the rollout no longer follows the actions")
    lines.append("* picked with the truth: per true frame, the context frame most like it (an oracle of recall)")
    paired = paired_table(results)
    return "\n".join(lines) + ("\n\n" + paired if paired else "")


def paired_table(results: dict) -> str:
    """Each model after the first minus the first, on the same windows: the mean of the per-window SSIM
    differences ± its standard error, by bin ('' with one model). Two scores whose difference is within about two
    standard errors are not told apart by these windows."""
    rows = [(n, s, r["versus"]) for n, m in results["models"].items() for s, r in m["sets"].items() if "versus" in r]
    if not rows:
        return ""
    shown, long = results["frames"], results["long"]

    def cell(v: dict | None) -> str:
        if v is None:
            return f"{'':>15}"
        se = "" if v["se"] is None else f" ±{v['se']:.3f}"
        return f"{v['diff']:+.3f}{se}".rjust(15)

    lines = [f"paired over the same windows: each model minus {rows[0][2]['model']} (mean SSIM difference ± its "
             "standard error over the windows)",
             f"{'model':<22} {'windows':<13} {'SSIM 1-8':>15} {f'all{shown}':>15} {'TF SSIM':>15} {f'SSIM{long}':>15}"]
    for name, set_name, v in rows:
        free, tf = v["free"], v["teacher_forced"]
        lines.append(f"{name[:22]:<22} {set_name:<13} {cell(free['ssim'].get('1-8'))} {cell(free['ssim']['all'])} "
                     f"{cell(tf['ssim']['all'])} {cell(free.get('ssim_long', {}).get('all'))}")
    return "\n".join(lines)


def pose_table(results: dict) -> str:
    """A text table of where the frames put the agent (``evaluate_follow(pose=True)``): per model and window set,
    the share of frames on the true pose by bin, and over the first ``frames`` (48) the mean SSIM of the best-matching
    view of the maze, the mean position error (cells) and heading error (degrees)."""
    from .pose_search import NEAR_CELLS, NEAR_DEGREES, ON_POSE_CELLS, ON_POSE_DEGREES, WALL_AHEAD_CELLS

    shown = results["frames"]
    rows = [("ground truth‡", s, r["pose"]) for s, r in results["sets"].items() if "pose" in r]
    for n, m in results["models"].items():
        rows += [(n, s, r["pose"]["free"]) for s, r in m["sets"].items() if "pose" in r]
        rows += [(f"{n[:12]} one step ahead", s, r["pose"]["teacher_forced"]) for s, r in m["sets"].items()
                 if "pose" in r]
        rows += [(f"{n[:12]} shuffled†", s, r["pose"]["shuffled_actions"]) for s, r in m["sets"].items() if "pose" in r]
    scored = next((p["near_truth"]["frames"] for *_, p in rows if "near_truth" in p), 8)  # free frames near_truth took
    near = f"near 1-{scored}"
    head = (f"{'model':<22} {'windows':<13} {'on pose 1-8':>11} {'9-24':>6} {'25-48':>6} {f'all{shown}':>6} "
            f"{'view SSIM':>9} {'cells':>6} {'degrees':>7} {'at wall':>7} {'view 1-8':>8} {near:>8}")
    lines = [head]
    for name, set_name, p in rows:
        on = p["on_pose"]
        lines.append(f"{name[:22]:<22} {set_name:<13} {on.get('1-8', float('nan')):11.3f} "
                     f"{on.get('9-24', float('nan')):6.3f} {on.get('25-48', float('nan')):6.3f} {on['all']:6.3f} "
                     f"{p['view_ssim']['all']:9.3f} {p['position_error']['all']:6.2f} {p['heading_error']['all']:7.1f} "
                     f"{p['at_wall']['all']:7.3f} {p['view_ssim'].get('1-8', float('nan')):8.3f} "
                     + (f"{p['near_truth']['mean']:8.3f}" if "near_truth" in p else f"{'':>8}"))
    lines.append(f"on pose: the best-matching view of the maze lies within {ON_POSE_CELLS} cells and "
                 f"{ON_POSE_DEGREES:g} degrees of the agent's true pose; view SSIM: how much the frame looks like that "
                 f"view; cells, degrees: mean errors of its pose; at wall: share of frames facing a wall within "
                 f"{WALL_AHEAD_CELLS} cells; view 1-8: view SSIM over frames 1-8; {near} (free rollouts): how much "
                 f"frames 1-{scored} look like a view from within {NEAR_CELLS} cells and {NEAR_DEGREES:g} degrees of "
                 "the true pose (near the view SSIM: a degraded view from the right place; far below it: a view "
                 "from elsewhere)")
    lines.append("‡ the true frames located the same way: how often the search itself finds the right pose")
    return "\n".join(lines)


def write_strip(rows: list[tuple[str, torch.Tensor]], path: Path, long: int, window: int = 0) -> Path:
    """One PNG: a row per entry (ground truth, then each model's rows), columns at frames 1, 2, 4 ... 200 of
    window ``window``, with the row names on the left."""
    from PIL import Image, ImageDraw

    from .video import to_uint8, upscale

    cols = [f for f in STRIP_FRAMES if f <= long]
    size = rows[0][1].shape[-1]
    scale = max(1, 64 // size)
    label_w, gap = 170, 2
    cell = size * scale
    img = Image.new("RGB", (label_w + len(cols) * (cell + gap), 14 + len(rows) * (cell + gap)), "white")
    draw = ImageDraw.Draw(img)
    for j, f in enumerate(cols):
        draw.text((label_w + j * (cell + gap) + 2, 1), f"frame {f}", fill="black")
    for i, (label, video) in enumerate(rows):
        y = 14 + i * (cell + gap)
        draw.text((2, y + cell // 2 - 6), label[:28], fill="black")
        for j, f in enumerate(cols):
            if f <= video.shape[1]:
                tile = upscale(to_uint8(video[window, f - 1:f]), scale)[0]
                img.paste(Image.fromarray(tile), (label_w + j * (cell + gap), y))
    img.save(path)
    return path


def write_side_by_side(context: torch.Tensor, rows: list[tuple[str, torch.Tensor]], path: Path,
                       frames: int | None = None) -> Path:
    """A gif of window 0: the context frames (blue border) on every panel, then the ground truth and each model's
    generated frames (red border) side by side, in the order of ``rows``."""
    from .generate import comparison_panels
    from .video import write_video

    n = frames or min(r[1].shape[1] for r in rows)
    panels = comparison_panels(context, [r[1][0, :n] for r in rows])
    return write_video(path, panels, fps=8)


def _plot(results: dict, path: Path) -> None:
    """SSIM vs generated frame, a panel per window set: each model's free rollout (solid) and its
    shuffled-actions control (dashed, same colour), and the two baselines (grey)."""
    from .plots import plot_curve_panels

    panels = {}
    for set_name, base in results["sets"].items():
        curves = {}
        for i, (name, m) in enumerate(results["models"].items()):
            pf = m["sets"][set_name]["per_frame"]
            for key, label, ls in (("free", "", "-"), ("shuffled_actions", ", actions shuffled", "--")):
                v = pf[key]["ssim"]
                curves[name + label] = (list(range(1, len(v) + 1)), v, {"color": f"C{i % 10}", "ls": ls})
        for key, label, ls in (("repeat_last_frame", "repeat last frame", ":"),
                               ("best_context_frame", "best context frame (oracle)", "-.")):
            v = base["per_frame"][key]["ssim"]
            curves[label] = (list(range(1, len(v) + 1)), v, {"color": "0.5", "ls": ls})
        panels[set_name] = curves
    plot_curve_panels(panels, "generated frame", "SSIM", path, "follow: SSIM vs generated frame")


def _plot_pose(results: dict, path: Path) -> None:
    """Share of the windows on the true pose vs generated frame, a panel per window set: each model's free rollout
    (solid), one-step-ahead frames (dotted) and shuffled-actions control (dashed), and the true frames located the
    same way (grey)."""
    from .plots import plot_curve_panels

    panels = {}
    for set_name, base in results["sets"].items():
        curves = {}
        for i, (name, m) in enumerate(results["models"].items()):
            pose = m["sets"][set_name]["pose"]
            for key, label, ls in (("free", "", "-"), ("teacher_forced", ", one step ahead", ":"),
                                   ("shuffled_actions", ", actions shuffled", "--")):
                v = pose[key]["per_frame"]["on_pose"]
                curves[name + label] = (list(range(1, len(v) + 1)), v, {"color": f"C{i % 10}", "ls": ls})
        v = base["pose"]["per_frame"]["on_pose"]
        curves["ground truth (the search's own hits)"] = (list(range(1, len(v) + 1)), v, {"color": "0.5", "ls": "-."})
        panels[set_name] = curves
    plot_curve_panels(panels, "generated frame", "share of windows on the true pose", path,
                      "follow: does the rollout keep the agent's pose?")
