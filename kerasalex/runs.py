"""The run folder: where a run goes, its config.json and summary.json, what
its model files record about it, and what an interrupted or failed start
leaves behind.

A run folder holds ``config.json`` (the configuration, what it resolved to,
library versions, the device), ``history.csv``, ``model.keras`` (and
``best.keras``), ``summary.json`` once finished, and ``resume/`` while
unfinished.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from kerasalex import files
from kerasalex.config import TrainConfig
from kerasalex.device import describe_device

RUNS_ROOT = "runs"


def default_run_dir(config: TrainConfig) -> Path:
    from kerasalex.data import dataset_name

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RUNS_ROOT) / f"{config.arch}-{dataset_name(config.dataset)}-{stamp}"


def latest_unfinished_run(root: str | Path = RUNS_ROOT) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        return None
    cands = [
        p for p in root.iterdir()
        if (p / "config.json").exists() and (p / "resume" / "state.json").exists() and not (p / "summary.json").exists()
    ]
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("kerasalex", "tensorflow", "keras", "keras-tuner", "numpy", "scikit-learn", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_config(run_dir: Path, config: TrainConfig, extra: dict[str, Any]) -> None:
    files.atomic_write_json(
        run_dir / "config.json",
        {"config": config.to_dict(), **extra, "versions": library_versions(), "device": describe_device()},
    )


def read_run_config(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "config.json"
    if not p.exists():
        raise ValueError(f"not a kerasalex run folder (no config.json): {run_dir}")
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise ValueError(f"run config {p} is corrupt (not JSON)") from None


def resize_rule(config: TrainConfig):
    """The :class:`kerasalex.data.ResizeRule` a run decodes its images by:
    ``--image-size`` (else the architecture's), ``--resize`` (else the
    architecture's), and the dataset's interpolation."""
    from kerasalex.data import ResizeRule, default_interpolation
    from kerasalex.models import get_architecture

    arch = get_architecture(config.arch)
    size = config.image_size or arch.image_size
    return ResizeRule(int(size), config.resize or arch.resize, default_interpolation(config.dataset))


def model_metadata(config: TrainConfig, data) -> dict[str, Any]:
    """What a trained ``.keras`` file carries about itself (in the archive's
    metadata.json, see :func:`kerasalex.files.read_model_metadata`)."""
    import importlib.metadata as md

    from kerasalex.data import NAMED_DATASETS

    try:
        version = md.version("kerasalex")
    except md.PackageNotFoundError:
        version = None
    record = getattr(data, "training_data", None) or {}
    out = {
        "kerasalex_version": version,
        "arch": config.arch,
        "class_names": list(data.class_names),
        "image_shape": list(data.image_shape),
        "dataset": config.dataset,
        "config": config.to_dict(),
        # How files are decoded and resized for this model (evaluate and predict reuse it).
        "preprocessing": record.get("preprocessing") or resize_rule(config).to_dict(),
        # What it was trained on, so any copy is evaluated on images it never saw.
        "training_data": record or None,
    }
    folder = Path(config.dataset).expanduser()
    if config.dataset not in NAMED_DATASETS and folder.is_dir():
        out["dataset"] = str(folder.resolve())  # found again from any working directory
    if config.run_dir:
        # A published copy (saved_models/<run>.keras) finds its run folder:
        # `evaluate` writes its report there, where `compare` looks.
        out["run_dir"] = str(Path(config.run_dir).resolve())
    return out


def remove_failed_start(stop) -> None:
    """Removes the folders this run created when it failed before writing its
    ``config.json`` (a typo in ``--dataset``, CIFAR offline, missing weights):
    a failed start leaves no empty run folder behind. Parents are removed
    only while empty (another run may have started beside it)."""
    run_dir = getattr(stop, "run_dir", None)
    created = getattr(stop, "created_dirs", None)
    if not created or run_dir is None or (Path(run_dir) / "config.json").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for d in created[1:]:
        try:
            d.rmdir()
        except OSError:
            break


def interrupted_message(exc: BaseException, run_dir: Path | None) -> str:
    """What was kept and how to resume, for a run stopped by a signal."""
    from kerasalex import callbacks as C

    why = str(exc) or "interrupted"
    if run_dir is None:
        return f"{why} before the run folder was chosen; nothing was written. Run the command again"
    if not (Path(run_dir) / "config.json").exists():
        return f"{why} before training started; nothing was trained. Run the same command again"
    if (Path(run_dir) / "summary.json").exists():
        return f"{why} after the run finished; its model and summary are in {run_dir}"
    try:
        done = (C.load_resume_state(run_dir) or {}).get("epochs_done", 0)
    except ValueError:
        done = 0
    return (
        f"{why}; {done} epoch(s) finished and saved in {run_dir}. "
        f"Resume with: kerasalex train --resume --run-dir {run_dir}"
    )


def open_run(config: TrainConfig, resume: bool, say) -> tuple[TrainConfig, Path, dict | None, dict[str, Any]]:
    """The run folder a ``train`` call writes, and for a resumed run its saved state.

    Resuming, the run's own ``config.json`` wins (only ``run_dir`` may
    change) and what its first start resolved is kept.

    Returns:
        ``(config, run_dir, state, saved_resolved)``: the configuration with
        ``run_dir`` set, the folder, the resume state (None for a fresh run
        or a run resumed before its first epoch) and the ``resolved`` entry
        of the saved config.json ({} for a fresh run).

    Raises:
        ValueError: nothing to resume, the run already finished, or a fresh
            run's folder already holds a run.
    """
    from kerasalex import callbacks as C

    if not resume:
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
        if (run_dir / "config.json").exists():
            raise ValueError(f"run folder {run_dir} already holds a run; use --resume to continue it or pick another --run-dir")
        return config.replace(run_dir=str(run_dir)), run_dir, None, {}
    run_dir = Path(config.run_dir) if config.run_dir else latest_unfinished_run()
    if run_dir is None:
        raise ValueError("--resume: no unfinished run found under runs/; pass --run-dir RUN_FOLDER")
    saved = read_run_config(run_dir)
    # The run's own configuration wins; only where outputs go, and where the
    # decoded images are kept (no batch depends on it), may change.
    storage = {"data_cache": config.data_cache} if config.data_cache != "auto" else {}
    config = TrainConfig.from_dict({**saved["config"], "run_dir": str(run_dir), **storage})
    state = C.load_resume_state(run_dir)
    if (run_dir / "summary.json").exists():
        raise ValueError(f"run {run_dir} already finished; its model is {json.loads((run_dir / 'summary.json').read_text()).get('model')}")
    say(f"resuming {run_dir} after epoch {state['epochs_done'] if state else 0}")
    return config, run_dir, state, saved.get("resolved") or {}


def resolved_record(config: TrainConfig, data, model, steps: int, **fields) -> dict[str, Any]:
    """config.json's ``resolved``: what the run's options and data resolved to."""
    import numpy as np

    from kerasalex.compiling import schedule_warmup_steps

    return {
        "precision": fields["precision"], "steps_per_epoch": steps, "train_images": len(data.train),
        "batch_size": config.batch_size, "batch_size_before_min_steps": fields["recipe_batch"],
        "short_run": fields["short"], "dropout": config.dropout, "lr": config.lr,
        "translate": config.translate if config.augment else 0.0,
        "warmup_steps": schedule_warmup_steps(config, steps, steps * config.epochs),
        "val_images": len(data.val) if data.val is not None else 0,
        "class_names": data.class_names, "image_shape": list(data.image_shape),
        "skipped_files": data.skipped, "left_out_files": data.left_out,
        "preprocessing": data.training_data["preprocessing"],
        "training_data": data.training_data, "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        "jit_compile": bool(model.jit_compile), "replicas": int(fields["replicas"]),
        "inter_op_threads": fields["inter_op"],
        "onednn_allocator": ("system" if os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "").lower()
                             in ("1", "true") else "pool"),
    }


def summary_record(config: TrainConfig, data, run_dir: Path, out: Path, history: list[dict], model, precision: str,
                   warnings: list[str], fit_seconds: float) -> dict[str, Any]:
    """summary.json: where the run's models are and how it went."""
    import numpy as np

    speeds = [r["images_per_second"] for r in history if r.get("images_per_second")]
    return {
        "arch": config.arch,
        "dataset": data.name,
        "run_dir": str(run_dir),
        "model": str(out),
        "run_model": str(run_dir / "model.keras"),
        "best_model": str(run_dir / "best.keras") if (run_dir / "best.keras").exists() else None,
        "epochs": len(history),
        "train_seconds": round(sum(r.get("epoch_seconds", 0) for r in history), 2),
        "fit_seconds_this_session": round(fit_seconds, 2),
        "final": history[-1] if history else {},
        "best_val_accuracy": max((r.get("val_accuracy") or 0 for r in history), default=None),
        "mean_images_per_second": round(float(np.mean(speeds)), 1) if history else None,
        "parameters": int(model.count_params()),
        "precision": precision,
        "warnings": warnings,
    }
