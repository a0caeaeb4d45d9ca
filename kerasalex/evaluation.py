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


def predict_probabilities(model, x: np.ndarray, batch_size: int = 256, tta: bool = False) -> np.ndarray:
    """Class probabilities (N, classes) float32 for uint8 images ``x`` (N, H, W, 3).

    With ``tta`` (test-time augmentation), the mean of the softmax of ``x`` and
    of its horizontal mirror ``x[:, :, ::-1]``: the "flip" TTA of timm's
    ``--tta`` and of the CIFAR literature, worth it only for a model trained
    with random horizontal flips (it has seen both orientations).
    """
    probs = softmax(predict_logits(model, x, batch_size))
    if tta:
        flipped = np.ascontiguousarray(x[:, :, ::-1])
        probs = 0.5 * (probs + softmax(predict_logits(model, flipped, batch_size)))
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
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def model_origin(model_path: str | os.PathLike) -> dict:
    """What a model file tells about the run that trained it: from the
    ``kerasalex.json`` inside it (see :func:`kerasalex.training.model_metadata`),
    else from the ``config.json`` of the run folder it sits in.

    Returns:
        A dict with the keys it knows among ``dataset``, ``data_dir``,
        ``val_split``, ``label_smoothing`` and ``run_dir`` (an existing run
        folder); {} for a file that tells nothing or cannot be read (loading
        it says why).
    """
    model_path = Path(model_path)
    try:
        meta = files.read_model_metadata(model_path) if model_path.is_file() else {}
    except files.ModelFileError:
        meta = {}
    config = dict(meta.get("config") or {})
    run_dir = meta.get("run_dir")
    beside = model_path.parent / "config.json"
    if beside.is_file():
        run_dir = str(model_path.parent)
        if not config:
            try:
                config = dict(json.loads(beside.read_text()).get("config") or {})
            except (ValueError, AttributeError, TypeError):
                config = {}
    out = {k: config[k] for k in ("data_dir", "val_split", "label_smoothing") if config.get(k) is not None}
    dataset = meta.get("dataset") or config.get("dataset")
    if dataset:
        out["dataset"] = str(dataset)
    if run_dir and (Path(run_dir) / "config.json").is_file():
        out["run_dir"] = str(run_dir)
    return out


def default_output_dir(model_path: Path) -> Path:
    """A run's model evaluates into its run folder: the folder it sits in, or
    for a published copy (``saved_models/<run>.keras``) the run folder its
    ``kerasalex.json`` names, where ``kerasalex compare runs/`` finds the
    report. Any other model into ``<model stem>-eval/`` beside it."""
    model_path = Path(model_path)
    if (model_path.parent / "config.json").exists():
        return model_path.parent
    run_dir = model_origin(model_path).get("run_dir")
    if run_dir:
        return Path(run_dir)
    stem = model_path.name[: -len(".keras")] if model_path.name.endswith(".keras") else model_path.stem
    return model_path.parent / f"{stem}-eval"


def model_image_rule(model_path, model=None, dataset: str | None = None):
    """How images are decoded for ``model``: the :class:`~kerasalex.data.ResizeRule`
    its training recorded (``preprocessing`` in the model's metadata), at the
    model's input size. A model without the record (saved by an older
    kerasalex, ported, plain Keras) gets the rule those were trained with:
    squash, nearest for digits and bilinear otherwise."""
    from kerasalex.data import ResizeRule, default_interpolation
    from kerasalex.models import get_image_shape

    meta = files.read_model_metadata(model_path)
    h = get_image_shape(model)[0] if model is not None else None
    pre = meta.get("preprocessing")
    if isinstance(pre, dict):
        return ResizeRule.from_dict(pre, size=h)
    size = int(h or (meta.get("image_shape") or [32])[0] or 32)
    return ResizeRule(size, "squash", default_interpolation(meta.get("dataset") or dataset or ""))


def training_record(model_path) -> dict | None:
    """What ``model_path`` was trained on (``training_data`` in its metadata,
    else in the run folder's config.json beside it); None when neither has it."""
    meta = files.read_model_metadata(model_path)
    if isinstance(meta.get("training_data"), dict):
        return meta["training_data"]
    cfg = Path(model_path).parent / "config.json"
    if cfg.is_file():
        try:
            rec = json.loads(cfg.read_text()).get("resolved", {}).get("training_data")
        except (ValueError, AttributeError):
            rec = None
        if isinstance(rec, dict):
            return rec
    return None


def _old_run_config(model_path) -> dict | None:
    cfg = Path(model_path).parent / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text()).get("config") or None
    except (ValueError, AttributeError):
        return None


def held_out_split(model_path, data, dataset: str, val_split: float | None = None, log=None):
    """The images ``model_path`` held out of ``data``'s training split: never
    trained on.

    The model's own record (:func:`training_record`) decides: its split
    fraction, split seed and ``--limit``, and the data's fingerprint; a folder
    that changed since training is matched by the held-out files' paths.

    Args:
        data: the dataset as :func:`kerasalex.data.load_data` gives it with the
            model's decoding rule.
        val_split: the fraction the caller believes was held out (None: the
            model's own). A value other than the model's is refused.

    Returns:
        (split, description) where ``description`` says what was found.

    Raises:
        ValueError: (one line) the model held out nothing (``--val-split 0``),
            a different fraction was asked for, the data is not what the model
            was trained on, or the model carries no record and no fraction was given.
    """
    from kerasalex.data import carve_validation, fingerprint

    rec = training_record(model_path)
    if rec is None:
        cfg = _old_run_config(model_path)
        if val_split is None and cfg is None:
            raise ValueError(
                f"{model_path} carries no record of its training data (saved by an older kerasalex or by plain Keras), "
                f"so which images of {dataset} it never saw is unknown; evaluate it on a dataset with a test split, "
                f"or pass --val-split F if you know it held out that fraction"
            )
        vs = float(val_split if val_split is not None else cfg.get("val_split", 0.1))
        limit = cfg.get("limit") if cfg else None
        if vs <= 0:
            raise ValueError(f"{model_path} was trained with --val-split 0: no held-out images to evaluate on; "
                             f"evaluate it on a dataset with a test split")
        val = carve_validation(data, vs, limit).val
        if val is None:
            raise ValueError(f"no held-out validation images in {dataset} with val_split={vs}")
        return val, f"val_split={vs}"
    rv = float(rec.get("val_split") or 0.0)
    if not rv or not rec.get("val_images"):
        raise ValueError(
            f"{model_path} was trained on all of {rec.get('dataset', dataset)} (--val-split {rv:g}): no held-out images "
            f"to evaluate on; evaluate it on a dataset with a test split (a folder with train/ and test/)"
        )
    if val_split is not None and abs(float(val_split) - rv) > 1e-9:
        raise ValueError(
            f"{model_path} held out val_split={rv:g} of its data; --val-split {val_split:g} would score images it "
            f"was trained on (or skip some it never saw). Leave --val-split out to use the model's own {rv:g}"
        )
    if fingerprint(data.train) == rec.get("fingerprint"):
        val = carve_validation(data, rv, rec.get("limit")).val
        if val is not None and fingerprint(val) == rec.get("held_out_fingerprint"):
            return val, f"val_split={rv:g}"
    held = rec.get("held_out")
    if held and data.train.ids is not None:
        want = set(held)
        idx = [i for i, name in enumerate(data.train.ids) if name in want]
        if idx:
            note = f"val_split={rv:g}"
            if len(idx) < len(want):
                note += f"; {len(idx)} of the {len(want)} held-out images are still in {dataset}"
                if log:
                    log(f"{dataset} changed since training: {len(idx)} of the {len(want)} images {model_path} held out are still there")
            return data.train.take(idx), note
        raise ValueError(
            f"none of the {len(want)} images {model_path} held out are in {dataset} (it was trained on "
            f"{rec.get('dataset')}); if {dataset} holds only images the model never saw, pass --split test to score all of them"
        )
    raise ValueError(
        f"{dataset} is not the data {model_path} was trained on ({rec.get('dataset')}, {rec.get('images')} images; "
        f"its images or their order differ), so its held-out slice cannot be found; evaluate it on a test split"
    )


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


def _eval_root(dataset: str, split: str) -> Path:
    root = Path(dataset)
    if (root / "train").is_dir():
        return root / "test" if split == "test" and (root / "test").is_dir() else root / "train"
    return root


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

    Raises:
        ValueError: (one line) unknown classes, no such split, no held-out data.
    """
    import time

    from sklearn.metrics import confusion_matrix

    from kerasalex.data import NAMED_DATASETS, SPLIT_SEED, fingerprint, load_data, stratified_sample
    from kerasalex.models import get_class_names
    from kerasalex.reports import plot_confusion_matrix, plot_prediction_grid

    log = log or (lambda msg: None)
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val'. Received: split={split!r}")
    model_path = Path(model_path)
    model = files.load_model(model_path)
    names = get_class_names(model)
    rule = model_image_rule(model_path, model, dataset)
    if dataset not in NAMED_DATASETS and Path(dataset).is_dir():
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
    data = load_data(dataset, data_dir, image_size=rule.size, resize=rule.resize, interpolation=rule.interpolation,
                     test=(split == "test"), class_names=names)
    if dataset in NAMED_DATASETS:
        check_classes(names, data.class_names, model_path, dataset)
    if data.left_out:
        from kerasalex.data import describe_left_out

        log(describe_left_out(data.left_out, str(dataset)) + "; all listed in evaluation.json (left_out_files)")
    if split == "val":
        test, how = held_out_split(model_path, data, dataset, val_split, log=log)
        no_test = dataset not in NAMED_DATASETS and not (Path(dataset) / "test").is_dir()
        log(f"{dataset + ' has no test split: ' if no_test else ''}evaluating on the held-out validation slice ({how})")
    else:
        test = data.test
        if test is None:
            raise ValueError(f"dataset {dataset} has no test split (an image folder needs a test/ subfolder)")
        rec = training_record(model_path)
        if test is data.train and rec is not None and rec.get("fingerprint") == fingerprint(data.train):
            raise ValueError(
                f"{dataset} is the data {model_path} was trained on: its 'test' split would be its training images; "
                f"evaluate on the held-out slice (--split val) or on a folder with train/ and test/"
            )
    where = f"{data.name} test" if split == "test" else f"{data.name}, held-out validation slice"
    x, y = test.x, test.y
    sample = None
    if limit is not None and limit < len(y):
        idx = stratified_sample(y, limit, seed=SPLIT_SEED)
        sample = {"limit": int(limit), "of": int(len(y)), "seed": SPLIT_SEED, "stratified": True}
        x, y = x[idx], y[idx]
    if tta is None:
        tta = default_tta(model_path)
    t0 = time.perf_counter()
    probs = predict_probabilities(model, x, batch_size, tta=bool(tta))
    seconds = time.perf_counter() - t0
    pred = probs.argmax(axis=1)
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))
    report = metrics_report(y, pred, names)
    report_txt = format_report(report, names)
    acc = report["accuracy"]
    cm = confusion_matrix(y, pred, labels=list(range(len(names))))
    out = Path(output_dir) if output_dir else default_output_dir(model_path)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": str(model_path),
        "dataset": data.name,
        "split": split,
        "test_images": int(len(y)),
        "sample": sample,
        "test_loss": loss,
        "test_accuracy": acc,
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


# predict's exit status when some image files could not be read (the others were predicted).
EXIT_SOME_SKIPPED = 3


def predict(
    model_path: str | os.PathLike,
    images: Sequence[str],
    top_k: int = 3,
    plot: str | os.PathLike | None = None,
    resize: str | None = None,
) -> dict:
    """Top-k classes with probabilities for each image file; optionally a figure.

    ``model_path`` is a ``.keras`` model or an artifact of ``kerasalex
    export`` (a SavedModel folder, a ``.tflite`` or an ``.onnx`` file), run in
    its own runtime.

    Files are decoded by the model's own rule (:func:`model_image_rule`), the
    one training used; ``resize`` (``"squash"``/``"crop"``) overrides its
    geometry. Folders are scanned as training scans them (hidden paths and
    non-image files left out, and named). A file that cannot be decoded does
    not stop the others: it is named in ``skipped``.

    Returns:
        ``{"predictions": [{"image", "top": [{"class", "probability"}]}],
        "skipped": [{"image", "reason"}], "left_out": [{"path", "reason"}],
        "preprocessing": {...}}``.

    Raises:
        ValueError: no image files, or none of them readable (naming them).
    """
    from kerasalex.data import ResizeRule, decode_image, iter_image_paths
    from kerasalex.models import get_class_names
    from kerasalex.reports import plot_prediction_grid

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1. Received: top_k={top_k}")
    path = Path(model_path)
    artifact = model = None
    if path.suffix.lower() in (".tflite", ".onnx") or (path.is_dir() and (path / "saved_model.pb").is_file()):
        from kerasalex.export import Artifact

        artifact = Artifact(path)
        names = artifact.class_names
        pre = artifact.info.get("preprocessing")
        rule = (ResizeRule.from_dict(pre, size=artifact.image_shape[0]) if isinstance(pre, dict)
                else ResizeRule(int(artifact.image_shape[0] or 32), "squash", "bilinear"))
    else:
        model = files.load_model(model_path)
        names = get_class_names(model)
        rule = model_image_rule(model_path, model)
    if resize is not None:
        rule = ResizeRule(rule.size, resize, rule.interpolation)
    left_out: list[dict] = []
    paths = iter_image_paths(images, left_out)
    decoded, kept, skipped = [], [], []
    for p in paths:
        try:
            decoded.append(decode_image(p, rule.size, rule.resize, rule.interpolation))
            kept.append(p)
        except ValueError as exc:
            skipped.append({"image": str(p), "reason": str(exc)})
    if not kept:
        shown = "; ".join(s["reason"] for s in skipped[:5]) + (f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
        raise ValueError(f"none of the {len(paths)} image file(s) could be read: {shown}")
    x = np.stack(decoded)
    probs = artifact.predict(x) if artifact is not None else softmax(predict_logits(model, x))
    k = min(top_k, len(names))
    out = []
    for p, row in zip(kept, probs):
        top = np.argsort(-row)[:k]
        out.append({"image": str(p), "top": [{"class": names[i], "probability": float(row[i])} for i in top]})
    if plot:
        pred = probs.argmax(1)
        plot_prediction_grid(x, pred, probs[np.arange(len(pred)), pred], names, plot,
                             titles=[Path(p).name for p in kept], cols=min(4, len(kept)))
    return {"predictions": out, "skipped": skipped, "left_out": left_out, "preprocessing": rule.to_dict()}
