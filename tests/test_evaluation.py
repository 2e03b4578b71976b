"""Memory evaluation: task construction, memory distance, and `lssvwm eval memory` end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest

from lssvwm.data.memory_tasks import build_task_episode, build_task_set, memory_distance, reverse_actions
from lssvwm.evaluation import distance_curve, lpips_fn


def test_retrieval_retraces_the_context_path():
    ep = build_task_episode("retrieval", seed=5, context=60, frames=72, resolution=16)
    n, turn = 61, 12  # 60 context steps (+ the first image); a 180-degree turn is 12 steps of 15 degrees
    pos = ep["agent_pos"]
    assert ep["image"].shape == (133, 16, 16, 3) and int(ep["context_length"]) == n
    errs = [np.linalg.norm(pos[n - 1 + turn + k] - pos[n - 1 - k]) for k in range(60)]
    assert max(errs) < 0.3  # back through the same places (wall sliding makes it inexact, not the ground truth)
    assert (ep["memory_distance"] > 0).all()


def test_reverse_actions_undo_turns():
    # forward_left = turn left then move; undone after turning around: move, then turn right
    assert reverse_actions([4], 12) == [2] * 12 + [1, 3]
    # move, turn right, move -> (turned around) move, turn left, move; a turn-only step merges into a no-op
    assert reverse_actions([1, 3, 1], 2) == [2, 2, 1, 0, 4, 0]


def test_reasoning_revisits_context_places_and_sets_are_deterministic(tmp_path):
    ep = build_task_episode("reasoning", seed=2, context=80, frames=60, resolution=16)
    assert (ep["memory_distance"] > 0).mean() > 0.8
    a = build_task_set(tmp_path / "a", "reasoning", 2, 30, 20, 16, seed=1)
    b = build_task_set(tmp_path / "b", "reasoning", 2, 30, 20, 16, seed=1)
    c = build_task_set(tmp_path / "c", "reasoning", 2, 30, 20, 16, seed=2)
    from lssvwm.data.episodes import load_episode

    ea, eb, ec = (load_episode(d / "ep_000001.npz") for d in (a, b, c))
    assert all(np.array_equal(ea[k], eb[k]) for k in ea) and not np.array_equal(ea["image"], ec["image"])
    assert json.loads((a / "meta.json").read_text())["seed"] == 1


def test_look_around_repeats_the_contexts_last_turn():
    turn = 24  # a full turn of 15-degree steps
    ep = build_task_episode("look-around", seed=3, context=30, frames=30, resolution=16)
    n = int(ep["context_length"])
    acts = ep["action"].argmax(1)
    assert len(set(acts[n - turn:])) == 1 and acts[-1] in (2, 3)  # the context's last turn, and on turning
    assert np.allclose(ep["agent_pos"][n - turn - 1:], ep["agent_pos"][-1])  # in place
    for i in range(n, n + 30):  # every generated frame shows what the context showed one turn earlier
        assert np.array_equal(ep["image"][i], ep["image"][i - turn])
    # memory distance: frames since the same cell *and heading* in the context (one turn, then two)
    assert ep["memory_distance"].tolist() == [turn] * 24 + [2 * turn] * 6
    with pytest.raises(ValueError, match="longer than a full turn"):
        build_task_episode("look-around", seed=3, context=24, frames=4, resolution=16)


def test_memory_distance_and_curve():
    pos = np.array([[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [1.5, 0.5], [0.5, 0.5], [3.5, 0.5]])
    assert memory_distance(pos, 3).tolist() == [2, 4, -1]
    xs, ys = distance_curve(np.array([1, 2, 9, 10, -1]), np.array([10.0, 20.0, 30.0, 50.0, 99.0]))
    assert xs == [1.5, 9.5] and ys == [15.0, 40.0]


def test_lpips_says_why_when_unavailable():
    fn, note = lpips_fn()
    assert (fn is None) == note.startswith("LPIPS unavailable")


def test_lpips_downloads_only_when_asked(monkeypatch, tmp_path):
    """A fake lpips package: without the AlexNet weights on disk LPIPS is off unless download is asked for; a
    failed download is reported, not raised; without the package the note says how to install it."""
    import types

    import torch

    built = []

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net, verbose):
            super().__init__()
            built.append(net)
            if fail:
                raise OSError("network unreachable")

        def forward(self, a, b):
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no weights there
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    fail = False
    fn, note = lpips_fn()
    assert fn is None and "--lpips download" in note and built == []
    fn, note = lpips_fn(download=True)
    assert note == "LPIPS (AlexNet)" and built == ["alex"]
    assert fn(torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)).tolist() == [1.0, 1.0]
    fail = True
    fn, note = lpips_fn(download=True)
    assert fn is None and "network unreachable" in note
    monkeypatch.setitem(sys.modules, "lpips", None)
    assert "pip install lpips" in lpips_fn(download=True)[1]


def test_eval_memory_cli_side_by_side(tiny_run, tmp_path):
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "lssvwm", "eval", "memory", "--ckpt", str(tiny_run), "--ckpt",
                        str(tiny_run / "checkpoints" / "step_0000003"), "--task", "retrieval", "--context", "20",
                        "--frames", "16", "--episodes", "2", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "SSIM" in r.stdout and "PSNR" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert len(res["models"]) == 2
    for m in res["models"].values():
        assert len(m["per_frame"]["psnr"]) == 32 and 0 < m["psnr"] < 60 and -1 <= m["ssim"] <= 1
    for f in ("psnr_vs_distance.png", "ssim_vs_distance.png", "grid.mp4"):
        assert (out / f).stat().st_size > 1000


def test_eval_memory_context_limit_cli(tiny_run, tmp_path):
    """--context-limit reaches the evaluation: same frames and memory distances, the limit recorded; a limit above
    the context is refused naming the flag."""
    def run(*extra):
        return subprocess.run([sys.executable, "-m", "lssvwm", "eval", "memory", "--ckpt", str(tiny_run), "--task",
                               "retrieval", "--context", "12", "--frames", "8", "--episodes", "1", *extra],
                              capture_output=True, text=True)

    res = {}
    for name, extra in (("full", ()), ("cut", ("--context-limit", "2")), ("reach", ("--context-limit", "reach"))):
        r = run("--out", str(tmp_path / name), *extra)
        assert r.returncode == 0, r.stderr
        res[name] = json.loads((tmp_path / name / "results.json").read_text())
        if name == "cut":
            assert "given only its last 2" in r.stdout and res["cut"]["context_limit"] == 2
    # 'reach': the tiny hybrid's 2 layers of 3-frame windows reach 5 frames
    assert "given only the frames its attention reaches: run 5" in r.stdout
    assert [m["context_limit"] for m in res["reach"]["models"].values()] == [5]
    assert res["full"]["context_limit"] is None
    full, cut = (next(iter(res[k]["models"].values()))["per_frame"] for k in ("full", "cut"))
    assert full["distance"] == cut["distance"] and len(cut["ssim"]) == 8
    r = run("--out", str(tmp_path / "bad"), "--context-limit", "13")
    assert r.returncode == 2 and "--context-limit 13: at most --context (12)" in r.stderr
    r = run("--out", str(tmp_path / "bad"), "--context-limit", "all")
    assert r.returncode == 2 and "expected 'reach' or a positive number of frames, got 'all'" in r.stderr


def test_context_cut_to_the_window_changes_only_models_with_memory_beyond_it(tiny_data, tmp_path):
    """The memory ablation: given only the context's last R frames (R: what its attention windows, stacked over
    its layers, reach), a model with attention and nothing else generates the same frames; the hybrid, whose scan
    state saw the whole context, does not. Weights moved off the zero init (a fresh model ignores its history)."""
    import torch

    from lssvwm.checkpoint import save_pretrained
    from lssvwm.config import RunConfig, SamplingConfig, TrainConfig, model_preset
    from lssvwm.evaluation import evaluate_models
    from lssvwm.models.world_model import WorldModel

    runs = []
    for variant in ("hybrid", "window-transformer"):
        torch.manual_seed(0)
        cfg = RunConfig(model=model_preset("tiny", variant), sampling=SamplingConfig(steps=1),
                        train=TrainConfig(data=str(tiny_data), out=str(tmp_path / variant)))
        model = WorldModel(cfg.model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
        runs.append(str(save_pretrained(model, cfg, tmp_path / variant)))
    r = model_preset("tiny", "window-transformer").attention_reach()  # the frames it sees: its windows, stacked
    res = {limit: evaluate_models(runs, "retrieval", 12, 8, tmp_path / f"eval{limit}", episodes=1,
                                  progress=False, context_limit=limit)["models"] for limit in (None, r, "reach")}
    full, cut = res[None], res[r]
    assert r == 5 and [m["context_limit"] for m in res["reach"].values()] == [5, 5]  # same windows in both
    assert res["reach"]["hybrid"]["per_frame"] == cut["hybrid"]["per_frame"]
    assert np.allclose(full["window-transformer"]["per_frame"]["psnr"], cut["window-transformer"]["per_frame"]["psnr"],
                       atol=1e-3)
    assert np.abs(np.subtract(full["hybrid"]["per_frame"]["psnr"], cut["hybrid"]["per_frame"]["psnr"])).max() > 0.01
    with pytest.raises(ValueError, match=r"context_limit must be 'reach' or in \[1, context = 12\]"):
        evaluate_models(runs, "retrieval", 12, 8, tmp_path / "bad", episodes=1, progress=False, context_limit=0)


def test_memory_eval_scores_the_two_baselines(tiny_run, tmp_path, capsys):
    """Beside the models, eval memory scores repeating the last context frame and the best context frame (picked
    with the truth); on the look-around task every generated frame was shown one turn back, so the best context
    frame is the truth itself."""
    import torch

    from lssvwm.data.episodes import episode_files, episode_tensors, load_episode
    from lssvwm.evaluation import evaluate_models
    from lssvwm.metrics import ssim

    res = evaluate_models([str(tiny_run)], "look-around", 26, 4, tmp_path / "ev", episodes=2, progress=False)
    rep, best = res["baselines"]["repeat_last_frame"], res["baselines"]["best_context_frame"]
    expect = []
    for f in episode_files(res["task_set"]):
        ep = load_episode(f)
        video, n = episode_tensors(ep)["frames"], int(ep["context_length"])
        expect += ssim(video[n - 1:n].expand(4, -1, -1, -1), video[n:n + 4]).tolist()
    assert rep["per_frame"]["ssim"] == pytest.approx(expect, abs=1e-6) and rep["ssim"] == pytest.approx(np.mean(expect))
    assert min(best["per_frame"]["ssim"]) > 0.99 > max(expect)  # the view one turn back; not the last frame
    assert best["per_frame"]["distance"] == res["models"][tiny_run.name]["per_frame"]["distance"] == [24] * 8
    printed = capsys.readouterr().out
    assert f"(best context frame, picked with the truth, whole context): SSIM {best['ssim']:.3f}" in printed
    assert f"(repeat the last context frame, whole context): SSIM {rep['ssim']:.3f}" in printed
    assert torch.isfinite(torch.tensor(rep["per_frame"]["psnr"])).all()


def test_baselines_script_smoke(tmp_path, monkeypatch):
    """All six models of the comparison train on the same data and are scored side by side."""
    import benchmarks.memory as memory

    memory.main(["--preset", "smoke", "--out", str(tmp_path / "m"), "--seeds", "0", "1"])
    res = json.loads((tmp_path / "memory_smoke.json").read_text())
    assert set(res["results"]) == {"retrieval", "reasoning", "retrieval @ 2x clip", "retrieval @ 4x clip",
                                   memory.LONG_RETRACE, memory.LONG_RETRACE_CUT}
    clip = memory.PRESETS["smoke"]["clip"]
    assert res["results"]["retrieval @ 4x clip"]["context"] == 4 * clip
    assert res["results"][memory.LONG_RETRACE]["context"] == res["results"][memory.LONG_RETRACE]["frames"] == 4 * clip
    for task, ev in res["results"].items():
        assert set(ev["models"]) == set(memory.MODELS)
        for r in ev["models"].values():
            assert 0 < r["psnr"]["mean"] < 60 and r["psnr"]["spread"] >= 0
            assert set(r["bins"]) == {"<2", "2..2", "3+", "never seen"}  # k = 2; 2 layers reach 3 frames
    # the bins partition the frames, and the two seeds were trained and scored separately
    one = res["per_seed"]["0"]["retrieval"]["models"]["hybrid (ours)"]
    assert sum(b["frames"] for b in one["bins"].values()) == len(one["per_frame"]["ssim"])
    assert (tmp_path / "m" / "runs" / "seed1" / "hybrid").is_dir() and len(res["claims"]) == 5
    # the context cut to the window, scored on the same frames: the limited-context transformer (attending over k
    # frames, nothing else) makes the same frames (the hybrid's change is tested on weights off the zero init)
    for seed in ("0", "1"):
        full, cut = (res["per_seed"][seed][key]["models"] for key in (memory.LONG_RETRACE, memory.LONG_RETRACE_CUT))
        for model in memory.MODELS:
            assert full[model]["per_frame"]["distance"] == cut[model]["per_frame"]["distance"]
        window = memory.WINDOW
        assert np.allclose(full[window]["per_frame"]["ssim"], cut[window]["per_frame"]["ssim"], atol=1e-4)
    assert memory.memory_used({int(k): v for k, v in res["per_seed"].items()}, memory.WINDOW, "3+") == \
        pytest.approx([0, 0], abs=1e-4)
    assert "beyond the attention's reach" in res["claims"][4] and "limited-context transformer" in res["claims"][4]
    assert res["results"][memory.LONG_RETRACE_CUT]["context_limit"] == memory.reach(memory.PRESETS["smoke"]) == 3
    # the long retrace puts frames beyond 4k, where the short one has few or none; the claim is judged there
    far = lambda key: res["results"][key]["models"]["hybrid (ours)"]["bins"]["3+"]["frames"]
    per_seed = [res["per_seed"][s][memory.LONG_RETRACE]["models"]["hybrid (ours)"]["bins"]["3+"]["frames"]
                for s in ("0", "1")]
    assert far(memory.LONG_RETRACE) == sum(per_seed) > far("retrieval") and min(per_seed) > 0
    assert memory.LONG_RETRACE in res["claims"][0] and f"{far(memory.LONG_RETRACE)} frames" in res["claims"][0]
    assert (tmp_path / "memory_smoke_distance.png").stat().st_size > 1000
    # a second call reports from the runs and the scores each seed kept, without training or evaluating again
    import lssvwm.evaluation
    import lssvwm.train

    def refuse(*a, **k):
        raise AssertionError("trained or evaluated again")

    monkeypatch.setattr(lssvwm.evaluation, "evaluate_models", refuse)
    monkeypatch.setattr(lssvwm.train, "train", refuse)
    memory.main(["--preset", "smoke", "--out", str(tmp_path / "m"), "--seeds", "0", "1"])
    assert json.loads((tmp_path / "memory_smoke.json").read_text())["results"] == res["results"]
    # a preset changed since the runs were trained: its saved runs are refused, not scored under its name
    monkeypatch.setitem(memory.PRESETS, "smoke", {**memory.PRESETS["smoke"], "window": 3})
    with pytest.raises(SystemExit, match=r"seed0/hybrid: .*model\.layers: .*'attn': 3.* here"):
        memory.main(["--preset", "smoke", "--out", str(tmp_path / "m"), "--seeds", "0"])


def test_distance_bins_split_at_the_window_and_at_the_attention_reach():
    from benchmarks.memory import binned

    per_frame = {"distance": [-1, 0, 3, 4, 16, 17, 100], "ssim": [0.0, 1, 2, 3, 4, 5, 6], "psnr": [0.0] * 7}
    b = binned(per_frame, 4, 17)  # windows of 4 frames reaching 17 (e.g. 4 layers + the previous frame)
    assert [b[k]["frames"] for k in ("<4", "4..16", "17+", "never seen")] == [2, 2, 2, 1]
    assert b["4..16"]["ssim"] == 3.5 and b["17+"]["ssim"] == 5.5 and b["never seen"]["ssim"] == 0.0


def test_memory_claim_uses_paired_gaps_per_seed():
    """The beyond-window claim is shown only when the mean gap is >= 0.05, beyond both scores' seed spread, and
    every seed's paired gap (same episodes and frames) is positive."""
    from benchmarks import memory

    def per_seed(far_scores):  # far_scores: seed -> (hybrid, window) SSIM beyond 4k
        def ev(h, w):
            bins = lambda v: {"13+": {"ssim": v, "psnr": 10.0, "frames": 5}}
            models = {m: {"ssim": 0.3, "lpips": None, "psnr": 10.0, "bins": bins(0.3)} for m in memory.MODELS}
            models[memory.HYBRID]["bins"], models[memory.WINDOW]["bins"] = bins(h), bins(w)
            return {"context": 64, "frames": 64, "models": models}
        return {s: {key: ev(h, w) for key in (memory.LONG_RETRACE, memory.LONG_RETRACE_CUT, "retrieval",
                                              "retrieval @ 4x clip")}
                for s, (h, w) in far_scores.items()}

    def first_claim(far_scores):
        ps = per_seed(far_scores)
        return memory.claims(memory.aggregate(ps), 13, ps)[0]

    # hybrid ahead by 0.10 on every seed, seed-to-seed spread 0.04: shown
    shown = first_claim({0: (0.40, 0.30), 1: (0.44, 0.34)})
    assert "gap +0.100" in shown and "paired: +0.100, +0.100" in shown and shown.endswith("-> shown")
    # the same mean gap, beyond both spreads (0.08, 0.07), but one seed's models tie: not shown
    mixed = first_claim({0: (0.40, 0.25), 1: (0.40, 0.25), 2: (0.32, 0.32)})
    assert "gap +0.100" in mixed and "paired: +0.150, +0.150, +0.000" in mixed and mixed.endswith("-> not shown")
    # a gap below 0.05: not shown; a gap inside the spread of the scores: not shown
    assert first_claim({0: (0.33, 0.30), 1: (0.34, 0.31)}).endswith("-> not shown")
    assert first_claim({0: (0.30, 0.24), 1: (0.50, 0.44)}).endswith("-> not shown")
    assert memory.paired_gaps(per_seed({0: (0.4, 0.3)}), memory.LONG_RETRACE, "13+") == pytest.approx([0.1])
    # memory beyond the window: the whole context minus the context cut to k, per model and seed
    ps = per_seed({0: (0.40, 0.30), 1: (0.44, 0.34)})
    ps[1][memory.LONG_RETRACE_CUT]["models"][memory.HYBRID]["bins"]["13+"]["ssim"] = 0.40
    assert memory.memory_used(ps, memory.HYBRID, "13+") == pytest.approx([0.0, 0.04])
    assert memory.claims(memory.aggregate(ps), 13, ps)[4].split(";")[0].endswith("+0.000, +0.040 -> not used")
    ps[0][memory.LONG_RETRACE_CUT]["models"][memory.HYBRID]["bins"]["13+"]["ssim"] = 0.35
    assert "+0.050, +0.040 -> used" in memory.claims(memory.aggregate(ps), 13, ps)[4]


def test_recall_clip_layout():
    from lssvwm.data.episodes import action_indices
    from lssvwm.data.recall import CUE, DISTRACTOR, RECALL, recall_clip

    clip = recall_clip(np.random.default_rng(0), length=20, distance=7)
    r = int(clip["recall_index"])
    acts = action_indices(clip["action"])
    assert r == 9 and acts[1] == CUE and acts[r] == RECALL and (acts[2:r] == DISTRACTOR).all()
    assert (clip["image"][r] == clip["image"][0]).all() and (clip["image"][0] == clip["cue_color"]).all()
    assert not any((clip["image"][t] == clip["image"][0]).all() for t in range(2, 20) if t != r)  # one recall only
    assert clip["image"][2:r].max() < 90 and clip["cue_color"].max() >= 230  # dark distractors, bright cue
    with pytest.raises(ValueError, match="must be < length"):
        recall_clip(np.random.default_rng(0), length=10, distance=8)


def test_recall_psnr_scores_a_model():
    import torch

    from lssvwm.config import model_preset
    from lssvwm.data.recall import NUM_ACTIONS
    from lssvwm.evaluation import recall_psnr
    from lssvwm.models.world_model import WorldModel

    torch.manual_seed(0)
    model = WorldModel(model_preset("tiny", "hybrid", num_actions=NUM_ACTIONS)).eval()
    p = recall_psnr(model, distance=5, length=12, trials=2)
    assert 0 < p < 60  # an untrained model predicts zeros (mid-grey): a finite, low score


@pytest.mark.slow
def test_hybrid_recalls_beyond_the_window_and_windowed_transformer_cannot(tmp_path):
    """Tiny hybrid vs tiny windowed transformer (k = 3), same data, steps and seed (about 10 min on 2 cores).

    Measured when written: hybrid 16.8 dB at every D from 0 to 20; windowed 11.4 dB at D = 0, 8.6-8.7 dB for
    D >= 2 (the cue has left its window)."""
    import benchmarks.recall as bench

    res = bench.recall_experiment(str(tmp_path), steps=3000, distances=(12, 20))
    psnr = {(r["variant"], r["D"]): r["recall_psnr"] for r in res["rows"]}
    for d in (12, 20):  # D = 4k and beyond
        assert psnr[("hybrid", d)] > 14.0, psnr
        assert psnr[("hybrid", d)] - psnr[("window-transformer", d)] > 5.0, psnr


def test_gpu_benchmark_code_runs_small_on_the_cpu():
    """`python -m benchmarks.run gpu` needs CUDA; its smoke variant runs the same code on the CPU (tiny sizes)."""
    import warnings

    from benchmarks.gpu import run as bench_gpu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bench_gpu(smoke=True)
    row = res["training"][0]
    assert row["ms_per_step"] > 0 and row["model_tflops"] > 0 and 0 < row["mfu_%"] < 100
    assert res["decoding"][0]["frames_per_s"] > 0
    kernels = {r["kernel"]: r for r in res["kernels"]}
    assert kernels["ssd:torch"]["rel_err_vs_ref"] < 1e-4 and kernels["attention:flex"]["rel_err_vs_ref"] < 1e-4


def test_flop_count_covers_cpu_attention_and_grouped_convolutions():
    """The profile benchmark's FLOP count: the CPU flash-attention kernels (forward 4*B*H*Lq*Lk*d, backward twice
    that plus the recomputed scores) and a depthwise conv's backward at its true size, not ``groups`` times more."""
    import torch
    import torch.nn.functional as F

    from benchmarks.train_step import count_flops

    q, k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 4 * 2 * 3 * 5 * 5 * 8
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == 14 * 2 * 3 * 5 * 5 * 8
    x, w = torch.randn(1, 6, 10, requires_grad=True), torch.randn(6, 1, 3, requires_grad=True)
    fwd = count_flops(lambda: F.conv1d(x, w, groups=6))
    assert fwd == 2 * 6 * 8 * 3  # per channel: 8 outputs x 3 taps, one multiply-add each
    assert count_flops(lambda: F.conv1d(x, w, groups=6).sum().backward()) == 3 * fwd  # + grad input + grad weight


def test_profile_benchmark_times_this_tree_against_a_commit():
    """`python -m benchmarks.train_step --against REV`: both trees timed in their own processes, alternating; the
    table has the share of the measured peak, and the speed-up is reported."""
    from benchmarks import train_step

    res = train_step.run(models=("tiny",), against="HEAD", rounds=1, steps=1, top=3)
    rows = {r["code"]: r for r in res["rows"]}
    assert set(rows) == {"HEAD", "this tree"}
    for r in rows.values():
        assert r["ms_per_step"] > 0 and r["gflop_per_step"] > 0 and 0 < r["share_of_peak_%"] < 100
        assert 0 < r["optimizer_ms"] < r["ms_per_step"]  # the update, timed inside the step
    # one machine, one peak: both trees' shares are of the best rate any process of the run measured
    assert rows["HEAD"]["peak_gflops"] == rows["this tree"]["peak_gflops"] > 0
    assert train_step.machine_peaks([[{"peak_fp32_gflops": 50.0, "peak_bf16_gflops": 9.0}],
                                     [{"peak_fp32_gflops": 80.0, "peak_bf16_gflops": 7.0}]]) == {"fp32": 80.0,
                                                                                                "bf16": 9.0}
    assert list(res["models"]["tiny"]["speedup"]) == ["this tree vs HEAD"]
    assert res["models"]["tiny"]["speedup"]["this tree vs HEAD"]["overall"] > 0
    assert len(res["models"]["tiny"]["this tree"]["top_ops"]) == 3


def test_profile_benchmark_times_both_types_side_by_side():
    """`--autocast fp32,bf16`: this tree timed in each type in alternating processes, each row in its own type
    with its share of that type's peak, and bf16's speed against fp32's reported; `--optimizer muon` times the
    demo's update."""
    from benchmarks import train_step

    res = train_step.run(models=("tiny",), rounds=1, steps=1, autocast="fp32,bf16", top=3, optimizer="muon")
    assert res["optimizer"] == "muon"
    rows = {r["code"]: r for r in res["rows"]}
    assert {c: r["autocast"] for c, r in rows.items()} == {"this tree fp32": "fp32", "this tree bf16": "bf16"}
    assert rows["this tree fp32"]["peak_gflops"] == rows["this tree fp32"]["peak_fp32_gflops"]
    assert rows["this tree bf16"]["peak_gflops"] == rows["this tree bf16"]["peak_bf16_gflops"]
    assert list(res["models"]["tiny"]["speedup"]) == ["this tree bf16 vs this tree fp32"]
    with pytest.raises(SystemExit):
        train_step.main(["--autocast", "fp16"])
    with pytest.raises(SystemExit):
        train_step.main(["--optimizer", "sgd"])


def test_memory_horizons_match_the_decay_of_the_scan(tiny_data, tmp_path):
    """With the step size independent of the input (its projection zeroed), a head's memory in frames is exactly
    1 / (softplus(dt_bias) * exp(A_log) * the scan steps per frame); with ssm_dt_init=frame every layer starts
    with the same range per frame. The CLI prints one line per scan layer beside the attention's reach."""
    import torch

    from lssvwm.checkpoint import load_run, save_pretrained
    from lssvwm.config import RunConfig, TrainConfig, model_preset
    from lssvwm.data.episodes import episode_files, episode_tensors, load_episode
    from lssvwm.evaluation import memory_horizons
    from lssvwm.models.world_model import WorldModel

    torch.manual_seed(0)
    cfg = RunConfig(model=model_preset("tiny", "hybrid"), train=TrainConfig(data=str(tiny_data)))
    model = WorldModel(cfg.model)
    with torch.no_grad():
        for blk in model.blocks:
            mamba = blk.ssm.mamba
            mamba.in_proj.weight[-mamba.nheads:] = 0  # dt = softplus(dt_bias), whatever the input
    run = load_run(save_pretrained(model, cfg, tmp_path / "w"))
    clip = episode_tensors(load_episode(episode_files(tiny_data)[0]))
    got = memory_horizons(run, clip["frames"][None, :6], clip["actions"][None, :6])
    grid = cfg.model.frame_size // cfg.model.patch_size  # 4 x 4 tokens: the full scan takes 16 steps, (2, 2) 4
    assert [(h["block"], h["steps_per_frame"]) for h in got] == [("full", grid * grid), ([2, 2], 4)]
    for h, blk in zip(got, model.blocks):
        m = blk.ssm.mamba
        want = 1 / (torch.nn.functional.softplus(m.dt_bias) * m.A_log.exp() * h["steps_per_frame"])
        assert h["horizon"] == pytest.approx(want.tolist(), rel=1e-4)

    r = subprocess.run([sys.executable, "-m", "lssvwm", "eval", "horizon", "--ckpt", str(tmp_path / "w"), "--clips",
                        "2", "--frames", "6"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "the attention reaches 5 frames" in r.stdout and r.stdout.count("longer than the attention's reach") == 2
    r = subprocess.run([sys.executable, "-m", "lssvwm", "eval", "horizon", "--ckpt", str(tmp_path / "w"), "--data",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "no episode files (*.npz)" in r.stderr


def test_memory_need_counts_only_views_beyond_the_reach():
    from benchmarks.memory_need import recall_share

    turn = 12  # 30-degree steps; a 90-degree field of view: each step brings 1/3 of the view into sight
    still = np.full((2 * turn + 1, 2), 0.5)
    spin = (np.arange(2 * turn + 1) * 30.0) % 360  # two full turns in place
    # each frame shows a new third of its view; it was in sight 4+ frames before for the second turn's 12 frames
    # (one turn back) and for the first turn's last 3 (what frame 0 saw, 10-12 frames back)
    share = recall_share(still, spin, 90.0, clip=2 * turn + 1, reach=4, columns=90)
    assert share == pytest.approx((turn + 3) * (30 / 90) / (2 * turn), abs=0.01)
    assert recall_share(still, spin, 90.0, clip=2 * turn + 1, reach=turn + 1, columns=90) == 0.0  # all in reach
    walk = np.stack([np.arange(25) * 0.3 + 0.5, np.full(25, 0.5)], 1)  # straight on: nothing comes back
    assert recall_share(walk, np.zeros(25), 90.0, clip=25, reach=2) == 0.0


def test_look_around_experiment_smoke(tmp_path):
    """Both models train on look-around data and are scored with the whole context and with it cut to the reach."""
    from benchmarks import memory_look

    memory_look.main(["--preset", "smoke", "--out", str(tmp_path / "m"), "--seeds", "0"])
    res = json.loads((tmp_path / "memory_look_smoke.json").read_text())
    meta = json.loads((tmp_path / "m" / "data" / "meta.json").read_text())
    assert meta["policy"] == {"spin_prob": 0.5, "spin_turns": 2} and meta["world"]["turn_step_deg"] == 30.0
    r = res["reach"]
    for key in ("look-around", "retrieval"):
        for model in memory_look.MODELS:
            whole, cut = (res["per_seed"]["0"][key][model][p] for p in ("whole", "cut"))
            assert 0 < whole["psnr"] < 60 and set(whole["bins"]) == {"<2", f"2..{r - 1}", f"{r}+", "never seen"}
        control = res["per_seed"]["0"][key][memory_look.WINDOW]
        assert control["whole"]["ssim"] == pytest.approx(control["cut"]["ssim"], abs=1e-4)  # sees R frames either way
    # look-around: every generated frame repeats the context one turn (12 frames) back, beyond the reach
    look = res["per_seed"]["0"]["look-around"][memory_look.HYBRID]["whole"]["bins"]
    assert look[f"{r}+"]["frames"] == 6 and sum(b["frames"] for b in look.values()) == 6
    oracle = res["per_seed"]["0"]["look-around"][memory_look.BASELINES["best_context_frame"]]["whole"]["bins"]
    assert oracle[f"{r}+"]["ssim"] > 0.99  # the view one turn back is in the context
