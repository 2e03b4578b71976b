"""The follow benchmark: held-out windows in the training mazes and in unseen mazes, scored per frame."""
import json
import shutil

import numpy as np
import pytest
import torch

from lssvwm.checkpoint import load_model, load_run, save_pretrained
from lssvwm.cli import main
from lssvwm.data.episodes import episode_files, load_episode
from lssvwm.follow import (evaluate_follow, paired_difference, score, shuffled_actions, standard_error, summarize,
                           window_bins, window_sets)
from lssvwm.metrics import ssim


@pytest.fixture(scope="module")
def maze_data(tmp_path_factory):
    """8 episodes cycling through 2 fixed mazes, 16x16 (the tiny preset's size)."""
    from lssvwm.data.episodes import generate_dataset

    root = tmp_path_factory.mktemp("follow_data")
    generate_dataset(root, episodes=8, steps=30, resolution=16, seed=3, mazes=2, progress=False)
    return root


def test_window_sets_use_the_training_mazes_and_unseen_ones(maze_data, tmp_path):
    sets = window_sets(maze_data, tmp_path, context=4, frames=10, windows=3)
    assert set(sets) == {"train-mazes", "unseen-mazes"}
    for w in sets.values():
        assert w["frames"].shape == (3, 14, 3, 16, 16) and w["actions"].shape == (3, 14)
    train_layouts = {load_episode(f)["maze_layout"][0].tobytes() for f in episode_files(maze_data)}
    assert len(train_layouts) == 2
    folders = {p.name.split("_")[1]: p for p in tmp_path.glob("windows_*")}
    seen = [load_episode(f)["maze_layout"][0].tobytes() for f in episode_files(folders["train-mazes"])]
    unseen = [load_episode(f)["maze_layout"][0].tobytes() for f in episode_files(folders["unseen-mazes"])]
    assert set(seen) <= train_layouts and not set(unseen) & train_layouts
    # new trajectories, not copies of training episodes
    train_starts = {load_episode(f)["image"][:14].tobytes() for f in episode_files(maze_data)}
    assert not {load_episode(f)["image"][:14].tobytes() for f in episode_files(folders["train-mazes"])} & train_starts
    again = window_sets(maze_data, tmp_path / "again", context=4, frames=10, windows=3)
    assert torch.equal(again["unseen-mazes"]["frames"], sets["unseen-mazes"]["frames"])  # fixed seeds


def test_data_without_a_generator_uses_the_validation_split(maze_data, tmp_path):
    copy = tmp_path / "videos_like"
    shutil.copytree(maze_data, copy)
    (copy / "meta.json").unlink()  # no generator to rebuild windows with
    sets = window_sets(copy, tmp_path, context=4, frames=10, windows=5, val_fraction=0.25)
    assert list(sets) == ["val"] and sets["val"]["frames"].shape[0] == 2  # the 2 validation episodes
    with pytest.raises(ValueError, match="no validation episode has the 100 frames"):
        window_sets(copy, tmp_path, context=50, frames=50, windows=2, val_fraction=0.25)


def test_summary_bins_and_drift():
    per_frame = {"ssim": list(np.linspace(1.0, 0.0, 200))}
    s = summarize(per_frame, 48)
    v = np.linspace(1.0, 0.0, 200)
    assert s["ssim"]["1-8"] == pytest.approx(v[:8].mean())
    assert s["ssim"]["25-48"] == pytest.approx(v[24:48].mean())
    assert s["ssim"]["all"] == pytest.approx(v[:48].mean())
    assert s["ssim_long"]["101-200"] == pytest.approx(v[100:].mean())
    assert s["ssim_drift"] == pytest.approx(v[:8].mean() - v[24:48].mean())


def test_per_window_bins_standard_errors_and_paired_differences():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (5, 60))  # 5 windows' SSIM per frame
    b = a - 0.1 + rng.normal(0, 0.01, (5, 60))  # the same windows, a model 0.1 lower with a little noise
    wa, wb = window_bins(a, 48), window_bins(b, 48)
    assert wa["ssim"]["1-8"] == pytest.approx(a[:, :8].mean(1).tolist())
    assert wa["ssim"]["all"] == pytest.approx(a[:, :48].mean(1).tolist())
    assert set(wa["ssim_long"]) == {"all"} and wa["ssim_long"]["all"] == pytest.approx(a.mean(1).tolist())
    # the binned means over the windows are what summarize gives from the per-frame means
    s = summarize({"ssim": a.mean(0).tolist()}, 48, wa)
    assert s["ssim"]["9-24"] == pytest.approx(np.mean(wa["ssim"]["9-24"]))
    assert s["ssim_se"]["all"] == pytest.approx(a[:, :48].mean(1).std(ddof=1) / np.sqrt(5))
    assert standard_error([0.5]) is None and standard_error([1.0, 3.0]) == pytest.approx(1.0)
    d = paired_difference(wa, wb)
    for kind, bins in d.items():
        for name, v in bins.items():
            assert v["diff"] == pytest.approx(np.mean(wa[kind][name]) - np.mean(wb[kind][name]))
            assert v["diff"] == pytest.approx(0.1, abs=0.02)
            # pairing removes the spread between windows: far below either model's own standard error
            assert v["se"] < 0.2 * standard_error(wa[kind][name])


def test_follow_scores_side_by_side(tiny_run, maze_data, tmp_path):
    # the tiny run has trained 3 steps and barely uses its actions; a copy with perturbed weights does
    model, cfg, _ = load_model(tiny_run)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    noisy = save_pretrained(model, cfg, tmp_path / "noisy")
    res = evaluate_follow([str(tiny_run), str(tiny_run), str(noisy)], data=str(maze_data), out=tmp_path, context=4,
                          frames=48, long=60, windows=2, sampling={"steps": 1}, progress=False)
    assert len(res["models"]) == 3  # two runs of the same name keep two rows
    for m in res["models"].values():
        for set_name in ("train-mazes", "unseen-mazes"):
            r = m["sets"][set_name]
            assert len(r["per_frame"]["free"]["ssim"]) == 60 and len(r["per_frame"]["teacher_forced"]["ssim"]) == 48
            assert set(r["free"]["ssim"]) == {"1-8", "9-24", "25-48", "all"}
            assert r["free"]["ssim_drift"] == pytest.approx(r["free"]["ssim"]["1-8"] - r["free"]["ssim"]["25-48"])
        assert m["sampling"]["steps"] == 1
    # the baseline is what repeating the last context frame scores
    win = window_sets(maze_data, tmp_path, 4, 60, 2)["unseen-mazes"]
    ctx, gt = win["frames"][:, :4], win["frames"][:, 4:]
    direct = ssim(ctx[:, -1:].expand_as(gt), gt).mean(0)[:48].mean()
    assert res["sets"]["unseen-mazes"]["repeat_last_frame"]["ssim"]["all"] == pytest.approx(float(direct), abs=1e-6)
    # the best-context-frame oracle picks, per true frame, the context frame of highest SSIM: never below
    # repeating the last one (a candidate), and equal to the per-frame maximum over the context
    best = ssim(ctx[:, :, None].expand(-1, -1, gt.shape[1], -1, -1, -1), gt[:, None].expand(-1, 4, -1, -1, -1, -1))
    best = best.max(1).values.mean(0)  # (M,): max over the 4 context frames, mean over windows
    oracle = res["sets"]["unseen-mazes"]["best_context_frame"]["ssim"]
    assert oracle["all"] == pytest.approx(float(best[:48].mean()), abs=1e-6)
    assert oracle["all"] >= res["sets"]["unseen-mazes"]["repeat_last_frame"]["ssim"]["all"] - 1e-9
    assert "best context frame*" in res["table"]
    # the control: the same rollout with the actions shuffled in time, 48 frames; the gain is free minus control
    sets = window_sets(maze_data, tmp_path, 4, 60, 2)
    video = torch.cat([w["frames"] for w in sets.values()])
    acts = torch.cat([w["actions"] for w in sets.values()])
    sampler = load_run(noisy).sampler(steps=1)
    sampler.reseed(sampler.cfg.seed)
    direct = sampler.rollout(video[:, :4], acts[:, :4], shuffled_actions(acts[:, 4:52]), progress=False)
    direct = ssim(direct[:2], video[:2, 4:52]).mean(0)  # (48,): the train-mazes windows come first
    r = res["models"]["noisy"]["sets"]["train-mazes"]
    assert r["per_frame"]["shuffled_actions"]["ssim"] == pytest.approx(direct.tolist(), abs=1e-4)
    gaps = np.abs(np.subtract(r["per_frame"]["shuffled_actions"]["ssim"], r["per_frame"]["free"]["ssim"][:48]))
    assert gaps.sum() > 0.01  # its rollout depends on the actions' order
    for m in res["models"].values():
        for r in m["sets"].values():
            for b, v in r["action_gain"]["ssim"].items():
                assert v == pytest.approx(r["free"]["ssim"][b] - r["shuffled_actions"]["ssim"][b])
    assert "shuffled†" in res["table"]
    # per window: the binned means over the 2 windows are the reported scores, with their standard error; every
    # model after the first is paired with it window by window (the second is the first again: no difference)
    for m in res["models"].values():
        for r in m["sets"].values():
            for kind in ("free", "teacher_forced"):
                w = r["per_window"][kind]["ssim"]
                assert len(w["all"]) == 2 and np.mean(w["all"]) == pytest.approx(r[kind]["ssim"]["all"], abs=1e-4)
                assert r[kind]["ssim_se"]["all"] == pytest.approx(standard_error(w["all"]), abs=1e-4)
            assert len(r["per_window"]["free"]["ssim_long"]["all"]) == 2
    names = list(res["models"])
    assert all("versus" not in r for r in res["models"][names[0]]["sets"].values())
    for set_name in ("train-mazes", "unseen-mazes"):
        same = res["models"][names[1]]["sets"][set_name]["versus"]
        assert same["model"] == names[0]
        assert same["free"]["ssim"]["all"] == {"diff": 0.0, "se": 0.0}
        other = res["models"]["noisy"]["sets"][set_name]["versus"]
        for kind in ("free", "teacher_forced"):
            gap = (res["models"]["noisy"]["sets"][set_name][kind]["ssim"]["all"]
                   - res["models"][names[0]]["sets"][set_name][kind]["ssim"]["all"])
            assert other[kind]["ssim"]["all"]["diff"] == pytest.approx(gap, abs=1e-9)
            assert other[kind]["ssim"]["all"]["diff"] != 0.0
    assert "paired over the same windows" in res["table"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"].keys() == res["models"].keys()
    for f in ("strip_train-mazes.png", "strip_unseen-mazes.png", "ssim_vs_frame.png", "rollout_train-mazes.gif",
              "next_frame_unseen-mazes.gif"):
        assert (tmp_path / f).stat().st_size > 1000


def test_shuffled_actions_keep_each_windows_actions_in_another_order():
    ids = torch.arange(40).reshape(2, 20)
    shuf = shuffled_actions(ids)
    assert torch.equal(shuf, shuffled_actions(ids))  # a fixed order
    for w in range(2):
        assert sorted(shuf[w].tolist()) == ids[w].tolist() and not torch.equal(shuf[w], ids[w])
    assert not torch.equal(shuf[0] - 0, shuf[1] - 20)  # each window its own order
    vec = torch.randn(2, 20, 3)  # continuous actions: whole vectors move together
    sv = shuffled_actions(vec)
    for w in range(2):
        assert torch.equal(sv[w], vec[w, shuf[w] - 20 * w])


def test_identical_prediction_scores_perfectly():
    gt = torch.rand(2, 10, 3, 16, 16) * 2 - 1
    pf, per_window = score(gt.clone(), gt)
    assert min(pf["ssim"]) > 0.999 and min(pf["psnr"]) > 90
    assert per_window.shape == (2, 10) and per_window.min() > 0.999


def test_cli_eval_follow(tiny_run, maze_data, tmp_path, capsys):
    out = tmp_path / "follow"
    rc = main(["eval", "follow", "--ckpt", str(tiny_run), "--data", str(maze_data), "--context", "4", "--frames",
               "8", "--long", "10", "--windows", "2", "--out", str(out), "--steps", "1", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "train-mazes" in printed and "repeat last frame" in printed
    assert (out / "results.json").exists()


def test_follow_pose_tracking(tiny_run, maze_data, tmp_path):
    res = evaluate_follow([str(tiny_run)], data=str(maze_data), out=tmp_path, context=4, frames=8, long=10,
                          windows=2, sampling={"steps": 1}, progress=False, videos=False, pose=True)
    for set_name in ("train-mazes", "unseen-mazes"):
        truth = res["sets"][set_name]["pose"]  # the calibration: true frames found at their own poses
        assert truth["on_pose"]["all"] >= 0.8 and truth["view_ssim"]["all"] > 0.8
        r = next(iter(res["models"].values()))["sets"][set_name]["pose"]
        assert set(r) == {"free", "teacher_forced", "shuffled_actions"}
        for k in ("on_pose", "view_ssim", "position_error", "heading_error", "at_wall"):
            assert set(r["free"][k]) == {"1-8", "all"}
        # an untrained model's frames are no views of the maze: worse matches than the truth's
        assert r["free"]["view_ssim"]["all"] < truth["view_ssim"]["all"]
        # the first 8 free frames against views from near the true pose: no better than the best view anywhere
        # can be by more than the finer headings near the truth allow
        near = r["free"]["near_truth"]
        assert near["frames"] == 8 and len(near["per_frame"]) == 8 and "near_truth" not in r["teacher_forced"]
        assert 0 <= near["mean"] < truth["view_ssim"]["all"] and near["mean"] <= r["free"]["view_ssim"]["1-8"] + 0.1
    assert "on pose 1-8" in res["table"] and "ground truth‡" in res["table"]
    # both tables' headers name the frames scored (8 and 10 here), not the defaults 48 and 200
    heads = [line for line in res["table"].splitlines() if line.startswith("model")]
    assert len(heads) == 2 and all("all8" in h and "all48" not in h for h in heads) and "SSIM10" in heads[0]
    assert len(r["free"]["per_frame"]["on_pose"]) == 10 and len(r["shuffled_actions"]["per_frame"]["on_pose"]) == 8
    assert "near 1-8" in heads[1]
    from lssvwm.follow_report import pose_table
    for m in res["models"].values():  # fewer free frames than near_truth takes: the header names those scored
        for r in m["sets"].values():
            r["pose"]["free"]["near_truth"]["frames"] = 5
    assert "near 1-5" in pose_table(res).splitlines()[0] and "frames 1-5 look like" in pose_table(res)
    assert (tmp_path / "pose_vs_frame.png").stat().st_size > 1000
    copy = tmp_path / "videos_like"
    shutil.copytree(maze_data, copy)
    (copy / "meta.json").unlink()  # your own videos: no maze to search
    with pytest.raises(ValueError, match="pose tracking .*--pose.* needs data made by the built-in maze"):
        evaluate_follow([str(tiny_run)], data=str(copy), out=tmp_path / "v", context=4, frames=8, long=10,
                        windows=2, progress=False, videos=False, pose=True)
