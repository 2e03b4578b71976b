"""What the machine can hold and do: the memory available to this process, and the one check every estimate goes
through (``check_fits``), so that a job too big for the machine is refused before anything is allocated, with the
estimate and the memory in the message; whether ``torch.compile`` can generate code here (``check_compiler``); and
how much faster an op runs in bf16 than in fp32 on this CPU (``bf16_speedup``); the device a job runs on when none
is named (``default_device``)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from .config import ConfigError


def default_device() -> torch.device:
    """The device a job runs on when none is named: the (current) GPU where CUDA is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_memory() -> int | None:
    """Bytes of memory this process could still get (Linux: MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(what: str, nbytes: float, hint: str, limit: int | None = None) -> None:
    """A ConfigError when ``nbytes`` exceed the memory available (``limit``, default: this machine's)."""
    limit = available_memory() if limit is None else limit
    if limit is not None and nbytes > limit:
        raise ConfigError(f"{what} needs about {nbytes / 2**30:.1f} GiB but only {limit / 2**30:.1f} GiB of memory "
                          f"is available; {hint}")


def check_compiler(device_type: str, what: str = "torch.compile") -> None:
    """A ConfigError unless ``torch.compile`` can generate code for ``device_type`` here: on the CPU a C++
    compiler (``$CXX``, g++, clang++ or c++ on the PATH), on CUDA the ``triton`` package."""
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ConfigError(f"{what} on CUDA needs the triton package (pip install triton); it is not installed")
        return
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    if not any(shutil.which(c) for c in candidates):
        raise ConfigError(f"{what} on the CPU needs a C++ compiler ({' or '.join(candidates)} on the PATH); none "
                          f"was found: install one (e.g. apt install g++) or run without compiling")


def bf16_speedup(fn: Callable[..., object], tensors: list[torch.Tensor], reps: int = 5) -> float:
    """How many times faster ``fn(*tensors)`` runs with the tensors in bf16 than in fp32: the best of ``reps`` calls
    in each type after one warm-up call, at the thread count in use."""
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        args = [t.detach().to(dtype) for t in tensors]  # own leaves per type: no backward into the other's
        fn(*args)  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t)
        best[dtype] = min(times)
    return best[torch.float32] / best[torch.bfloat16]
