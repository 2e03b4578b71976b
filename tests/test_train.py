"""Training loop, checkpoints and the CLI end to end, on the tiny preset."""
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lssvwm.checkpoint import CheckpointError, find_checkpoint, load_model, load_state, load_weights
from lssvwm.config import (ConfigError, RunConfig, SamplingConfig, TrainConfig, config_from_dict, load_config,
                           model_preset, parse_overrides)
from lssvwm.data.maze import INVERSE_ACTIONS
from lssvwm.models.world_model import WorldModel
from lssvwm.train import TrainingDiverged, train


def tiny_cfg(data, out, steps=6, **train_kw):
    return RunConfig(model=model_preset("tiny"), sampling=SamplingConfig(steps=2),
                     train=TrainConfig(**{**dict(data=str(data), out=str(out), steps=steps, clip_len=6, batch_size=4,
                                             warmup=2, ckpt_every=3, autocast="none", val_fraction=0.25),
                                          **train_kw}))


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("autocast, own_rollout, optimizer", [("none", None, "adamw"), ("bf16", None, "adamw"),
                                                              ("none", "forward", "adamw"),
                                                              ("none", "unrolled", "adamw"),
                                                              ("none", "reversed", "adamw"), ("none", None, "muon")])
def test_resume_equals_uninterrupted(tiny_data, tmp_path, autocast, own_rollout, optimizer):
    def cfg(out):
        c = tiny_cfg(tiny_data, out, autocast=autocast, optimizer=optimizer)
        c.diffusion.own_rollout_prob = 0.5 if own_rollout else 0.0
        c.diffusion.own_rollout_reversed = own_rollout == "reversed"
        c.diffusion.own_rollout_grad = 1.0 if own_rollout == "unrolled" else 0.0
        c.diffusion.inverse_actions = list(INVERSE_ACTIONS) if own_rollout == "reversed" else []
        c.sampling.stabilization = 0.3
        return c

    full = train(cfg(tmp_path / "full"), progress=False)
    if own_rollout:  # both kinds of step happened
        kinds = ["own_rollout" in json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
        assert any(kinds) and not all(kinds)
    part = cfg(tmp_path / "part")
    train(part, progress=False, stop_after=3)  # the process "dies" after step 3 (checkpoint at step 3)
    assert len(losses(tmp_path / "part")) == 3
    train(part, resume=True, progress=False)
    assert losses(tmp_path / "part") == losses(full)  # exact, not approximate
    a = load_file(str(find_checkpoint(full) / "model.safetensors"))
    b = load_file(str(find_checkpoint(tmp_path / "part") / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_action_dropout_one_trains_as_if_the_data_had_no_actions(tiny_data, tmp_path):
    """diffusion.action_dropout replaces the training frames' actions by "no action" (classifier-free guidance's
    unconditional case): at rate 1 two datasets that differ only in their actions train with the same losses, at
    rate 0 they do not, and at 0.5 the run is neither."""
    import shutil

    import numpy as np

    other = tmp_path / "other-actions"
    shutil.copytree(tiny_data, other)
    for f in sorted(other.glob("*.npz")):
        ep = dict(np.load(f))
        ep["action"] = np.roll(ep["action"], 1, axis=-1)  # one-hot (T, 6): each action id + 1 (mod 6)
        np.savez_compressed(f, **ep)

    def run(data, rate, name):
        cfg = tiny_cfg(data, tmp_path / name, steps=3)
        cfg.diffusion.action_dropout = rate
        return losses(train(cfg, progress=False))

    assert run(tiny_data, 1.0, "a1") == run(other, 1.0, "b1")
    plain = run(tiny_data, 0.0, "a0")
    assert plain != run(other, 0.0, "b0")
    assert run(tiny_data, 0.5, "a5") not in (plain, run(tiny_data, 1.0, "a1b"))


def test_muon_updates_the_hidden_matrices_and_adamw_the_rest(tiny_data, tmp_path):
    """train.optimizer=muon: every nn.Linear weight but the output layer's gets Muon's momentum (and an
    orthogonalised update: the singular values of a step's change are alike whatever the gradient's), everything
    else AdamW's moments; a Muon run refuses to resume as an AdamW one."""
    from lssvwm.loop import Optimizers, ema_and_optimizer, muon_matrices
    from lssvwm.muon import BatchedMuon

    model = WorldModel(model_preset("tiny"))
    matrices = muon_matrices(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(matrices) == len(linears) - 1 and all(p is not model.out.weight for p in matrices)
    _, opt = ema_and_optimizer(model, TrainConfig(optimizer="muon", lr=1e-2))
    assert isinstance(opt, Optimizers) and set(opt.state_dict()) == {"muon", "adamw"}
    assert isinstance(opt.optimizers["muon"], BatchedMuon)  # torch's update, batched (tests/test_muon.py)
    n_params = sum(1 for p in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_params  # each parameter in one group, once
    fc1 = model.blocks[0].mlp.fc1.weight
    before = fc1.detach().clone()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    m, n = fc1.shape
    u, v = torch.linalg.qr(torch.randn(m, min(m, n)))[0], torch.linalg.qr(torch.randn(n, min(m, n)))[0]
    fc1.grad = u @ torch.diag(torch.logspace(0, 1.5, min(m, n))) @ v.T  # singular values 1 to ~32
    opt.step()
    ids = {id(p) for p in matrices}
    for p in model.parameters():
        state = opt.state[p]
        assert ("momentum_buffer" in state) == (id(p) in ids) and ("exp_avg" in state) == (id(p) not in ids)
    change = torch.linalg.svdvals(fc1.detach() - before * (1 - 1e-2 * 0.01))  # less the decoupled weight decay
    # orthogonalised (Newton-Schulz): of the gradient's spread of ~32, 1.7 is left (AdamW's sign-like step: 5.6)
    assert change.max() / change.min() < 3

    # the Newton-Schulz matmuls in the type the training computes in: fp32 where it trains in fp32
    for autocast, dtype in (("none", torch.float32), ("bf16", torch.bfloat16)):
        _, o = ema_and_optimizer(model, TrainConfig(optimizer="muon", autocast=autocast))
        assert o.optimizers["muon"].ns_dtype == dtype

    with pytest.raises(ConfigError, match="train.optimizer=muon: this Conv2d has no hidden matrices"):
        ema_and_optimizer(torch.nn.Conv2d(3, 3, 3), TrainConfig(optimizer="muon"))

    run = tmp_path / "muon"
    train(tiny_cfg(tiny_data, run, steps=3, optimizer="muon"), progress=False)
    with pytest.raises(ConfigError, match="state.pt.*train.optimizer=adamw"):
        train(tiny_cfg(tiny_data, run, steps=6, optimizer="adamw"), resume=True, progress=False)


class FakeClock:
    """Stands in for the `time` module in lssvwm.loop: every call is `step` seconds after the one before."""

    def __init__(self, step=1.0, slow_first=0, slow=1.0):
        self.t, self.step, self.calls, self.slow_first, self.slow = 1000.0, step, 0, slow_first, slow

    def time(self):
        self.calls += 1  # call 1 is the loop's start; call k + 1 ends step k
        self.t += self.slow if 1 < self.calls <= 1 + self.slow_first else self.step
        return self.t


def run_loop(tmp_path, monkeypatch, clock, start=0, state=None, stop_after=None, with_state=False, **kw):
    """A Loop with nothing to train, on a fake clock: the lrs of its steps and its log records (and, with
    ``with_state``, the loop's checkpoint state at its end)."""
    import lssvwm.loop as loop_mod
    from lssvwm.config import LoopConfig

    monkeypatch.setattr(loop_mod, "time", clock)
    cfg = LoopConfig(**{**dict(lr=1e-2, warmup=30, max_minutes=1.0, ckpt_every=1000), **kw})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    tmp_path.mkdir(parents=True, exist_ok=True)
    loop = loop_mod.Loop(cfg, tmp_path, start, opt, "t", progress=False, state=state, stop_after=stop_after)
    lrs = []
    for step in loop:
        lrs.append(loop.lr)
        loop.end_step(step, {"loss": 0.0})
    loop.close()
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    return (cfg, lrs, log, loop.state()) if with_state else (cfg, lrs, log)


@pytest.mark.parametrize("guess", [1000, 35])  # a first guess far too many steps, and too few
def test_fit_steps_ends_the_schedule_with_the_time_budget(tmp_path, monkeypatch, guess):
    # 1 s a step after two slow 5 s ones; 60 s of budget. At the end of the warmup (step 30, 38 s gone) the plan
    # becomes 30 + int(0.98 * 22 s / 1 s) = 51 steps, whatever the guess was.
    cfg, lrs, log = run_loop(tmp_path / "fit", monkeypatch, FakeClock(slow_first=2, slow=5.0), steps=guess,
                             fit_steps=True)
    assert cfg.steps == len(lrs) == 51 and log[-1]["time"] <= 60
    assert [r["step"] for r in log if "planned_steps" in r] == [30] and log[29]["planned_steps"] == 51
    decay = lrs[30:]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # the cosine, from the peak, with no jump at the fit
    assert lrs[29] == lrs[30] == pytest.approx(1e-2) and lrs[-1] < 0.11 * 1e-2  # ends at its floor (0.1x)
    # without the fit the guess rules: cut by the budget at a high lr (1000), or the time left unused (35)
    cfg, lrs, log = run_loop(tmp_path / "guess", monkeypatch, FakeClock(slow_first=2, slow=5.0), steps=guess)
    assert len(lrs) == (53 if guess == 1000 else 35)
    assert lrs[-1] > 0.9 * 1e-2 if guess == 1000 else log[-1]["time"] < 45


class DriftClock(FakeClock):
    """1 s a step, then ``drift`` s a step from step ``after`` + 1 on: a machine that slows after the plan."""

    def __init__(self, after, drift):
        super().__init__()
        self.after, self.drift = after, drift

    def time(self):
        t = super().time()
        if self.calls > self.after + 1:
            self.t = t = t + self.drift - self.step
        return t


def test_fit_steps_plans_again_when_the_pace_drifts(tmp_path, monkeypatch):
    from dataclasses import replace
    import lssvwm.loop as loop_mod
    from lssvwm.config import LoopConfig
    from lssvwm.loop import get_lr

    # Planned at step 30 (30 s of 60 gone, 1 s a step) to 30 + int(0.98 * 30) = 59 steps. From step 36 a step
    # takes 1.5 s: at 80% of the budget (step 44, 48.5 s) the pace since the plan is 18.5 s / 14 steps, so the plan
    # becomes 44 + int(0.98 * 11.5 / 1.321) = 52, which ends by the time and at the LR's floor.
    cfg, lrs, log = run_loop(tmp_path / "refit", monkeypatch, DriftClock(after=35, drift=1.5), steps=1000,
                             fit_steps=True)
    assert [(r["step"], r["planned_steps"]) for r in log if "planned_steps" in r] == [(30, 59), (44, 52)]
    assert cfg.steps == len(lrs) == 52 and lrs[-1] < 0.11 * 1e-2
    decay = lrs[30:]  # the cosine goes on from where it was at the new plan: steeper, with no jump
    assert all(a > b for a, b in zip(decay, decay[1:]))
    old_plan = LoopConfig(lr=1e-2, warmup=30, steps=59)  # step 44, the first of the new plan, keeps the old lr
    assert lrs[44] == pytest.approx(get_lr(44, old_plan)) and lrs[44] > get_lr(44, replace(old_plan, steps=52))
    # killed after step 46 (both plans made) and resumed on a machine of another pace: the same plan and lrs
    *_, state = run_loop(tmp_path / "part", monkeypatch, DriftClock(after=35, drift=1.5), steps=1000,
                         fit_steps=True, stop_after=46, with_state=True)
    assert state["planned_steps"] == 52 and state["lr_anchor"][0] == 44
    _, rest, _ = run_loop(tmp_path / "part", monkeypatch, FakeClock(step=0.5), steps=1000, fit_steps=True,
                          start=46, state=state)
    assert rest == lrs[46:]
    # planned once only, the same run is cut by the time at step 52 of 59 with the LR at 2.6x its floor
    monkeypatch.setattr(loop_mod, "REFIT_AT", ())
    cfg, lrs, log = run_loop(tmp_path / "once", monkeypatch, DriftClock(after=35, drift=1.5), steps=1000,
                             fit_steps=True)
    assert cfg.steps == 59 and len(lrs) == 52 and lrs[-1] > 0.2 * 1e-2


def test_fit_steps_resume_keeps_the_plan(tiny_data, tmp_path, monkeypatch):
    import lssvwm.loop as loop_mod

    monkeypatch.setattr(loop_mod, "FIT_AFTER", 4)
    # 1 s a step, 12 s of budget: fitted at step 4 (4 s gone) to 4 + int(0.98 * 8) = 11 steps
    monkeypatch.setattr(loop_mod, "time", FakeClock())
    full = train(tiny_cfg(tiny_data, tmp_path / "full", steps=100, max_minutes=0.2, fit_steps=True),
                 progress=False)
    assert len(losses(full)) == 11 and load_state(find_checkpoint(full) / "state.pt")["planned_steps"] == 11
    assert load_config(find_checkpoint(full) / "config.yaml").train.steps == 11  # the plan, beside the weights
    part = tiny_cfg(tiny_data, tmp_path / "part", steps=100, max_minutes=0.2, fit_steps=True)
    monkeypatch.setattr(loop_mod, "time", FakeClock())
    train(part, progress=False, stop_after=6)  # killed after the step-6 checkpoint, the plan made at step 4
    monkeypatch.setattr(loop_mod, "time", FakeClock())  # a fresh process: refitting now would plan 17 steps
    train(tiny_cfg(tiny_data, tmp_path / "part", steps=100, max_minutes=0.2, fit_steps=True), resume=True,
          progress=False)
    assert losses(tmp_path / "part") == losses(full)


def test_existing_run_needs_resume(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path / "r", steps=3)
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="pass --resume"):
        train(cfg, progress=False)


def test_resumed_run_whose_data_moved_says_so_and_resumes_with_the_new_place(tiny_data, tmp_path):
    """A resumed run reads its data where its config.yaml says; when that folder is gone, one error names
    train.data and --data, and with the new place set it goes on."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    train(tiny_cfg(data, tmp_path / "r", steps=3), progress=False)
    data.rename(tmp_path / "moved")
    cfg = load_config(tmp_path / "r" / "config.yaml")
    cfg.train.steps = 6
    with pytest.raises(ConfigError, match=r"train\.data: .*data: dataset folder not found.*--data DIR"):
        train(cfg, resume=True, progress=False)
    cfg.train.data = str(tmp_path / "moved")
    train(cfg, resume=True, progress=False)
    assert len(losses(tmp_path / "r")) == 6


def test_checkpoint_layout_and_atomicity(tiny_data, tmp_path):
    run = train(tiny_cfg(tiny_data, tmp_path / "r", steps=6), progress=False)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_0000003", "step_0000006"]
    ck = find_checkpoint(run)
    assert ck.name == "step_0000006"
    assert {p.name for p in ck.iterdir()} == {"model.safetensors", "ema.safetensors", "config.yaml", "state.pt"}
    assert load_state(ck / "state.pt")["step"] == 6
    # a writer killed mid-way leaves a temp folder; the latest checkpoint still loads
    (run / "checkpoints" / ".tmp_step_0000009_123").mkdir()
    (run / "checkpoints" / ".tmp_step_0000009_123" / "model.safetensors").write_bytes(b"half")
    model, cfg, ck2 = load_model(run)
    assert ck2 == ck and isinstance(model, WorldModel)
    assert load_config(run / "config.yaml").model == model_preset("tiny")


def test_bad_checkpoints(tmp_path):
    model = WorldModel(model_preset("tiny"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    missing = dict(state)
    missing.pop("pos")
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['pos'\]"):
        load_weights(model, tmp_path / "missing.safetensors")
    extra = dict(state, bogus=torch.zeros(2))
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['bogus'\]"):
        load_weights(model, tmp_path / "extra.safetensors")
    wrong = dict(state, pos=torch.zeros(1, 1, 4, 4, 99))
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape mismatch pos: checkpoint \(1, 1, 4, 4, 99\)"):
        load_weights(model, tmp_path / "wrong.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_weights(model, tmp_path / "corrupt.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        find_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such run, checkpoint or weights folder; did you mean the shipped "
                                              "weights 'maze-small'"):
        find_checkpoint("maze-smal")  # a typo of a shipped name


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_crafted_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "state.pt", "wb") as f:
        pickle.dump({"step": 3, "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused: not a weights-only file"):
        load_state(tmp_path / "state.pt")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_nan_loss_stops_and_keeps_checkpoint(tiny_data, tmp_path, monkeypatch):
    import lssvwm.train as T

    real = T.diffusion_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        loss, stats = real(*a, **k)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 5 else loss), stats

    monkeypatch.setattr(T, "diffusion_loss", flaky)
    cfg = tiny_cfg(tiny_data, tmp_path / "r", steps=6)
    with pytest.raises(TrainingDiverged, match="step 4: loss is nan; stopped"):
        train(cfg, progress=False)
    assert find_checkpoint(tmp_path / "r").name == "step_0000003"
    calls["n"] = 0
    cfg2 = tiny_cfg(tiny_data, tmp_path / "s", steps=6, nan_policy="skip")
    train(cfg2, progress=False)
    assert len(losses(tmp_path / "s")) == 5  # one step skipped


def test_data_model_mismatch(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path / "r")
    cfg.model = model_preset("tiny", num_actions=4)
    with pytest.raises(ConfigError, match="data has 6 actions but model.num_actions=4"):
        train(cfg, progress=False)
    cfg.model = model_preset("small")
    with pytest.raises(ConfigError, match="data frames are 16x16x3 but model.frame_size=32"):
        train(cfg, progress=False)


def test_config_yaml_round_trip_and_errors(tmp_path):
    cfg = tiny_cfg("d", "o")
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match=r"train: unknown field\(s\) \['stepz'\]"):
        config_from_dict({"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        config_from_dict({"train": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="unknown model preset"):
        config_from_dict({"preset": "gigantic"})
    (tmp_path / "bad.yaml").write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    # scientific notation without a dot is a number (YAML 1.2), in files and in --set, not YAML 1.1's string
    (tmp_path / "sci.yaml").write_text("train: {lr: 1e-3, warmup: 2}\ndiffusion: {min_snr_gamma: 5E+0}\n")
    sci = load_config(tmp_path / "sci.yaml")
    assert sci.train.lr == 0.001 and sci.diffusion.min_snr_gamma == 5.0
    assert parse_overrides(["train.lr=2.5e-4", "train.data=run1e5"]) == {"train": {"lr": 2.5e-4, "data": "run1e5"}}


def test_every_shipped_config_loads():
    """Each YAML under configs/ is a valid run (or autoencoder run) config; the GPU recipe trains the shipped
    model's architecture (plus the previous-frame input) from scratch, eager with its schedule fitted to its time,
    on 8x the frames per step of stage 1."""
    from lssvwm.config import load_ae_config

    root = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"maze-small.yaml", "maze-small-stage1.yaml", "maze-small-gpu.yaml", "memory-maze.yaml"} <= set(names)
    for name in names:
        (load_ae_config if name.startswith("ae-") else load_config)(root / name)
    gpu, stage1 = load_config(root / "maze-small-gpu.yaml"), load_config(root / "maze-small-stage1.yaml")
    assert gpu.model == replace(stage1.model, prev_frame=True) and gpu.train.fit_steps and not gpu.train.init
    assert gpu.train.batch_size * gpu.train.clip_len == 8 * stage1.train.batch_size * stage1.train.clip_len


def test_cli_train_and_generate(tiny_data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lssvwm", "train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run),
           "--no-progress", "--set", "train.steps=4", "train.clip_len=6", "train.batch_size=2",
           "train.val_fraction=0.25", "sampling.steps=2"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "frame_size: 16" in r.stdout  # the config is printed at the start
    out = tmp_path / "gen.mp4"
    r = subprocess.run([sys.executable, "-m", "lssvwm", "generate", "--ckpt", str(run), "--data", str(tiny_data),
                        "--context", "8", "--frames", "6", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(out.with_suffix(".json").read_text())
    assert len(metrics["psnr_per_frame"]) == 6 and out.stat().st_size > 1000
    r = subprocess.run([sys.executable, "-m", "lssvwm", "generate", "--ckpt", str(run), "--data", str(tiny_data),
                        "--context", "8", "--frames", "6", "--out", str(tmp_path / "tf.mp4"), "--teacher-forcing"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tf = json.loads((tmp_path / "tf.json").read_text())
    # the first generated frame has the same (true) history either way; later ones differ only once the model
    # uses its history, which a 4-step model may not yet do (test_diffusion checks teacher forcing exactly)
    assert len(tf["psnr_per_frame"]) == 6 and tf["psnr_per_frame"][0] == metrics["psnr_per_frame"][0]
    assert (tmp_path / "tf.mp4").stat().st_size > 1000
    r = subprocess.run([sys.executable, "-m", "lssvwm", "generate", "--ckpt", str(tmp_path), "--data",
                        str(tiny_data)], capture_output=True, text=True)
    assert r.returncode == 2 and "no checkpoint here" in r.stderr


def test_demo_path_end_to_end(tmp_path):
    """The `make demo` code path on a tiny budget (the real demo trains `small` for ~14 minutes)."""
    from lssvwm.demo import run_demo

    m = run_demo(out=str(tmp_path / "demo"), minutes=0.05, preset="tiny", episodes=4, steps_per_episode=160,
                 context=8, frames=8, windows=2, processes=2)  # as on a CPU with 2+ threads: DDP, 2 processes
    assert m["processes"] == 2
    for name in ("rollout.gif", "next_frame.gif", "strip.png", "loss.png", "metrics.json", "follow/results.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 500
    assert len(m["psnr_per_frame"]) == 8 and set(m["baseline_repeat_last_frame"]) == {"train-mazes", "unseen-mazes"}
    assert set(m["follow"]["run"]["train-mazes"]) == {"free", "teacher_forced", "shuffled_actions", "action_gain"}
    log = (tmp_path / "demo" / "run" / "log.jsonl").read_text().splitlines()
    assert m["train_steps"] == len(log) <= m["train_steps_planned"]  # steps trained, not planned
    from lssvwm.demo import RECIPE
    saved = load_config(tmp_path / "demo" / "run" / "config.yaml")  # the recipe's batch, lr, decay reach the run
    assert saved.train.batch_size == RECIPE["batch_size"] == 4 and saved.train.lr == RECIPE["lr"]
    assert saved.train.weight_decay == RECIPE["weight_decay"] == 0.1  # not train.weight_decay's default
    assert saved.train.fit_steps and saved.train.max_minutes == 0.05  # the step count is fitted to the budget


def test_demo_trains_in_two_processes_where_there_are_two_threads():
    from lssvwm.demo import demo_processes

    assert [demo_processes(4, t) for t in (1, 2, 3, 16)] == [1, 2, 2, 2] or torch.cuda.is_available()
    assert demo_processes(3, 2) == 1  # an odd batch does not split


def test_demo_model_is_the_recipes_width_of_small():
    from lssvwm.demo import RECIPE, demo_model, demo_width

    small = demo_model()
    assert small.d_model == demo_width() in (RECIPE["d_model"], RECIPE["d_model_fp32"])  # 96, or 64 on fp32 CPUs
    assert small.layers == model_preset("small", window=4).layers
    assert not RECIPE["prev_frame"] and not small.prev_frame and not demo_model("tiny").prev_frame  # every preset
    assert small.prediction == demo_model("tiny").prediction == RECIPE["prediction"] == "x0"
    assert demo_model(d_model=128).d_model == 128  # d_model overrides the machine's width
    assert demo_model("tiny").d_model == model_preset("tiny").d_model  # other presets keep their width


def test_demo_resumes_only_its_own_setup(tmp_path):
    """Run again, the demo continues its own run; a run left by another setup (an older demo) is kept aside,
    not resumed with its old config."""
    from lssvwm.demo import run_demo

    kw = dict(minutes=0.02, preset="tiny", episodes=3, steps_per_episode=110, context=4, frames=2, windows=1)
    out = tmp_path / "demo"
    run_demo(out=str(out), lr=1e-3, **kw)
    steps = sorted(p.name for p in (out / "run" / "checkpoints").glob("step_*"))
    run_demo(out=str(out), lr=1e-3, **kw)  # same setup: the same run continues, nothing moved
    assert not list(out.glob("run.previous-*"))
    assert set(steps) <= {p.name for p in (out / "run" / "checkpoints").glob("step_*")}
    m = run_demo(out=str(out), lr=2e-3, **kw)  # another setup: the old run is kept aside
    kept = list(out.glob("run.previous-*"))
    assert len(kept) == 1 and (kept[0] / "checkpoints" / "latest").exists()
    assert "lr: 0.002" in (out / "run" / "config.yaml").read_text()
    assert len(m["psnr_per_frame"]) == 2


def test_demo_moved_elsewhere_resumes_there_and_says_where_it_stands(tmp_path, capsys):
    """A demo folder copied elsewhere goes on there (its config named the old places): nothing kept aside, the
    run's config points to the new folder, and the message gives the step reached and the fitted plan from the
    checkpoint, not the first guess the run's config.yaml started from."""
    import shutil

    from lssvwm.demo import run_demo

    kw = dict(minutes=0.02, preset="tiny", episodes=3, steps_per_episode=110, context=4, frames=2, windows=1, lr=1e-3)
    first = tmp_path / "first"
    run_demo(out=str(first), **kw)
    moved = tmp_path / "elsewhere" / "demo"
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    latest = (moved / "run" / "checkpoints" / "latest").read_text().strip()
    planned = load_config(moved / "run" / "checkpoints" / latest / "config.yaml").train.steps
    capsys.readouterr()
    run_demo(out=str(moved), **kw)
    said = capsys.readouterr().out
    assert not list(moved.glob("run.previous-*"))
    assert f"resuming at step {int(latest.removeprefix('step_'))} of the {planned} planned" in said, said
    cfg = load_config(moved / "run" / "config.yaml")
    assert Path(cfg.train.out) == moved / "run" and Path(cfg.train.data) == moved / "data"


def test_configs_saved_before_the_sampling_section_still_load(tmp_path):
    """Runs saved before SamplingConfig kept their sampling settings under diffusion: they load into sampling."""
    old = tmp_path / "config.yaml"
    old.write_text("preset: tiny\ndiffusion: {long_context_prob: 0.3, sampling_steps: 4, context_noise_level: 0.3}\n")
    cfg = load_config(old)
    assert (cfg.sampling.steps, cfg.sampling.stabilization) == (4, 0.3)
    assert cfg.diffusion.long_context_prob == 0.3
    both = config_from_dict({"preset": "tiny", "diffusion": {"sampling_steps": 4}, "sampling": {"steps": 2}})
    assert both.sampling.steps == 2  # the new section wins
    with pytest.raises(ConfigError, match="sampling.steps must be a positive integer"):
        config_from_dict({"preset": "tiny", "diffusion": {"sampling_steps": 0}})


def test_tensorboard_log_reads_back(tiny_data, tmp_path):
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_cfg(tiny_data, tmp_path / "tb", steps=4, sample_every=2, tensorboard=True)
    train(cfg, progress=False)
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/frames_per_s", "samples/psnr"):
        assert tag in tags["scalars"], tags
    logged = [json.loads(x)["loss"] for x in (tmp_path / "tb" / "log.jsonl").read_text().splitlines()]
    assert [round(e.value, 5) for e in acc.Scalars("train/loss")] == [round(v, 5) for v in logged]
    images = acc.Images("samples/rollout")
    assert [e.step for e in images] == [2, 4] and images[0].height == 2 * 16  # ground truth over prediction


def test_autocast_auto_uses_bf16_only_where_it_is_fast(monkeypatch):
    """autocast 'auto': bf16 on a CPU with fast bf16, fp32 on one without (AVX2-only CPUs emulate bf16 ~80x
    slower than fp32); 'bf16' and 'none' are obeyed as given. The demo trains with Muon on both kinds, its
    Newton-Schulz matmuls in the type 'auto' picks."""
    import lssvwm.loop as loop
    from lssvwm.config import TrainConfig
    from lssvwm.demo import demo_model, demo_run_config

    cpu = torch.device("cpu")
    for fast in (True, False):
        monkeypatch.setattr(loop, "cpu_bf16_fast", lambda: fast)
        assert loop.autocast_dtype(TrainConfig(autocast="auto"), cpu) == (torch.bfloat16 if fast else None)
        assert loop.autocast_dtype(TrainConfig(autocast="bf16"), cpu) == torch.bfloat16
        assert loop.autocast_dtype(TrainConfig(autocast="none"), cpu) is None
        if not torch.cuda.is_available():  # the demo's Muon orthogonalises in the type the training computes in
            train_cfg = demo_run_config(demo_model(), "d", "o", 1.0).train
            _, opt = loop.ema_and_optimizer(torch.nn.Linear(4, 4), train_cfg)
            assert train_cfg.optimizer == "muon"
            assert demo_model().d_model == (96 if fast else 64)  # 64 wide where it trains in fp32 on a CPU
            assert opt.optimizers["muon"].ns_dtype == (torch.bfloat16 if fast else torch.float32)
    monkeypatch.undo()
    loop.cpu_bf16_fast.cache_clear()
    assert loop.cpu_bf16_fast() in (True, False)  # measured on this machine


def test_demo_shows_the_shipped_weights_beside_its_run(tmp_path, monkeypatch):
    """With shipped weights of the demo's frame size, the demo scores them on the same windows beside its run."""
    import lssvwm.checkpoint as ck
    from lssvwm.config import RunConfig, SamplingConfig, model_preset
    from lssvwm.demo import run_demo
    from lssvwm.models.world_model import WorldModel

    shipped = tmp_path / "shipped"
    WorldModel(model_preset("tiny")).save_pretrained(shipped / "maze-tiny", RunConfig(
        model=model_preset("tiny"), sampling=SamplingConfig(steps=1)))
    monkeypatch.setattr(ck, "SHIPPED", shipped)
    m = run_demo(out=str(tmp_path / "demo"), minutes=0.02, preset="tiny", episodes=3, steps_per_episode=110,
                 context=4, frames=3, windows=1, shipped="maze-tiny")
    assert set(m["follow"]) == {"run", "maze-tiny"}
    assert set(m["follow"]["maze-tiny"]) == {"train-mazes", "unseen-mazes"}
    # both sampled at the recipe's temperature: the run saved it, the shipped weights (saved with 1) get it given
    from lssvwm.demo import RECIPE

    follow = json.loads((tmp_path / "demo" / "follow" / "results.json").read_text())
    assert RECIPE["sampling"]["temperature"] != 1.0
    assert {name: model["sampling"]["temperature"] for name, model in follow["models"].items()} == {
        "run": RECIPE["sampling"]["temperature"], "maze-tiny": RECIPE["sampling"]["temperature"]}


def test_init_starts_from_another_runs_weights(tiny_run, tiny_data, tmp_path, capsys):
    """Fine-tuning (train.init / --init): the new run starts from the source's EMA weights with a fresh optimizer;
    the model must be the same (how it runs, and what no weight depends on, may differ); the CLI takes the
    source's model when none is given."""
    import copy
    from dataclasses import replace

    from lssvwm.checkpoint import CheckpointError, init_from, load_model
    from lssvwm.models.world_model import WorldModel

    src, src_cfg, _ = load_model(tiny_run)
    cfg = copy.deepcopy(src_cfg)
    cfg.model.attn_backend = "sdpa"  # how it runs: may differ
    torch.manual_seed(5)
    model = WorldModel(cfg.model)
    ema = copy.deepcopy(model)
    assert any((a - b).abs().max() > 0 for a, b in zip(model.parameters(), src.parameters()))
    init_from(model, ema, cfg, str(tiny_run))
    for m in (model, ema):
        for (name, a), b in zip(m.state_dict().items(), src.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # what no weight depends on may differ too, with a note: the attention windows, the scans' init and chunk
    windows = copy.deepcopy(cfg)
    windows.model.layers = [replace(spec, attn=1 if spec.attn is not None else None) for spec in cfg.model.layers]
    windows.model.ssm_dt_init, windows.model.ssm_chunk = "frame", 8
    assert windows.model.layers != cfg.model.layers and windows.model.attention_reach() == 1 + cfg.model.prev_frame
    model = WorldModel(windows.model)
    init_from(model, copy.deepcopy(model), windows, str(tiny_run))
    out = capsys.readouterr().out
    assert out.count("note: train.init=") == 3 and "model.layers" in out and "model.ssm_chunk: 8 here" in out
    for (name, a), b in zip(model.state_dict().items(), src.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # ... but not the scans' blocks, nor where the attention is
    for change in ({"ssm": (2, 2)}, {"attn": None}):
        other = copy.deepcopy(cfg)
        other.model.layers = [replace(cfg.model.layers[0], **change)] + cfg.model.layers[1:]
        with pytest.raises(CheckpointError, match=r"model\.layers: "):
            init_from(WorldModel(other.model), WorldModel(other.model), other, str(tiny_run))
    cfg.model.d_model = 64
    with pytest.raises(CheckpointError, match=r"model\.d_model: 64 here"):
        init_from(WorldModel(cfg.model), WorldModel(cfg.model), cfg, str(tiny_run))

    run = tmp_path / "ft"
    base = [sys.executable, "-m", "lssvwm", "train", "--data", str(tiny_data), "--no-progress", "--set",
            "train.steps=1", "train.clip_len=6", "train.batch_size=2", "train.val_fraction=0.25"]
    r = subprocess.run(base + ["--out", str(run), "--init", str(tiny_run)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "starting from the weights of" in r.stdout
    from lssvwm.config import load_config

    saved = load_config(run / "config.yaml")
    assert saved.model == src_cfg.model and saved.train.init == str(tiny_run)
    r = subprocess.run(base + ["--out", str(tmp_path / "bad"), "--init", str(tiny_run), "--preset", "tiny", "--set",
                               "model.d_model=64"], capture_output=True, text=True)
    assert r.returncode == 2 and "differs from this run's" in r.stderr and "model.d_model" in r.stderr
    r = subprocess.run(base + ["--out", str(tmp_path / "none"), "--preset", "tiny", "--set",
                               "train.init=" + str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert r.returncode == 2 and "nowhere: no such run, checkpoint or weights folder" in r.stderr
