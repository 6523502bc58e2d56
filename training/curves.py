"""Training curves: loss, learning rate and the dev metric against steps, as one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(log: Sequence[dict[str, Any]], metric: str, path: Path, title: str) -> None:
    """Three stacked panels sharing the step axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [e for e in log if "loss" in e]
    evals = [e for e in log if f"eval_{metric}" in e]
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], color="tab:blue")
    axes[0].set_ylabel("train loss")
    axes[1].plot(
        [e["step"] for e in train], [e["learning_rate"] for e in train], color="tab:orange"
    )
    axes[1].set_ylabel("learning rate")
    axes[2].plot(
        [e["step"] for e in evals], [e[f"eval_{metric}"] for e in evals], "o-", color="tab:green"
    )
    axes[2].set_ylabel(f"dev {metric}")
    axes[2].set_xlabel("optimiser step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
