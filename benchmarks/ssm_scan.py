"""The SSD scan on the CPU: the chunked scan against the reference loop (speed), and its peak memory vs length."""
from __future__ import annotations

import time

from benchmarks.common import in_subprocess, table, vm


def ssm_scan(kind: str, length: int, d_model: int = 256, repeats: int = 3) -> dict:
    import torch

    from lssvwm.models.ssd import ssd_chunked, ssd_reference

    torch.manual_seed(0)
    d_inner, headdim, d_state = 2 * d_model, 64, 64
    h = d_inner // headdim
    x = torch.randn(1, length, h, headdim)
    dt = torch.rand(1, length, h) * 0.1
    A = -torch.rand(h) * 4
    B, C = torch.randn(1, length, d_state), torch.randn(1, length, d_state)
    D = torch.ones(h)
    base = vm("VmRSS")
    fn = ssd_reference if kind == "reference" else ssd_chunked
    with torch.no_grad():
        times = []
        for _ in range(repeats if kind == "chunked" else 1):
            t = time.perf_counter()
            fn(x, dt, A, B, C, D)
            times.append(time.perf_counter() - t)
    sec = min(times)
    return {"kind": kind, "L": length, "d_model": d_model, "seconds": round(sec, 4),
            "tokens_per_s": round(length / sec), "peak_mem_MiB": round((vm("VmHWM") - base) / 2**20, 1)}


def run() -> dict:
    rows = [in_subprocess("ssm_scan", "ssm_scan", kind, 4096) for kind in ("reference", "chunked")]
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    mem_rows = [in_subprocess("ssm_scan", "ssm_scan", "chunked", L) for L in (1024, 2048, 4096, 8192)]
    print(f"SSD scan on CPU, one thread, L = 4096, d_model 256: chunked is {speedup:.1f}x the reference loop "
          f"(target >= 10x)")
    print(table(rows, ["kind", "L", "seconds", "tokens_per_s", "peak_mem_MiB"]))
    print("chunked scan, peak memory vs length (should be linear)")
    print(table(mem_rows, ["L", "seconds", "tokens_per_s", "peak_mem_MiB"]))
    return {"speed": rows, "speedup_chunked_vs_loop": round(speedup, 2), "memory_vs_length": mem_rows}
