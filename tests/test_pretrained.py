"""Weights in the Hugging Face layout (config.json + model.safetensors): save, load by folder, shipped name or
hub repo id (against a local fake of the hub), and use them everywhere a run is accepted."""
import json
import shutil
import sys
import types

import pytest
import torch

import lssvwm.checkpoint as ck
from lssvwm.checkpoint import CheckpointError, load_run
from lssvwm.config import RunConfig, SamplingConfig, model_preset
from lssvwm.models.world_model import WorldModel


@pytest.fixture()
def pretrained(tmp_path):
    torch.manual_seed(0)
    model = WorldModel(model_preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = RunConfig(model=model.cfg, sampling=SamplingConfig(steps=2, stabilization=0.2, schedule="edm"))
    return model, model.save_pretrained(tmp_path / "maze-tiny", cfg, dtype=torch.bfloat16)


def test_round_trip_in_bf16(pretrained):
    model, folder = pretrained
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["sampling"]["schedule"] == "edm"
    run = load_run(folder)
    assert run.cfg.sampling == SamplingConfig(steps=2, stabilization=0.2, schedule="edm")
    for a, b in zip(model.parameters(), run.model.parameters()):
        assert b.dtype == torch.float32 and torch.equal(a.detach().bfloat16().float(), b)
    again = WorldModel.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), run.model.parameters()))


def test_shipped_weights_load_by_name(pretrained, monkeypatch, tmp_path):
    _, folder = pretrained
    shipped = tmp_path / "shipped"
    shutil.copytree(folder, shipped / "maze-tiny")
    monkeypatch.setattr(ck, "SHIPPED", shipped)
    assert "maze-tiny" in ck.shipped_weights()
    run = load_run("maze-tiny")
    assert run.checkpoint == shipped / "maze-tiny" and run.sampler().cfg.steps == 2
    frame, _ = run.sampler().step(run.sampler().prefill(torch.zeros(1, 2, 3, 16, 16), torch.zeros(1, 2).long()),
                                  torch.zeros(1).long())
    assert frame.shape == (1, 3, 16, 16)


def test_hub_download_and_upload_with_a_fake_hub(pretrained, monkeypatch, tmp_path):
    """The real hub needs a network; a local fake of huggingface_hub's two entry points checks our side."""
    _, folder = pretrained
    hub = tmp_path / "hub"
    uploads = []

    def snapshot_download(repo_id, allow_patterns=None):
        if not (hub / repo_id).exists():
            raise RuntimeError(f"404 Client Error: Repository Not Found for url: https://huggingface.co/{repo_id}")
        return str(hub / repo_id)

    class HfApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            (hub / repo_id).mkdir(parents=True, exist_ok=exist_ok)

        def upload_folder(self, folder_path, repo_id):
            uploads.append(repo_id)
            shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download,
                                                                              HfApi=HfApi))
    model = WorldModel.from_pretrained(folder)
    url = model.push_to_hub("someone/maze-tiny")
    assert url == "https://huggingface.co/someone/maze-tiny" and uploads == ["someone/maze-tiny"]
    run = load_run("someone/maze-tiny")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), run.model.parameters()))
    with pytest.raises(CheckpointError, match="could not download from the Hugging Face Hub: 404"):
        load_run("someone/missing")


def test_hub_names_without_huggingface_hub_say_how(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(CheckpointError, match=r"pip install 'lssvwm\[hub\]'"):
        load_run("someone/maze-tiny")


def test_broken_pretrained_config_is_refused(pretrained):
    _, folder = pretrained
    (folder / "config.json").write_text('{"model": {"d_model": -1}}')
    with pytest.raises(CheckpointError, match="config.json: model.d_model must be a positive integer"):
        load_run(folder)


def test_wheel_carries_the_package_data_and_runs(tmp_path):
    """`pip install .` / a built wheel work outside the checkout: the CLI, the play page, the shipped configs and
    weights are inside it (installed into a folder of its own, dependencies from this environment)."""
    import os
    import subprocess
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(root)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("lssvwm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lssvwm/web.py" in names and "lssvwm/configs/memory-maze.yaml" in names
    shipped = [p.name for p in (root / "weights").iterdir() if (p / "config.json").exists()]
    assert all(f"lssvwm/weights/{n}/model.safetensors" in names for n in shipped)
    carried = [p.relative_to(root / "weights").as_posix() for p in (root / "weights").rglob("*")
               if p.is_file() and p.suffix in (".json", ".safetensors", ".npz", ".md", ".png")]
    missing = [c for c in carried if f"lssvwm/weights/{c}" not in names]
    assert not missing, missing
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(target))
    for args, expect in ((["--version"], "lssvwm "), (["model", "info", "tiny"], "parameters")):
        out = subprocess.run([sys.executable, "-m", "lssvwm", *args], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
        assert out.returncode == 0 and expect in out.stdout, out.stderr[-2000:]
    where = subprocess.run([sys.executable, "-c", "import lssvwm.checkpoint as c; print(c.__file__); "
                            "print(sorted(c.shipped_weights()))"], capture_output=True, text=True, env=env,
                           cwd=tmp_path).stdout
    assert str(target) in where and all(n in where for n in shipped)


def test_export_works_without_the_training_data(tiny_run, tmp_path):
    """`lssvwm model export`: bf16 weights, config, the data's meta.json and start clips; play/DreamEnv and the
    follow benchmark then run from the exported folder alone (its config's data path no longer exists)."""
    import numpy as np

    from lssvwm.cli import main
    from lssvwm.dream import DreamEnv
    from lssvwm.follow import evaluate_follow

    out = tmp_path / "export"
    assert main(["model", "export", "--ckpt", str(tiny_run), "--out", str(out), "--clip-frames", "20"]) in (0, None)
    cfg = json.loads((out / "config.json").read_text())
    cfg["train"]["data"] = str(tmp_path / "gone")
    (out / "config.json").write_text(json.dumps(cfg))
    clips = sorted((out / "data").glob("*.npz"))
    assert len(clips) == 1 and (out / "data" / "meta.json").is_file()  # the tiny run holds out one episode
    with np.load(clips[0]) as z:
        assert z["image"].shape[0] == 20
    from safetensors.torch import load_file
    assert all(v.dtype == torch.bfloat16 for v in load_file(str(out / "model.safetensors")).values()
               if v.is_floating_point())
    run = load_run(out)
    assert run.cfg.train.data == str(out / "data")
    ema = load_run(tiny_run).model
    assert all(torch.equal(a.detach().bfloat16().float(), b) for a, b in zip(ema.parameters(), run.model.parameters()))
    env = DreamEnv(out, context_frames=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16, 16, 3) and env.step(1)[0].shape == (16, 16, 3)
    res = evaluate_follow([str(out)], out=tmp_path / "follow", context=4, frames=3, long=3, windows=1,
                          progress=False, videos=False)
    assert set(res["sets"]) == {"train-mazes", "unseen-mazes"}
    video = tmp_path / "r.gif"  # generate takes the start clips that came along
    assert main(["generate", "--ckpt", str(out), "--context", "4", "--frames", "3", "--out", str(video)]) in (0, None)
    assert video.stat().st_size > 0


@pytest.mark.parametrize("name, fitted", [("maze-small", ()), ("maze-small-v3", ("steps",)),
                                          ("maze-small-v4", ("steps",))])
def test_shipped_weights_load_by_name_and_play_without_data(name, fitted):
    """The committed weights: loadable by name, their config is configs/<name>.yaml (the recipe that made them;
    ``fitted``: fields the run set itself, train.fit_steps's step plan), and DreamEnv starts from the start clips
    that came with them. All shipped weights together stay under 10 MiB."""
    from pathlib import Path

    from lssvwm.config import layered_config
    from lssvwm.dream import DreamEnv

    assert name in ck.shipped_weights()
    run = load_run(name)
    shipped, recipe = run.cfg.to_dict(), layered_config(
        "run", Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml").to_dict()
    for d in (shipped, recipe):
        for k in ("data", "out", "max_minutes", *fitted):
            d["train"].pop(k)
    assert shipped == recipe
    weights = run.checkpoint.parent
    assert sum(f.stat().st_size for f in weights.rglob("*") if f.is_file()) < 10 * 2**20
    env = DreamEnv(name, context_frames=8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and env.step(1)[0].shape == (32, 32, 3)


def test_retired_shipped_weights_say_what_replaced_them(tmp_path, monkeypatch):
    """A name whose weights are no longer shipped gets one error naming what replaced them, not "no such folder";
    a folder of that name in the working directory still loads as a folder would."""
    with pytest.raises(ck.CheckpointError, match="maze-small-v2: .*replaced by maze-small-v3"):
        load_run("maze-small-v2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "maze-small-v2").mkdir()
    assert ck.resolve_pretrained("maze-small-v2") is None  # a folder, not the retired name
