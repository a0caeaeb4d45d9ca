"""Metrics on the test split: loss, accuracy, scikit-learn's classification
report, a confusion matrix, and prediction figures."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from kerasalex import files


def check_classes(model_classes: Sequence[str], data_classes: Sequence[str], model_path, dataset: str) -> None:
    """Refuses (before any batch runs) data whose classes differ from the model's."""
    if list(model_classes) != list(data_classes):
        raise ValueError(
            f"model {model_path} was trained on classes {list(model_classes)[:12]} but dataset {dataset} has "
            f"{list(data_classes)[:12]}; evaluate it on data with the same classes"
        )


def predict_logits(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's logits for uint8 images (refuses floats: see
    :func:`kerasalex.preprocessing.check_images`)."""
    from kerasalex.data import images_only
    from kerasalex.preprocessing import check_images

    x = check_images(x)
    return np.asarray(model.predict(images_only(x, batch_size), verbose=0), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def default_output_dir(model_path: Path) -> Path:
    """A run folder's model evaluates into the run folder; any other model into
    ``<model stem>-eval/`` beside it."""
    model_path = Path(model_path)
    if (model_path.parent / "config.json").exists():
        return model_path.parent
    stem = model_path.name[: -len(".keras")] if model_path.name.endswith(".keras") else model_path.stem
    return model_path.parent / f"{stem}-eval"


def evaluate(
    model_path: str | os.PathLike,
    dataset: str = "cifar10",
    data_dir: str | None = None,
    batch_size: int = 256,
    output_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    grid: int = 24,
    split: str = "test",
    val_split: float = 0.1,
) -> dict:
    """Evaluates a saved model on a dataset's test split.

    Writes ``evaluation.json``, ``classification_report.txt``,
    ``confusion_matrix.png`` and ``test_predictions.png`` into ``output_dir``
    (default: see :func:`default_output_dir`) and returns the report dict.

    Args:
        split: ``"test"``, or ``"val"``: the held-out validation slice that
            training carves with ``val_split`` (never trained on), for image
            folders without a ``test/`` subfolder, whose "test" split is the
            training images themselves. Recorded as ``split`` in the report.
        val_split: the run's ``--val-split`` (for ``split="val"``).
    """
    import time

    from sklearn.metrics import classification_report, confusion_matrix, f1_score

    from kerasalex.data import load_data
    from kerasalex.models import get_class_names, get_image_shape
    from kerasalex.reports import plot_confusion_matrix, plot_prediction_grid

    model_path = Path(model_path)
    model = files.load_model(model_path)
    names = get_class_names(model)
    h, w, _ = get_image_shape(model)
    data = load_data(dataset, data_dir, image_size=h or 32)
    check_classes(names, data.class_names, model_path, dataset)
    if split == "val":
        from kerasalex.data import carve_validation

        test = carve_validation(data, val_split).val
        if test is None:
            raise ValueError(f"no held-out validation images in {dataset} with val_split={val_split}")
    elif split == "test":
        test = data.test
        if test is None:
            raise ValueError(f"dataset {dataset} has no test split (an image folder needs a test/ subfolder)")
    else:
        raise ValueError(f"split must be 'test' or 'val'. Received: split={split!r}")
    where = f"{data.name} test" if split == "test" else f"{data.name}, held-out validation slice"
    x, y = test.x, test.y
    if limit is not None and limit < len(y):
        x, y = x[:limit], y[:limit]
    t0 = time.perf_counter()
    logits = predict_logits(model, x, batch_size)
    seconds = time.perf_counter() - t0
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))
    acc = float(np.mean(pred == y))
    labels = list(range(len(names)))
    report_txt = classification_report(y, pred, labels=labels, target_names=names, digits=4, zero_division=0)
    report = classification_report(y, pred, labels=labels, target_names=names, digits=4, zero_division=0, output_dict=True)
    cm = confusion_matrix(y, pred, labels=labels)
    out = Path(output_dir) if output_dir else default_output_dir(model_path)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": str(model_path),
        "dataset": data.name,
        "split": split,
        "test_images": int(len(y)),
        "test_loss": loss,
        "test_accuracy": acc,
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "per_class": {n: report[n] for n in names},
        "class_names": names,
        "confusion_matrix": cm.tolist(),
        "predict_seconds": round(seconds, 3),
        "images_per_second": round(len(y) / seconds, 1) if seconds > 0 else None,
    }
    files.atomic_write_json(out / "evaluation.json", result)
    files.atomic_write_text(out / "classification_report.txt", report_txt)
    plot_confusion_matrix(cm, names, out / "confusion_matrix.png",
                          title=f"{model_path.parent.name if model_path.name == 'model.keras' else model_path.name} "
                          f"on {where} (accuracy {acc:.2%})")
    if grid:
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(y), size=min(grid, len(y)), replace=False))
        plot_prediction_grid(x[idx], pred[idx], probs[idx, pred[idx]], names, out / "test_predictions.png", true=y[idx])
    result["report_text"] = report_txt
    result["output_dir"] = str(out)
    return result


def predict(
    model_path: str | os.PathLike,
    images: Sequence[str],
    top_k: int = 3,
    plot: str | os.PathLike | None = None,
) -> list[dict]:
    """Top-k classes with probabilities for each image file; optionally a figure.

    ``model_path`` is a ``.keras`` model or an artifact of ``kerasalex
    export`` (a SavedModel folder, a ``.tflite`` or an ``.onnx`` file), run in
    its own runtime.
    """
    from kerasalex.data import decode_image, iter_image_paths
    from kerasalex.reports import plot_prediction_grid

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1. Received: top_k={top_k}")
    path = Path(model_path)
    if path.suffix.lower() in (".tflite", ".onnx") or (path.is_dir() and (path / "saved_model.pb").is_file()):
        from kerasalex.export import Artifact

        artifact = Artifact(path)
        names, (h, w, _) = artifact.class_names, artifact.image_shape
        paths = iter_image_paths(images)
        x = np.stack([decode_image(p, h or 32) for p in paths])
        probs = artifact.predict(x)
    else:
        from kerasalex.models import get_class_names, get_image_shape

        model = files.load_model(model_path)
        names = get_class_names(model)
        h, w, _ = get_image_shape(model)
        paths = iter_image_paths(images)
        x = np.stack([decode_image(p, h or 32) for p in paths])
        probs = softmax(predict_logits(model, x))
    k = min(top_k, len(names))
    out = []
    for p, row in zip(paths, probs):
        top = np.argsort(-row)[:k]
        out.append({"image": str(p), "top": [{"class": names[i], "probability": float(row[i])} for i in top]})
    if plot:
        pred = probs.argmax(1)
        plot_prediction_grid(x, pred, probs[np.arange(len(pred)), pred], names, plot,
                             titles=[Path(p).name for p in paths], cols=min(4, len(paths)))
    return out
