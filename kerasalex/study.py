"""The whole study in one call: train the study's models with one recipe,
evaluate each, compare them side by side, and write ``REPORT.md``.

A study folder (``studies/<dataset>-<recipe>/`` or ``output_dir``) holds::

    study.json            settings and each model's state, rewritten atomically
    runs/<arch>/          one run folder per model (training + evaluation)
    models/<arch>.keras   each trained model
    comparison.md/.csv    the table; loss_curves.png; per_class_f1.md/.csv
    REPORT.md             the table and the figures, for people

Running the same study again keeps the finished models, resumes the one that
was interrupted from its last finished epoch, and redoes the comparison.

Example:
    >>> result = run_study(dataset="digits", epochs=1, limit=150, models=["alexnet"])
    >>> print(result["table_md"])
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from kerasalex import files
from kerasalex.data import display_name

STATE_FILE = "study.json"
# Options that must be the same to continue a study folder: changing any of
# them would make its models incomparable. Any other train option given is
# pinned too (see :func:`_settings`).
PINNED = ("recipe", "dataset", "data_dir", "epochs", "limit", "image_size", "batch_size", "precision", "seed", "val_split")


def study_models() -> tuple[str, ...]:
    """The architectures a study runs by default: those with a study label."""
    from kerasalex.models import ARCHITECTURES

    return tuple(a.name for a in ARCHITECTURES.values() if a.study_label)


def description(arch: str) -> str:
    """The study's row label of ``arch`` (its name when it has none)."""
    from kerasalex.models import ARCHITECTURES

    a = ARCHITECTURES.get(arch)
    return (a.study_label if a is not None else None) or arch


def _say(msg: str) -> None:
    print(f"[kerasalex] {msg}", flush=True)


def default_study_dir(dataset: str, recipe: str) -> Path:
    """``studies/<dataset name>-<recipe>``: the same command finds the same folder."""
    return Path("studies") / f"{display_name(dataset).replace('/', '-')}-{recipe}"


def _normalize_dataset(dataset: str) -> str:
    from kerasalex.data import NAMED_DATASETS

    if dataset in NAMED_DATASETS:
        return dataset
    p = Path(dataset).expanduser()
    if not p.is_dir():
        raise ValueError(
            f"dataset {dataset!r} is neither a known name ({', '.join(NAMED_DATASETS)}) nor an existing folder"
        )
    return str(p.resolve())


def unavailable_reason(arch: str, weights: str | None = None) -> str | None:
    """Why ``arch`` cannot join the study here (a sentence), or None when it can.

    ``weights`` is its pretrained weights (its ``study_weights_flag`` option).
    An architecture whose registry entry requires weights needs them; one whose
    pretrained weights default to a download (``imagenet``) is built once, to
    try the download or Keras's cache.
    """
    from kerasalex.models import get_architecture

    a = get_architecture(arch)
    flag = f"--{a.study_weights_flag}" if a.study_weights_flag else f"--{a.weights_option}"
    if a.weights_required and not weights:
        return (f"no ImageNet weights given; pass {flag} PATH "
                "(a file made by `kerasalex port-weights`) to include it")
    try:
        a.builder_fn()
    except (ImportError, AttributeError) as exc:
        return f"not available in this installation ({type(exc).__name__}: {exc})"
    if a.weights_option and not a.weights_required and (weights is None or str(weights).lower() == "imagenet"):
        return _download_reason(a, flag)
    return None


def _download_reason(a, flag: str) -> str | None:
    """Builds ``a`` with its ``imagenet`` weights once; why that failed, or None."""
    import keras

    try:
        a.build(num_classes=2, input_shape=(32, 32, 3), **{a.weights_option: "imagenet"})
    except ValueError as exc:  # the builder's one line, with how to get the file
        first = (str(exc).strip().splitlines() or ["ValueError"])[0]
        return f"its ImageNet weights could not be loaded: {first} (in the study: {flag} PATH)"
    except Exception as exc:  # offline: Keras's own download raises a plain Exception
        first = files.error_line(exc)
        return (f"its ImageNet weights could not be loaded ({type(exc).__name__}: {first}); offline, pass "
                f"{flag} PATH to a local copy of the weights file")
    finally:
        keras.backend.clear_session()
    return None


def load_state(study_dir: str | os.PathLike) -> dict | None:
    """A study folder's ``study.json``, or None when it has none."""
    import json

    p = Path(study_dir) / STATE_FILE
    if not p.is_file():
        return None
    try:
        state = json.loads(p.read_text())
    except ValueError:
        raise ValueError(f"study state {p} is corrupt (not JSON); delete it to start the study over") from None
    if not isinstance(state, dict) or "settings" not in state or "models" not in state:
        raise ValueError(f"{p} is not a kerasalex study state (no settings/models)")
    return state


def _save_state(study_dir: Path, state: dict) -> None:
    state["updated"] = _dt.datetime.now().isoformat(timespec="seconds")
    files.atomic_write_json(study_dir / STATE_FILE, state)


def _check_same_settings(study_dir: Path, saved: dict, settings: dict) -> None:
    keys = [*PINNED, *sorted((set(saved) | set(settings)) - set(PINNED))]
    diff = [f"{k}={saved.get(k)!r} there, {settings.get(k)!r} now" for k in keys if saved.get(k) != settings.get(k)]
    if diff:
        raise ValueError(
            f"study folder {study_dir} was started with other options ({'; '.join(diff)}); "
            "rerun with the same options to continue it, or pass another --output-dir"
        )


def study_command(settings: dict, models: Sequence[str], study_dir: Path, weights: dict[str, str] | None = None) -> str:
    """The ``kerasalex study`` command line that (re)runs this study
    (``weights``: arch -> its pretrained weights)."""
    from kerasalex.models import get_architecture
    from kerasalex.options import command_line

    values = {**settings, "models": ",".join(models)}
    for arch, path in (weights or {}).items():
        values[get_architecture(arch).study_weights_flag.replace("-", "_")] = path
    values["output_dir"] = str(study_dir)
    return command_line("study", values, keep=("recipe", "dataset", "output_dir"))


def _split_options(options: dict) -> tuple[dict, dict[str, str]]:
    """``run_study``'s keyword options -> (train options, arch -> weights)."""
    import dataclasses

    from kerasalex.config import TrainConfig
    from kerasalex.models import ARCHITECTURES
    from kerasalex.options import NOT_IN_STUDY

    by_flag = {a.study_weights_flag.replace("-", "_"): a.name for a in ARCHITECTURES.values() if a.study_weights_flag}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train, weights = {}, {}
    for name, value in options.items():
        if name in by_flag:
            if value:
                weights[by_flag[name]] = str(value)
        elif name in NOT_IN_STUDY:
            raise ValueError(f"a study does not take {name}: {NOT_IN_STUDY[name]}")
        elif name in fields:
            train[name] = value
        else:
            raise ValueError(f"unknown study option {name!r}; expected train options or {sorted(by_flag)}")
    return train, weights


def _check_weights(weights: dict[str, str]) -> dict[str, str]:
    """Each weights file exists (``imagenet``/``none`` are names); absolute paths."""
    from kerasalex.models import get_architecture

    out = {}
    for arch, path in weights.items():
        if str(path).lower() in ("imagenet", "none"):
            out[arch] = path
            continue
        if not Path(path).is_file():
            raise ValueError(f"--{get_architecture(arch).study_weights_flag} file not found: {path}")
        out[arch] = str(Path(path).resolve())
    return out


def _settings(recipe: str, dataset: str, train_options: dict) -> dict:
    """The study's pinned settings: :data:`PINNED` (None when not given), then
    every other train option given."""
    settings = {"recipe": recipe, "dataset": dataset, **{k: train_options.get(k) for k in PINNED[2:]}}
    settings.update({k: v for k, v in train_options.items() if k not in settings and v is not None})
    return settings


def run_study(
    recipe: str = "default",
    dataset: str = "cifar10",
    models: Sequence[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    eval_batch_size: int = 256,
    eval_limit: int | None = None,
    log: Callable[[str], None] | None = None,
    verbose: int | str = "auto",
    **options,
) -> dict:
    """Trains, evaluates and compares the study's models into a study folder.

    Each model trains with ``recipe`` (``study``: the study's exact recipe;
    ``default``: ours) into ``<study>/runs/<arch>`` and is evaluated on the
    dataset's test split, or, for an image folder without ``test/``, on the
    held-out validation slice (the table's column says which). Models that
    cannot run are skipped with the reason: one that requires pretrained
    weights without them, one whose ImageNet weights can't be loaded.

    Args:
        recipe: a name in :data:`kerasalex.config.RECIPES`.
        dataset: ``cifar10``, ``cifar100``, ``digits`` or an image folder.
        models: architectures to run, in order [:func:`study_models`].
        output_dir: the study folder [``studies/<dataset>-<recipe>``].
        eval_batch_size: evaluation batch size.
        eval_limit: evaluate on at most this many images.
        log: where progress lines go [printed].
        verbose: Keras ``fit`` verbosity.
        **options: any train option (``epochs``, ``limit``, ``image_size``,
            ``batch_size``, ``precision``, ``seed``, ``val_split``, ``lr``,
            ...; None keeps the recipe's), passed to every model's
            configuration, and each architecture's pretrained weights by its
            ``study_weights_flag`` (``alexnet_weights``: ported torchvision
            AlexNet weights; ``vgg_weights``: ``imagenet``, ``none`` or a
            local notop ``.h5``).

    Returns:
        ``{"study_dir", "rows", "table_md", "per_class_f1_md", "report",
        "trained", "kept", "skipped", "missing"}``; ``skipped`` maps arch
        to the reason.

    Raises:
        ValueError: bad options, a study folder started with other options,
            or no model could run.
        kerasalex.callbacks.TrainingInterrupted: stopped by a signal; the
            state is saved and the same call resumes.
    """
    from kerasalex.compare import evaluation_split
    from kerasalex.config import RECIPES, resolve_config

    log = log or _say
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of: {', '.join(RECIPES)}")
    models = _check_models(study_models() if models is None else models)
    train_options, weights = _split_options(options)
    weights = _check_weights(weights)
    dataset = _normalize_dataset(dataset)
    split = evaluation_split(dataset)
    settings = _settings(recipe, dataset, train_options)
    # Every model's configuration is checked before anything trains.
    configs = {a: resolve_config(a, recipe, **{k: v for k, v in settings.items() if k != "recipe"}) for a in models}
    if split == "val" and not configs[models[0]].val_split:
        raise ValueError(f"{dataset} has no test/ split and --val-split is 0: there are no held-out images to evaluate on")

    study_dir = Path(output_dir) if output_dir else default_study_dir(dataset, recipe)
    state = _open_state(study_dir, settings, split, log)
    state["command"] = study_command(settings, models, study_dir, weights)
    state["order"] = models
    _save_state(study_dir, state)

    how = dict(recipe=recipe, dataset=dataset, data_dir=settings["data_dir"], split=split,
               eval_batch_size=eval_batch_size, eval_limit=eval_limit, log=log, verbose=verbose,
               storage=configs[models[0]].data_cache)
    outcomes = {a: _run_model(a, configs[a], weights.get(a), study_dir, state, how) for a in models}
    trained = [a for a, o in outcomes.items() if o in ("trained", "evaluated")]
    kept = [a for a, o in outcomes.items() if o == "kept"]
    skipped = {a: o for a, o in outcomes.items() if o not in ("trained", "evaluated", "kept")}
    return _compare_and_report(study_dir, state, models, trained, kept, skipped, log)


def _check_models(models: Sequence[str]) -> list[str]:
    from kerasalex.models import get_architecture

    models = list(models)
    if not models:
        raise ValueError("models must name at least one architecture. Received: models=[]")
    if len(set(models)) != len(models):
        raise ValueError(f"models lists an architecture twice. Received: models={models}")
    for arch in models:
        get_architecture(arch)
    return models


def _open_state(study_dir: Path, settings: dict, split: str, log) -> dict:
    """The folder's state, checked against ``settings``, or a new one."""
    state = load_state(study_dir)
    if state is not None:
        _check_same_settings(study_dir, state["settings"], settings)
        log(f"continuing study {study_dir}")
    else:
        state = {"version": 1, "settings": settings, "split": split, "models": {},
                 "started": _dt.datetime.now().isoformat(timespec="seconds")}
    study_dir.mkdir(parents=True, exist_ok=True)
    return state


def _run_model(arch: str, config, weights: str | None, study_dir: Path, state: dict, how: dict) -> str:
    """Trains (or resumes) and evaluates one model of the study.

    Returns:
        ``"kept"`` (finished earlier), ``"trained"``, ``"evaluated"`` (its
        training had finished) or the reason it was skipped.
    """
    log = how["log"]
    run_dir = study_dir / "runs" / arch
    entry = state["models"].setdefault(arch, {})
    entry["run_dir"] = str(Path("runs") / arch)
    has_summary = (run_dir / "summary.json").is_file()
    if has_summary and (run_dir / "evaluation.json").is_file():
        if entry.get("status") != "finished":
            entry["status"] = "finished"
            _save_state(study_dir, state)
        log(f"{arch}: finished earlier, kept ({run_dir})")
        return "kept"
    started = (run_dir / "config.json").is_file()
    if not started:
        reason = unavailable_reason(arch, weights)
        if reason:
            log(f"{arch}: skipped - {reason}")
            entry.update(status="skipped", reason=reason)
            _save_state(study_dir, state)
            return reason
    from kerasalex.models import get_architecture

    option = get_architecture(arch).weights_option
    config = config.replace(run_dir=str(run_dir), output=str(study_dir / "models" / f"{arch}.keras"),
                            **({option: weights} if option else {}))
    t0 = time.perf_counter()
    if not has_summary:
        _train_model(arch, config, run_dir, started, study_dir, state, how)
    entry["status"] = "evaluating"
    _save_state(study_dir, state)
    _evaluate_model(arch, run_dir, how)
    entry.update(status="finished", seconds_this_session=round(time.perf_counter() - t0, 1),
                 finished=_dt.datetime.now().isoformat(timespec="seconds"))
    _save_state(study_dir, state)
    return "evaluated" if has_summary else "trained"


def _train_model(arch: str, config, run_dir: Path, started: bool, study_dir: Path, state: dict, how: dict) -> None:
    import keras

    from kerasalex.callbacks import TrainingInterrupted
    from kerasalex.training import train

    entry = state["models"][arch]
    resume = started and (run_dir / "resume" / "state.json").is_file()
    if run_dir.exists() and not resume:
        # Killed before its first epoch ended: nothing to keep.
        how["log"](f"{arch}: {run_dir} holds no finished epoch; starting it over")
        shutil.rmtree(run_dir)
    entry.update(status="training", reason=None)
    _save_state(study_dir, state)
    how["log"](f"{arch}: {'resuming the interrupted run' if resume else 'training'} in {run_dir} "
               f"({description(arch)}; recipe {how['recipe']})")
    keras.backend.clear_session()
    try:
        train(config, resume=resume, verbose=how["verbose"])
    except TrainingInterrupted:
        entry["status"] = "interrupted"
        _save_state(study_dir, state)
        raise
    except BaseException as exc:
        entry.update(status="failed", reason=f"{type(exc).__name__}: {files.error_line(exc, 300)}")
        _save_state(study_dir, state)
        raise


def _evaluate_model(arch: str, run_dir: Path, how: dict) -> None:
    from kerasalex.evaluation import evaluate

    where = "test split" if how["split"] == "test" else "held-out validation slice"
    how["log"](f"{arch}: evaluating {run_dir / 'model.keras'} on the {where}")
    evaluate(run_dir / "model.keras", how["dataset"], how["data_dir"], how["eval_batch_size"], run_dir,
             how["eval_limit"], split=how["split"], storage=how["storage"])  # the held-out slice the model itself records


def _compare_and_report(study_dir: Path, state: dict, models, trained, kept, skipped, log) -> dict:
    from kerasalex.compare import compare_runs

    done = [a for a in models if state["models"][a].get("status") == "finished"]
    if not done:
        reasons = "; ".join(f"{a}: {r}" for a, r in skipped.items())
        raise ValueError(f"no model of the study could run ({reasons})")
    comparison = compare_runs([study_dir / "runs" / a for a in done], study_dir, labels=done, log=log)
    report = write_report(study_dir, state, comparison, skipped)
    log(f"report: {report}")
    return {
        "study_dir": study_dir,
        "rows": comparison["rows"],
        "table_md": comparison["table_md"],
        "per_class_f1_md": comparison["per_class_f1_md"],
        "missing": comparison["missing"],
        "report": report,
        "trained": trained,
        "kept": kept,
        "skipped": skipped,
    }


def write_report(study_dir: str | os.PathLike, state: dict, comparison: dict, skipped: dict[str, str]) -> Path:
    """Writes ``REPORT.md``: how the study was run, the table, the loss curves,
    per-class F1, each model's figures (relative links) and what was skipped.

    Args:
        study_dir: the study folder.
        state: its ``study.json`` contents.
        comparison: what :func:`kerasalex.compare.compare_runs` returned.
        skipped: arch -> why it was skipped.
    """
    study_dir = Path(study_dir)
    settings = state["settings"]
    name = display_name(settings["dataset"])
    runs = comparison["runs"]
    first = runs[0]
    import json

    cfg = json.loads((Path(first["run_dir"]) / "config.json").read_text())
    device = cfg.get("device", {})
    versions = cfg.get("versions", {})
    gpus = ", ".join(g.get("name", "?") for g in device.get("gpus", [])) or "no GPU"
    ev = [r["evaluation"] for r in runs if r["evaluation"]]
    split = state.get("split", "test")
    n_eval = ev[0].get("test_images") if ev else None
    if split == "test":
        measured = f"Accuracy is measured on the test split ({n_eval} images)."
    else:
        measured = (f"Accuracy is measured on the **held-out validation slice** ({n_eval} images, never trained on): "
                    f"{name} has no test/ split, and scoring the training images would overstate it.")
    lines = [
        f"# AlexNet study: {name}, recipe `{settings['recipe']}`",
        "",
        f"Run with `{state['command']}`",
        "",
        f"Device: {device.get('cpu', '?')} ({device.get('cpu_count', '?')} CPUs), {gpus}; "
        f"precision {first['resolved'].get('precision', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("kerasalex", "tensorflow", "keras"))
        + f". Updated {state.get('updated', '')}.",
        "",
        "## Comparison",
        "",
        comparison["table_md"],
        "",
        measured + " Training time is the sum of the epochs' wall time (validation included); "
        "losses are the training loss.",
    ]
    if comparison["missing"]:
        lines += ["", *[f"- {m}" for m in comparison["missing"]]]
    if skipped:
        lines += ["", "Skipped:", *[f"- **{a}**: {r}" for a, r in skipped.items()]]
    lines += [
        "",
        "![Loss per epoch of every model](loss_curves.png)",
        "",
        "## Per-class F1",
        "",
        comparison["per_class_f1_md"],
        "",
        "Tables as files: [comparison.csv](comparison.csv), [per_class_f1.csv](per_class_f1.csv).",
    ]
    for label, run in zip(comparison["labels"], runs):
        rel = Path(run["run_dir"]).resolve().relative_to(study_dir.resolve()).as_posix()
        lines += ["", f"## {label}: {description(label)}", ""]
        n = len(run["history"])
        model = Path(study_dir / "models" / f"{label}.keras")
        saved = f", model [`models/{model.name}`](models/{model.name})" if model.is_file() else ""
        lines.append(f"Run folder [`{rel}`]({rel}), {n} epoch{'s' if n != 1 else ''}{saved}.")
        for name, alt in (("learning_curves.png", "Learning curves"), ("confusion_matrix.png", "Confusion matrix"),
                          ("test_predictions.png", "Sample predictions")):
            if (Path(run["run_dir"]) / name).is_file():
                lines += ["", f"![{alt} of {label}]({rel}/{name})"]
    path = study_dir / "REPORT.md"
    files.atomic_write_text(path, "\n".join(lines) + "\n")
    return path

