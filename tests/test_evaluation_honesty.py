"""Issue 14, kind 3: a sample is representative, its figures agree wherever
they are printed, and held-out means never trained on; and predict treats a
folder as train does. End to end through the CLI on tiny image folders."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import invoke_in, tiny_alexnet_registered

TINY = ["--arch", "alexnet", "--image-size", "16", "--epochs", "1", "--batch-size", "8", "--precision", "float32"]


invoke = invoke_in  # kerasalex ARGS in-process in cwd; checks the exit code


def make_folder(root: Path, classes, n, seed=0):
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            a[..., k % 3] += 180  # each class its own colour: learnable in one epoch
            Image.fromarray(a).save(root / c / f"{c}{i}.png")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Three tiny runs (the tiny AlexNet): a flat folder trained with
    --val-split 0 and with 0.2, and a train/ + test/ folder whose test/ lacks class c."""
    cwd = tmp_path_factory.mktemp("honesty")
    cache_dir = os.environ.get("KERASALEX_CACHE_DIR")
    os.environ["KERASALEX_CACHE_DIR"] = str(cwd / "cache")
    make_folder(cwd / "flat", ["a", "b", "c"], 10)
    make_folder(cwd / "split" / "train", ["a", "b", "c"], 8, seed=1)
    make_folder(cwd / "split" / "test", ["a", "b"], 4, seed=2)
    make_folder(cwd / "split" / "train" / "a" / ".ipynb_checkpoints", ["x"], 1)  # Jupyter's copy: not an image of a
    (cwd / "split" / "train" / "b" / "notes.txt").write_text("not an image")
    out = {}
    with tiny_alexnet_registered():
        out["zero"] = invoke(["train", *TINY, "--dataset", "flat", "--val-split", "0", "--run-dir", "runs/zero"], cwd).output
        out["held"] = invoke(["train", *TINY, "--dataset", "flat", "--val-split", "0.2", "--run-dir", "runs/held"], cwd).output
        out["split"] = invoke(["train", *TINY, "--dataset", "split", "--run-dir", "runs/split"], cwd).output
    yield cwd, out
    if cache_dir is None:
        os.environ.pop("KERASALEX_CACHE_DIR", None)
    else:
        os.environ["KERASALEX_CACHE_DIR"] = cache_dir


def test_val_split_0_final_line_has_no_nan(work):
    _, out = work
    done = [l for l in out["zero"].splitlines() if l.startswith("Done:")][0]
    assert "nan" not in done and "no validation: --val-split 0" in done


def test_a_published_copy_trained_on_everything_is_refused(work):
    cwd, _ = work
    r = invoke(["evaluate", "saved_models/zero.keras", "--dataset", "flat"], cwd, expect=1)
    assert "trained on all of flat (--val-split 0): no held-out images" in r.output
    assert "Held-out accuracy" not in r.output and not (cwd / "saved_models" / "zero-eval").exists()


def test_a_published_copy_is_scored_on_its_own_held_out_slice(work):
    cwd, _ = work
    from kerasalex.files import read_model_metadata

    rec = read_model_metadata(cwd / "saved_models" / "held.keras")["training_data"]
    assert rec["val_split"] == 0.2 and rec["val_images"] == 6 and len(rec["held_out"]) == 6
    r = invoke(["evaluate", "saved_models/held.keras", "--dataset", "flat"], cwd)
    assert "held-out validation slice (val_split=0.2)" in r.output
    # a published copy reports into its run folder (its metadata names it)
    copy = json.loads((cwd / "runs" / "held" / "evaluation.json").read_text())
    assert copy["split"] == "val" and copy["test_images"] == 6
    assert copy["model"].endswith("held.keras")
    # the same images as the run folder's own model (which has config.json beside it)
    invoke(["evaluate", "runs/held/model.keras", "--dataset", "flat"], cwd)
    own = json.loads((cwd / "runs" / "held" / "evaluation.json").read_text())
    assert own["confusion_matrix"] == copy["confusion_matrix"]
    # another fraction than the model's own is refused
    r = invoke(["evaluate", "saved_models/held.keras", "--dataset", "flat", "--val-split", "0.1"], cwd, expect=1)
    assert "held out val_split=0.2 of its data; --val-split 0.1 would score images it was trained on" in r.output
    # the training folder is not a test set
    r = invoke(["evaluate", "saved_models/held.keras", "--dataset", "flat", "--split", "test"], cwd, expect=1)
    assert "is the data saved_models/held.keras was trained on" in r.output


def test_a_changed_folder_still_yields_only_held_out_files(work):
    cwd, _ = work
    from kerasalex.files import read_model_metadata

    shutil.copytree(cwd / "flat", cwd / "flat2")
    make_folder(cwd / "flat2" / "new", ["a"], 0)
    Image.new("RGB", (16, 16), (250, 0, 0)).save(cwd / "flat2" / "a" / "zz-added.png")
    held = read_model_metadata(cwd / "saved_models" / "held.keras")["training_data"]["held_out"]
    r = invoke(["evaluate", "saved_models/held.keras", "--dataset", "flat2", "--output-dir", "e2"], cwd, expect=None)
    # flat2 has a class folder 'new' the model does not know: refused
    assert r.exit_code == 1 and "unknown to the model" in r.output
    shutil.rmtree(cwd / "flat2" / "new")
    r = invoke(["evaluate", "saved_models/held.keras", "--dataset", "flat2", "--output-dir", "e2"], cwd)
    report = json.loads((cwd / "e2" / "evaluation.json").read_text())
    assert report["test_images"] == len(held) == 6  # the added file was not scored: it is not held out


def test_a_file_under_a_held_out_name_that_holds_another_image_is_not_scored(work):
    """A re-exported or edited folder can put a trained-on image under a
    held-out file name: matched by name alone, it would be scored as unseen."""
    cwd, _ = work
    from kerasalex.files import read_model_metadata

    rec = read_model_metadata(cwd / "saved_models" / "held.keras")["training_data"]
    held = rec["held_out"]
    assert len(rec["held_out_digests"]) == len(held) == 6
    assert all(len(d) == 8 and int(d, 16) >= 0 for d in rec["held_out_digests"])
    trained = sorted({str(p.relative_to(cwd / "flat")) for p in (cwd / "flat").rglob("*.png")} - set(held))
    shutil.copytree(cwd / "flat", cwd / "flat3")
    same_class = [t for t in trained if t.split("/")[0] == held[0].split("/")[0]]
    shutil.copyfile(cwd / "flat3" / same_class[0], cwd / "flat3" / held[0])  # a trained-on image, a held-out name
    r = invoke(["evaluate", "saved_models/held.keras", "--dataset", "flat3", "--output-dir", "e3"], cwd)
    report = json.loads((cwd / "e3" / "evaluation.json").read_text())
    assert report["test_images"] == 5
    assert "5 of the 6 held-out images are still in flat3 (1 under a held-out name differ from it: left out)" in r.output
    # every held-out name holding another image: nothing is known to be unseen, refused in one line
    for i, name in enumerate(held):
        a = np.full((16, 16, 3), 40 * i, np.uint8)
        Image.fromarray(a).save(cwd / "flat3" / name)
    r = invoke(["evaluate", "saved_models/held.keras", "--dataset", "flat3", "--output-dir", "e4"], cwd, expect=1)
    assert "all differ from the images it held out" in r.output and "--split test" in r.output
    assert not (cwd / "e4" / "evaluation.json").exists()


def test_image_digests_follow_the_pixels():
    from kerasalex.data import Split, image_digests

    x = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    split = Split(x, np.zeros(5, np.int32))
    d = image_digests(split, size=2)  # read in blocks: the same digests as one block
    assert d == image_digests(split) and len(set(d)) == 5
    y = x.copy()
    y[3, 0, 0, 0] ^= 1  # one bit of one image
    changed = image_digests(Split(y, split.y))
    assert [a == b for a, b in zip(d, changed)] == [True, True, True, False, True]


def test_train_does_not_read_test_and_evaluate_scores_a_subset_of_classes(work):
    cwd, out = work
    assert "Done:" in out["split"]
    r = invoke(["evaluate", "runs/split/model.keras", "--dataset", "split"], cwd)
    report = json.loads((cwd / "runs" / "split" / "evaluation.json").read_text())
    assert report["test_images"] == 8
    assert report["per_class"]["c"]["support"] == 0 and report["absent_classes"] == ["c"]
    assert "not in this sample" in r.output
    # macro F1 over the classes present, printed and saved the same
    present = np.mean([report["per_class"][c]["f1-score"] for c in ("a", "b")])
    assert report["macro_f1"] == pytest.approx(present)
    assert f"macro F1: {report['macro_f1']:.4f}" in r.output
    # a class the model does not know stays an error
    make_folder(cwd / "split" / "test", ["zebra"], 1)
    r = invoke(["evaluate", "runs/split/model.keras", "--dataset", "split"], cwd, expect=1)
    assert "['zebra'] unknown to the model" in r.output
    shutil.rmtree(cwd / "split" / "test" / "zebra")


def test_limit_is_a_stratified_sample_with_one_set_of_figures(work):
    cwd, _ = work
    make_folder(cwd / "three" / "train", ["a", "b", "c"], 2, seed=3)
    make_folder(cwd / "three" / "test", ["a", "b", "c"], 10, seed=4)
    r = invoke(["evaluate", "runs/split/model.keras", "--dataset", "three", "--limit", "10", "--output-dir", "lim"], cwd)
    report = json.loads((cwd / "lim" / "evaluation.json").read_text())
    supports = [report["per_class"][c]["support"] for c in ("a", "b", "c")]
    assert sum(supports) == 10 and min(supports) >= 3  # not 10 / 0 / 0
    assert report["sample"] == {"limit": 10, "of": 30, "seed": 1234, "stratified": True}
    printed = float(re.search(r"macro avg\s+\S+\s+\S+\s+(\S+)", r.output).group(1))
    assert printed == pytest.approx(report["macro_f1"], abs=5e-5)
    assert f"macro F1: {report['macro_f1']:.4f}" in r.output
    text = (cwd / "lim" / "classification_report.txt").read_text()
    assert text in r.output
    # seeded: the same sample again
    invoke(["evaluate", "runs/split/model.keras", "--dataset", "three", "--limit", "10", "--output-dir", "lim2"], cwd)
    again = json.loads((cwd / "lim2" / "evaluation.json").read_text())
    assert again["confusion_matrix"] == report["confusion_matrix"]


def test_the_model_records_how_it_decodes(work):
    cwd, _ = work
    from kerasalex.files import read_model_metadata

    meta = read_model_metadata(cwd / "saved_models" / "split.keras")
    assert meta["preprocessing"]["resize"] == "squash" and meta["preprocessing"]["interpolation"] == "bilinear"
    cfg = json.loads((cwd / "runs" / "split" / "config.json").read_text())
    assert cfg["resolved"]["preprocessing"] == meta["preprocessing"]
    # every file not used is named with its reason, in the output and config.json
    left = {Path(e["path"]).name: e["reason"] for e in cfg["resolved"]["left_out_files"]}
    assert set(left) == {".ipynb_checkpoints", "notes.txt"}
    assert left[".ipynb_checkpoints"].startswith("hidden folder") and left["notes.txt"].startswith("not an image file")
    assert cfg["resolved"]["train_images"] + cfg["resolved"]["val_images"] == 24  # 8 per class, no checkpoint copy
    out = work[1]["split"]
    assert "left out 2 file(s)" in out and "notes.txt" in out


def test_predict_a_folder_with_a_corrupt_file_predicts_the_others(work):
    cwd, _ = work
    imgs = cwd / "to_predict"
    make_folder(imgs, ["x"], 2)
    (imgs / "x" / "bad.jpg").write_bytes(b"")
    (imgs / "x" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(imgs / "x" / ".ipynb_checkpoints" / "x0-checkpoint.png")
    r = invoke(["predict", "saved_models/split.keras", imgs], cwd, expect=3)
    lines = [l for l in r.stdout.splitlines() if l.startswith(str(imgs))]
    assert len(lines) == 2 and all("x0.png" in l or "x1.png" in l for l in lines)
    assert "bad.jpg: not a readable image" in r.stderr and "exit status 3" in r.stderr
    assert ".ipynb_checkpoints" in r.stderr and "checkpoint.png:" not in r.stdout
    # nothing readable: exit 1, naming the file
    (cwd / "only_bad").mkdir()
    (cwd / "only_bad" / "b.png").write_text("text")
    r = invoke(["predict", "saved_models/split.keras", cwd / "only_bad"], cwd, expect=1)
    assert "b.png" in r.output
    # an empty folder: named, with what was expected
    (cwd / "empty").mkdir()
    r = invoke(["predict", "saved_models/split.keras", cwd / "empty"], cwd, expect=1)
    assert f"no image files in {cwd / 'empty'}" in r.output and ".jpg" in r.output


def test_predict_sees_an_exif_rotated_photo_as_its_upright_twin(work, tmp_path):
    cwd, _ = work
    from kerasalex.data import decode_image

    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(decode_image(tmp_path / "phone.jpg")).save(tmp_path / "upright.png")
    r = invoke(["predict", "saved_models/split.keras", tmp_path / "phone.jpg", tmp_path / "upright.png", "--json"], cwd)
    out = json.loads(r.stdout)
    assert out[0]["top"] == out[1]["top"]


def test_a_model_without_a_training_record_is_refused_unless_told(work):
    """A .keras without kerasalex's record (plain Keras, an older kerasalex) and
    no run folder beside it: which images it saw is unknown."""
    import zipfile

    cwd, _ = work
    src, dst = cwd / "saved_models" / "held.keras", cwd / "bare" / "held.keras"
    dst.parent.mkdir()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "metadata.json":  # class names stay; the training record and run folder go
                meta = json.loads(data)
                for key in ("training_data", "run_dir"):
                    meta["kerasalex"].pop(key, None)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
    r = invoke(["evaluate", dst, "--dataset", "flat"], cwd, expect=1)
    assert "carries no record of its training data" in r.output
    r = invoke(["evaluate", dst, "--dataset", "flat", "--val-split", "0.2"], cwd)  # the user vouches for it
    assert "Held-out accuracy" in r.output and "(6 images" in r.output


def test_probabilities_and_loss_are_the_libraries_figures():
    """softmax is keras.ops.softmax, the test loss scikit-learn's log_loss: the
    same figures as the textbook formulas, for confident and uncertain rows."""
    from kerasalex.evaluation import log_loss, softmax

    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 10.0], [-50.0, 50.0, 0.0]], np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    probs = softmax(logits)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, want, rtol=1e-6, atol=1e-12)
    y = np.array([2, 0, 1])
    assert log_loss(y, probs, 3) == pytest.approx(float(-np.mean(np.log(want[np.arange(3), y]))), rel=1e-6)


def test_predict_many_files_reads_them_through_the_decode_cache(work, monkeypatch):
    """From PREDICT_CACHE_MIN files on, predict decodes through the decode
    cache (in parallel, once; constant memory): the same predictions and the
    same skipped file as the direct path, and a second call reuses the cache."""
    import kerasalex.evaluation as E

    cwd, _ = work
    imgs = cwd / "many"
    make_folder(imgs, ["x", "y"], 3, seed=5)
    (imgs / "y" / "bad.png").write_text("not a png")
    direct = E.predict(cwd / "saved_models" / "split.keras", [str(imgs)])
    monkeypatch.setattr(E, "PREDICT_CACHE_MIN", 2)
    before = set((cwd / "cache" / "folders").iterdir())
    cached = E.predict(cwd / "saved_models" / "split.keras", [str(imgs)], plot=str(cwd / "many.png"))
    made = set((cwd / "cache" / "folders").iterdir()) - before
    assert len(made) == 1 and (made.pop() / "manifest.json").is_file()
    assert [p["image"] for p in cached["predictions"]] == [p["image"] for p in direct["predictions"]]
    for a, b in zip(direct["predictions"], cached["predictions"]):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-6)
    assert [s["image"] for s in cached["skipped"]] == [s["image"] for s in direct["skipped"]] == [str(imgs / "y" / "bad.png")]
    assert (cwd / "many.png").is_file()
    again = E.predict(cwd / "saved_models" / "split.keras", [str(imgs)])  # read back, not decoded again
    assert again["predictions"] == cached["predictions"]
    assert len(set((cwd / "cache" / "folders").iterdir()) - before) == 1


def test_export_checks_on_the_models_own_held_out_slice(work):
    """export --dataset on a folder without test/: the check batch is the
    slice the model held out (val_split 0.2 here, not a fixed 10%), and a
    model that held out nothing is checked without an accuracy."""
    cwd, _ = work
    from kerasalex.data import load_data
    from kerasalex.export import check_batch
    from kerasalex.provenance import held_out_split

    flat = str(cwd / "flat")
    x, y, where = check_batch((16, 16), flat, model_path=cwd / "saved_models" / "held.keras")
    held, _ = held_out_split(cwd / "saved_models" / "held.keras", load_data(flat, image_size=16), flat)
    assert len(y) == 6 and np.array_equal(x, held.x) and np.array_equal(y, held.y)
    assert "the model's held-out validation slice" in where
    x, y, where = check_batch((16, 16), flat, model_path=cwd / "saved_models" / "zero.keras")
    assert y is None and len(x) == 3 and "may have trained on (no accuracy reported" in where and "--val-split 0" in where
    assert "evaluate it on" not in where  # the reason, not evaluate's advice
