"""One writer per folder: a process that writes a run, a dataset or an export holds an exclusive lock on the folder
for as long as it writes, and a second process aiming at the same folder is refused at once with the PID of the
first. The lock is ``flock`` on the folder itself (no file is added to it); the OS drops it when the process ends,
however it ends, so ``--resume`` after ``kill -9`` finds the folder free. Where ``flock`` does not exist (Windows)
folders are not locked.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None


class FolderBusy(ConfigError):
    """Another process is writing to this folder."""


def _holder(fd: int) -> str:
    """The PID that holds an flock on the file open as ``fd``, from /proc/locks (Linux); '' where unknown."""
    st = os.fstat(fd)
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(st.st_ino):
            return parts[4]
    return ""


@contextlib.contextmanager
def one_writer(folder: str | os.PathLike, what: str):
    """Hold ``folder`` (created if missing) for this process while the block runs; raise :class:`FolderBusy`
    naming the holder's PID if another process holds it. ``what``: the job, for the message ('training run')."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY) if fcntl is not None else None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                created = False  # it is the other writer's
                pid = _holder(fd)
                raise FolderBusy(f"{folder} is being written by another {what} (process {pid or 'unknown'}): one "
                                 f"writer per folder; wait for it to end, stop it, or choose another folder") from None
        yield folder
    finally:
        if created and not any(folder.iterdir()):  # a job refused before it wrote anything leaves nothing behind
            folder.rmdir()
        if fd is not None:
            os.close(fd)  # releases the lock
