"""Side-by-side comparison of run folders: the study's table, the loss curves
of all runs in one figure, and per-class F1.

A run folder (see :mod:`kerasalex.training`) holds ``config.json``,
``history.json``, ``summary.json`` once training finished and
``evaluation.json`` once it was evaluated. :func:`compare_runs` reads them;
a run without an evaluation report is evaluated on the spot
(``evaluate_missing=True``) or named as missing, never dropped.

Example:
    >>> result = compare_runs(["runs/alexnet-digits-1", "runs/alexnet-digits-2"], "comparison")
    >>> print(result["table_md"])
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from kerasalex import files

CSV_COLUMNS = (
    "model", "arch", "run_dir", "finished", "epochs", "train_seconds", "loss_epoch_1", "loss_last", "last_epoch",
    "accuracy", "accuracy_split", "eval_images", "macro_f1", "images_per_second", "parameters", "missing",
)


# --------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is corrupt (not JSON); rerun what wrote it or delete it") from None


def load_run(run_dir: str | os.PathLike) -> dict:
    """Reads a run folder.

    Args:
        run_dir: a folder written by ``kerasalex train`` (or the study).

    Returns:
        ``{"name", "run_dir", "config", "resolved", "history", "summary",
        "evaluation"}``; ``summary`` / ``evaluation`` are None when the run
        is unfinished / not evaluated.

    Raises:
        ValueError: not a run folder, or one of its JSON files is corrupt.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder not found: {run_dir}")
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"not a kerasalex run folder (no config.json): {run_dir}")
    cfg = _read_json(run_dir / "config.json")
    out: dict[str, Any] = {
        "name": run_dir.name,
        "run_dir": run_dir,
        "config": cfg.get("config", {}),
        "resolved": cfg.get("resolved", {}),
        "history": [],
        "summary": None,
        "evaluation": None,
    }
    for key, name in (("history", "history.json"), ("summary", "summary.json"), ("evaluation", "evaluation.json")):
        p = run_dir / name
        if p.is_file():
            out[key] = _read_json(p)
    return out


def expand_run_dirs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run folders from the command line: a run folder stands for itself; a
    folder that is not one but holds run folders (``runs/``, a study folder)
    stands for those, in name order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").is_file() or not p.is_dir():
            out.append(p)
            continue
        inner = p / "runs" if (p / "runs").is_dir() else p
        found = sorted(q for q in inner.iterdir() if (q / "config.json").is_file())
        if not found:
            raise ValueError(f"not a kerasalex run folder (no config.json), nor a folder of run folders: {p}")
        out += found
    if not out:
        raise ValueError("no run folders given")
    return out


# --------------------------------------------------------------------------
# Where a dataset is evaluated
# --------------------------------------------------------------------------


def evaluation_split(dataset: str) -> str:
    """``"test"`` when ``dataset`` has a test split of its own (cifar10,
    cifar100, digits, a folder with ``train/`` and ``test/``); ``"val"`` for
    an image folder without one, whose "test" split would be the training
    images: such runs are evaluated on the held-out validation slice."""
    from kerasalex.data import NAMED_DATASETS, has_test_split

    if dataset in NAMED_DATASETS:
        return "test"
    return "test" if has_test_split(dataset) else "val"


def accuracy_header(splits: Sequence[str]) -> str:
    """The accuracy column's title: what the accuracies were measured on."""
    kinds = set(splits) or {"test"}
    if kinds == {"test"}:
        return "Test accuracy"
    if kinds == {"val"}:
        return "Val accuracy (held-out)"
    return "Accuracy (split)"


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------


def run_row(run: dict, label: str | None = None) -> dict:
    """One run's numbers for the comparison table (None where unknown).

    Training time and images/second come from ``summary.json`` when the run
    finished, else from its history; losses are the training loss of the
    first and last recorded epochs.
    """
    hist = run["history"] or []
    summary = run["summary"] or {}
    ev = run["evaluation"]
    config = run["config"] or {}
    if summary.get("train_seconds") is not None:
        seconds = float(summary["train_seconds"])
    else:
        seconds = float(sum(r.get("epoch_seconds") or 0 for r in hist)) if hist else None
    ips = summary.get("mean_images_per_second")
    if ips is None:
        vals = [r["images_per_second"] for r in hist if r.get("images_per_second")]
        ips = round(sum(vals) / len(vals), 1) if vals else None
    params = summary.get("parameters", run["resolved"].get("parameters"))
    missing = None
    if ev is None:
        missing = "no evaluation.json" if run["summary"] else "no evaluation.json; the run did not finish"
    row = {
        "model": label or run["name"],
        "arch": config.get("arch"),
        "run_dir": str(run["run_dir"]),
        "finished": bool(run["summary"]),
        "epochs": len(hist),
        "planned_epochs": config.get("epochs"),
        "train_seconds": seconds,
        "loss_epoch_1": hist[0].get("loss") if hist and hist[0].get("epoch") == 1 else None,
        "loss_last": hist[-1].get("loss") if hist else None,
        "last_epoch": hist[-1].get("epoch") if hist else None,
        "accuracy": ev.get("test_accuracy") if ev else None,
        "accuracy_split": (ev.get("split") or "test") if ev else None,
        "eval_images": ev.get("test_images") if ev else None,
        "macro_f1": ev.get("macro_f1") if ev else None,
        "images_per_second": ips,
        "parameters": int(params) if params is not None else None,
        "missing": missing,
    }
    return row


def format_duration(seconds: float | None) -> str:
    """7.8 s, 4.2 min, 1 h 20 min."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m} min"


def format_loss(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.4e}"


def table_cells(row: dict, mixed_splits: bool = False) -> list[str]:
    """A row's cells in the Markdown table, in :func:`table_headers` order."""
    model = row["model"]
    if not row["finished"]:
        model += f" (unfinished: {row['epochs']}/{row['planned_epochs'] or '?'} epochs)"
    if row["accuracy"] is None:
        acc = f"missing ({row['missing']})"
    else:
        acc = f"{row['accuracy']:.2%}"
        if mixed_splits:
            acc += f" ({row['accuracy_split']})"
    last = "-" if row["loss_last"] is None else f"{format_loss(row['loss_last'])} (epoch {row['last_epoch']})"
    return [
        model,
        format_duration(row["train_seconds"]),
        format_loss(row["loss_epoch_1"]),
        last,
        acc,
        "-" if row["images_per_second"] is None else f"{row['images_per_second']:,.1f}",
        "-" if row["parameters"] is None else f"{row['parameters']:,}",
    ]


def table_headers(rows: Sequence[dict]) -> list[str]:
    splits = [r["accuracy_split"] for r in rows if r["accuracy_split"]]
    return ["Model", "Training time", "Loss (epoch 1)", "Loss (last epoch)", accuracy_header(splits),
            "Images/s (training)", "Parameters"]


def comparison_markdown(rows: Sequence[dict]) -> str:
    """The study's comparison table in Markdown."""
    from kerasalex.reports import markdown_table

    splits = {r["accuracy_split"] for r in rows if r["accuracy_split"]}
    return markdown_table(table_headers(rows), [table_cells(r, len(splits) > 1) for r in rows], "lrrrrrr")


def comparison_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def per_class_f1(runs: Sequence[dict], labels: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """Per-class F1 of each evaluated run: (header, rows) with one row per class
    (in the order the runs name them) and a last ``macro avg`` row; None where
    a run lacks the class or its evaluation."""
    classes: list[str] = []
    for run in runs:
        for name in (run["evaluation"] or {}).get("per_class", {}):
            if name not in classes:
                classes.append(name)
    header = ["class", *labels]
    rows = []
    for c in classes:
        cells: list[Any] = [c]
        for run in runs:
            pc = (run["evaluation"] or {}).get("per_class", {}).get(c)
            cells.append(None if pc is None else float(pc["f1-score"]))
        rows.append(cells)
    rows.append(["macro avg", *[(run["evaluation"] or {}).get("macro_f1") for run in runs]])
    return header, rows


def per_class_f1_markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The per-class F1 table; the best run of each class in bold."""
    from kerasalex.reports import markdown_table

    out = []
    for r in rows:
        vals = [v for v in r[1:] if v is not None]
        best = max(vals) if len(r) > 2 and vals else None
        cells = [r[0]]
        for v in r[1:]:
            if v is None:
                cells.append("-")
            else:
                cells.append(f"**{v:.4f}**" if best is not None and v == best else f"{v:.4f}")
        out.append(cells)
    return markdown_table(list(header), out, "l" + "r" * (len(header) - 1))


def per_class_f1_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue()


# --------------------------------------------------------------------------
# Evaluating on the spot
# --------------------------------------------------------------------------


def evaluate_run(
    run: dict,
    dataset: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    limit: int | None = None,
) -> dict:
    """Evaluates a run's ``model.keras`` into its folder (``evaluation.json``
    and figures) on the run's own dataset (or ``dataset``): its test split, or
    the held-out validation slice for image folders without one (see
    :func:`evaluation_split`). Returns the evaluation report.

    Raises:
        ValueError: the run has no ``model.keras`` (it did not finish).
    """
    from kerasalex.evaluation import evaluate

    run_dir = Path(run["run_dir"])
    model = run_dir / "model.keras"
    if not model.is_file():
        raise ValueError(f"run {run_dir} has no model.keras (it did not finish); finish it with `kerasalex train --resume --run-dir {run_dir}`")
    config = run["config"] or {}
    if dataset is None:
        dataset, data_dir = config.get("dataset", "cifar10"), data_dir or config.get("data_dir")
    split = evaluation_split(dataset)
    # The held-out slice is the one the model records (or, for an older run,
    # its config.json beside model.keras says).
    report = evaluate(model, dataset, data_dir, batch_size, run_dir, limit, split=split)
    report.pop("report_text", None)
    report.pop("output_dir", None)
    return report


# --------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------


def _labels(runs: Sequence[dict]) -> list[str]:
    """Run folder names, with the parent folder where two runs share a name."""
    names = [r["name"] for r in runs]
    out = []
    for r in runs:
        if names.count(r["name"]) > 1:
            out.append(f"{Path(r['run_dir']).parent.name}/{r['name']}")
        else:
            out.append(r["name"])
    return out


def missing_note(row: dict) -> str:
    """One line naming a run without an evaluation report, and how to make one."""
    model = Path(row["run_dir"]) / "model.keras"
    if not row["finished"]:
        how = f"finish it with `kerasalex train --resume --run-dir {row['run_dir']}`"
    else:
        how = f"evaluate it with `kerasalex evaluate {model} --dataset ...` or run compare with --evaluate"
    return f"{row['model']}: not evaluated ({row['missing']}); {how}"


def compare_runs(
    run_dirs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    evaluate_missing: bool = False,
    dataset: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 256,
    eval_limit: int | None = None,
    labels: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Compares finished runs side by side.

    Args:
        run_dirs: run folders (see :func:`expand_run_dirs` for folders of runs).
        output_dir: where to write the table and figures (see
            :func:`write_comparison`); None writes nothing.
        evaluate_missing: evaluate runs without ``evaluation.json`` now
            (into their folders); otherwise they are named as missing.
        dataset, data_dir: evaluate on this dataset instead of each run's own.
        batch_size: evaluation batch size.
        eval_limit: evaluate on at most this many images.
        labels: the Model column per run (default: run folder names).
        log: where progress lines go (default: nowhere).

    Returns:
        ``{"rows", "runs", "missing", "table_md", "per_class_f1_md", "files"}``.
    """
    log = log or (lambda msg: None)
    runs = [load_run(p) for p in run_dirs]
    if not runs:
        raise ValueError("no run folders given")
    labels = list(labels) if labels is not None else _labels(runs)
    if len(labels) != len(runs):
        raise ValueError(f"labels needs one label per run ({len(runs)}). Received: {len(labels)} labels")
    if evaluate_missing:
        for run in runs:
            if run["evaluation"] is not None:
                continue
            if not (Path(run["run_dir"]) / "model.keras").is_file():
                log(f"{run['name']}: cannot evaluate, no model.keras (unfinished run)")
                continue
            log(f"{run['name']}: no evaluation.json, evaluating {run['run_dir']}/model.keras now")
            run["evaluation"] = evaluate_run(run, dataset, data_dir, batch_size, eval_limit)
    rows = [run_row(run, label) for run, label in zip(runs, labels)]
    header, f1_rows = per_class_f1(runs, labels)
    result = {
        "rows": rows,
        "runs": runs,
        "labels": labels,
        "missing": [missing_note(r) for r in rows if r["missing"]],
        "table_md": comparison_markdown(rows),
        "per_class_f1": (header, f1_rows),
        "per_class_f1_md": per_class_f1_markdown(header, f1_rows),
        "files": {},
    }
    if output_dir is not None:
        result["files"] = write_comparison(result, output_dir)
    return result


def write_comparison(result: dict, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes ``comparison.md`` / ``comparison.csv`` (the table),
    ``loss_curves.png`` (training and validation loss of every run per epoch)
    and ``per_class_f1.md`` / ``per_class_f1.csv`` into ``output_dir``.

    Args:
        result: what :func:`compare_runs` returned.
        output_dir: the folder (created if needed).

    Returns:
        name -> path of each file written.
    """
    from kerasalex.reports import plot_loss_comparison

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = result["table_md"]
    if result["missing"]:
        md += "\n\n" + "\n".join(f"- {m}" for m in result["missing"])
    header, f1_rows = result["per_class_f1"]
    paths = {
        "comparison.md": out / "comparison.md",
        "comparison.csv": out / "comparison.csv",
        "per_class_f1.md": out / "per_class_f1.md",
        "per_class_f1.csv": out / "per_class_f1.csv",
        "loss_curves.png": out / "loss_curves.png",
    }
    files.atomic_write_text(paths["comparison.md"], md + "\n")
    files.atomic_write_text(paths["comparison.csv"], comparison_csv(result["rows"]))
    files.atomic_write_text(paths["per_class_f1.md"], result["per_class_f1_md"] + "\n")
    files.atomic_write_text(paths["per_class_f1.csv"], per_class_f1_csv(header, f1_rows))
    curves = {label: run["history"] or [] for label, run in zip(result["labels"], result["runs"])}
    plot_loss_comparison(curves, paths["loss_curves.png"], title="Loss per epoch (solid: training, dashed: validation)")
    return paths
