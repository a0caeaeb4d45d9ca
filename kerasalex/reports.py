"""Plots and tables people would rather look at than read (matplotlib, Agg).

Every figure has a title, axis labels and a legend where there is more than
one line, integer epoch ticks, and is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")

# Colour-blind-safe cycle (Okabe-Ito), one colour per run in comparison plots.
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


_CHARMAPS: dict[str, frozenset] = {}
_FONT_WARNED = False


def _charmap(path: str) -> frozenset:
    from matplotlib import ft2font

    if path not in _CHARMAPS:
        try:
            _CHARMAPS[path] = frozenset(ft2font.FT2Font(path).get_charmap())
        except Exception:  # an unreadable font file covers nothing
            _CHARMAPS[path] = frozenset()
    return _CHARMAPS[path]


def fonts_covering(chars: set[str]) -> list[str]:
    """Installed font families (matplotlib's font list) that have a glyph for
    every one of ``chars`` (matplotlib's "Last Resort" placeholder font excluded)."""
    from matplotlib import font_manager

    need = {ord(c) for c in chars}
    out: list[str] = []
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda f: (f.name, f.fname)):
        if entry.name not in out and not entry.name.startswith("Last Resort") and need <= _charmap(entry.fname):
            out.append(entry.name)
    return out


def fit_fonts(fig) -> None:
    """Lets every text of ``fig`` be drawn with real glyphs (call it before
    the first draw, e.g. ``tight_layout``): when the default
    font lacks some (class names in Hangul, CJK, ...), an installed font that
    has them is added as a fallback; when none is installed, one warning
    says so (instead of one per missing glyph) and the boxes stay."""
    global _FONT_WARNED
    import warnings

    import matplotlib
    from matplotlib import font_manager
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if t.get_text()]
    chars = {c for t in texts for c in t.get_text() if ord(c) > 127 and not c.isspace()}
    if not chars:
        return
    default = font_manager.findfont(font_manager.FontProperties(family=matplotlib.rcParams["font.family"]))
    missing = {c for c in chars if ord(c) not in _charmap(default)}
    if not missing:
        return
    found = fonts_covering(missing)
    if found:
        for t in texts:
            families = t.get_fontfamily()
            t.set_fontfamily([*families, found[0]] if found[0] not in families else families)
        return
    if not _FONT_WARNED:
        _FONT_WARNED = True
        warnings.warn(
            f"no installed font has glyphs for {''.join(sorted(missing))[:20]!r}: they show as boxes in the plots; "
            f"install one (e.g. fonts-noto-cjk) and delete matplotlib's font cache to use it",
            stacklevel=3,
        )
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Saves a figure atomically (temp file + rename) and closes it; texts
    whose glyphs the default font lacks get an installed font that has them
    (:func:`fit_fonts`)."""
    from kerasalex.files import atomic_path

    plt = _pyplot()
    path = Path(path)
    try:
        fit_fonts(fig)
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=(path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path


def _epoch_axis(ax, epochs: Sequence[int]) -> None:
    """Integer epoch ticks, and a sensible range when there is a single epoch."""
    from matplotlib.ticker import MaxNLocator

    if epochs and max(epochs) - min(epochs) <= 20:
        ax.set_xticks(range(min(epochs), max(epochs) + 1))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Epoch")


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def plot_learning_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation, side by side; the
    accuracy axis always spans 0-100%.

    Args:
        history: rows with ``epoch`` and any of ``loss``, ``val_loss``,
            ``accuracy``, ``val_accuracy``.
        path: the PNG to write.
        title: the figure's title (e.g. "alexnet on cifar10").
    """
    from matplotlib.ticker import PercentFormatter

    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        for prefix, style, name, color in (("", "o-", "training", RUN_COLORS[0]), ("val_", "s--", "validation", RUN_COLORS[1])):
            vals = [h.get(prefix + key) for h in history]
            known = [v for v in vals if v is not None]
            if known:
                last = f"{known[-1]:.1%}" if key == "accuracy" else _fmt(known[-1])
                ax.plot(epochs, [np.nan if v is None else v for v in vals], style, color=color,
                        label=f"{name} (last {last})", markersize=5, linewidth=2)
        _epoch_axis(ax, epochs)
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        if key == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            # The whole 0-100% range: a zoomed axis makes 7% -> 10% look like progress.
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, linestyle="--", alpha=0.6)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title, fontweight="bold")
    fit_fonts(fig)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loss_comparison(
    curves: Mapping[str, Sequence[dict]],
    path: str | os.PathLike,
    title: str = "Training loss per epoch",
    validation: bool = True,
) -> Path:
    """The loss curves of several runs in one figure (the study's comparison plot):
    one colour per run, training loss solid, validation loss dashed.

    Args:
        curves: run label -> its history rows (``epoch``, ``loss``, ``val_loss``).
        path: the PNG to write.
        title: the figure's title.
        validation: also draw the validation loss where the runs have one.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 5.5))
    all_epochs: list[int] = []
    values: list[float] = []
    markers = "osD^v<>p"
    for i, (label, rows) in enumerate(curves.items()):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        epochs = [r["epoch"] for r in rows]
        all_epochs += epochs
        for key, style, suffix in (("loss", "-", "training"), ("val_loss", "--", "validation")):
            if key == "val_loss" and not validation:
                continue
            vals = [r.get(key) for r in rows]
            if not any(v is not None for v in vals):
                continue
            values += [v for v in vals if v is not None]
            ax.plot(epochs, [np.nan if v is None else v for v in vals], linestyle=style, marker=markers[i % len(markers)],
                    color=color, label=f"{label} ({suffix})", linewidth=2, markersize=6,
                    alpha=1.0 if key == "loss" else 0.75, markerfacecolor=color if key == "loss" else "white")
    if not values:
        ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes, fontsize=14)
    else:
        positive = [v for v in values if v > 0]
        # Runs whose losses differ by orders of magnitude (a pretrained base
        # next to a scratch model) are only readable on a log axis.
        if positive and len(positive) == len(values) and max(positive) / min(positive) > 100:
            ax.set_yscale("log")
            ax.set_ylabel("Loss (log scale)", fontsize=12)
        ax.legend(ncol=2 if len(curves) > 3 else 1, fontsize=10)
    _epoch_axis(ax, all_epochs)
    ax.set_xlabel("Epoch", fontsize=12)
    if ax.get_yscale() != "log":
        ax.set_ylabel("Loss", fontsize=12)
    ax.set_title(title, fontsize=14, fontweight="bold")
    ax.grid(True, linestyle="--", alpha=0.7)
    fit_fonts(fig)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted), counts in the
    cells, shaded by the fraction of each true class (so rows of different
    sizes read alike); the diagonal is each class's recall."""
    plt = _pyplot()
    cm = np.asarray(cm)
    n = len(class_names)
    size = max(5.5, min(0.6 * n + 2.5, 30))
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("Fraction of the true class")
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    acc = np.trace(cm) / max(1, cm.sum())
    ax.set_title(title or f"Confusion matrix (accuracy {acc:.2%})")
    if n <= 20:
        fontsize = 9 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                v = int(cm[i, j])
                color = "white" if frac[i, j] > 0.5 else ("#AAAAAA" if v == 0 else "black")
                ax.text(j, i, v, ha="center", va="center", fontsize=fontsize, color=color,
                        fontweight="bold" if i == j and v else "normal")
    fit_fonts(fig)
    fig.tight_layout()
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
    suptitle: str | None = None,
) -> Path:
    """Images titled with their prediction and probability (and the true class:
    right ones in green, wrong ones in red with a red frame).

    Args:
        images: uint8 images (N, H, W, 3).
        pred: predicted class index per image.
        prob: probability of the predicted class per image.
        class_names: names for the indices.
        path: the PNG to write.
        true: true class index per image (marks right / wrong).
        titles: a first title line per image (e.g. its file name).
        cols: images per row.
        suptitle: the figure's title; default "k of n predicted correctly" when
            ``true`` is given.
    """
    plt = _pyplot()

    def short(name: str) -> str:
        name = str(name)
        return name if len(name) <= 18 else name[:17] + "…"

    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows + 0.5), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        ax.imshow(images[k], interpolation="nearest" if images[k].shape[0] <= 64 else "antialiased")
        text = f"pred: {short(class_names[pred[k]])} ({prob[k]:.0%})"
        color = "black"
        if true is not None:
            ok = pred[k] == true[k]
            text += f"\ntrue: {short(class_names[true[k]])}"
            color = "green" if ok else "red"
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(1.5 if ok else 4)
        else:
            for spine in ax.spines.values():
                spine.set_visible(False)
        if titles is not None:
            text = f"{titles[k]}\n{text}"
        ax.set_title(text, fontsize=9, color=color)
    if suptitle is None and true is not None:
        correct = int(np.sum(np.asarray(pred)[:n] == np.asarray(true)[:n]))
        suptitle = f"{correct} of {n} predicted correctly (wrong ones in red)"
    if suptitle:
        fig.suptitle(suptitle, fontweight="bold")
    fit_fonts(fig)
    fig.tight_layout()
    return save_figure(fig, path)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table.

    Args:
        headers: column titles.
        rows: cells (turned into strings; ``|`` is escaped).
        align: one letter per column, ``l`` / ``r`` / ``c`` (default: all left).

    Example:
        >>> print(markdown_table(["Model", "Accuracy"], [["alexnet", "79.22%"]], "lr"))
        | Model | Accuracy |
        | :-- | --: |
        | alexnet | 79.22% |
    """
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align needs one letter per column. Received: align={align!r} for {len(headers)} columns")
    marks = {"l": ":--", "r": "--:", "c": ":-:"}

    def cell(v: object) -> str:
        return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    return "\n".join(lines)
