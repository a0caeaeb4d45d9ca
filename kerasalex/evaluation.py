"""Metrics on the test split: loss, accuracy, scikit-learn's classification
report, a confusion matrix, and prediction figures; ``predict`` for image files.

Beside it: :mod:`kerasalex.provenance` (what a model file tells about its
training and the images it held out) and :mod:`kerasalex.metrics` (the
report's figures), whose names are importable from here too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from kerasalex import files
from kerasalex.metrics import format_report, metrics_report
from kerasalex.provenance import (
    default_output_dir,
    held_out_split,
    model_image_rule,
    model_origin,
    training_record,
)

__all__ = [
    "EXIT_SOME_SKIPPED", "check_classes", "default_output_dir", "default_tta", "evaluate", "format_report",
    "held_out_split", "log_loss", "metrics_report", "model_image_rule", "model_origin", "predict",
    "predict_logits", "predict_probabilities", "softmax", "training_record",
]


def check_classes(model_classes: Sequence[str], data_classes: Sequence[str], model_path, dataset: str) -> None:
    """Refuses (before any batch runs) data whose classes differ from the model's."""
    if list(model_classes) != list(data_classes):
        raise ValueError(
            f"model {model_path} was trained on classes {list(model_classes)[:12]} but dataset {dataset} has "
            f"{list(data_classes)[:12]}; evaluate it on data with the same classes"
        )


def predict_logits(model, x: np.ndarray, batch_size: int = 256, flip: bool = False) -> np.ndarray:
    """The model's logits (N, classes) float32 for uint8 images ``x`` (N, H,
    W, 3), or for images on disk (:class:`~kerasalex.data.cache.DiskImages`,
    read a batch at a time); ``flip``: of the images mirrored left-right.
    Refuses floats (see :func:`kerasalex.preprocessing.check_images`)."""
    from kerasalex.data import images_only
    from kerasalex.preprocessing import check_images

    if not hasattr(x, "chunks"):  # images on disk are uint8 (N, H, W, 3) by construction
        x = check_images(x)
    return np.asarray(model.predict(images_only(x, batch_size, flip=flip), verbose=0), dtype=np.float32)


def predict_probabilities(model, x: np.ndarray, batch_size: int = 256, tta: bool = False) -> np.ndarray:
    """Class probabilities (N, classes) float32 for uint8 images ``x`` (N, H, W, 3).

    With ``tta`` (test-time augmentation), the mean of the softmax of ``x`` and
    of its horizontal mirror ``x[:, :, ::-1]``: the "flip" TTA of timm's
    ``--tta`` and of the CIFAR literature, worth it only for a model trained
    with random horizontal flips (it has seen both orientations).
    """
    probs = softmax(predict_logits(model, x, batch_size))
    if tta:
        probs = 0.5 * (probs + softmax(predict_logits(model, x, batch_size, flip=True)))
    return probs


def default_tta(model_path) -> bool:
    """Flip TTA is on by default for models trained with random horizontal
    flips (their ``kerasalex.json`` says ``augment``), off otherwise.
    Measured (README, "Recipe ablations"; 5-epoch runs on 1,000 CIFAR-10
    images per class, 5,000 test images): -0.04 to +0.56 points, on digits
    -1.1 to +0.3; it costs a second forward pass."""
    meta = files.read_model_metadata(model_path)
    return bool((meta.get("config") or {}).get("augment", False))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes) float32 from logits (N, classes): ``keras.ops.softmax``."""
    import keras

    probs = keras.ops.softmax(keras.ops.convert_to_tensor(np.asarray(logits, np.float32)), axis=-1)
    return np.asarray(keras.ops.convert_to_numpy(probs), dtype=np.float32)


def log_loss(y: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    """Mean cross-entropy of int labels ``y`` (N,) under ``probs`` (N,
    ``num_classes``): scikit-learn's ``log_loss`` in float64 (each row
    rescaled to sum to 1 exactly, as float32 softmax rows sum to 1 only
    within rounding; probabilities clipped at float64's machine epsilon)."""
    from sklearn.metrics import log_loss as sk_log_loss

    p = np.asarray(probs, np.float64)
    return float(sk_log_loss(np.asarray(y), p / p.sum(axis=1, keepdims=True), labels=list(range(num_classes))))


def _eval_root(dataset: str, split: str) -> Path:
    """The folder whose class subfolders ``split`` reads (see :func:`kerasalex.data.folder_layout`)."""
    from kerasalex.data import folder_layout

    train_root, test_root = folder_layout(dataset)
    return test_root if split == "test" and test_root is not None else train_root


def _check_folder_classes(model_path: Path, dataset: str, split: str, names: Sequence[str]) -> None:
    """Refuses, before any image is decoded, a folder with classes the model
    does not know (and, for ``split="val"``, one whose classes differ)."""
    root = _eval_root(dataset, split)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [c for c in found if c not in names]
    if unknown:
        raise ValueError(
            f"model {model_path} was trained on classes {list(names)[:12]} but dataset {dataset} has {found[:12]} "
            f"({unknown[:12]} unknown to the model); a test set may lack classes of the model, not add any"
        )
    if split == "val" and found != list(names):
        raise ValueError(
            f"model {model_path} was trained on classes {list(names)[:12]} but dataset {dataset} has {found[:12]}, "
            f"so it is not the data the model held images out of; a test set (a folder with train/ and test/, "
            f"or --split test) may lack classes of the model"
        )


def _scored_split(model_path: Path, data, dataset: str, split: str, val_split: float | None, log):
    """The images ``evaluate`` scores: the test split, or the model's
    held-out slice; refuses a "test" split that is the training data."""
    from kerasalex.data import NAMED_DATASETS, fingerprint

    if split == "val":
        test, how = held_out_split(model_path, data, dataset, val_split, log=log)
        no_test = dataset not in NAMED_DATASETS and not (Path(dataset) / "test").is_dir()
        log(f"{dataset + ' has no test split: ' if no_test else ''}evaluating on the held-out validation slice ({how})")
        return test
    test = data.test
    if test is None:
        raise ValueError(f"dataset {dataset} has no test split (an image folder needs a test/ subfolder)")
    rec = training_record(model_path)
    if test is data.train and rec is not None and rec.get("fingerprint") == fingerprint(data.train):
        raise ValueError(
            f"{dataset} is the data {model_path} was trained on: its 'test' split would be its training images; "
            f"evaluate on the held-out slice (--split val) or on a folder with train/ and test/"
        )
    return test


def _load_scored(model_path: Path, model, names, dataset, data_dir, split, val_split, log, storage="auto"):
    """(data, scored split, decoding rule): the dataset decoded by the model's
    own rule, its classes checked before any image is decoded or scored."""
    from kerasalex.data import NAMED_DATASETS, describe_left_out, load_data

    rule = model_image_rule(model_path, model, dataset)
    if dataset not in NAMED_DATASETS and Path(dataset).is_dir():
        _check_folder_classes(model_path, dataset, split, names)
    data = load_data(dataset, data_dir, image_size=rule.size, resize=rule.resize, interpolation=rule.interpolation,
                     test=(split == "test"), class_names=names, storage=storage)
    if dataset in NAMED_DATASETS:
        check_classes(names, data.class_names, model_path, dataset)
    if data.left_out:
        log(describe_left_out(data.left_out, str(dataset)) + "; all listed in evaluation.json (left_out_files)")
    return data, _scored_split(model_path, data, dataset, split, val_split, log), rule


def evaluate(
    model_path: str | os.PathLike,
    dataset: str = "cifar10",
    data_dir: str | None = None,
    batch_size: int = 256,
    output_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    grid: int = 24,
    split: str = "test",
    val_split: float | None = None,
    log=None,
    tta: bool | None = None,
    storage: str = "auto",
) -> dict:
    """Evaluates a saved model on a dataset's test split (or held-out slice).

    Images are decoded by the model's own rule (:func:`model_image_rule`). A
    test set may lack some of the model's classes (matched by name; each
    absent class is reported with support 0); classes the model does not know
    are refused before any batch runs.

    Writes ``evaluation.json``, ``classification_report.txt``,
    ``confusion_matrix.png`` and ``test_predictions.png`` into ``output_dir``
    (default: see :func:`default_output_dir`) and returns the report dict,
    whose figures are the ones printed (``report_text``).

    Args:
        limit: score a seeded, stratified sample of this many images
            (:func:`kerasalex.data.stratified_sample`: every class present
            when ``limit`` >= the number of classes), not the first ones.
        split: ``"test"``, or ``"val"``: the images the model held out of its
            training data (see :func:`held_out_split`), for image folders
            without a ``test/`` subfolder. Recorded as ``split`` in the report.
        val_split: for ``split="val"``, the fraction the caller believes was
            held out; None uses the model's own record.
        log: called with a line saying what is evaluated, before it runs.
        tta: horizontal-flip test-time augmentation (see
            :func:`predict_probabilities`); None = :func:`default_tta`.
            Recorded as ``tta`` in the report.
        storage: an image folder's decoded images: ``auto``, ``memory`` or
            ``disk`` (:func:`kerasalex.data.folders.choose_storage`).

    Raises:
        ValueError: (one line) unknown classes, no such split, no held-out data.
    """
    import time

    from sklearn.metrics import confusion_matrix

    from kerasalex.models import get_class_names

    log = log or (lambda msg: None)
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val'. Received: split={split!r}")
    model_path = Path(model_path)
    model = files.load_model(model_path)
    names = get_class_names(model)
    data, test, rule = _load_scored(model_path, model, names, dataset, data_dir, split, val_split, log, storage)
    where = f"{data.name} test" if split == "test" else f"{data.name}, held-out validation slice"
    x, y, sample = _sample(test, limit)
    if tta is None:
        tta = default_tta(model_path)
    t0 = time.perf_counter()
    probs = predict_probabilities(model, x, batch_size, tta=bool(tta))
    seconds = time.perf_counter() - t0
    pred = probs.argmax(axis=1)
    report = metrics_report(y, pred, names)
    cm = confusion_matrix(y, pred, labels=list(range(len(names))))
    result = {
        "model": str(model_path),
        "dataset": data.name,
        "split": split,
        "test_images": int(len(y)),
        "sample": sample,
        "test_loss": log_loss(y, probs, len(names)),
        "test_accuracy": report["accuracy"],
        "tta": bool(tta),
        "macro_f1": report["macro avg"]["f1-score"],
        "per_class": {n: report[n] for n in names},
        "absent_classes": [n for n in names if report[n]["support"] == 0],
        "class_names": names,
        "confusion_matrix": cm.tolist(),
        "preprocessing": rule.to_dict(),
        "left_out_files": data.left_out,
        "predict_seconds": round(seconds, 3),
        "images_per_second": round(len(y) / seconds, 1) if seconds > 0 else None,
    }
    out = Path(output_dir) if output_dir else default_output_dir(model_path)
    _write_evaluation(out, result, format_report(report, names), cm, model_path, where, (x, y, pred, probs), grid)
    return result


def _sample(test, limit: int | None):
    """(images, labels, sample record): all of ``test``, or a seeded,
    stratified sample of ``limit`` of them."""
    from kerasalex.data import SPLIT_SEED, stratified_sample

    if limit is None or limit >= len(test.y):
        return test.x, test.y, None
    idx = stratified_sample(test.y, limit, seed=SPLIT_SEED)
    picked = test.take(idx)  # images on disk: a view, read batch by batch
    return picked.x, picked.y, {"limit": int(limit), "of": int(len(test.y)), "seed": SPLIT_SEED, "stratified": True}


def _write_evaluation(out: Path, result: dict, report_txt: str, cm, model_path: Path, where: str, scored,
                      grid: int) -> None:
    """evaluation.json, classification_report.txt and the two figures;
    ``result`` gains ``report_text`` and ``output_dir``."""
    from kerasalex.reports import plot_confusion_matrix, plot_prediction_grid

    x, y, pred, probs = scored
    names = result["class_names"]
    out.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(out / "evaluation.json", result)
    files.atomic_write_text(out / "classification_report.txt", report_txt)
    plot_confusion_matrix(cm, names, out / "confusion_matrix.png",
                          title=f"{model_path.parent.name if model_path.name == 'model.keras' else model_path.name} "
                          f"on {where} (accuracy {result['test_accuracy']:.2%})")
    if grid:
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(y), size=min(grid, len(y)), replace=False))
        plot_prediction_grid(x[idx], pred[idx], probs[idx, pred[idx]], names, out / "test_predictions.png", true=y[idx])
    result["report_text"] = report_txt
    result["output_dir"] = str(out)


# predict: this many image files or more go through the decode cache (decoded
# in parallel once, read back at constant memory; see kerasalex.data.cache),
# fewer are decoded in this process; --plot shows the first PLOT_MAX.
PREDICT_CACHE_MIN = 1000
PLOT_MAX = 64


def _decode_many(paths, rule, progress: bool = True):
    """(images, kept paths, skipped) for many files, through the decode cache."""
    import os

    from kerasalex.data.folders import decode_cached

    files = [Path(p).resolve() for p in paths]
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    x, _, ok, _, reasons = decode_cached(root, files, np.zeros(len(files), np.int32), rule, progress=progress)
    kept = [p for p, k in zip(paths, ok) if k]
    skipped = [{"image": str(p), "reason": r} for p, r in zip([p for p, k in zip(paths, ok) if not k], reasons)]
    return x, kept, skipped


# predict's exit status when some image files could not be read (the others were predicted).
EXIT_SOME_SKIPPED = 3


def predict(
    model_path: str | os.PathLike,
    images: Sequence[str],
    top_k: int = 3,
    plot: str | os.PathLike | None = None,
    resize: str | None = None,
    progress: bool = True,
) -> dict:
    """Top-k classes with probabilities for each image file; optionally a figure.

    ``model_path`` is a ``.keras`` model or an artifact of ``kerasalex
    export`` (a SavedModel folder, a ``.tflite`` or an ``.onnx`` file), run in
    its own runtime.

    Files are decoded by the model's own rule (:func:`model_image_rule`), the
    one training used; ``resize`` (``"squash"``/``"crop"``) overrides its
    geometry. Folders are scanned as training scans them (hidden paths and
    non-image files left out, and named). A file that cannot be decoded does
    not stop the others: it is named in ``skipped``. From
    :data:`PREDICT_CACHE_MIN` files on, they are decoded through the decode
    cache (``progress``: its progress bar on stdout, for 2,000 or more).

    Returns:
        ``{"predictions": [{"image", "top": [{"class", "probability"}]}],
        "skipped": [{"image", "reason"}], "left_out": [{"path", "reason"}],
        "preprocessing": {...}}``.

    Raises:
        ValueError: no image files, or none of them readable (naming them).
    """
    from kerasalex.data import DEFAULT_IMAGE_SIZE, ResizeRule, decode_image, iter_image_paths
    from kerasalex.models import get_class_names
    from kerasalex.reports import plot_prediction_grid

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1. Received: top_k={top_k}")
    path = Path(model_path)
    artifact = model = None
    if path.suffix.lower() in (".tflite", ".onnx") or (path.is_dir() and (path / "saved_model.pb").is_file()):
        from kerasalex.artifacts import Artifact

        artifact = Artifact(path)
        names = artifact.class_names
        pre = artifact.info.get("preprocessing")
        rule = (ResizeRule.from_dict(pre, size=artifact.image_shape[0]) if isinstance(pre, dict)
                else ResizeRule(int(artifact.image_shape[0] or DEFAULT_IMAGE_SIZE), "squash", "bilinear"))
    else:
        model = files.load_model(model_path)
        names = get_class_names(model)
        rule = model_image_rule(model_path, model)
    if resize is not None:
        rule = ResizeRule(rule.size, resize, rule.interpolation)
    left_out: list[dict] = []
    paths = iter_image_paths(images, left_out)
    if len(paths) >= PREDICT_CACHE_MIN:
        x, kept, skipped = _decode_many(paths, rule, progress)
    else:
        decoded, kept, skipped = [], [], []
        for p in paths:
            try:
                decoded.append(decode_image(p, rule.size, rule.resize, rule.interpolation))
                kept.append(p)
            except ValueError as exc:
                skipped.append({"image": str(p), "reason": str(exc)})
        x = np.stack(decoded) if decoded else None
    if not kept:
        shown = "; ".join(s["reason"] for s in skipped[:5]) + (f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
        raise ValueError(f"none of the {len(paths)} image file(s) could be read: {shown}")
    if artifact is not None:
        probs = np.concatenate([artifact.predict(c) for c in (x.chunks() if hasattr(x, "chunks") else [x])])
    else:
        probs = softmax(predict_logits(model, x))
    k = min(top_k, len(names))
    out = []
    for p, row in zip(kept, probs):
        top = np.argsort(-row)[:k]
        out.append({"image": str(p), "top": [{"class": names[i], "probability": float(row[i])} for i in top]})
    if plot:  # the first PLOT_MAX images
        n = min(len(kept), PLOT_MAX)
        pred = probs[:n].argmax(1)
        plot_prediction_grid(x[:n], pred, probs[np.arange(n), pred], names, plot,
                             titles=[Path(p).name for p in kept[:n]], cols=min(4, n))
    return {"predictions": out, "skipped": skipped, "left_out": left_out, "preprocessing": rule.to_dict()}
