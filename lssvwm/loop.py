"""The training machinery both training loops share (world model: :mod:`lssvwm.train`, autoencoder:
:mod:`lssvwm.train_ae`): process setup (and local CPU processes in one DDP group), stable seeds, the LR schedule,
the optimizers (AdamW, or Muon and AdamW), the EMA/optimizer step, init and exact resume, the step batch sampler,
and the loop skeleton (time budget, log, checkpoint cadence).

Every step draws its batch and its noise from generators seeded by (seed, step[, ...]); together with the saved
optimizer/EMA state this makes a resume continue exactly: on CPU the loss sequence after a resume equals that of
an uninterrupted run.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import clean_stale, find_checkpoint, load_state, load_weights
from .config import ConfigError, LoopConfig
from .muon import BatchedMuon
from .resources import bf16_speedup, default_device


def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        rank = dist.get_rank()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, default_device()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with(parent: int) -> None:
    """Be killed when the process ``parent`` ends (Linux; elsewhere nothing), so that a killed run's processes
    do not go on training it. SIGKILL, not the SIGINT spawn asks for: a job started in the background of a
    non-interactive shell ignores SIGINT."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _cpu_rank(rank: int, world: int, port: int, threads: int, errors, fn, args, parent: int) -> None:
    """One spawned process of :func:`run_cpu_processes`: the environment ``torchrun`` would give it, then ``fn``."""
    _die_with(parent)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    # tqdm's bars share a multiprocessing lock by default: a semaphore that os._exit below would leave behind, and
    # the resource tracker would report as leaked when the run ends. Each process prints its own bars: a thread
    # lock is all they need
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    try:
        fn(*args)
    except Exception as e:  # handed to the parent as it is, so that it can raise the error with its own type
        try:
            errors.put((rank, e))
        except Exception:  # an exception that does not pickle: spawn's own report (its traceback) stands
            pass
        raise
    # Done (``fn`` closes what it opened: training closes its logs): leave without the interpreter's teardown.
    # Ranks that had trained correctly were seen in CI to abort at exit ("terminate called without an active
    # exception", SIGABRT: gloo's threads and the objects they hold torn down during finalization), once in a
    # spawned rank after the barrier and destroy_process_group that end a run (docs/faults.md). Output still
    # buffered is written first.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_cpu_processes(fn, args: tuple, processes: int, threads: int | None = None):
    """``fn(*args)`` in ``processes`` new local processes that form one DDP group over gloo, as under ``torchrun
    --standalone --nproc_per_node=processes`` (:func:`setup_distributed` finds them), the ``threads`` (default:
    this process's) shared evenly between them. On a CPU with few cores, processes of one thread each run a
    small model's step faster than one process with all the threads (docs/speed.md). When one process fails
    the others are stopped and its exception is raised here (its own type and message). A process whose ``fn``
    returned leaves with ``os._exit(0)`` after flushing stdout and stderr: files ``fn`` left open are not flushed.
    Returns None."""
    import logging

    import torch.multiprocessing as mp

    if torch.cuda.is_available():
        raise ConfigError("local processes are for training on the CPU; on GPUs use torchrun "
                          "(--nproc_per_node = the number of GPUs)")
    each = max(1, (threads or torch.get_num_threads()) // processes)
    errors = mp.get_context("spawn").SimpleQueue()
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(each)  # for the children's thread pools at start
    quiet = logging.getLogger("torch.multiprocessing.spawn")  # its warning as it stops the others: not our error
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        mp.start_processes(_cpu_rank, nprocs=processes, join=True, start_method="spawn", args=(
            processes, _free_port(), each, errors, fn, args, os.getpid()))
    except mp.ProcessRaisedException:
        if errors.empty():
            raise
        raise errors.get()[1] from None
    finally:
        quiet.setLevel(level)
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def decay_progress(step: int, loop: LoopConfig, anchor: tuple[int, float] | None = None) -> float:
    """How far ``step`` is through the cosine decay (0 at the end of the warmup, 1 at ``steps``). ``anchor`` =
    (s0, p0): the decay was at p0 at step s0 and goes linearly on to 1 at ``steps`` (a plan changed at s0 keeps the
    learning rate continuous)."""
    if anchor is not None and step >= anchor[0]:
        s0, p0 = anchor
        return min(1.0, p0 + (1 - p0) * (step - s0) / max(1, loop.steps - s0))
    return min(1.0, max(0.0, (step - loop.warmup) / max(1, loop.steps - loop.warmup)))


def get_lr(step: int, loop: LoopConfig, anchor: tuple[int, float] | None = None) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr`` at ``steps`` (``anchor``: see decay_progress)."""
    if step < loop.warmup:
        return loop.lr * (step + 1) / loop.warmup
    progress = decay_progress(step, loop, anchor)
    return loop.lr * (loop.min_lr_ratio + (1 - loop.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))



def param_groups(model: torch.nn.Module, weight_decay: float, exclude: set[int] = frozenset()) -> list[dict]:
    """Weight decay on matrices only; never on biases, norms, embeddings' 1-d params, A_log, D, dt_bias. Parameters
    whose ``id`` is in ``exclude`` (another optimizer's) are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in exclude:
            continue
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]



def stable_seed(*parts) -> int:
    """A stable 56-bit seed from integers (independent of Python's hash randomisation)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")



def init_training(model: torch.nn.Module, loop: LoopConfig, run: Path, resume: bool, truncate_log: bool = True):
    """EMA copy and optimizer for ``model``; with ``resume``, both (and the model) from the run's latest checkpoint.

    Returns (ema, optimizer, start step, saved state or None). A run folder that already holds a checkpoint is
    refused without ``resume``, so a finished run is never overwritten by accident."""
    ema, opt = ema_and_optimizer(model, loop)
    has_ckpt = (run / "checkpoints" / "latest").exists()
    clean_stale(run / "checkpoints")
    if has_ckpt and not resume:
        raise ConfigError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
    if not has_ckpt:
        return ema, opt, 0, None
    ckpt = find_checkpoint(run)
    load_weights(model, ckpt / "model.safetensors")
    load_weights(ema, ckpt / "ema.safetensors")
    state = load_state(ckpt / "state.pt")
    try:
        opt.load_state_dict(state["optimizer"])
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{ckpt / 'state.pt'}: its optimizer state does not fit train.optimizer={loop.optimizer} "
                          f"({e}); resume with the optimizer the run was started with") from None
    start = int(state["step"])
    if truncate_log:
        truncate_log_file(run / "log.jsonl", start)
    return ema, opt, start, state



def check_data_folder(loop: LoopConfig, resume: bool) -> None:
    """``train.data`` must be a folder; when a resumed run's is gone (its config.yaml holds the path of the first
    start), say how to point it at data that moved."""
    if not Path(loop.data).is_dir():
        hint = (": a resumed run reads its data where its config.yaml says; pass --data DIR if the data moved"
                if resume else "")
        raise ConfigError(f"train.data: {loop.data}: dataset folder not found{hint}")


def ema_and_optimizer(model: torch.nn.Module, loop: LoopConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A fresh EMA copy of ``model`` and its optimizer (``loop.optimizer``): AdamW (no weight decay on biases, norms
    and SSM parameters), or Muon on the hidden matrices (:func:`muon_matrices`) and that AdamW on the rest."""
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # one fused kernel for the whole update (CUDA and CPU); other devices take the foreach path
    fused = all(p.device.type in ("cuda", "cpu") for p in model.parameters())
    matrices = muon_matrices(model) if loop.optimizer == "muon" else []
    if loop.optimizer == "muon" and not matrices:  # e.g. the frame autoencoder: convolutions only
        raise ConfigError(f"train.optimizer=muon: this {type(model).__name__} has no hidden matrices (nn.Linear "
                          f"weights) for Muon to update; use train.optimizer=adamw")
    adamw = torch.optim.AdamW(param_groups(model, loop.weight_decay, exclude={id(p) for p in matrices}),
                              lr=loop.lr, betas=(0.9, 0.99), fused=fused)
    if loop.optimizer == "adamw":
        return ema, adamw
    # match_rms_adamw scales each matrix's orthogonalised update to AdamW's typical RMS (Moonlight, Liu et al.
    # 2025), so the one learning rate and schedule serve both parts. The Newton-Schulz matmuls run in the type the
    # training computes in: bf16 where it trains in bf16, fp32 elsewhere (CPUs that would emulate bf16)
    ns_dtype = autocast_dtype(loop, matrices[0].device) or torch.float32
    muon = BatchedMuon(matrices, lr=loop.lr, weight_decay=loop.weight_decay, adjust_lr_fn="match_rms_adamw",
                       ns_dtype=ns_dtype)
    return ema, Optimizers(muon=muon, adamw=adamw)


def muon_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The hidden matrices Muon updates: the weights of the ``nn.Linear`` layers, except one marked
    ``_output_layer`` (the model's last layer, which stays with AdamW as in Jordan et al.'s Muon). Embeddings,
    convolutions, biases, norms and the SSM's per-head parameters are not among them."""
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad
            and not getattr(m.weight, "_output_layer", False)]


class Optimizers:
    """Several optimizers, each over its own parameters, used as one by the loops: ``param_groups`` (which the LR
    schedule sets), ``state``, ``zero_grad``, ``step`` and a ``state_dict`` keyed by name, so a checkpoint of one
    kind of optimizer refuses to resume another."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers.values() for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for o in self.optimizers.values() for k, v in o.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers.values():
            o.step()

    def state_dict(self) -> dict:
        return {name: o.state_dict() for name, o in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, this run's optimizer is "
                             f"{sorted(self.optimizers)}")
        for name, o in self.optimizers.items():
            o.load_state_dict(state[name])


def optimizer_step(model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   step: int, loop: LoopConfig) -> torch.Tensor:
    """One update of the training loops: backward, gradient clipping, the optimizer, EMA. Returns the gradient
    norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
    opt.step()
    ema_update(ema, model, step, loop.ema_decay)
    return grad_norm



def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA of the weights, with a warmup of the decay (``(1 + step) / (10 + step)``) so early EMA tracks."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)



def device_memory(device: torch.device) -> int | None:
    """Free memory of a CUDA device (None on the CPU: the machine's available memory is used)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None



@functools.lru_cache(maxsize=None)
def cpu_bf16_fast() -> bool:
    """Whether bf16 matmuls clearly beat fp32 ones on this CPU: a 512^3 matmul timed in both types (best of 5, at
    the thread count in use), bf16 chosen only when 1.5x faster, since it costs precision. The CPU flags do not
    settle it: with AMX bf16 is several times faster, on AVX2-only CPUs PyTorch emulates it (far slower), and
    of two CPUs with AVX512-BF16 and no AMX one measured it slower than fp32, the other twice as fast (docs/speed.md
    has the figures). Attention makes its own choice (``models.attention.cpu_bf16_attention_fast``)."""
    return bf16_speedup(lambda x: x @ x, [torch.randn(512, 512)]) > 1.5


def autocast_dtype(loop: LoopConfig, device: torch.device):
    """The autocast type for ``loop.autocast``: ``bf16`` always, ``none`` never (fp32), ``auto`` bf16 on CUDA
    devices that support it and on CPUs where bf16 is fast (:func:`cpu_bf16_fast`), else fp32."""
    if loop.autocast == "none":
        return None
    if loop.autocast == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16_fast() else None


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start .. steps-1`` (``steps`` None: without end; the training :class:`Loop` says when
    to stop, and with ``fit_steps`` it fixes the step count only during the run), this rank's slice of each global
    batch (see batch_indices).

    Batches depend only on (seed, step), so DataLoader workers, any number of ranks and a resume all see
    exactly the windows an uninterrupted single process would."""

    def __init__(self, n: int, batch: int, seed: int, start: int, steps: int | None, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.start, self.steps = n, batch, seed, start, steps
        self.rank, self.per_rank = rank, batch // world

    def __iter__(self):
        for step in itertools.count(self.start) if self.steps is None else range(self.start, self.steps):
            idx = batch_indices(step, self.n, self.batch, self.seed)
            yield idx[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].tolist()

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("a StepBatchSampler without `steps` has no length")
        return max(0, self.steps - self.start)


def batch_indices(step: int, n: int, batch: int, seed: int) -> torch.Tensor:
    """Window indices of global batch ``step``: consecutive slices of one random permutation of the ``n``
    windows per epoch, so within an epoch no window repeats or is skipped, however many ranks share it."""
    pos = torch.arange(step * batch, (step + 1) * batch)
    epochs = pos // n
    out = torch.empty(batch, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(seed, "epoch", e)))
        sel = epochs == e
        out[sel] = perm[pos[sel] % n]
    return out



def truncate_log_file(log: Path, step: int) -> None:
    """Drop log records after the checkpoint we resume from (a killed run may have logged a few more)."""
    if not log.exists():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a line cut short by the kill
    tmp = log.with_name(log.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, log)


def tensorboard_writer(run: Path):
    """A TensorBoard writer in RUN/tensorboard (train.tensorboard); the JSONL log is always written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install 'lssvwm[tensorboard]'"
                          ) from e
    return SummaryWriter(str(run / "tensorboard"))


# train.fit_steps: the steps of a process timed before the plan is made (at least to the end of the warmup), and the
# share of the remaining time the plan fills: a step cut off by max_minutes is one at the schedule's end, where
# the LR is near its floor, so the margin is only for checkpoints and drift. REFIT_AT: the shares of max_minutes
# at which the plan is made again from the pace since the last plan (a shared machine's pace drifts during a run,
# so one plan from the first steps can leave time unused or end the run above the LR's floor; docs/training.md).
FIT_AFTER, FIT_MARGIN, REFIT_AT = 20, 0.98, (0.5, 0.8)


class Loop:
    """The skeleton both training loops share (nanoGPT-style, with the bookkeeping in one place):

        loop = Loop(cfg.train, run, start, opt, "train", progress)
        for step in loop:                       # sets the step's learning rate on ``opt``
            ... forward, optimizer_step ...
            if loop.end_step(step, {"loss": ..., ...}):   # logs; True when a checkpoint is due
                save_checkpoint(...)
        loop.close()

    It stops at ``steps``, after ``max_minutes`` (every DDP rank at the same step) or, for tests, after
    ``stop_after`` steps of this process. Rank 0 writes ``log.jsonl`` (and TensorBoard with ``tensorboard``) and
    shows the progress bar.

    With ``fit_steps`` it times this process's steps 3..FIT_AFTER (and at least to the end of the warmup), then
    rewrites ``loop.steps`` (the config object passed in, so the checkpoints' config.yaml records the plan) to
    the count that fills FIT_MARGIN of the rest of ``max_minutes``: the LR schedule then ends when the time does,
    on a machine slower or faster than the first guess assumed. At each REFIT_AT share of the budget it plans
    again from the pace since the last plan (rank 0's clock decides for every rank). :meth:`state` goes into each
    checkpoint; given back as ``state`` on resume, the run keeps its plan and makes no other, so its steps do not
    depend on the pace of the machine it resumes on."""

    def __init__(self, loop: LoopConfig, run: Path, start: int, opt: torch.optim.Optimizer, desc: str,
                 progress: bool = True, rank: int = 0, world: int = 1, device=None, tensorboard: bool = False,
                 stop_after: int | None = None, state: dict | None = None):
        from tqdm import tqdm

        self.cfg, self.run, self.start, self.opt = loop, run, start, opt
        self.rank, self.world, self.device, self.stop_after = rank, world, device, stop_after
        self.fitted = bool(loop.fit_steps and state and "planned_steps" in state)
        self.anchor: tuple[int, float] | None = None  # where the last plan took the decay over (decay_progress)
        if self.fitted:  # a resumed run keeps the plan fitted before the kill
            loop.steps = int(state["planned_steps"])
            self.anchor = tuple(state["lr_anchor"]) if state.get("lr_anchor") is not None else None
        self.log = open(run / "log.jsonl", "a") if rank == 0 else None
        self.tb = tensorboard_writer(run) if rank == 0 and tensorboard else None
        self.bar = tqdm(total=loop.steps, initial=start, desc=desc, unit="step", disable=not progress or rank != 0)
        self.t0 = self.t_step = self.t_timed = time.time()
        self.step_timed = start  # the step from which the pace is timed (the third of this process, then each plan's)
        self.lr, self.step_seconds, self.stop = 0.0, 0.0, False
        self.refits: list[float] = []  # the shares of max_minutes still to plan again at (set by the first plan)

    def __iter__(self):
        step = self.start
        while step < self.cfg.steps and not self.stop:  # `steps` may be refitted during the run
            self.lr = get_lr(step, self.cfg, self.anchor)
            for g in self.opt.param_groups:
                g["lr"] = self.lr
            yield step
            step += 1

    def state(self) -> dict:
        """What a checkpoint keeps of the loop: the fitted plan, once there is one."""
        return {"planned_steps": self.cfg.steps, "lr_anchor": self.anchor} if self.fitted else {}

    def _fit(self, step: int, now: float, elapsed: float) -> None:
        """Set ``steps`` to the count that fills FIT_MARGIN of what is left of ``max_minutes`` (``elapsed`` gone) at
        this process's pace since the last plan (since step 2 for the first; rank 0's plan on every rank)."""
        per_step = (now - self.t_timed) / (step + 1 - self.step_timed)
        left = 60 * self.cfg.max_minutes - elapsed
        steps = int(self._from_rank0(step + 1 + max(1, int(FIT_MARGIN * left / per_step))))
        if steps != self.cfg.steps:  # the decay goes on from where the old plan had it at the next step
            self.anchor = (step + 1, decay_progress(step + 1, self.cfg, self.anchor))
            self.cfg.steps = steps
        self.t_timed, self.step_timed = now, step + 1

    def _from_rank0(self, value: float) -> float:
        """``value`` as rank 0 has it, on every DDP rank (so that every rank takes the same decision)."""
        if self.world == 1:
            return value
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return t.item()

    def end_step(self, step: int, record: dict, frames: int | None = None) -> bool:
        """Log ``record`` for this step (plus step, lr, time and, given the ``frames`` of the step's global batch,
        frames/s); decide whether to stop. Returns True when a checkpoint is due (every ``ckpt_every`` steps and at
        the last step)."""
        now = time.time()
        self.step_seconds, self.t_step = now - self.t_step, now
        if frames is not None:
            record = {**record, "frames_per_s": round(frames / max(self.step_seconds, 1e-9), 2)}
        elapsed = now - self.t0
        done = step + 1 - self.start  # steps of this process
        if done == 2:  # the first two steps carry one-off costs (allocation, warm caches): not timed
            self.t_timed, self.step_timed = now, step + 1
        elapsed = self._from_rank0(elapsed)  # rank 0's clock: every rank replans and stops at the same step
        budget = 60 * self.cfg.max_minutes
        planned = self.cfg.steps
        if self.cfg.fit_steps and not self.fitted and done >= FIT_AFTER and step + 1 >= self.cfg.warmup:
            self._fit(step, now, elapsed)
            self.fitted, self.refits = True, [f for f in REFIT_AT if f * budget > elapsed]
            record = {**record, "planned_steps": self.cfg.steps}
        elif self.refits and elapsed >= self.refits[0] * budget:
            self.refits.pop(0)
            self._fit(step, now, elapsed)
            if self.cfg.steps != planned:
                record = {**record, "planned_steps": self.cfg.steps}
        if self.cfg.steps != planned:
            self.bar.total = self.cfg.steps
            self.bar.refresh()
        out_of_time = self.cfg.max_minutes > 0 and elapsed > budget
        last = step + 1 == self.cfg.steps or out_of_time
        self.stop = out_of_time or (self.stop_after is not None and step + 1 - self.start >= self.stop_after)
        if self.rank == 0:
            rec = {"step": step + 1, **record, "lr": self.lr, "time": round(elapsed, 3)}
            self.log.write(json.dumps(rec) + "\n")
            self.log.flush()
            if self.tb is not None:
                for key, value in rec.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self.tb.add_scalar(f"train/{key}", value, step + 1)
            self.bar.update()
            self.bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}", lr=f"{self.lr:.1e}")
        return (step + 1) % self.cfg.ckpt_every == 0 or last

    def close(self) -> None:
        self.bar.close()
        if self.log:
            self.log.close()
        if self.tb is not None:
            self.tb.close()
