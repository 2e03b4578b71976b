"""Scale-out and fault tolerance: DDP == one process, SIGKILL at any moment, sharding, bad files, fuzzed input."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from lssvwm.checkpoint import find_checkpoint, load_model
from lssvwm.config import ConfigError, config_from_dict
from lssvwm.data.dataset import EpisodeWindows
from lssvwm.data.episodes import EpisodeFormatError, load_episode
from lssvwm.models.world_model import WorldModel
from lssvwm.loop import batch_indices  # noqa: E402

COMMON = ["--preset", "tiny", "--no-progress", "--set", "train.clip_len=6", "train.batch_size=4",
          "train.val_fraction=0.25", "train.autocast=none", "--set"]  # callers append more settings


def _env(threads=1):
    return dict(os.environ, OMP_NUM_THREADS=str(threads))


def _train_cmd(data, out, *sets):
    return [sys.executable, "-m", "lssvwm", "train", "--data", str(data), "--out", str(out), *COMMON, *sets]


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_ddp_two_cpu_processes_equal_one_process(tiny_data, tmp_path):
    """2 gloo processes with the global batch split between them end where 1 process does (fp32, 1e-5), also
    when steps train on the model's own rollouts (each clip's rollout depends only on its own seed)."""
    sets = ["train.steps=4", "train.ckpt_every=4", "diffusion.own_rollout_prob=0.5", "sampling.steps=1",
            "sampling.stabilization=0.3"]
    one = subprocess.run(_train_cmd(tiny_data, tmp_path / "one", *sets), capture_output=True, text=True, env=_env())
    assert one.returncode == 0, one.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lssvwm.cli",
           "train", "--data", str(tiny_data), "--out", str(tmp_path / "two"), *COMMON, *sets]
    two = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert two.returncode == 0, two.stderr[-3000:]
    assert "x2" in two.stdout  # two processes really ran
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    kinds = ["own_rollout" in json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert any(kinds) and not all(kinds)
    a = load_file(str(find_checkpoint(tmp_path / "one") / "model.safetensors"))
    b = load_file(str(find_checkpoint(tmp_path / "two") / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)


def test_train_processes_started_here_equal_one_process(tiny_data, tmp_path):
    """`lssvwm train --processes 2` starts the DDP group itself (no torchrun) and trains what one process does,
    in processes of half the threads each, with Muon as the demo; failures inside the processes come back as the
    CLI's one-line errors."""
    sets = ["train.steps=3", "train.ckpt_every=3", "train.optimizer=muon"]
    one = subprocess.run(_train_cmd(tiny_data, tmp_path / "one", *sets), capture_output=True, text=True, env=_env())
    assert one.returncode == 0, one.stderr
    cmd = _train_cmd(tiny_data, tmp_path / "two", *sets) + ["--processes", "2"]
    two = subprocess.run(cmd, capture_output=True, text=True, env=_env(2))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "x2" in two.stdout and "run: " in two.stdout
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    a = load_file(str(find_checkpoint(tmp_path / "one") / "ema.safetensors"))
    b = load_file(str(find_checkpoint(tmp_path / "two") / "ema.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
    # an error raised inside the processes (rank 0 alone here: the run exists) is the one-line error of one process
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(2))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'two'} already holds a run: pass --resume to continue it, or choose another --out"]
    odd = subprocess.run(_train_cmd(tiny_data, tmp_path / "odd", *sets, "train.batch_size=3") + ["--processes", "2"],
                         capture_output=True, text=True, env=_env(2))
    assert odd.returncode == 2 and "train.batch_size=3 must be divisible by the number of processes 2" in odd.stderr
    assert "Traceback" not in odd.stderr + again.stderr


def test_train_processes_leave_no_semaphores_behind(tiny_data, tmp_path):
    """The local processes end with os._exit, past the interpreter's teardown: with progress bars on (tqdm's
    default lock is a multiprocessing semaphore) nothing is left for the resource tracker to report as leaked."""
    cmd = [c for c in _train_cmd(tiny_data, tmp_path / "run", "train.steps=2", "train.ckpt_every=2")
           if c != "--no-progress"] + ["--processes", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(2))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train:" in done.stderr  # the bars were on
    assert "leaked" not in done.stderr, done.stderr[-3000:]


def test_batches_do_not_repeat_or_skip_across_ranks():
    n, batch, world = 37, 8, 2
    steps_per_epoch_span = 3 * n // batch  # about three epochs
    seen_by_epoch: dict[int, list[int]] = {}
    for step in range(steps_per_epoch_span):
        idx = batch_indices(step, n, batch, seed=3)
        per_rank = [idx[r * batch // world:(r + 1) * batch // world].tolist() for r in range(world)]
        assert sorted(sum(per_rank, [])) == sorted(idx.tolist())  # the ranks' slices partition the batch
        for j, i in enumerate(idx.tolist()):
            seen_by_epoch.setdefault((step * batch + j) // n, []).append(i)
    for epoch, seen in seen_by_epoch.items():
        complete = len(seen) == n
        assert len(set(seen)) == len(seen), f"a window repeats within epoch {epoch}"
        if complete:
            assert sorted(seen) == list(range(n)), f"a window is skipped in epoch {epoch}"
    assert batch_indices(5, n, batch, 3).tolist() == batch_indices(5, n, batch, 3).tolist()  # deterministic


def test_dataloader_workers_and_ranks_see_each_window_once(tiny_data):
    from lssvwm.loop import StepBatchSampler

    ds = EpisodeWindows(tiny_data, 6, "train", 0.25)
    n, batch, steps = len(ds), 4, len(ds) // 4  # one epoch
    def windows(rank, world, workers):
        loader = torch.utils.data.DataLoader(ds, batch_sampler=StepBatchSampler(n, batch, 0, 0, steps, rank, world),
                                             num_workers=workers)
        return [b["frames"] for b in loader]
    single = windows(0, 1, 0)
    r0, r1 = windows(0, 2, 2), windows(1, 2, 2)  # two ranks, two worker processes each
    for s, a, b in zip(single, r0, r1):
        assert torch.equal(torch.cat([a, b]), s)  # the ranks split each global batch exactly
    seen = [i for step in range(steps) for i in batch_indices(step, n, batch, 0).tolist()]
    assert len(seen) == len(set(seen)) == steps * batch  # no window twice within the epoch


def test_sigkill_at_random_moments_then_resume_same_curve(tiny_data, tmp_path):
    sets = ["train.steps=30", "train.ckpt_every=1"]  # a checkpoint every step: kills land during writes too
    ref = subprocess.run(_train_cmd(tiny_data, tmp_path / "ref", *sets), capture_output=True, text=True, env=_env())
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(0)
    for trial in range(3):
        run = tmp_path / f"killed{trial}"
        proc = subprocess.Popen(_train_cmd(tiny_data, run, *sets), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=_env())
        deadline = time.time() + 600  # a loaded CI machine can take minutes to start torch
        while not (run / "checkpoints" / "latest").exists() and time.time() < deadline:
            time.sleep(0.02)
        assert (run / "checkpoints" / "latest").exists(), "no checkpoint within 10 minutes"
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before the kill; the test needs more steps"
        model, _, ckpt = load_model(run)  # always loadable
        assert isinstance(model, WorldModel)
        resume = [sys.executable, "-m", "lssvwm", "train", "--out", str(run), "--resume", "--no-progress"]
        res = subprocess.run(resume, capture_output=True, text=True, env=_env())  # the run's own config
        assert res.returncode == 0, res.stderr
        assert _losses(run) == _losses(tmp_path / "ref"), f"trial {trial}: killed after {ckpt.name}"


def test_processes_die_with_a_killed_parent_and_the_run_resumes(tiny_data, tmp_path):
    """SIGKILL to `lssvwm train --processes 2` stops its processes too, also when it was started with SIGINT
    ignored (what a non-interactive shell does to a job in the background): the run does not go on without it,
    and resuming it (in one process here) ends where an unbroken run does."""
    sets = ["train.steps=400", "train.ckpt_every=2", "train.warmup=1000"]  # the LR of step s: the same for any steps
    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_data, run, *sets) + ["--processes", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env(2),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    log = run / "log.jsonl"
    deadline = time.time() + 600
    while not (log.exists() and len(log.read_text().splitlines()) >= 4) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # the processes' own death (a step in flight may still end)
    lines = len(log.read_text().splitlines())
    assert 4 <= lines < 12, f"killed after {lines} steps; the test resumes to step 12"
    time.sleep(3)
    assert len(log.read_text().splitlines()) == lines, "the processes trained on after their parent was killed"
    resume = [sys.executable, "-m", "lssvwm", "train", "--out", str(run), "--resume", "--no-progress", "--set",
              "train.steps=12"]
    res = subprocess.run(resume, capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr  # nobody holds the run any more
    ref = subprocess.run(_train_cmd(tiny_data, tmp_path / "ref", "train.steps=12", "train.ckpt_every=2",
                                    "train.warmup=1000"),
                         capture_output=True, text=True, env=_env())
    assert ref.returncode == 0, ref.stderr
    np.testing.assert_allclose(_losses(run), _losses(tmp_path / "ref"), rtol=1e-5)


def test_bad_files_stop_before_training_or_are_skipped(tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted(tiny_data.glob("*.npz")):
        (data / p.name).write_bytes(p.read_bytes())
    bad = data / "ep_000001.npz"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    with pytest.raises(EpisodeFormatError, match="ep_000001.npz: not a readable .npz"):
        EpisodeWindows(data, 6, "train", 0.25)
    ds = EpisodeWindows(data, 6, "train", 0.25, skip_bad=True)
    assert [f.name for f, _ in ds.bad_files] == ["ep_000001.npz"] and len(ds.files) == 2
    out = tmp_path / "run"
    r = subprocess.run(_train_cmd(data, out, "train.steps=2"), capture_output=True, text=True, env=_env())
    assert r.returncode == 2 and "ep_000001.npz" in r.stderr and not (out / "log.jsonl").exists()
    r = subprocess.run(_train_cmd(data, out, "train.steps=2") + ["--skip-bad-files"], capture_output=True,
                       text=True, env=_env())
    assert r.returncode == 0, r.stderr
    assert "skipped 1 unreadable episode file" in r.stdout


# -- property-based: random input gives valid output or the documented error, never a crash deep inside --
arrays = st.one_of(
    st.builds(lambda shape, dt: np.zeros(shape, dtype=dt),
              st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple),
              st.sampled_from([np.uint8, np.float32, np.int64, bool])),
    st.builds(lambda t, h: np.zeros((t, h, h, 3), np.uint8), st.integers(0, 4), st.integers(1, 4)),
    st.builds(lambda t, a: np.eye(max(a, 1), dtype=np.float32)[np.zeros(t, dtype=int)], st.integers(0, 4),
              st.integers(1, 6)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["image", "action", "agent_pos", "agent_dir", "maze_layout", "other"]),
                       arrays, max_size=5))
def test_fuzzed_episode_files(tmp_path, episode):
    path = tmp_path / "fuzz.npz"
    np.savez(path, **episode)
    try:
        ep = load_episode(path)
    except EpisodeFormatError as e:
        assert str(path) in str(e)
        return
    assert ep["image"].ndim == 4 and ep["image"].shape[0] == ep["action"].shape[0] >= 2


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["model", "diffusion", "sampling", "train"]),
       st.sampled_from(["d_model", "n_heads", "patch_size", "frame_size", "layers", "d_state", "ssm_headdim",
                        "attn_chunk", "mlp_ratio", "action_dim", "lr", "steps", "autocast", "clean_frame_prob",
                        "sampling_steps", "steps", "stabilization", "schedule", "eta", "bogus"]),
       st.one_of(st.none(), st.booleans(), st.integers(-4, 70), st.floats(-2, 70, allow_nan=False), st.text(max_size=4),
                 st.lists(st.one_of(st.integers(-1, 8), st.text(max_size=3)), max_size=3),
                 st.lists(st.fixed_dictionaries({"ssm": st.one_of(st.none(), st.just("full"),
                                                                  st.lists(st.integers(0, 9), min_size=2, max_size=2)),
                                                  "attn": st.one_of(st.none(), st.just("all"), st.integers(-1, 4))}),
                          max_size=2)))
def test_fuzzed_config(section, field, value):
    try:
        cfg = config_from_dict({"preset": "tiny", section: {field: value}})
    except ConfigError:
        return
    if section == "model":  # an accepted model config builds and runs
        m = cfg.model
        model = WorldModel(m)
        x = torch.zeros(1, 2, m.channels, m.frame_size, m.frame_size)
        a = torch.zeros(1, 2, m.action_dim) if m.action_dim else torch.zeros(1, 2, dtype=torch.long)
        y, _ = model(x, torch.zeros(1, 2), a)
        assert y.shape == x.shape


def test_local_processes_leave_with_their_output_written():
    """A process of `run_cpu_processes` leaves without the interpreter's teardown (os._exit) once its work is
    done; what it printed and had not flushed (stdout is a pipe here: block-buffered) still reaches the caller."""
    code = "from lssvwm.loop import run_cpu_processes; run_cpu_processes(print, ('rank done',), processes=2, threads=2)"
    env = {k: v for k, v in _env(2).items() if k != "PYTHONUNBUFFERED"}  # buffered, as most shells run it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines().count("rank done") == 2, out.stdout
