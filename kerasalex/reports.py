"""Plots and tables people would rather look at than read (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Saves a figure atomically (temp file + rename) and closes it."""
    from kerasalex.files import atomic_path

    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=(path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path


def plot_learning_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation, side by side."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        for prefix, style, name in (("", "o-", "train"), ("val_", "s--", "validation")):
            vals = [h.get(prefix + key) for h in history]
            if any(v is not None for v in vals):
                ax.plot(epochs, [np.nan if v is None else v for v in vals], style, label=name, markersize=4)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(True, linestyle="--", alpha=0.6)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    plt = _pyplot()
    n = len(class_names)
    size = max(5.0, min(0.55 * n + 2, 30))
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    acc = np.trace(cm) / max(1, cm.sum())
    ax.set_title(title or f"Confusion matrix (accuracy {acc:.2%})")
    if n <= 20:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > thresh else "black")
    return save_figure(fig, path)


def plot_prediction_grid(
    images: np.ndarray,
    pred: Sequence[int],
    prob: Sequence[float],
    class_names: Sequence[str],
    path: str | os.PathLike,
    true: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    cols: int = 6,
) -> Path:
    """Images titled with their prediction and probability (and the true class;
    wrong predictions in red)."""
    plt = _pyplot()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k], interpolation="nearest" if images[k].shape[0] <= 64 else "antialiased")
        text = f"{class_names[pred[k]]} {prob[k]:.0%}"
        color = "black"
        if true is not None:
            text += f"\ntrue: {class_names[true[k]]}"
            color = "green" if pred[k] == true[k] else "red"
        if titles is not None:
            text = f"{titles[k]}\n{text}"
        ax.set_title(text, fontsize=9, color=color)
    return save_figure(fig, path)
