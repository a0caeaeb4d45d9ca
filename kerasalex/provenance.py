"""What a model file tells about its training: the run it came from, the
rule its images are decoded by, and which images it never saw (its held-out
validation slice), so ``evaluate`` scores a model only on images it did not
train on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kerasalex import files


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
    from kerasalex.data import DEFAULT_IMAGE_SIZE, ResizeRule, default_interpolation
    from kerasalex.models import get_image_shape

    meta = files.read_model_metadata(model_path)
    h = get_image_shape(model)[0] if model is not None else None
    pre = meta.get("preprocessing")
    if isinstance(pre, dict):
        return ResizeRule.from_dict(pre, size=h)
    size = int(h or (meta.get("image_shape") or [DEFAULT_IMAGE_SIZE])[0] or DEFAULT_IMAGE_SIZE)
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


class HeldOutUnknown(ValueError):
    """The images a model held out of a dataset cannot be given: ``reason``
    says why, ``advice`` what to do instead; the message is both, joined by
    ``"; "``."""

    def __init__(self, reason: str, advice: str = ""):
        super().__init__(f"{reason}; {advice}" if advice else reason)
        self.reason, self.advice = reason, advice


def held_out_split(model_path, data, dataset: str, val_split: float | None = None, log=None):
    """The images ``model_path`` held out of ``data``'s training split: never
    trained on.

    The model's own record (:func:`training_record`) decides: its split
    fraction, split seed and ``--limit``, and the data's fingerprint; a folder
    that changed since training is matched by the held-out files' paths and,
    where the model records them (``held_out_digests``; older models match
    by path alone), their pixels: a file under a held-out name that now
    holds another image is left out.

    Args:
        data: the dataset as :func:`kerasalex.data.load_data` gives it with the
            model's decoding rule.
        val_split: the fraction the caller believes was held out (None: the
            model's own). A value other than the model's is refused.

    Returns:
        (split, description) where ``description`` says what was found.

    Raises:
        HeldOutUnknown: (a ValueError; one line) the model held out nothing (``--val-split 0``),
            a different fraction was asked for, the data is not what the model
            was trained on, every file under a held-out name now holds another
            image, or the model carries no record and no fraction was given.
    """
    from kerasalex.data import carve_validation, fingerprint, image_digests

    rec = training_record(model_path)
    if rec is None:
        cfg = _old_run_config(model_path)
        if val_split is None and cfg is None:
            raise HeldOutUnknown(
                f"{model_path} carries no record of its training data (saved by an older kerasalex or by plain Keras), "
                f"so which images of {dataset} it never saw is unknown",
                "evaluate it on a dataset with a test split, or pass --val-split F if you know it held out that fraction",
            )
        vs = float(val_split if val_split is not None else cfg.get("val_split", 0.1))
        limit = cfg.get("limit") if cfg else None
        if vs <= 0:
            raise HeldOutUnknown(f"{model_path} was trained with --val-split 0: no held-out images to evaluate on",
                                 "evaluate it on a dataset with a test split")
        val = carve_validation(data, vs, limit).val
        if val is None:
            raise HeldOutUnknown(f"no held-out validation images in {dataset} with val_split={vs}")
        return val, f"val_split={vs}"
    rv = float(rec.get("val_split") or 0.0)
    if not rv or not rec.get("val_images"):
        raise HeldOutUnknown(
            f"{model_path} was trained on all of {rec.get('dataset', dataset)} (--val-split {rv:g}): no held-out images "
            f"to evaluate on",
            "evaluate it on a dataset with a test split (a folder with train/ and test/)",
        )
    if val_split is not None and abs(float(val_split) - rv) > 1e-9:
        raise HeldOutUnknown(
            f"{model_path} held out val_split={rv:g} of its data",
            f"--val-split {val_split:g} would score images it "
            f"was trained on (or skip some it never saw). Leave --val-split out to use the model's own {rv:g}",
        )
    if fingerprint(data.train) == rec.get("fingerprint"):
        val = carve_validation(data, rv, rec.get("limit")).val
        if val is not None and fingerprint(val) == rec.get("held_out_fingerprint"):
            return val, f"val_split={rv:g}"
    held = rec.get("held_out")
    if held and data.train.ids is not None:
        want = set(held)
        idx = [i for i, name in enumerate(data.train.ids) if name in want]
        digests = rec.get("held_out_digests")
        changed = 0
        if idx and digests and len(digests) == len(held):
            # the same name is not the same image: keep those whose pixels are the held-out ones
            expected = dict(zip(held, digests))
            now = image_digests(data.train.take(idx))
            same = [i for i, d in zip(idx, now) if expected[data.train.ids[i]] == d]
            changed = len(idx) - len(same)
            idx = same
            if not idx:
                raise HeldOutUnknown(
                    f"the {changed} images of {dataset} under the names {model_path} held out all differ from the "
                    f"images it held out (edited, re-exported or renamed files), so none is known to be unseen",
                    f"if {dataset} holds only images the model never saw, pass --split test to score all of them",
                )
        if idx:
            note = f"val_split={rv:g}"
            if len(idx) < len(want):
                note += f"; {len(idx)} of the {len(want)} held-out images are still in {dataset}"
                if changed:
                    note += f" ({changed} under a held-out name differ from it: left out)"
                if log:
                    log(f"{dataset} changed since training: {len(idx)} of the {len(want)} images {model_path} held out "
                        f"are still there" + (f"; {changed} files under their names hold other images and are left out"
                                              if changed else ""))
            return data.train.take(idx), note
        raise HeldOutUnknown(
            f"none of the {len(want)} images {model_path} held out are in {dataset} (it was trained on "
            f"{rec.get('dataset')})",
            f"if {dataset} holds only images the model never saw, pass --split test to score all of them",
        )
    raise HeldOutUnknown(
        f"{dataset} is not the data {model_path} was trained on ({rec.get('dataset')}, {rec.get('images')} images; "
        f"its images or their order differ), so its held-out slice cannot be found",
        "evaluate it on a test split",
    )
