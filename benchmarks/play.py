"""Play speed: what a user plays, at batch 1, per thread count; and the follow benchmark's batched rollout.

    python -m benchmarks.play                          # this tree, 1 and 2 threads
    python -m benchmarks.play --against 28b825b        # side by side with that commit's code (trees alternating)

Models: the shipped ``maze-small`` weights with the sampler of their run (what ``lssvwm play`` and
``DreamEnv("maze-small")`` use), and the demo's model at the demo's sampler (untrained weights: the speed is the
same). Per frame: the sampler's step (every denoising step and the commit of the frame), then the PNG the play
server sends. The rollout row: a free rollout of 8 windows at once (32 context frames, 24 generated), the shape the
follow benchmark samples in, in ms per generated frame of the batch. Thread counts are the ones torch reports it
used. ``--compile`` adds this tree with the per-frame step through ``torch.compile`` (``lssvwm play --compile``;
the first frame, which compiles, is reported apart and left out of the median). Prints a table and writes
``benchmarks/results/play.json``.
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


def _sampler(model: str, compile: bool = False):
    import torch

    from lssvwm.config import SamplingConfig

    extra = {"compile": True} if compile else {}  # older trees have no compile argument
    if model == "maze-small":
        from lssvwm.checkpoint import load_run

        run = load_run("maze-small")
        return run.sampler(**extra), run.codec
    from lssvwm.demo import RECIPE, demo_model
    from lssvwm.diffusion import Sampler
    from lssvwm.models.world_model import WorldModel

    torch.manual_seed(0)
    net = WorldModel(demo_model(d_model=common.DEMO_WIDTH)).eval()
    return Sampler(net, SamplingConfig(**RECIPE["sampling"]), **extra), None


def worker(model: str, frames: int, compile: bool = False) -> dict:
    import torch

    from lssvwm.video import to_uint8
    from lssvwm.web import png_data_url

    sampler, _ = _sampler(model, compile)
    m = sampler.model.cfg
    shape = (m.channels, m.frame_size, m.frame_size)
    g = torch.Generator().manual_seed(0)
    context = torch.rand(1, 16, *shape, generator=g) * 2 - 1
    cache = sampler.prefill(context, torch.zeros(1, 16, dtype=torch.long))
    step_s, png_s, first_s = [], [], 0.0
    for i in range(frames + 5):
        t0 = time.perf_counter()
        frame, cache = sampler.step(cache, torch.tensor([i % m.num_actions]))
        t1 = time.perf_counter()
        png_data_url(to_uint8(frame)[0])
        t2 = time.perf_counter()
        if i == 0:
            first_s = t1 - t0  # compiling, when compiled
        if i >= 5:  # warm-up excluded
            step_s.append(t1 - t0)
            png_s.append(t2 - t1)
    ctx = torch.rand(8, 32, *shape, generator=g) * 2 - 1
    acts = torch.randint(0, m.num_actions, (8, 56), generator=g)
    sampler.rollout(ctx, acts[:, :32], acts[:, 32:34])  # warm-up (a compiled step compiles again for batch 8)
    t0 = time.perf_counter()
    sampler.rollout(ctx, acts[:, :32], acts[:, 32:])
    rollout = time.perf_counter() - t0
    return {"model": model, "threads": torch.get_num_threads(), "sampling_steps": sampler.cfg.steps,
            "first_step_s": round(first_s, 2), "step_s": step_s, "png_s": png_s, "rollout8_ms_per_frame": round(1000 * rollout / 24, 1)}


def run(models=MODELS, against: str | None = None, threads=(1, 2), rounds: int = 3, frames: int = 40,
         compile: bool = False) -> dict:
    # (name, code root, worker arguments): the commit compared against first, then this tree, then this tree compiled
    variants = [(name, tree, []) for name, tree in common.trees(against).items()]
    if compile:
        variants.append(("this tree, compiled", common.ROOT, ["--compile"]))
    rows = []
    for model in models:
        for n in threads:
            res = {name: [] for name, _, _ in variants}
            for _ in range(rounds):
                for name, tree, extra in variants:  # alternate: A B A B ...
                    res[name].append(common.run_worker(Path(__file__).resolve(), tree,
                                                       [model, "--frames", str(frames), *extra], n))
            for name, rs in res.items():
                step = statistics.median(t for r in rs for t in r["step_s"])
                png = statistics.median(t for r in rs for t in r["png_s"])
                rows.append({"model": model, "code": name, "threads": rs[0]["threads"],
                             "steps": rs[0]["sampling_steps"], "ms_per_frame": round(1000 * step, 1),
                             "png_ms": round(1000 * png, 2), "frames_per_s": round(1 / (step + png), 1),
                             "first_frame_s": round(statistics.median(r["first_step_s"] for r in rs), 2),
                             "rollout8_ms_per_frame": round(statistics.median(r["rollout8_ms_per_frame"] for r in rs),
                                                            1)})
            if len(variants) > 1:  # each against the first variant (the other commit, or this tree eager)
                a = rows[-len(variants)]
                for b in rows[-len(variants) + 1:]:
                    b["speedup"] = round(b["frames_per_s"] / a["frames_per_s"], 2)
                    b["rollout_speedup"] = round(a["rollout8_ms_per_frame"] / b["rollout8_ms_per_frame"], 2)
            print(f"  {model}, {n} thread(s): " + "; ".join(f"{r['code']} {r['frames_per_s']} frames/s"
                                                           for r in rows[-len(variants):]), flush=True)
    print(f"play at batch 1 (sampler step + PNG), {common.cpu_name()} ({common.cpu_kind()}); median over {rounds} "
          f"rounds x {frames} frames{', alternating' if len(variants) > 1 else ''}; speed-ups against "
          f"{variants[0][0]}; rollout8: 8 windows at once; first_frame_s: the first frame (compiling, when compiled)")
    print(common.table(rows, ["model", "code", "threads", "steps", "ms_per_frame", "png_ms", "frames_per_s",
                              "speedup", "first_frame_s", "rollout8_ms_per_frame", "rollout_speedup"]))
    return {"cpu": common.cpu_name(), "cpu_kind": common.cpu_kind(), "against": against, "compile": compile,
            "rows": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--against", help="a git revision to time side by side")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--compile", action="store_true", help="also time this tree with the step compiled")
    a = p.parse_args(argv)
    if a.worker:
        import os

        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(worker(a.worker, a.frames, a.compile)))
        return
    res = run(tuple(a.models.split(",")), a.against, tuple(int(t) for t in a.threads.split(",")), a.rounds,
              a.frames, a.compile)
    print(f"-> {common.save('play', res)}")


if __name__ == "__main__":
    main()
