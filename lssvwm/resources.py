"""What the machine can hold and do: the memory available to this process, and the one check every estimate goes
through (``check_fits``), so that a job too big for the machine is refused before anything is allocated, with the
estimate and the memory in the message; and whether ``torch.compile`` can generate code here
(``check_compiler``)."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from .config import ConfigError


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
