"""PNG plots: loss curves from a run's ``log.jsonl``, and metrics against frame index / distance."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(log_path: str | Path, out_png: str | Path) -> Path:
    recs = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in recs])
    loss = np.array([r["loss"] for r in recs])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, loss, alpha=0.3, color="C0", label="loss")
    if len(loss) >= 10:
        k = max(5, len(loss) // 30)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="C0", label=f"moving mean ({k})")
    ax.set_yscale("log")
    return _finish(plt, fig, ax, "step", "weighted v-MSE", out_png)


def plot_curves(curves: dict[str, tuple], xlabel: str, ylabel: str, out_png: str | Path, title: str = "") -> Path:
    """``curves``: name -> (x values, y values)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o" if len(x) <= 40 else None, ms=3, label=name)
    if title:
        ax.set_title(title)
    return _finish(plt, fig, ax, xlabel, ylabel, out_png)


def plot_curve_panels(panels: dict[str, dict[str, tuple]], xlabel: str, ylabel: str, out_png: str | Path,
                      title: str = "") -> Path:
    """Side-by-side panels on one y scale: ``panels`` = panel title -> {name: (x, y) or (x, y, matplotlib line
    style)}; one legend (the first panel's names) under the panels."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), dpi=120, sharey=True, squeeze=False)
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        for name, (x, y, *style) in curves.items():
            ax.plot(x, y, label=name, **(style[0] if style else {}))
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(ylabel)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    rows = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, min(0.5, 0.055 * rows + 0.03), 1, 1))
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def _finish(plt, fig, ax, xlabel: str, ylabel: str, out_png) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
