"""What the machine can hold: the memory available to this process, and the one check every estimate goes through
(``check_fits``), so that a job too big for the machine is refused before anything is allocated, with the
estimate and the memory in the message."""
from __future__ import annotations

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
