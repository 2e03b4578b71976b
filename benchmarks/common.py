"""What the benchmarks share: the results folder, tables, the machine's description, and timing another
commit's code side by side with this tree's (``--against REV``): the commit's files exported to a temporary
folder, and each measurement run in a fresh process whose ``lssvwm`` is the tree under test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# the width of the demo's model in every benchmark that times it, on every machine and tree: the demo trains 64 wide
# where it trains in fp32 on a CPU (lssvwm.demo.demo_width), but a speed comparison needs the same model throughout
DEMO_WIDTH = 96


def vm(key: str) -> int:
    """A memory figure of this process from /proc/self/status in bytes (VmRSS, VmHWM: the peak), 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def in_subprocess(module: str, fn: str, *args) -> dict:
    """``benchmarks.<module>.<fn>(*args)`` in a fresh Python with ``BENCH_THREADS`` (default 1) CPU threads, so
    that every figure, peak memory above all, comes from its own process; returns its JSON result."""
    code = f"import json, benchmarks.{module} as b; print(json.dumps(b.{fn}(*{args!r})))"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("BENCH_THREADS", "1"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], cols: list[str]) -> str:
    cols = [c for c in cols if any(c in r for r in rows)]
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in cols]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(f"{r.get(c, '')}".rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_kind() -> str:
    """What decides the CPU's fast floating-point types: AMX, AVX512-BF16 without AMX, or the vector ISA."""
    import torch

    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16, no AMX"
    return torch.backends.cpu.get_cpu_capability()


def export(rev: str, paths=("lssvwm", "weights")) -> Path:
    """The files of ``rev`` under ``paths`` in a temporary folder (git archive: no checkout is touched)."""
    out = Path(tempfile.mkdtemp(prefix=f"lssvwm-{rev}-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *paths], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def trees(against: str | None) -> dict[str, Path]:
    """{name: code root}: this tree, and the commit ``against`` first where given."""
    return {**({against: export(against)} if against else {}), "this tree": ROOT}


def run_worker(script: Path, tree: Path, args: list[str], threads: int) -> dict:
    """``python script --worker ARGS`` in a fresh process that imports ``lssvwm`` from ``tree`` with ``threads``
    CPU threads; returns the JSON object it prints last."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, str(script), "--worker", *args], capture_output=True, text=True, env=env,
                         cwd=tempfile.gettempdir())
    if out.returncode:
        raise RuntimeError(f"benchmark worker failed ({tree}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
