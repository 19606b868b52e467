"""PNG figures: normalized confusion matrix and training curves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _draw_confusion(ax, cm: np.ndarray, class_names: Sequence[str], title: str):
    """Row-normalized matrix on `ax` (rows: true class), percentages in the cells."""
    cm = np.asarray(cm, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(norm.shape[0]):
        for j in range(norm.shape[1]):
            ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    return im


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str) -> None:
    """Row-normalized confusion matrix (rows: true class) with percentages."""
    fig, ax = plt.subplots(figsize=(7, 6))
    im = _draw_confusion(ax, cm, class_names, title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusions(cms: dict[str, np.ndarray], class_names: Sequence[str], path: str | Path,
                    title: str) -> None:
    """Several row-normalized confusion matrices side by side (one panel per name)."""
    fig, axes = plt.subplots(1, len(cms), figsize=(5.2 * len(cms), 5.6), squeeze=False)
    for ax, (name, cm) in zip(axes[0], cms.items()):
        _draw_confusion(ax, cm, class_names, name)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict], path: str | Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax in (("loss", a1), ("accuracy", a2)):
        for prefix in ("train", "val"):
            vals = [h.get(f"{prefix}_{key}") for h in history]
            if any(v is not None for v in vals):
                ax.plot(epochs, vals, marker="o", ms=3, label=prefix)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grouped_bars(values: dict[str, dict[str, tuple[float, float]]], path: str | Path, title: str,
                      ylabel: str, lines: dict[str, float] | None = None) -> None:
    """Bars grouped by the outer key (x axis), one colour per inner key, each (height, error bar);
    `lines` draws labelled horizontal reference lines (published figures)."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in values.values() for s in g))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups) * max(len(series), 1) / 2, 4.2))
    for i, name in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        pairs = [values[g].get(name, (np.nan, 0.0)) for g in groups]
        bars = ax.bar(xs, [p[0] for p in pairs], width, yerr=[p[1] for p in pairs], capsize=3, label=name)
        ax.bar_label(bars, labels=[f"{p[0]:.1f}" if np.isfinite(p[0]) else "" for p in pairs], fontsize=7,
                     padding=2)
    for i, (label, y) in enumerate((lines or {}).items()):  # in the legend, clear of the bars
        ax.axhline(y, color="dimgrey", linestyle=("--", ":", "-.")[i % 3], linewidth=1.2, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    entries = len(series) + len(lines or {})
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(entries, 3), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
