"""Training-step profile: time, FLOPs and the share of the machine's matmul peak, against another commit.

    python -m benchmarks.train_step                           # this tree: the demo's model and `base`
    python -m benchmarks.train_step --against 28b825b         # the same, side by side with that commit's code
    python -m benchmarks.train_step --models demo --rounds 9 --autocast fp32 --threads 1
    python -m benchmarks.train_step --models demo --optimizer muon --against be99ff8  # the demo's optimizer

For each model: one training step exactly as the training loop takes it (forward, backward, gradient clipping, the
optimizer: AdamW, or Muon and AdamW with ``--optimizer muon``; EMA) on random data at the model's training shape,
timed in fresh processes, one per tree and round, alternating between the trees (A B A B ...), so that a machine
whose speed drifts (a shared VM) slows both alike. Step times vary by 10-30% from one minute to the next on a shared
machine, so the table gives the median and the fastest step; the speed-up is the ratio of medians, with its range
over the rounds. In the same process: the FLOPs of one step as ``torch.utils.flop_counter`` counts that tree's ops,
the matmul rate in fp32 and bf16 (1024^3, one thread count), the optimizer's update alone (``optimizer_ms``, the
median of its calls) and the top ops of one step by self CPU time. The share of the peak is taken of the best matmul
rate of the whole run (:func:`machine_peaks`) in the type training runs in (``autocast``: each tree's own ``auto``
choice unless forced). Prints a table and writes ``benchmarks/results/train_step.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a worker script: the benchmarks folder is on sys.path, not the root
    import common
else:
    from benchmarks import common
# model -> (how to build its config, batch, clip frames): the demo's recipe at its training shape; `base` small
# enough to time (one 8-frame clip of 64x64)
MODELS = {"demo": ("demo", 4, 16), "base": ("base", 1, 8), "small": ("small", 4, 16), "tiny": ("tiny", 2, 4)}
OPTIMIZERS = {"adamw": "AdamW", "muon": "Muon + AdamW"}  # --optimizer: train.optimizer, as the table names it


def _time_matmul(dtype, n: int = 1024, reps: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` as ``torch.utils.flop_counter`` counts them (matmuls, convolutions, attention),
    with two gaps of torch 2.13's table filled: the CPU flash-attention kernels (not counted at all there) and the
    weight gradient of grouped convolutions (counted as if dense there: ``groups`` times too large, which made a
    depthwise conv's backward 8.7 of the 28.8 GFLOP once reported for the demo's step)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def conv_backward(*args, **kwargs):  # args: grad_out, input, weight (shapes), ..., groups, output_mask
        count = fc.conv_backward_flop.__wrapped__
        mask, groups = args[10], max(1, int(args[9]))
        return (count(*args[:10], [mask[0], False, False], **kwargs) +  # grad input: right as it is
                count(*args[:10], [False, mask[1], False], **kwargs) // groups)

    mapping = {aten.convolution_backward: conv_backward,
               aten._scaled_dot_product_flash_attention_for_cpu:
                   lambda q, k, v, *a, **kw: fc.sdpa_flop_count(q, k, v),
               aten._scaled_dot_product_flash_attention_for_cpu_backward:
                   lambda g, q, k, v, *a, **kw: fc.sdpa_backward_flop_count(g, q, k, v)}
    with fc.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def worker(model: str, autocast: str, steps: int, top: int, optimizer: str = "adamw") -> dict:
    """Runs inside a fresh process whose ``lssvwm`` is the tree under test (PYTHONPATH); uses only the API that
    every tree compared here has (demo_model/model_preset, training_loss, ema_and_optimizer, optimizer_step)."""
    import torch

    import lssvwm
    from lssvwm.config import DiffusionConfig, TrainConfig, model_preset
    from lssvwm.diffusion import training_loss
    from lssvwm.loop import autocast_dtype, ema_and_optimizer, optimizer_step
    from lssvwm.models.world_model import WorldModel

    kind, batch, clip = MODELS[model]
    if kind == "demo":
        from lssvwm.demo import demo_model

        cfg = demo_model(d_model=common.DEMO_WIDTH)
    else:
        cfg = model_preset(kind)
    tc = TrainConfig(autocast="auto" if autocast == "auto" else {"fp32": "none", "bf16": "bf16"}[autocast],
                     **({} if optimizer == "adamw" else {"optimizer": optimizer}))  # trees before Muon: adamw only
    amp = autocast_dtype(tc, torch.device("cpu"))
    torch.manual_seed(0)
    net = WorldModel(cfg)
    ema, opt = ema_and_optimizer(net, tc)
    opt_s, update = [], opt.step

    def timed_update():
        t = time.perf_counter()
        update()
        opt_s.append(time.perf_counter() - t)

    opt.step = timed_update  # the optimizer's share of the step, timed where the loop calls it
    x = torch.randn(batch, clip, cfg.channels, cfg.frame_size, cfg.frame_size)
    a = torch.randint(0, cfg.num_actions, (batch, clip))

    def step(i: int):
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = training_loss(net, x, a, DiffusionConfig(), torch.Generator().manual_seed(i))
        optimizer_step(net, ema, opt, loss, i, tc)

    for i in range(3):
        step(i)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t)
    opt_s = opt_s[-steps:]  # the timed steps' updates
    flops = count_flops(lambda: step(0))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(0)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "share_%": round(100 * e.self_cpu_time_total / total, 1), "calls": e.count}
           for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]]
    return {"tree": str(Path(lssvwm.__file__).parent.parent), "model": model, "batch": batch, "clip": clip,
            "params_M": round(net.num_params() / 1e6, 2), "autocast": "bf16" if amp == torch.bfloat16 else "fp32",
            "threads": torch.get_num_threads(), "step_s": times, "optimizer_s": opt_s, "flops": flops,
            "peak_fp32_gflops": round(_time_matmul(torch.float32), 1),
            "peak_bf16_gflops": round(_time_matmul(torch.bfloat16), 1), "top_ops": ops}


def machine_peaks(per_tree: list[list[dict]]) -> dict[str, float]:
    """The machine's matmul peak per type: the best rate any process of this run measured (every tree, every
    round). One process's figure swings by up to ~1.5x on a shared VM; the peak is the machine's, not a tree's,
    so both trees' shares are taken of the same number."""
    return {t: max(r[f"peak_{t}_gflops"] for runs in per_tree for r in runs) for t in ("fp32", "bf16")}


def _summary(runs: list[dict], peaks: dict[str, float]) -> dict:
    """Median step time over every timed step of every round, the share of the run's peak (:func:`machine_peaks`)
    and the run's other figures (from its first round: they do not depend on timing)."""
    first = runs[0]
    step = statistics.median(t for r in runs for t in r["step_s"])
    peak = peaks[first["autocast"]]
    gflops = first["flops"] / step / 1e9
    return {**{k: first[k] for k in ("model", "batch", "clip", "params_M", "autocast", "threads")},
            "ms_per_step": round(1000 * step, 1),
            "optimizer_ms": round(1000 * statistics.median(t for r in runs for t in r["optimizer_s"]), 1),
            "ms_min": round(1000 * min(t for r in runs for t in r["step_s"]), 1),
            "gflop_per_step": round(first["flops"] / 1e9, 2),
            "achieved_gflops": round(gflops, 1), "peak_gflops": peak, "share_of_peak_%": round(100 * gflops / peak, 1),
            "peak_fp32_gflops": peaks["fp32"], "peak_bf16_gflops": peaks["bf16"],
            "round_ms": [round(1000 * statistics.median(r["step_s"]), 1) for r in runs],
            "top_ops": first["top_ops"]}


def run(models=("demo", "base"), against: str | None = None, rounds: int = 5, steps: int = 3, autocast: str = "auto",
        threads: int = 1, top: int = 8, optimizer: str = "adamw") -> dict:
    """``autocast``: one type for every tree, or several comma-separated (``fp32,bf16``): each tree is then timed in
    each, side by side, as variants named "TREE TYPE"."""
    types = autocast.split(",")
    variants = {(name if len(types) == 1 else f"{name} {ac}"): (tree, ac)
                for name, tree in common.trees(against).items() for ac in types}
    rows, per_model = [], {}
    for model in models:
        runs = {name: [] for name in variants}
        for r in range(rounds):
            for name, (tree, ac) in variants.items():  # alternate: A B A B ...
                runs[name].append(common.run_worker(Path(__file__).resolve(), tree, [
                    model, "--autocast", ac, "--steps", str(steps), "--top", str(top), "--optimizer", optimizer],
                    threads))
                print(f"  {model} round {r + 1}/{rounds} {name}: "
                      f"{1000 * statistics.median(runs[name][-1]['step_s']):.0f} ms/step", flush=True)
        peaks = machine_peaks(list(runs.values()))
        per_model[model] = {name: _summary(rs, peaks) for name, rs in runs.items()}
        for name, s in per_model[model].items():
            rows.append({"code": name, **{k: v for k, v in s.items() if k not in ("top_ops", "round_ms")}})
        pairs = _compared(list(variants), against, types)
        if pairs:  # the speed-up, per round (each round timed both back to back) and overall
            per_model[model]["speedup"] = {f"{b} vs {a}": _speedup(per_model[model][a], per_model[model][b])
                                           for a, b in pairs}
    cols = ["model", "code", "autocast", "ms_per_step", "ms_min", "optimizer_ms", "gflop_per_step", "achieved_gflops",
            "peak_gflops", "share_of_peak_%"]
    print(f"training step (forward, backward, clip, {OPTIMIZERS[optimizer]}, EMA), {threads} thread(s), "
          f"{common.cpu_name()} ({common.cpu_kind()}); peak = the best 1024^3 matmul rate of this run's processes in "
          f"the type training uses; median of {rounds} rounds x {steps} steps, trees alternating")
    print(common.table(rows, cols))
    for model, res in per_model.items():
        for pair, sp in res.get("speedup", {}).items():
            print(f"{model}: {pair.replace(' vs ', ' is ' + str(sp['overall']) + 'x the speed of ')} (medians; per "
                  f"round {sp['per_round_min']} to {sp['per_round_max']}; fastest steps {sp['of_fastest_steps']}x)")
        for name, s in res.items():
            if name != "speedup":
                print(f"  top ops, {model}, {name}: " + ", ".join(f"{o['op']} {o['share_%']}%" for o in s["top_ops"]))
    return {"cpu": common.cpu_name(), "cpu_kind": common.cpu_kind(), "threads": threads, "rounds": rounds,
            "steps": steps, "optimizer": optimizer, "against": against, "models": per_model, "rows": rows}


def _compared(names: list[str], against: str | None, types: list[str]) -> list[tuple[str, str]]:
    """The (baseline, candidate) pairs whose speed-up is reported: with ``against``, this tree against that commit in
    each type; with one tree and several types, each type against the first."""
    if against:
        return [(a, b) for a, b in zip(names[:len(types)], names[len(types):])]
    return [(names[0], b) for b in names[1:]]


def _speedup(a: dict, b: dict) -> dict:
    """How many times faster ``b`` steps than ``a``: ratio of the medians, of the fastest steps, and per round."""
    pairs = [x / y for x, y in zip(a["round_ms"], b["round_ms"])]
    return {"overall": round(a["ms_per_step"] / b["ms_per_step"], 2),
            "of_fastest_steps": round(a["ms_min"] / b["ms_min"], 2),
            "per_round_min": round(min(pairs), 2), "per_round_max": round(max(pairs), 2)}


def run_default() -> dict:
    """`make bench`'s profile: the demo's model and `base`, this tree only, 3 rounds."""
    return run(rounds=3)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--models", default="demo,base", help="comma-separated: " + ", ".join(MODELS))
    p.add_argument("--against", help="a git revision to time side by side (e.g. 28b825b)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--autocast", default="auto", help="auto, fp32 or bf16, or several side by side: fp32,bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--optimizer", default="adamw", choices=sorted(OPTIMIZERS),
                   help="the update timed: adamw (every tree has it), or muon (Muon on the hidden matrices and "
                        "AdamW on the rest: the demo's; trees from 2026-12-05 on)")
    a = p.parse_args(argv)
    if not set(a.autocast.split(",")) <= {"auto", "fp32", "bf16"}:
        p.error(f"--autocast: expected auto, fp32 or bf16 (or several, comma-separated), got {a.autocast!r}")
    if a.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(worker(a.worker, a.autocast, a.steps, a.top, a.optimizer)))
        return
    res = run(tuple(a.models.split(",")), a.against, a.rounds, a.steps, a.autocast, a.threads, a.top, a.optimizer)
    print(f"-> {common.save('train_step', res)}")


if __name__ == "__main__":
    main()
