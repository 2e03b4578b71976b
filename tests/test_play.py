"""Playing a model: DreamEnv (constant state), recording, the play server's protocol, end to end over loopback."""
import asyncio
import contextlib
import base64
import gc
import io
import json
import threading
import urllib.request

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from lssvwm.checkpoint import find_checkpoint
from lssvwm.data.episodes import load_episode
from lssvwm.dream import DreamEnv
from lssvwm.web import EnvFactory, PlaySession, serve


@contextlib.contextmanager
def running_server(factory, record_dir=None):
    """The play server on a free loopback port, in a background thread; yields the port."""
    port_box, loop_box, stop_box = [], [], []

    def run():
        loop = asyncio.new_event_loop()
        loop_box.append(loop)
        stop_box.append(asyncio.Event())
        loop.run_until_complete(serve(factory, "127.0.0.1", 0, record_dir=record_dir, on_ready=port_box.append,
                                      stop=stop_box[0]))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    for _ in range(200):
        if port_box:
            break
        threading.Event().wait(0.05)
    try:
        yield port_box[0]
    finally:
        loop_box[0].call_soon_threadsafe(stop_box[0].set)
        th.join(timeout=10)


def _tensors() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_dream_env_state_is_constant(tiny_run):
    env = DreamEnv(tiny_run, context_frames=8)
    obs, info = env.reset(seed=0)
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    assert info["frames_in_state"] == 8
    sizes, counts = [], []
    for t in range(1, 1201):
        obs, r, term, trunc, info = env.step(t % 6)
        if t in (200, 1200):
            gc.collect()
            sizes.append(env.cache.nbytes())
            counts.append(_tensors())
    assert info["frames_in_state"] == 1208 and not term and not trunc
    assert sizes[0] == sizes[1]  # the state does not grow
    assert counts[0] == counts[1]  # and nothing else accumulates
    with pytest.raises(ValueError, match=r"action must be an integer in \[0, 6\)"):
        env.step(9)


def test_dream_env_with_history_guidance(tiny_run):
    env = DreamEnv(tiny_run, context_frames=4, history_guidance=1.0, history_guidance_level=0.5)
    assert env.sampler.cfg.history_guidance == 1.0 and env.sampler.cfg.history_guidance_level == 0.5
    obs, info = env.reset(seed=0)
    sizes = []
    for t in range(6):
        obs, _, _, _, info = env.step(t % 6)
        sizes.append(env.cache.nbytes())
    assert info["frames_in_state"] == 10 and len(set(sizes)) == 1 and obs.shape == (16, 16, 3)


def test_dream_env_deterministic_per_seed(tiny_run):
    a, b = DreamEnv(tiny_run), DreamEnv(tiny_run)
    fa = [a.reset(seed=3)[0]] + [a.step(1)[0] for _ in range(5)]
    fb = [b.reset(seed=3)[0]] + [b.step(1)[0] for _ in range(5)]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))


def test_recording_round_trip(tiny_run, tmp_path):
    env = DreamEnv(tiny_run)
    env.reset(seed=1)
    env.start_recording()
    actions = [1, 2, 3, 1, 5]
    frames = [env.frame] + [env.step(a)[0] for a in actions]
    npz, mp4 = env.stop_recording(tmp_path / "rec")
    ep = load_episode(npz)  # the standard episode format: usable as training or evaluation data
    assert np.array_equal(ep["image"], np.stack(frames))
    assert not ep["action"][0].any() and ep["action"][1:].argmax(1).tolist() == actions
    assert mp4.exists() and mp4.stat().st_size > 500
    with pytest.raises(RuntimeError, match="no recording"):
        env.stop_recording()


def test_session_protocol_and_bad_messages(tiny_run, tmp_path):
    session = PlaySession(DreamEnv(tiny_run), tmp_path)
    first = session.reset()
    assert first["type"] == "frame" and first["frame"] == 0
    for bad, pattern in [("not json", "must be JSON"), ("[1, 2]", "JSON objects"), ('{"type": "fly"}', "unknown"),
                         ('{"type": "action", "action": 17}', r"\[0, 6\)"), ('{"type": "action", "action": "1"}',
                                                                             "integer"),
                         ('{"type": "record", "on": false}', "not recording"), (b"\xff\xfe", "JSON")]:
        reply = session.handle(bad)
        assert reply["type"] == "error", bad
        import re

        assert re.search(pattern, reply["message"]), (bad, reply)
    reply = session.handle(json.dumps({"type": "action", "action": 1}))
    assert reply["frame"] == 1
    img = imageio.imread(io.BytesIO(base64.b64decode(reply["image"].split(",", 1)[1])))
    assert img.shape == (16, 16, 3)
    assert session.handle('{"type": "record", "on": true}')["recording"] is True
    session.handle('{"type": "action", "action": 2}')
    saved = session.handle('{"type": "record", "on": false}')
    assert saved["type"] == "saved" and load_episode(saved["path"])["image"].shape[0] == 2


def test_server_end_to_end_over_loopback(tiny_run):
    with running_server(EnvFactory(tiny_run)) as port:
        _talk_to_server(port)
    assert find_checkpoint(tiny_run)


def _talk_to_server(port):
    from websockets.sync.client import connect

    html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
    assert "<canvas" in html and "ArrowUp" in html
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        first = json.loads(ws.recv(timeout=30))
        images = {first["image"]}
        for a in (1, 1, 3, 3):
            ws.send(json.dumps({"type": "action", "action": a}))
            msg = json.loads(ws.recv(timeout=30))
            assert msg["type"] == "frame"
            images.add(msg["image"])
        assert msg["frame"] == 4 and len(images) >= 3  # new frames arrive and differ
        ws.send("{broken")
        assert json.loads(ws.recv(timeout=30))["type"] == "error"
        ws.send(json.dumps({"type": "action", "action": 2}))  # still alive after bad input
        assert json.loads(ws.recv(timeout=30))["frame"] == 5


@pytest.mark.slow
def test_browser_play_in_headless_chromium(tiny_run, tmp_path):
    """Loads the page in headless Chromium, presses keys, checks new frames arrive and differ, screenshots."""
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: `make test-slow` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with running_server(EnvFactory(tiny_run)) as port, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=30000)
        page.wait_for_function("document.getElementById('view').width === 16", timeout=30000)
        first = page.evaluate("document.getElementById('view').toDataURL()")
        for key in ["ArrowUp", "ArrowUp", "ArrowRight", "ArrowRight", "w", "d"]:
            page.keyboard.press(key)
        page.wait_for_function("document.getElementById('frame').textContent === '6'", timeout=60000)
        page.wait_for_timeout(200)
        last = page.evaluate("document.getElementById('view').toDataURL()")
        assert last != first  # the canvas shows new, different frames
        shot = tmp_path / "play.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert shot.stat().st_size > 2000


# -- a play server that foreign pages cannot drive, and that never drops a client or a recording -----------------
def test_origin_check():
    from lssvwm.web import origin_allowed

    assert origin_allowed(None, "127.0.0.1:8765", "127.0.0.1")  # a script, not a browser
    assert origin_allowed("http://127.0.0.1:8765", "127.0.0.1:8765", "127.0.0.1")
    assert origin_allowed("http://localhost:8765", "localhost:8765", "127.0.0.1")
    assert origin_allowed("http://[::1]:8765", "[::1]:8765", "::1")
    assert not origin_allowed("http://evil.example", "127.0.0.1:8765", "127.0.0.1")  # another site's page
    assert not origin_allowed("http://evil.example:8765", "evil.example:8765", "127.0.0.1")  # DNS rebinding
    assert not origin_allowed("null", "127.0.0.1:8765", "127.0.0.1")
    assert not origin_allowed("http://127.0.0.1:8765", None, "127.0.0.1")
    assert origin_allowed("http://10.0.0.5:8765", "10.0.0.5:8765", "0.0.0.0")
    assert not origin_allowed("http://evil.example", "10.0.0.5:8765", "0.0.0.0")


def test_server_refuses_foreign_pages_and_answers_every_bad_message(tiny_run):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with running_server(EnvFactory(tiny_run)) as port:
        with pytest.raises(InvalidStatus, match="403"):
            connect(f"ws://127.0.0.1:{port}/ws", origin="http://evil.example", open_timeout=10)
        with connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}", open_timeout=10) as ws:
            ws.recv(timeout=30)
            for bad in ('{"type": "action", "action": ' + "9" * 5000 + "}", "[" * 20000 + "]" * 20000,
                        '{"type": "action", "action": 1e999}', "\x00\xff"):
                ws.send(bad)
                assert json.loads(ws.recv(timeout=30))["type"] == "error"
            ws.send(json.dumps({"type": "action", "action": 1}))
            assert json.loads(ws.recv(timeout=30))["frame"] == 1  # the connection stayed up


def test_simultaneous_recordings_keep_every_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from lssvwm.web import unique_recording_path

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: unique_recording_path(tmp_path), range(16)))
    assert len(set(paths)) == 16 and len(list(tmp_path.glob("*.npz"))) == 16


def test_play_checks_its_settings_at_start(tiny_run, tmp_path, capsys):
    import socket

    from lssvwm.cli import main

    def run(*argv):
        try:
            code = main(["play", "--ckpt", str(tiny_run), *map(str, argv)])
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().err

    for flag in ("--start-clips", "--context"):  # --context: the old name, still taken
        code, err = run(flag, tmp_path / "missing")
        assert code == 2 and "--start-clips" in err and "no such dataset folder or episode file" in err
    code, err = run("--stabilization", "3")
    assert code == 2 and "--stabilization" in err
    with socket.socket() as s:  # a port that is in use
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, err = run("--port", s.getsockname()[1])
    assert code == 2 and "is in use" in err and "Traceback" not in err


def test_recording_survives_a_full_disk_through_the_server(tiny_run, tmp_path, monkeypatch):
    """`--record` on a full disk: the stop is answered with an error, the frames stay in memory (a second stop
    saves them once there is space), and no 0-byte .npz or .tmp file is left looking like a recording."""
    import errno

    import lssvwm.data.episodes as episodes
    from websockets.sync.client import connect

    real = episodes.np.savez_compressed
    full = {"on": True}

    def savez(f, **arrays):
        if full["on"]:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(episodes.np, "savez_compressed", savez)
    rec = tmp_path / "rec"
    with running_server(EnvFactory(tiny_run), record_dir=str(rec)) as port:
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            ws.recv(timeout=30)
            ws.send(json.dumps({"type": "record", "on": True}))
            ws.recv(timeout=30)
            for a in (1, 2, 1):
                ws.send(json.dumps({"type": "action", "action": a}))
                ws.recv(timeout=30)
            ws.send(json.dumps({"type": "record", "on": False}))
            reply = json.loads(ws.recv(timeout=30))
            assert reply["type"] == "error" and "No space left" in reply["message"] and "kept" in reply["message"]
            assert list(rec.iterdir()) == []  # no placeholder, no partial npz, no .tmp
            full["on"] = False
            ws.send(json.dumps({"type": "record", "on": False}))  # the second stop saves what was recorded
            reply = json.loads(ws.recv(timeout=30))
            assert reply["type"] == "saved", reply
            from lssvwm.data.episodes import load_episode

            assert load_episode(reply["path"])["image"].shape[0] == 4  # the first frame and the three steps


def test_start_clips_deleted_while_serving_every_connection_gets_an_error(tiny_run, tmp_path, capsys):
    """The start clips vanish after the server started: a reset and a new connection each get an error message
    the page can show (no close with 1011), and the log gets one line each, no traceback."""
    import shutil

    from lssvwm.checkpoint import load_run
    from lssvwm.data.episodes import episode_files
    from websockets.sync.client import connect

    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(episode_files(load_run(tiny_run).cfg.train.data)[0], clips / "ep_000000.npz")
    with running_server(EnvFactory(tiny_run, context=str(clips / "ep_000000.npz"))) as port:
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "frame"
            (clips / "ep_000000.npz").unlink()
            ws.send(json.dumps({"type": "reset"}))
            reply = json.loads(ws.recv(timeout=30))
            assert reply["type"] == "error" and "not found" in reply["message"]
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            reply = json.loads(ws.recv(timeout=30))
            assert reply["type"] == "error" and "not found" in reply["message"]
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("lssvwm play: EpisodeFormatError") == 2, err
