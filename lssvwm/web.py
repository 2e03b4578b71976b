"""``lssvwm play``: play a world model in the browser.

One local server (127.0.0.1 by default) serves one page on ``/`` and a WebSocket on ``/ws``. The page
sends key presses as actions; the server steps a :class:`~lssvwm.dream.DreamEnv` and streams each generated
frame back as a PNG, with the frame counter and frames/s. Protocol (JSON text messages):

    client -> server   {"type": "action", "action": 1}   {"type": "reset"}   {"type": "record", "on": true}
    server -> client   {"type": "frame", "frame": 12, "fps": 9.8, "image": "data:image/png;base64,...",
                        "recording": false}
                       {"type": "error", "message": "..."}     (the connection stays open)
"""
from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import sys
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>lssvwm play</title>
<style>
 body { background:#111; color:#ddd; font-family:system-ui,sans-serif; text-align:center; }
 canvas { image-rendering: pixelated; width: 512px; height: 512px; border: 2px solid #444; margin-top: 12px; }
 #hud { margin: 8px; font-size: 15px; } button { font-size: 15px; margin: 4px; }
 .keys { color:#999; font-size: 13px; }
</style></head>
<body>
<h3>lssvwm &mdash; playing the world model</h3>
<canvas id="view" width="64" height="64"></canvas>
<div id="hud">frame <span id="frame">0</span> &middot; <span id="fps">0.0</span> frames/s
 &middot; <span id="status">connecting</span></div>
<button id="reset">reset to a context clip</button> <button id="record">start recording</button>
<div class="keys">__KEYS__</div>
<script>
const KEYMAP = __KEYMAP__;
const canvas = document.getElementById("view"), ctx = canvas.getContext("2d");
const ws = new WebSocket(`ws://${location.host}/ws`);
let recording = false;
ws.onopen = () => { document.getElementById("status").textContent = "connected"; };
ws.onclose = () => { document.getElementById("status").textContent = "disconnected"; };
ws.onmessage = (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.type === "frame") {
    const img = new Image();
    img.onload = () => { canvas.width = img.width; canvas.height = img.height; ctx.drawImage(img, 0, 0); };
    img.src = msg.image;
    document.getElementById("frame").textContent = msg.frame;
    document.getElementById("fps").textContent = msg.fps.toFixed(1);
    recording = msg.recording;
    document.getElementById("record").textContent = recording ? "stop recording" : "start recording";
  } else if (msg.type === "error") {
    document.getElementById("status").textContent = "error: " + msg.message;
  } else if (msg.type === "saved") {
    document.getElementById("status").textContent = "saved " + msg.path;
  }
};
document.addEventListener("keydown", (ev) => {
  const a = KEYMAP[ev.key];
  if (a !== undefined && ws.readyState === 1) { ws.send(JSON.stringify({type: "action", action: a})); ev.preventDefault(); }
});
document.getElementById("reset").onclick = () => ws.send(JSON.stringify({type: "reset"}));
document.getElementById("record").onclick = () => ws.send(JSON.stringify({type: "record", on: !recording}));
</script></body></html>
"""

# Keys -> action ids. Memory Maze's six actions; a 4-action set (TECO Minecraft: none, forward, left, right).
KEYMAPS = {
    6: ({"ArrowUp": 1, "w": 1, "ArrowLeft": 2, "a": 2, "ArrowRight": 3, "d": 3, "q": 4, "e": 5, " ": 0},
        "&uarr;/W forward &middot; &larr;/A turn left &middot; &rarr;/D turn right &middot; Q forward+left "
        "&middot; E forward+right &middot; space no-op"),
    4: ({"ArrowUp": 1, "w": 1, "ArrowLeft": 2, "a": 2, "ArrowRight": 3, "d": 3, " ": 0},
        "&uarr;/W forward &middot; &larr;/A left &middot; &rarr;/D right &middot; space none"),
}


def page_html(num_actions: int) -> str:
    keymap, keys = KEYMAPS.get(num_actions, ({str(i): i for i in range(min(num_actions, 10))},
                                             f"keys 0-{min(num_actions, 10) - 1}: action ids"))
    return PAGE.replace("__KEYMAP__", json.dumps(keymap)).replace("__KEYS__", keys)


def png_data_url(frame: np.ndarray) -> str:
    import imageio.v2 as imageio

    buf = io.BytesIO()
    imageio.imwrite(buf, frame, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def unique_recording_path(folder: Path) -> Path:
    """A new recording name in ``folder``, reserved by creating its .npz exclusively: clients that stop recording
    in the same second never share (and overwrite) a file."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    for i in itertools.count():
        path = folder / f"play_{stamp}_{i:03d}"
        try:
            with open(path.with_suffix(".npz"), "x"):
                return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def origin_allowed(origin: str | None, host_header: str | None, served_host: str) -> bool:
    """May this WebSocket handshake go on? Browsers send the page's Origin: it must be this server's own page,
    ``http://<the Host asked for>``, and that Host must name this server (a loopback name when serving on loopback,
    so a DNS-rebinding page cannot pass either). Clients without an Origin (scripts, not browsers) may connect."""
    if origin is None:
        return True
    if not host_header or origin != f"http://{host_header}":
        return False
    name = host_header[1:host_header.find("]")] if host_header.startswith("[") else host_header.rsplit(":", 1)[0]
    if served_host in LOOPBACK:
        return name in LOOPBACK
    return served_host in ("0.0.0.0", "::") or name == served_host  # --allow-remote: same-origin pages only


class PlaySession:
    """One connection's game: a DreamEnv, a frame counter, a frames/s estimate, an optional recording."""

    def __init__(self, env, record_dir: Path | None):
        self.env, self.record_dir = env, record_dir
        self.times: list[float] = []
        self.frame_no = 0
        self.episode = 0

    def frame_message(self) -> dict:
        fps = 0.0
        if len(self.times) >= 2:
            fps = (len(self.times) - 1) / max(1e-9, self.times[-1] - self.times[0])
        return {"type": "frame", "frame": self.frame_no, "fps": round(fps, 2), "image": png_data_url(self.env.frame),
                "recording": self.env.recording is not None}

    def reset(self) -> dict:
        self.env.reset(seed=self.episode)
        self.episode += 1
        self.frame_no, self.times = 0, []
        return self.frame_message()

    def handle(self, raw) -> dict:
        """One client message -> one reply; never raises on bad input."""
        try:
            msg = json.loads(raw)
        except (ValueError, TypeError, RecursionError):  # not JSON, a 5000-digit number, nesting too deep ...
            return {"type": "error", "message": "messages must be JSON objects, e.g. {\"type\": \"action\", "
                                                "\"action\": 1}"}
        if not isinstance(msg, dict):
            return {"type": "error", "message": "messages must be JSON objects"}
        kind = msg.get("type")
        if kind == "reset":
            return self.reset()
        if kind == "action":
            a = msg.get("action")
            n = self.env.num_actions
            if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < n:
                return {"type": "error", "message": f"'action' must be an integer in [0, {n}), got {a!r}"}
            self.env.step(a)
            self.frame_no += 1
            self.times = (self.times + [time.perf_counter()])[-30:]
            return self.frame_message()
        if kind == "record":
            if msg.get("on"):
                self.env.start_recording()
                return self.frame_message()
            if self.env.recording is None:
                return {"type": "error", "message": "not recording"}
            if self.record_dir is None:
                self.env.stop_recording()
                return {"type": "error", "message": "recording discarded: start the server with --record DIR"}
            path = unique_recording_path(self.record_dir)
            try:
                npz, mp4 = self.env.stop_recording(path)
            except OSError as e:  # a full disk: the frames stay in memory, the reserved name is given back
                path.with_suffix(".npz").unlink(missing_ok=True)
                return {"type": "error", "message": f"could not save the recording ({e.strerror or e}); it is kept: "
                                                    f"free some space and stop again to save it",
                        "recording": True}
            return {"type": "saved", "path": str(npz), "video": str(mp4)}
        return {"type": "error", "message": f"unknown message type {kind!r}; expected 'action', 'reset' or 'record'"}


async def serve(env_factory, host: str = "127.0.0.1", port: int = 8765, record_dir: str | None = None,
                on_ready=None, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or forever). ``on_ready(port)`` is called once listening (port 0 = any)."""
    from websockets.asyncio.server import serve as ws_serve
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    record = Path(record_dir) if record_dir else None
    html = None

    async def process_request(connection, request):
        nonlocal html
        if request.path == "/ws":
            if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), host):
                return connection.respond(HTTPStatus.FORBIDDEN, "this page's origin may not drive the server\n")
            return None  # continue with the WebSocket handshake
        if request.path in ("/", "/index.html"):
            if html is None:
                html = page_html(env_factory.num_actions).encode()
            return Response(HTTPStatus.OK, "OK", Headers([("Content-Type", "text/html; charset=utf-8"),
                                                           ("Content-Length", str(len(html)))]), html)
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")

    def answer(fn, *args) -> dict:
        """fn(*args) as a reply; a failure (the start clips deleted, ...) is an error message for the client and
        one line in the server's log, never a closed connection and a traceback."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            message = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            print(f"lssvwm play: {message}", file=sys.stderr, flush=True)
            return {"type": "error", "message": message}

    async def handler(ws):
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(None, answer, lambda: PlaySession(env_factory(), record))
        if isinstance(session, dict):  # the env could not be built: say so and close normally
            await ws.send(json.dumps(session))
            return
        await ws.send(json.dumps(await loop.run_in_executor(None, answer, session.reset)))
        async for raw in ws:
            await ws.send(json.dumps(await loop.run_in_executor(None, answer, session.handle, raw)))

    async with ws_serve(handler, host, port, process_request=process_request, max_size=2**16) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"lssvwm play: open http://{host}:{bound}/  (Ctrl+C to stop)", flush=True)
        if on_ready is not None:
            on_ready(bound)
        await (stop.wait() if stop is not None else asyncio.Future())


class EnvFactory:
    """Builds one DreamEnv per connection (sharing nothing but the checkpoint on disk)."""

    def __init__(self, ckpt, context=None, device="cpu", sampling=None, compile: bool = False):
        """``sampling``: :class:`~lssvwm.config.SamplingOverrides` (or a mapping) of the run's sampling settings.
        ``compile``: each env's per-frame step through ``torch.compile``, compiled here, before the first player
        waits for it."""
        from .dream import DreamEnv

        self.kwargs = dict(checkpoint=ckpt, context=context, device=device, sampling=sampling, compile=compile)
        probe = DreamEnv(**self.kwargs)
        probe.reset(seed=0)  # loads the start clip now: a bad --context fails at start, not at every connection
        if compile:
            print("compiling the model's step (once per server; a minute or more on a CPU) ...", flush=True)
            probe.step(0)
            probe.reset(seed=0)
        self.num_actions = probe.num_actions
        self._first = probe

    def __call__(self):
        from .dream import DreamEnv

        env, self._first = (self._first, None) if self._first is not None else (DreamEnv(**self.kwargs), None)
        return env
