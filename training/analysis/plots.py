"""The analysis figures: the confusion matrix and the reliability diagram, as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(
    matrix: Sequence[Sequence[int]], labels: list[str], path: Path, title: str
) -> None:
    """Counts, with each row's share as the colour (rows: true label; columns: predicted)."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.7 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=30, ha="right")
    ax.set_yticks(ticks, labels)
    for i in ticks:
        for j in ticks:
            colour = "white" if shares[i, j] > 0.6 else "black"
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the true label's row")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(calibration: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy against confidence per bin, before and (when fitted) after temperature scaling,
    with the examples per bin underneath."""
    plt = _pyplot()
    sets = [("as trained", calibration["test"], "tab:blue")]
    if calibration["test_scaled"] is not None:
        t = calibration["temperature"]["T"]
        sets.append((f"temperature {t:.2f}", calibration["test_scaled"], "tab:orange"))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = 1.0 / calibration["bins"]
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for k, (name, figures, colour) in enumerate(sets):
        bins = [b for b in figures["reliability"] if b["count"]]
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        top.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o-",
            color=colour,
            label=f"{name}: ECE {figures['ece']:.3f}",
        )
        offset = (k - (len(sets) - 1) / 2) * width / len(sets)
        bottom.bar(
            [c + offset for c in centres],
            [b["count"] for b in bins],
            width=width / len(sets),
            color=colour,
        )
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    top.set_title(title)
    bottom.set_xlabel(f"confidence (top-label probability, {calibration['bins']} bins)")
    bottom.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
