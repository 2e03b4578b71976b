"""Bad input of every class the hostile-user sweep found: one clear line, a non-zero exit, nothing half-written,
nothing silently accepted. (The play server's cases are in test_play.py.)"""
import errno
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lssvwm.checkpoint import CheckpointError, find_checkpoint, load_model, save_checkpoint
from lssvwm.cli import main
from lssvwm.config import ConfigError, config_from_dict, layered_config, parse_yaml

def run_cli(capsys, *argv) -> tuple[int, str]:
    """main(argv) in-process -> (exit code, stderr). argparse's own refusals exit with 2 too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


# -- generate / eval: every number checked, outputs checked before work, nothing half-written --------------------
@pytest.mark.parametrize("args, message", [
    (["--frames", "0"], "--frames: must be >= 1"),
    (["--frames", "-3"], "--frames: must be >= 1"),
    (["--context", "0"], "--context: must be >= 1"),
    (["--start", "-1"], "--start: must be >= 0"),
    (["--episode", "-1"], "--episode: must be >= 0"),
    (["--fps", "0"], "--fps: must be >= 1"),
    (["--steps", "-1"], "--steps: must be >= 1"),
    (["--stabilization", "1.5"], "--stabilization: must be in"),
    (["--stabilization", "nan"], "--stabilization: must be in"),
    (["--eta", "2"], "--eta: must be in"),
    (["--history-guidance", "-1"], "--history-guidance: must be in"),
    (["--history-guidance-level", "0"], "--history-guidance-level: must be in (0"),
    (["--out", "video.txt"], "must end in .mp4 or .gif"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--episode", "99"], "--episode must be in [0, 1)"),
    (["--context", "40"], "exceeds the episode's 41 frames"),
    (["--start", "500"], "exceeds the episode's 41 frames"),
])
def test_generate_refuses_bad_arguments(tiny_run, tiny_data, tmp_path, capsys, args, message):
    out = tmp_path / "sub" / "roll.mp4"
    base = ["generate", "--ckpt", tiny_run, "--data", tiny_data, "--context", "4", "--frames", "3", "--out", out]
    code, err = run_cli(capsys, *base, *args)
    assert code == 2 and message in err, err
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.mp4"))  # nothing half-written


def test_generate_without_cuda_says_so(tiny_run, tiny_data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run_cli(capsys, "generate", "--ckpt", tiny_run, "--data", tiny_data, "--device", "cuda",
                        "--out", tmp_path / "a.mp4")
    assert code == 2 and "CUDA is not available" in err


def test_outputs_in_unwritable_places_are_refused_before_work(tiny_run, tiny_data, tmp_path, capsys, monkeypatch):
    import lssvwm.cli as cli

    (tmp_path / "file").write_text("x")
    code, err = run_cli(capsys, "generate", "--ckpt", tiny_run, "--data", tiny_data, "--context", "4", "--frames",
                        "2", "--out", tmp_path / "file" / "a.mp4")
    assert code == 2 and "exists and is not a folder" in err
    code, err = run_cli(capsys, "model", "export", "--ckpt", tiny_run, "--out", tmp_path / "file" / "deeper" / "x")
    assert code == 2 and "cannot create this folder" in err, err
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)  # a read-only folder (root ignores modes)
    for argv in (["generate", "--ckpt", tiny_run, "--data", tiny_data, "--out", tmp_path / "ro" / "a.mp4"],
                 ["eval", "follow", "--ckpt", tiny_run, "--out", tmp_path / "ro2"],
                 ["model", "export", "--ckpt", tiny_run, "--out", tmp_path / "ro4"],
                 ["play", "--ckpt", tiny_run, "--record", tmp_path / "ro3"]):
        code, err = run_cli(capsys, *argv)
        assert code == 2 and "is not writable" in err, err


def test_generate_writes_video_and_metrics_in_a_new_folder(tiny_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "roll.gif"
    code, _ = run_cli(capsys, "generate", "--ckpt", tiny_run, "--data", tiny_data, "--context", "4", "--frames", "2",
                      "--out", out, "--steps", "1")
    assert code == 0 and out.exists() and out.with_suffix(".json").exists()


@pytest.mark.parametrize("cmd, message", [
    (["data", "maze", "--steps", "-5"], "--steps: must be >= 1"),
    (["data", "maze", "--resolution", "0"], "--resolution: must be in [8, 1024]"),
    (["data", "maze", "--resolution", "100000"], "--resolution: must be in [8, 1024]"),
    (["data", "maze", "--resolution", "33"], "must be even"),
    (["data", "maze", "--size", "6"], "must be odd"),
    (["data", "maze", "--size", "1"], "--size: must be in [5, 101]"),
    (["data", "maze", "--episodes", "-1"], "--episodes: must be >= 1"),
    (["data", "maze", "--workers", "0"], "--workers: must be >= 1"),
    (["eval", "follow", "--ckpt", "x", "--windows", "0"], "--windows: must be >= 1"),
    (["eval", "memory", "--ckpt", "x", "--episodes", "0"], "--episodes: must be >= 1"),
    (["play", "--ckpt", "x", "--port", "70000"], "--port: must be in [0, 65535]"),
    (["play", "--ckpt", "x", "--steps", "-3"], "--steps: must be >= 1"),
    (["demo", "--minutes", "-1"], "--minutes: must be in (0"),
    (["demo", "--layers", "0"], "--layers: must be >= 1"),
    (["demo", "--d-model", "x"], "--d-model: expected an integer, got 'x'"),
    (["model", "info", "huge"], "invalid choice: 'huge'"),
])
def test_numbers_and_names_are_checked_while_parsing(tmp_path, capsys, cmd, message):
    code, err = run_cli(capsys, *cmd, *(["--out", tmp_path / "o"] if cmd[0] == "data" else []))
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_data_preview_refuses_bad_episode_and_frames(tiny_data, tmp_path, capsys):
    assert run_cli(capsys, "data", "preview", tiny_data, "--episode", "9", "--out", tmp_path / "p.mp4")[0] == 2
    code, err = run_cli(capsys, "data", "preview", tiny_data, "--frames", "0")
    assert code == 2 and "--frames: must be >= 1" in err


# -- configs: every field validated, YAML read defensively, absurd sizes refused before allocating -------------
@pytest.mark.parametrize("setting, message", [
    ("train.batch_size=0", "train.batch_size must be an integer >= 1"),
    ("train.clip_len=0", "train.clip_len must be an integer >= 1"),
    ("train.lr=-1", "train.lr must be a positive number"),
    ("train.lr=.nan", "train.lr must be a positive number"),
    ("train.lr=.inf", "train.lr must be a positive number"),
    ("train.num_workers=-1", "train.num_workers must be an integer >= 0"),
    ("train.ckpt_every=0", "train.ckpt_every must be an integer >= 1"),
    ("train.data_layout=nonsense", "train.data_layout must be one of"),
    ("train.steps=0", "train.steps must be an integer >= 1"),
    ("train.val_fraction=1.5", "train.val_fraction must be in [0, 1)"),
    ("train.ema_decay=2", "train.ema_decay must be in [0, 1)"),
    ("train.grad_clip=-1", "train.grad_clip must be a positive number"),
    ("train.max_minutes=-2", "train.max_minutes must be"),
    ("train.fit_steps=true", "train.fit_steps=true needs train.max_minutes > 0"),
    ("diffusion.long_context_prob=7", "diffusion.long_context_prob must be a probability"),
    ("diffusion.context_noise_level=5", "sampling.stabilization must be a noise level in [0, 1)"),
    ("sampling.stabilization=5", "sampling.stabilization must be a noise level in [0, 1)"),
    ("diffusion.sampling_steps=-1", "sampling.steps must be a positive integer"),
    ("sampling.schedule=cosine", "sampling.schedule must be one of"),
    ("model.layers=[{ssm: [0, 0], attn: 4}]", "model.layers[0].ssm block [0, 0] must divide"),
    ("model.layers=[{ssm: null, attn: 1000000000000}]", "model.layers[0].attn must be null, 'all' or a window"),
    ("model.d_model=1000000000", "GiB of memory is available"),
    ("train.bogus=1", "unknown field(s) ['bogus']"),
    ("train.steps=[1, 2", "--set train.steps: invalid YAML"),
    ("steps=3", "--set expects section.field=value"),
])
def test_train_refuses_bad_settings_before_creating_the_run(tiny_data, tmp_path, capsys, setting, message):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "train", "--preset", "tiny", "--data", tiny_data, "--out", out, "--set", setting)
    assert code == 2 and message in err, err
    assert not out.exists()  # nothing half-written


def test_bad_config_files(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    nested = tmp_path / "nested.yaml"
    nested.write_text("train: " + "[" * 5000 + "]" * 5000)
    bomb = tmp_path / "bomb.yaml"  # "billion laughs": 9^9 elements if anything expanded it
    levels = ["&a [x, x, x, x, x, x, x, x, x]"] + [
        f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    bomb.write_text("model: {layers: [" + ", ".join(levels) + "]}\n")
    for path, message in ((binary, "not a text (UTF-8) YAML file"), (nested, "nested too deeply"),
                          (bomb, "model.layers[0] must be a mapping"), (tmp_path / "missing.yaml", "not found"),
                          (tmp_path, "is a folder")):
        t0 = time.time()
        code, err = run_cli(capsys, "train", "--config", path, "--out", tmp_path / "r")
        assert code == 2 and message in err, (path, err)
        # the bomb is never expanded (9^9 elements would take far longer than this bound, even on a loaded machine)
        assert time.time() - t0 < 60 and len(err) < 600


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["batch_size", "steps", "lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip",
                        "ema_decay", "seed", "val_fraction", "ckpt_every", "clip_len", "sample_every", "num_workers",
                        "max_minutes", "autocast", "nan_policy", "data_layout"]),
       st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=6), st.lists(st.integers(), max_size=2)))
def test_fuzzed_train_fields_are_valid_or_refused(name, value):
    try:
        cfg = config_from_dict({"preset": "tiny", "train": {name: value}})
    except ConfigError as e:
        assert f"train.{name}" in str(e)
        return
    cfg.validate()  # what was accepted is really valid
    v = getattr(cfg.train, name)
    if isinstance(v, float):
        assert np.isfinite(v)


def test_layered_config_for_python_users(tmp_path):
    cfg = layered_config("run", preset="tiny", overrides=["train.steps=7", "sampling.steps=2"], data="d", out="o")
    assert (cfg.train.steps, cfg.sampling.steps, cfg.model.d_model, cfg.train.data) == (7, 2, 32, "d")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_yaml("{a: [", "x")


# -- data: checked at the boundary, with the file and field named ------------------------------------------------
def test_data_errors_name_the_file_and_field(tmp_path):
    import io
    import zipfile

    from lssvwm.data.dataset import EpisodeWindows
    from lssvwm.data.episodes import EpisodeFormatError, generate_episode
    from lssvwm.data.videos import detect_layout, read_actions

    ep = generate_episode(0, 10, resolution=16)
    (tmp_path / "noimg").mkdir()
    np.savez(tmp_path / "noimg" / "ep_000000.npz", action=ep["action"])
    with pytest.raises(EpisodeFormatError, match="missing key 'image'") as info:
        EpisodeWindows(tmp_path / "noimg", 4)
    assert "corrupt" not in str(info.value)
    (tmp_path / "huge").mkdir()  # a header that declares 10^9 frames: refused before anything is indexed
    with zipfile.ZipFile(tmp_path / "huge" / "ep_000000.npz", "w") as z:
        b = io.BytesIO()
        np.lib.format.write_array_header_1_0(b, {"descr": "|u1", "fortran_order": False,
                                                 "shape": (10**9, 16, 16, 3)})
        b.write(ep["image"].tobytes())
        z.writestr("image.npy", b.getvalue())
        b = io.BytesIO()
        np.save(b, ep["action"])
        z.writestr("action.npy", b.getvalue())
    t0 = time.time()
    with pytest.raises(EpisodeFormatError, match=r"declares shape \(1000000000, 16, 16, 3\)"):
        EpisodeWindows(tmp_path / "huge", 4)
    assert time.time() - t0 < 5
    np.savez(tmp_path / "nan.npz", actions=np.array([[0.5, np.nan], [1.0, 2.0]]))
    with pytest.raises(EpisodeFormatError, match="NaN or infinite value"):
        read_actions(tmp_path / "nan.npz")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(EpisodeFormatError, match="nested too deeply"):
        read_actions(tmp_path / "deep.json")
    (tmp_path / "ragged.json").write_text("[[1, 2], [3]]")
    with pytest.raises(EpisodeFormatError, match="equal-length lists"):
        read_actions(tmp_path / "ragged.json")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "noimg", mixed)
    (mixed / "clip.mp4").write_bytes(b"not a video")
    with pytest.raises(EpisodeFormatError, match="more than one data layout"):
        detect_layout(mixed)


def test_corrupt_video_error_is_one_line(tmp_path):
    from lssvwm.data.episodes import EpisodeFormatError
    from lssvwm.data.videos import probe_video

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(4000))
    with pytest.raises(EpisodeFormatError) as info:
        probe_video(bad)
    assert "\n" not in str(info.value) and "ffmpeg version" not in str(info.value) and str(bad) in str(info.value)


def test_non_square_frames_get_the_right_advice(tmp_path):
    from lssvwm.config import RunConfig, TrainConfig, model_preset
    from lssvwm.train import check_data_matches

    class Data:
        frame_shape, action_dim, num_actions, layout = (16, 24, 3), 0, 6, "episodes"

    with pytest.raises(ConfigError, match="square frames; crop or resize"):
        check_data_matches(RunConfig(model=model_preset("tiny"), train=TrainConfig()), Data())


# -- checkpoints: nothing lost, nothing unsafe loaded ------------------------------------------------------------
def _tiny_run(tiny_data, out, steps=2):
    from lssvwm.config import RunConfig, SamplingConfig, TrainConfig, model_preset
    from lssvwm.train import train

    cfg = RunConfig(model=model_preset("tiny"), sampling=SamplingConfig(steps=1),
                    train=TrainConfig(data=str(tiny_data), out=str(out), steps=steps, clip_len=6, batch_size=2,
                                      val_fraction=0.25, ckpt_every=1, autocast="none"))
    train(cfg, progress=False)
    return cfg


def test_full_disk_during_a_checkpoint_loses_nothing_and_resume_works(tiny_data, tmp_path, monkeypatch):
    import lssvwm.checkpoint as ck
    from lssvwm.train import train

    cfg = _tiny_run(tiny_data, tmp_path / "run")
    before = find_checkpoint(tmp_path / "run")
    real = ck.save_file

    def full_disk(tensors, path, *a, **k):
        if "ema" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", full_disk)
    from lssvwm.models.world_model import WorldModel

    m = WorldModel(cfg.model)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "run", 3, cfg, m, m, torch.optim.AdamW(m.parameters()), {})
    ckpts = tmp_path / "run" / "checkpoints"
    assert not list(ckpts.glob(".tmp_step_*")) and not (ckpts / "latest.tmp").exists()
    assert find_checkpoint(tmp_path / "run") == before  # the previous checkpoint is still the latest
    monkeypatch.setattr(ck, "save_file", real)
    (ckpts / ".tmp_step_0000009_1").mkdir()  # a killed writer's leftovers do not stop a resume either
    cfg.train.steps = 4
    train(cfg, resume=True, progress=False)
    assert find_checkpoint(tmp_path / "run").name == "step_0000004" and not list(ckpts.glob(".tmp_step_*"))


def test_latest_pointer_cannot_leave_the_run_and_nan_weights_are_refused(tiny_data, tmp_path):
    _tiny_run(tiny_data, tmp_path / "run")
    pointer = tmp_path / "run" / "checkpoints" / "latest"
    good = pointer.read_text()
    for evil in ("../../other/checkpoints/step_0000001", "/etc", "step_1/../../x"):
        pointer.write_text(evil)
        with pytest.raises(CheckpointError, match="must name a checkpoint folder step_<N>"):
            find_checkpoint(tmp_path / "run")
    pointer.write_text(good)
    from safetensors.torch import load_file, save_file

    ema = find_checkpoint(tmp_path / "run") / "ema.safetensors"
    state = load_file(str(ema))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key][0] = float("nan")
    save_file(state, str(ema))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_model(tmp_path / "run")


def test_cli_errors_are_one_line_in_a_subprocess(tiny_data, tmp_path):
    """What a user sees, end to end: no traceback, one error line, exit 2; --debug shows the traceback."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lssvwm", "train", "--preset", "tiny", "--data", str(tiny_data), "--out",
           str(tmp_path / "r"), "--set", "train.batch_size=0"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")
    r = subprocess.run([sys.executable, "-m", "lssvwm", "--debug", *cmd[3:]], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_unexpected_errors_become_one_line(monkeypatch, capsys):
    import lssvwm.cli as cli

    def boom(a):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(cli, "_model_info", boom)
    code, err = run_cli(capsys, "model", "info", "tiny")
    assert code == 1 and "RuntimeError: kaput" in err and "second line" not in err and "--debug" in err
    monkeypatch.setattr(cli, "_model_info", lambda a: (_ for _ in ()).throw(ModuleNotFoundError(
        "No module named 'memory_maze'", name="memory_maze")))
    code, err = run_cli(capsys, "model", "info", "tiny")
    assert code == 2 and "pip install 'lssvwm[memory-maze]'" in err
    monkeypatch.setattr(cli, "_model_info", lambda a: (_ for _ in ()).throw(ImportError("cannot import name 'x'")))
    code, err = run_cli(capsys, "model", "info", "tiny")
    assert code == 1 and "ImportError" in err  # a real import bug is not passed off as a missing extra


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(-2, 3), st.integers(-2, 45), st.integers(-2, 3), st.integers(-1, 2), st.integers(-1, 2))
def test_fuzzed_generate_numbers(tiny_run, tiny_data, tmp_path, capsys, context, start, frames, episode, steps):
    out = tmp_path / "g.mp4"
    code, err = run_cli(capsys, "generate", "--ckpt", tiny_run, "--data", tiny_data, "--context", context, "--start",
                        start, "--frames", frames, "--episode", episode, "--steps", steps, "--out", out)
    valid = context >= 1 and start >= 0 and frames >= 1 and 0 <= episode < 1 and steps >= 1 and \
        start + context + frames <= 41
    assert (code == 0) == valid, (code, err)
    if code:
        assert err.startswith("error: ") or "usage:" in err
    else:
        assert json.loads(out.with_suffix(".json").read_text())["psnr"] > 0


def test_full_disk_said_as_a_full_disk_with_the_space_needed(tiny_data, tmp_path, monkeypatch, capsys):
    """torch.save on a full disk raises 'RuntimeError: [enforce fail at inline_container.cc] unexpected pos';
    the user is told the disk is full, where, and how much the checkpoint needs; the previous one is kept."""
    import lssvwm.checkpoint as ck
    from lssvwm.cli import describe_error
    from lssvwm.models.world_model import WorldModel

    cfg = _tiny_run(tiny_data, tmp_path / "run")
    before = find_checkpoint(tmp_path / "run")

    def torch_save_on_full_disk(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ck.torch, "save", torch_save_on_full_disk)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    m = WorldModel(cfg.model)
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path / "run", 3, cfg, m, m, torch.optim.AdamW(m.parameters()), {})
    message, code = describe_error(info.value)
    assert message.startswith(f"{tmp_path / 'run' / 'checkpoints'}: No space left on device") and code == 1
    assert "MiB are free" in message and "needs about" in message and "unexpected" not in message
    assert find_checkpoint(tmp_path / "run") == before
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp_step_*"))


def test_other_checkpoint_errors_are_not_called_a_full_disk(tiny_data, tmp_path, monkeypatch):
    import lssvwm.checkpoint as ck
    from lssvwm.models.world_model import WorldModel

    cfg = _tiny_run(tiny_data, tmp_path / "run")

    def broken(*a, **k):
        raise RuntimeError("something else")

    monkeypatch.setattr(ck.torch, "save", broken)
    m = WorldModel(cfg.model)
    with pytest.raises(RuntimeError, match="something else"):
        save_checkpoint(tmp_path / "run", 3, cfg, m, m, torch.optim.AdamW(m.parameters()), {})


# -- one writer per folder ----------------------------------------------------------------------------------------
def _hold(folder, seconds=60):
    """A second process that holds ``folder`` as its writer (as a training run would) until killed."""
    code = (f"import time; from lssvwm.writer_lock import one_writer\n"
            f"with one_writer({str(folder)!r}, 'test'):\n    print('held', flush=True); time.sleep({seconds})")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_two_writers_of_one_run_folder_the_second_is_refused_with_the_pid(tiny_data, tmp_path, capsys):
    """train, train-ae, data generation and model export into a folder another process writes: refused at once,
    naming that process; after it is killed (-9) the folder is free again and a resume works."""
    run = tmp_path / "run"
    cfg = _tiny_run(tiny_data, run)
    holder = _hold(run)
    try:
        code, err = run_cli(capsys, "train", "--out", run, "--resume", "--set", "train.steps=4")
        assert code == 2 and f"process {holder.pid}" in err and "one writer per folder" in err, err
        assert err.count("\n") == 1
        lines_before = (run / "log.jsonl").read_text()
        for argv in (["train-ae", "--data", tiny_data, "--out", run],
                     ["data", "maze", "--episodes", "1", "--steps", "5", "--resolution", "16", "--out", run],
                     ["model", "export", "--ckpt", tiny_data.parent / "nothing", "--out", run]):
            code, err = run_cli(capsys, *argv)
            assert code == 2, (argv, err)
            if argv[0] != "model":  # export first loads the checkpoint (missing here) and says so
                assert f"process {holder.pid}" in err, (argv, err)
        assert (run / "log.jsonl").read_text() == lines_before  # the refused writers wrote nothing
    finally:
        holder.kill()
        holder.wait()
    from lssvwm.train import train

    cfg.train.steps = 3
    train(cfg, resume=True, progress=False)  # free after the holder's kill -9
    assert find_checkpoint(run).name == "step_0000003"


def test_export_into_a_held_folder_is_refused(tiny_run, tmp_path, capsys):
    holder = _hold(tmp_path / "export")
    try:
        code, err = run_cli(capsys, "model", "export", "--ckpt", tiny_run, "--out", tmp_path / "export")
        assert code == 2 and f"process {holder.pid}" in err, err
        assert not any((tmp_path / "export").iterdir())
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_job_leaves_no_folder_and_locks_nothing_behind(tmp_path):
    from lssvwm.writer_lock import FolderBusy, one_writer

    with one_writer(tmp_path / "new", "job"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()  # created and left empty: removed
    holder = _hold(tmp_path / "busy")
    try:
        with pytest.raises(FolderBusy, match=f"process {holder.pid}"):
            with one_writer(tmp_path / "busy", "job"):
                pass
        assert (tmp_path / "busy").is_dir()  # the holder's folder stays
    finally:
        holder.kill()
        holder.wait()
    with one_writer(tmp_path / "busy", "job"):  # free once its holder is gone
        pass


@pytest.mark.parametrize("argv, where", [(["train", "--steps", "abc"], "lssvwm"), (["nosuch"], "lssvwm"),
                                         (["data", "maze", "--episodes", "0"], "lssvwm data maze"),
                                         ([], "lssvwm")])
def test_usage_errors_are_one_line_with_where_to_look(argv, where, capsys):
    code, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {where}: "), err
    assert err.rstrip().endswith(f"(see: {where} --help)") and "usage:" not in err


# -- reads that end: only regular files are data, and what they hold must fit in memory ---------------------------
def _episode_folder_with(tmp_path, tiny_data, make_bad):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = data / "ep_000001.npz"
    bad.unlink()
    make_bad(bad)
    return data, bad


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dev-urandom", "folder"])
def test_data_files_that_are_not_regular_files_are_refused_at_once(kind, tiny_data, tmp_path):
    """A FIFO (would block forever), a symlink to /dev/zero or /dev/urandom (would read until memory runs out), a
    folder: refused by name before any read, in a fresh process with a deadline, through `train`."""
    makers = {"fifo": os.mkfifo, "dev-zero": lambda p: os.symlink("/dev/zero", p),
              "dev-urandom": lambda p: os.symlink("/dev/urandom", p), "folder": os.mkdir}
    data, bad = _episode_folder_with(tmp_path, tiny_data, makers[kind])
    cmd = [sys.executable, "-m", "lssvwm", "train", "--preset", "tiny", "--data", str(data), "--out",
           str(tmp_path / "r"), "--set", "train.steps=1", "train.clip_len=6", "train.batch_size=2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 2 and str(bad) in r.stderr and "not a regular file" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_play_context_that_is_a_fifo_is_refused(tiny_run, tmp_path):
    from lssvwm.dream import DreamEnv
    from lssvwm.data.episodes import EpisodeFormatError

    fifo = tmp_path / "context.npz"
    os.mkfifo(fifo)
    env = DreamEnv(tiny_run, context=str(fifo))
    with pytest.raises(EpisodeFormatError, match="a FIFO .* not a regular file"):
        env.reset(seed=0)


def _sparse_npz(path, frames: int) -> None:
    """An uncompressed .npz whose image.npy honestly declares and holds (frames, 64, 64, 3) uint8 (zip64 sizes
    that match its npy header), with the array's bytes a hole in the file: a terabyte that costs no disk."""
    import io
    import struct

    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (frames, 64, 64, 3)})
    header, name = buf.getvalue(), b"image.npy"
    size = len(header) + frames * 64 * 64 * 3
    extra = struct.pack("<HHQQ", 1, 16, size, size)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, len(name),
                            len(extra)) + name + extra + header)
        f.seek(size - len(header), 1)  # the array: a hole
        cd_offset, cextra = f.tell(), struct.pack("<HHQQQ", 1, 24, size, size, 0)
        central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF,
                              len(name), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF) + name + cextra
        f.write(central)
        end64 = f.tell()
        f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, len(central), cd_offset))
        f.write(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def test_sparse_npz_whose_headers_honestly_claim_a_terabyte_is_refused_by_size(tmp_path):
    """Its header promises no more than the file holds, so only the memory check can stop it: refused from the
    headers (nothing allocated, in well under a second), naming the file and what it would take."""
    import zipfile

    from lssvwm.data.episodes import EpisodeFormatError, load_episode, probe_episode

    f = tmp_path / "ep_000000.npz"
    _sparse_npz(f, 2**40 // (64 * 64 * 3))
    assert zipfile.ZipFile(f).getinfo("image.npy").file_size > 0.99 * 2**40 and f.stat().st_blocks * 512 < 2**20
    t = time.time()
    for fn in (load_episode, probe_episode):
        with pytest.raises(EpisodeFormatError, match=r"ep_000000.npz: its arrays take 1024.0 GiB once read .* more "
                                                     r"than the .* GiB of memory available"):
            fn(f)
    assert time.time() - t < 5


def test_sparse_file_of_a_terabyte_is_refused_without_reading_it(tmp_path):
    from lssvwm.data.episodes import EpisodeFormatError, load_episode, probe_episode

    sparse = tmp_path / "ep_000000.npz"
    with open(sparse, "wb") as f:
        f.truncate(2**40)  # 1 TiB of holes and no zip structure
    t = time.time()
    for fn in (load_episode, probe_episode):
        with pytest.raises(EpisodeFormatError, match="not a readable .npz"):
            fn(sparse)
    assert time.time() - t < 10


def test_arrays_larger_than_the_memory_are_refused_naming_file_and_size(tiny_data, monkeypatch):
    """An .npz whose headers honestly declare more bytes than the memory available: refused from the headers,
    before anything is allocated; the error names the file, what it would take and what is free."""
    import lssvwm.data.episodes as episodes
    from lssvwm.data.episodes import EpisodeFormatError, load_episode, probe_episode

    f = sorted(tiny_data.glob("ep_*.npz"))[0]
    monkeypatch.setattr(episodes, "available_memory", lambda: 1000)
    for fn in (load_episode, probe_episode):
        with pytest.raises(EpisodeFormatError, match=rf"{f.name}: its arrays take .* GiB once read .* more than the "
                                                     rf"0.0 GiB of memory available"):
            fn(f)


# -- counts and sizes that scale memory go through the memory estimate --------------------------------------------
@pytest.mark.parametrize("args", [["--windows", "1000000000"], ["--long", "100000000"], ["--context", "100000000"]])
def test_follow_counts_are_checked_against_memory_before_work(args, tiny_run, tmp_path, capsys):
    code, err = run_cli(capsys, "eval", "follow", "--ckpt", tiny_run, "--out", tmp_path / "f", *args)
    assert code == 2 and "needs about" in err and "GiB of memory is available" in err, err
    assert not any((tmp_path / "f").iterdir())  # checked writable, then nothing generated or written


def test_model_widths_enter_the_training_memory_estimate(tiny_data, tmp_path, capsys):
    """model.expand (the SSM's inner width) and model.mlp_ratio scale the activations; a huge one is refused by
    the estimate before anything is allocated (it used to die in the allocator)."""
    from lssvwm.config import model_preset
    from lssvwm.train import training_bytes

    base = training_bytes(model_preset("tiny"), 2, 6)
    assert training_bytes(model_preset("tiny", expand=4), 2, 6) > base
    assert training_bytes(model_preset("tiny", mlp_ratio=8.0), 2, 6) > base
    for setting in ("model.expand=100000", "model.mlp_ratio=100000"):
        code, err = run_cli(capsys, "train", "--preset", "tiny", "--data", tiny_data, "--out", tmp_path / "r",
                            "--set", setting)
        assert code == 2 and "needs about" in err, (setting, err)
        assert not (tmp_path / "r").exists()


def test_two_real_trainings_into_one_run_folder(tiny_data, tmp_path, capsys):
    """`lssvwm train ... --out R` twice at once: the second is refused naming the first's PID, and the first
    trains on alone (its log has no duplicate steps)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lssvwm", "train", "--preset", "tiny", "--data", str(tiny_data), "--out", str(run),
           "--no-progress", "--set", "train.steps=100000", "train.clip_len=6", "train.batch_size=2",
           "train.val_fraction=0.25", "train.autocast=none"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        for _ in range(600):
            if (run / "log.jsonl").exists() and (run / "log.jsonl").read_text().count("\n") >= 2:
                break
            time.sleep(0.1)
        code, err = run_cli(capsys, *cmd[3:])
        assert code == 2 and f"process {first.pid}" in err, err
        assert first.poll() is None  # the first one trains on
    finally:
        first.kill()
        first.wait()
    lines = (run / "log.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines[:-1]]  # the last line may be cut by the kill
    assert len(steps) >= 1 and len(steps) == len(set(steps))


def test_sampling_ranges_are_declared_once_for_config_and_command_line():
    """Every SamplingConfig field declares its allowed values (field metadata); the config check and the CLI
    options read the same declaration: a value one refuses the other refuses, with the same range in the message."""
    import argparse
    import dataclasses

    from lssvwm.config import SamplingConfig, allowed

    cases = {"steps": (["0", "-3", "1.5"], ["1", "64"]), "stabilization": (["1", "-0.1", "nan"], ["0", "0.99"]),
             "eta": (["1.01", "inf"], ["0", "1"]), "seed": (["-1"], ["0", "7"]),
             "temperature": (["0", "-0.5", "2.5", "nan"], ["0.8", "1", "2"]),
             "history_guidance": (["101"], ["0", "3"]), "history_guidance_level": (["0", "1.5"], ["1", "0.2"]),
             "action_guidance": (["-0.5", "nan"], ["0", "2"]), "action_guidance_null": (["-2", "0.5"], ["-1", "0"])}
    for name, (bad, good) in cases.items():
        a = allowed(SamplingConfig, name)
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError):
                a.parse(text)
        for text in good:
            value = a.parse(text)
            dataclasses.replace(SamplingConfig(), **{name: value}).validate()  # the config takes what the CLI takes
    with pytest.raises(ConfigError, match=r"sampling.stabilization must be a noise level in \[0, 1\), got 1.0"):
        SamplingConfig(stabilization=1.0).validate()
    assert {f.name for f in dataclasses.fields(SamplingConfig)} == {f.name for f in dataclasses.fields(SamplingConfig)
                                                                     if "allowed" in f.metadata}


def _config_cases():
    from lssvwm.config import (AETrainConfig, AutoencoderConfig, DiffusionConfig, SamplingConfig, TrainConfig,
                               model_preset)

    return [("model", lambda: model_preset("tiny")), ("diffusion", DiffusionConfig), ("sampling", SamplingConfig),
            ("train", TrainConfig), ("train", AETrainConfig), ("autoencoder", AutoencoderConfig)]


def _bad_values(rule):
    """Values just outside a declared range, of the wrong type, or not among the choices."""
    if rule.choices is not None:
        return ["nope", None]
    bad = ["x", None if not rule.none_ok else "x", True, [1]]
    if rule.low is not None:
        bad.append(rule.low if rule.low_open else rule.low - 1)
    if rule.high is not None:
        bad.append(rule.high if rule.high_open else rule.high + 1)
    if rule.integer:
        bad.append(float((rule.low or 0) + 1.5))
    else:
        bad += [float("nan"), float("inf")]
    return bad


@pytest.mark.parametrize("section, make", _config_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_every_declared_field_range_is_checked(section, make):
    """Each field's allowed values are declared once (config.schema.Allowed in its metadata): the defaults pass,
    and every value outside them is one ConfigError naming the field, through the config's own validate()."""
    import dataclasses

    from lssvwm.config import ConfigError, allowed

    cfg = make()
    cfg.validate()
    checked = 0
    for f in dataclasses.fields(cfg):
        rule = allowed(type(cfg), f.name)
        if rule is None:
            continue
        for value in _bad_values(rule):
            bad = dataclasses.replace(cfg) if not hasattr(cfg, "layers") else make()
            object.__setattr__(bad, f.name, value)
            with pytest.raises(ConfigError, match=rf"^{section}\.{f.name} must be .*, got "):
                bad.validate()
            checked += 1
    assert checked >= 10


def test_sampling_overrides_are_the_sampling_fields_checked_once():
    """SamplingOverrides carries exactly SamplingConfig's fields (None = keep the run's), checked against the
    ranges SamplingConfig declares; unknown names are refused by name; applied, only the given fields change."""
    import dataclasses

    from lssvwm.config import ConfigError, SamplingConfig, SamplingOverrides

    assert [f.name for f in dataclasses.fields(SamplingOverrides)] == [f.name for f in dataclasses.fields(SamplingConfig)]
    base = SamplingConfig(steps=4, schedule="edm", stabilization=0.1)
    o = SamplingOverrides.of({"steps": 2}, eta=1.0)
    assert o.given() == {"steps": 2, "eta": 1.0}
    assert o.apply(base) == SamplingConfig(steps=2, schedule="edm", stabilization=0.1, eta=1.0)
    assert SamplingOverrides.of(o) == o and SamplingOverrides.of(None).apply(base) == base
    with pytest.raises(ConfigError, match=r"sampling.steps must be a positive integer, got 0"):
        SamplingOverrides(steps=0)
    with pytest.raises(ConfigError, match=r"sampling.schedule must be one of uniform, logsnr, edm"):
        SamplingOverrides.of(schedule="cosine")
    with pytest.raises(ConfigError, match=r"unknown sampling setting\(s\) \['stepz'\]"):
        SamplingOverrides.of({"stepz": 3})


def test_dream_env_sampling_overrides(tiny_run):
    """DreamEnv takes the overrides as fields or as one SamplingOverrides (seed included); a bad one is refused
    before the checkpoint is read."""
    from lssvwm.config import ConfigError, SamplingOverrides
    from lssvwm.dream import DreamEnv

    env = DreamEnv(tiny_run, context_frames=4, steps=1, seed=7)
    assert env.sampler.cfg.steps == 1 and env.sampler.cfg.seed == 7
    env = DreamEnv(tiny_run, context_frames=4, sampling=SamplingOverrides(eta=1.0))
    assert env.sampler.cfg.eta == 1.0
    with pytest.raises(ConfigError, match="sampling.stabilization must be"):
        DreamEnv("no/such/run", stabilization=1.5)


def test_compiling_without_a_compiler_is_refused_by_name(monkeypatch):
    """torch.compile on the CPU needs a C++ compiler: without one, one clear error at the start, not a compiler
    traceback at the first frame."""
    from lssvwm.config import SamplingConfig, model_preset
    from lssvwm.diffusion import Sampler
    from lssvwm.models.world_model import WorldModel

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    model = WorldModel(model_preset("tiny")).eval()
    with pytest.raises(ConfigError, match=r"Sampler\(compile=True\) on the CPU needs a C\+\+ compiler \(g\+\+ or "):
        Sampler(model, SamplingConfig(steps=1), compile=True)
    Sampler(model, SamplingConfig(steps=1))  # without compiling nothing is needed
