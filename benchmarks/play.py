"""Play speed: what a user plays, at batch 1, per thread count; and the follow benchmark's batched rollout.

    python -m benchmarks.play                          # this tree, 1 and 2 threads
    python -m benchmarks.play --against 28b825b        # side by side with that commit's code (trees alternating)

Models: the shipped ``maze-small`` weights with the sampler of their run (what ``lssvwm play`` and
``DreamEnv("maze-small")`` use), and the demo's model at the demo's sampler (untrained weights: the speed is the
same). Per frame: the sampler's step (every denoising step and the commit of the frame), then the PNG the play
server sends. The rollout row: a free rollout of 8 windows at once (32 context frames, 24 generated), the shape the
follow benchmark samples in, in ms per generated frame of the batch. Thread counts are the ones torch reports it
used. Prints a table and writes ``benchmarks/results/play.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a worker script: the benchmarks folder is on sys.path, not the root
    import common
else:
    from benchmarks import common

MODELS = ("maze-small", "demo")


def _sampler(model: str):
    import torch

    from lssvwm.config import SamplingConfig

    if model == "maze-small":
        from lssvwm.checkpoint import load_run

        run = load_run("maze-small")
        return run.sampler(), run.codec
    from lssvwm.demo import RECIPE, demo_model
    from lssvwm.diffusion import Sampler
    from lssvwm.models.world_model import WorldModel

    torch.manual_seed(0)
    net = WorldModel(demo_model()).eval()
    return Sampler(net, SamplingConfig(**RECIPE["sampling"])), None


def worker(model: str, frames: int) -> dict:
    import torch

    from lssvwm.video import to_uint8
    from lssvwm.web import png_data_url

    sampler, _ = _sampler(model)
    m = sampler.model.cfg
    shape = (m.channels, m.frame_size, m.frame_size)
    g = torch.Generator().manual_seed(0)
    context = torch.rand(1, 16, *shape, generator=g) * 2 - 1
    cache = sampler.prefill(context, torch.zeros(1, 16, dtype=torch.long))
    step_s, png_s = [], []
    for i in range(frames + 5):
        t0 = time.perf_counter()
        frame, cache = sampler.step(cache, torch.tensor([i % m.num_actions]))
        t1 = time.perf_counter()
        png_data_url(to_uint8(frame)[0])
        t2 = time.perf_counter()
        if i >= 5:  # warm-up excluded
            step_s.append(t1 - t0)
            png_s.append(t2 - t1)
    ctx = torch.rand(8, 32, *shape, generator=g) * 2 - 1
    acts = torch.randint(0, m.num_actions, (8, 56), generator=g)
    t0 = time.perf_counter()
    sampler.rollout(ctx, acts[:, :32], acts[:, 32:])
    rollout = time.perf_counter() - t0
    return {"model": model, "threads": torch.get_num_threads(), "sampling_steps": sampler.cfg.steps,
            "step_s": step_s, "png_s": png_s, "rollout8_ms_per_frame": round(1000 * rollout / 24, 1)}


def run(models=MODELS, against: str | None = None, threads=(1, 2), rounds: int = 3, frames: int = 40) -> dict:
    trees = common.trees(against)
    rows = []
    for model in models:
        for n in threads:
            res = {name: [] for name in trees}
            for _ in range(rounds):
                for name, tree in trees.items():  # alternate: A B A B ...
                    res[name].append(common.run_worker(Path(__file__).resolve(), tree, [model, "--frames",
                                                                                         str(frames)], n))
            for name, rs in res.items():
                step = statistics.median(t for r in rs for t in r["step_s"])
                png = statistics.median(t for r in rs for t in r["png_s"])
                rows.append({"model": model, "code": name, "threads": rs[0]["threads"],
                             "steps": rs[0]["sampling_steps"], "ms_per_frame": round(1000 * step, 1),
                             "png_ms": round(1000 * png, 2), "frames_per_s": round(1 / (step + png), 1),
                             "rollout8_ms_per_frame": round(statistics.median(r["rollout8_ms_per_frame"] for r in rs),
                                                            1)})
            if against:
                a, b = rows[-2], rows[-1]
                b["speedup"] = round(b["frames_per_s"] / a["frames_per_s"], 2)
                b["rollout_speedup"] = round(a["rollout8_ms_per_frame"] / b["rollout8_ms_per_frame"], 2)
            print(f"  {model}, {n} thread(s): " + "; ".join(f"{r['code']} {r['frames_per_s']} frames/s"
                                                           for r in rows[-len(trees):]), flush=True)
    print(f"play at batch 1 (sampler step + PNG), {common.cpu_name()} ({common.cpu_kind()}); median over {rounds} "
          f"rounds x {frames} frames{', trees alternating' if against else ''}; rollout8: 8 windows at once")
    print(common.table(rows, ["model", "code", "threads", "steps", "ms_per_frame", "png_ms", "frames_per_s",
                              "speedup", "rollout8_ms_per_frame", "rollout_speedup"]))
    return {"cpu": common.cpu_name(), "cpu_kind": common.cpu_kind(), "against": against, "rows": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--against", help="a git revision to time side by side")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=40)
    a = p.parse_args(argv)
    if a.worker:
        import os

        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(worker(a.worker, a.frames)))
        return
    res = run(tuple(a.models.split(",")), a.against, tuple(int(t) for t in a.threads.split(",")), a.rounds,
              a.frames)
    print(f"-> {common.save('play', res)}")


if __name__ == "__main__":
    main()
