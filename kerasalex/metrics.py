"""The figures of an evaluation: per-class precision / recall / F1 in
scikit-learn's ``classification_report`` layout, as a dict and as text."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def metrics_report(y: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict:
    """Per-class precision / recall / F1 / support, accuracy and the macro and
    weighted averages, in scikit-learn's ``classification_report`` layout
    (``output_dict=True``): the one source of every figure printed and saved.

    Every class of the model has a row (support 0 when the sample has none of
    it); the macro average is over the classes present in the sample, so a
    test set lacking a class is not scored 0 on it.
    """
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(names)))
    p, r, f, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    present = sup > 0
    report: dict = {}
    for i, n in enumerate(names):
        report[n] = {"precision": float(p[i]), "recall": float(r[i]), "f1-score": float(f[i]), "support": int(sup[i])}
    total = int(sup.sum())
    report["accuracy"] = float(np.mean(np.asarray(pred) == np.asarray(y))) if len(y) else 0.0
    w = sup / max(1, total)
    report["macro avg"] = {k: float(np.mean(v[present])) if present.any() else 0.0
                           for k, v in (("precision", p), ("recall", r), ("f1-score", f))}
    report["macro avg"]["support"] = total
    report["weighted avg"] = {k: float(np.sum(v * w)) for k, v in (("precision", p), ("recall", r), ("f1-score", f))}
    report["weighted avg"]["support"] = total
    return report


def format_report(report: dict, names: Sequence[str], digits: int = 4) -> str:
    """:func:`metrics_report` as text, in scikit-learn's layout; classes
    absent from the sample are marked and left out of the macro average."""
    width = max([len("weighted avg"), *(len(str(n)) for n in names)])
    head = " " * width + "".join(f"{h:>{digits + 6}}" for h in ("precision", "recall", "f1-score")) + f"{'support':>10}"
    lines = [head, ""]
    absent = []
    for n in names:
        row = report[n]
        mark = ""
        if row["support"] == 0:
            absent.append(str(n))
            mark = "  (not in this sample)"
        lines.append(f"{n:>{width}}" + "".join(f"{row[k]:>{digits + 6}.{digits}f}" for k in ("precision", "recall", "f1-score"))
                     + f"{row['support']:>10d}{mark}")
    total = report["macro avg"]["support"]
    lines += ["", f"{'accuracy':>{width}}" + " " * (2 * (digits + 6)) + f"{report['accuracy']:>{digits + 6}.{digits}f}{total:>10d}"]
    for key in ("macro avg", "weighted avg"):
        row = report[key]
        lines.append(f"{key:>{width}}" + "".join(f"{row[k]:>{digits + 6}.{digits}f}" for k in ("precision", "recall", "f1-score"))
                     + f"{row['support']:>10d}")
    if absent:
        lines += ["", f"macro avg over the {len(names) - len(absent)} classes present; not in this sample (support 0): "
                  + ", ".join(absent[:20]) + (" ..." if len(absent) > 20 else "")]
    return "\n".join(lines) + "\n"
