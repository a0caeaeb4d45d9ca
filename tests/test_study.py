"""``kerasalex study`` and ``kerasalex compare``: the study end to end on
digits (tiny: the tiny AlexNet of conftest, 150 images), exact table rows from hand-built run folders, runs without an
evaluation named or evaluated, and a resumed study that keeps finished models."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from kerasalex.cli import cli
from tests.conftest import build_tiny_alexnet, tiny_alexnet_registered

STUDY = ["--dataset", "digits", "--limit", "150", "--epochs", "1", "--image-size", "32", "--precision", "float32"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = "| Model | Training time | Loss (epoch 1) | Loss (last epoch) | Test accuracy | Images/s (training) | Parameters |"


def kx(args, cwd=None, expect=0):
    """Runs the CLI in-process (in ``cwd``); checks the exit code."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)
    if expect is not None:
        assert result.exit_code == expect, f"exit {result.exit_code}:\n{result.output}"
    return result


def vgg16_weights_cached() -> bool:
    """A cached ImageNet VGG16 base would make vgg16 train instead of being skipped."""
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    homes = [os.environ.get("KERAS_HOME"), str(Path.home() / ".keras"), "/tmp/.keras"]
    return any(h and (Path(h) / "models" / name).is_file() for h in homes)


def assert_png(path: Path, min_side: int = 300, max_side: int = 5000) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
    assert min_side <= w <= max_side and min_side <= h <= max_side, f"{path}: {w}x{h}"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One real study on digits (scratch AlexNet; the other two skipped)."""
    out = tmp_path_factory.mktemp("study") / "digits-study"
    models = "alexnet,alexnet-torch" + ("" if vgg16_weights_cached() else ",vgg16")
    with tiny_alexnet_registered():
        r = kx(["study", *STUDY, "--models", models, "-o", out])
    return out, r.output, models


def tiny_parameters() -> str:
    """The tiny AlexNet's parameter count at 32 px, 10 classes, as the table writes it."""
    with tiny_alexnet_registered():
        return f"{build_tiny_alexnet(10, (32, 32, 3)).count_params():,}"


# --------------------------------------------------------------------------
# study
# --------------------------------------------------------------------------


def test_study_writes_table_figures_and_report(study):
    out, output, models = study
    row = re.compile(r"^\| alexnet \| \d+\.\d s \| \d\.\d{4} \| \d\.\d{4} \(epoch 1\) \| \d{1,3}\.\d\d% \| [\d,]+\.\d \| "
                     + re.escape(tiny_parameters()) + r" \|$", re.M)
    assert HEADER in output and row.search(output), output
    assert "alexnet-torch: skipped - no ImageNet weights given; pass --alexnet-weights PATH" in output
    if "vgg16" in models:
        m = re.search(r"vgg16: skipped - (.*)", output)
        assert m and ("not available in this installation" in m.group(1) or "could not be loaded" in m.group(1)), output

    for name in ("study.json", "REPORT.md", "comparison.md", "comparison.csv", "per_class_f1.md", "per_class_f1.csv",
                 "models/alexnet.keras", "runs/alexnet/model.keras", "runs/alexnet/evaluation.json"):
        assert (out / name).is_file(), name
    assert not (out / "runs" / "alexnet-torch").exists() and not (out / "runs" / "vgg16").exists()
    assert_png(out / "loss_curves.png")
    for name in ("learning_curves.png", "confusion_matrix.png", "test_predictions.png"):
        assert_png(out / "runs" / "alexnet" / name)

    # The table's numbers are the run's own.
    hist = json.loads((out / "runs/alexnet/history.json").read_text())
    ev = json.loads((out / "runs/alexnet/evaluation.json").read_text())
    assert ev["split"] == "test" and ev["test_images"] == 360
    rows = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text())))
    assert [r["model"] for r in rows] == ["alexnet"]
    assert float(rows[0]["loss_epoch_1"]) == pytest.approx(hist[0]["loss"])
    assert float(rows[0]["accuracy"]) == pytest.approx(ev["test_accuracy"])
    assert f"{ev['test_accuracy']:.2%}" in output

    # REPORT.md embeds the table and figures that exist, by relative links.
    report = (out / "REPORT.md").read_text()
    assert HEADER in report and row.search(report)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "loss_curves.png" in links and "runs/alexnet/confusion_matrix.png" in links
    assert "runs/alexnet/test_predictions.png" in links and "runs/alexnet/learning_curves.png" in links
    assert all(not Path(link).is_absolute() and (out / link).is_file() for link in links), links
    assert "**alexnet-torch**: no ImageNet weights given" in report
    assert "kerasalex study --recipe default --dataset digits --epochs 1 --limit 150" in report

    state = json.loads((out / "study.json").read_text())
    assert state["models"]["alexnet"]["status"] == "finished"
    assert state["models"]["alexnet-torch"]["status"] == "skipped"


def test_rerun_keeps_finished_models(study, tiny_alexnet):
    out, _, models = study
    model = out / "runs" / "alexnet" / "model.keras"
    before = (model.stat().st_mtime_ns, (out / "runs/alexnet/evaluation.json").stat().st_mtime_ns)
    r = kx(["study", *STUDY, "--models", models, "-o", out])
    assert "alexnet: finished earlier, kept" in r.output
    assert "alexnet: training" not in r.output and "Epoch 1/1" not in r.output
    assert (model.stat().st_mtime_ns, (out / "runs/alexnet/evaluation.json").stat().st_mtime_ns) == before
    assert HEADER in r.output


def test_rerun_with_other_options_is_refused(study, tiny_alexnet):
    out, _, models = study
    args = [a if a != "1" else "2" for a in STUDY]  # --epochs 2
    r = kx(["study", *args, "--models", models, "-o", out], expect=1)
    assert "was started with other options (epochs=1 there, 2 now)" in r.output
    assert "Traceback" not in r.output


def test_interrupted_study_resumes_the_model_it_was_on(tmp_path, monkeypatch, tiny_alexnet):
    from kerasalex import callbacks as C

    out = tmp_path / "s"
    args = ["study", "--dataset", "digits", "--limit", "60", "--epochs", "2", "--precision", "float32",
            "--models", "alexnet", "-o", out]
    original = C.ResumeState.on_epoch_end

    def stop_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        raise C.TrainingInterrupted("stopped by signal SIGTERM")

    monkeypatch.setattr(C.ResumeState, "on_epoch_end", stop_after_first_epoch)
    r = kx(args, expect=143)
    assert "Run the same `kerasalex study` command to resume" in r.output
    run = out / "runs" / "alexnet"
    assert json.loads((out / "study.json").read_text())["models"]["alexnet"]["status"] == "interrupted"
    assert json.loads((run / "resume" / "state.json").read_text())["epochs_done"] == 1
    first_epoch = json.loads((run / "history.json").read_text())

    monkeypatch.setattr(C.ResumeState, "on_epoch_end", original)
    r = kx(args)
    assert "alexnet: resuming the interrupted run" in r.output
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[0] == first_epoch[0]  # epoch 1 was kept, not retrained
    assert "(epoch 2)" in r.output
    assert json.loads((out / "study.json").read_text())["models"]["alexnet"]["status"] == "finished"


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------


def write_run(root: Path, name: str, losses, seconds, ips, params, accuracy=None, f1=None, finished=True,
              epochs=None, split="test") -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "config": {"arch": "alexnet", "dataset": "digits", "epochs": epochs or len(losses), "val_split": 0.1},
        "resolved": {"parameters": params, "precision": "float32"},
    }))
    hist = [{"epoch": i + 1, "loss": l, "accuracy": 0.5, "val_loss": l * 1.1, "val_accuracy": 0.5,
             "epoch_seconds": seconds / len(losses), "images_per_second": ips} for i, l in enumerate(losses)]
    (run / "history.json").write_text(json.dumps(hist))
    if finished:
        (run / "summary.json").write_text(json.dumps(
            {"train_seconds": seconds, "mean_images_per_second": ips, "parameters": params, "epochs": len(losses)}))
    if accuracy is not None:
        (run / "evaluation.json").write_text(json.dumps({
            "test_accuracy": accuracy, "test_loss": 0.5, "test_images": 10000, "macro_f1": sum(f1.values()) / len(f1),
            "split": split,
            "per_class": {c: {"precision": v, "recall": v, "f1-score": v, "support": 1000} for c, v in f1.items()},
        }))
    return run


@pytest.fixture
def hand_built(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "scratch", [2.30066, 1.9945, 0.31597], 600.0, 1234.56, 29585290, 0.7922, {"cat": 0.5977, "dog": 0.7057})
    write_run(root, "pretrained", [0.6339, 0.0000276], 2520.0, 98.0, 57044810, 0.9116, {"cat": 0.8199, "dog": 0.8729})
    write_run(root, "noeval", [1.5], 4800.0, 50.0, 1000)
    write_run(root, "unfinished", [2.2], 30.5, 10.0, 1000, finished=False, epochs=5)
    return root


def test_compare_gives_exactly_the_expected_rows(hand_built, tmp_path):
    r = kx(["compare", hand_built / "scratch", hand_built / "pretrained", hand_built / "noeval",
            hand_built / "unfinished", "-o", tmp_path / "cmp"])
    expected = [
        HEADER,
        "| :-- | --: | --: | --: | --: | --: | --: |",
        "| scratch | 10.0 min | 2.3007 | 0.3160 (epoch 3) | 79.22% | 1,234.6 | 29,585,290 |",
        "| pretrained | 42.0 min | 0.6339 | 2.7600e-05 (epoch 2) | 91.16% | 98.0 | 57,044,810 |",
        "| noeval | 1 h 20 min | 1.5000 | 1.5000 (epoch 1) | missing (no evaluation.json) | 50.0 | 1,000 |",
        "| unfinished (unfinished: 1/5 epochs) | 30.5 s | 2.2000 | 2.2000 (epoch 1) "
        "| missing (no evaluation.json; the run did not finish) | 10.0 | 1,000 |",
    ]
    lines = r.output.splitlines()
    start = lines.index(HEADER)
    assert lines[start:start + len(expected)] == expected
    md = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()
    assert md[: len(expected)] == expected

    # Runs without a report are named, with how to get one.
    assert f"noeval: not evaluated (no evaluation.json); evaluate it with `kerasalex evaluate {hand_built / 'noeval' / 'model.keras'}" in r.output
    assert f"finish it with `kerasalex train --resume --run-dir {hand_built / 'unfinished'}`" in r.output

    f1 = (tmp_path / "cmp" / "per_class_f1.md").read_text().splitlines()
    assert f1 == [
        "| class | scratch | pretrained | noeval | unfinished |",
        "| :-- | --: | --: | --: | --: |",
        "| cat | 0.5977 | **0.8199** | - | - |",
        "| dog | 0.7057 | **0.8729** | - | - |",
        "| macro avg | 0.6517 | **0.8464** | - | - |",
    ]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "comparison.csv").read_text())))
    assert [(r["model"], r["train_seconds"], r["accuracy"], r["last_epoch"]) for r in rows] == [
        ("scratch", "600.0", "0.7922", "3"), ("pretrained", "2520.0", "0.9116", "2"),
        ("noeval", "4800.0", "", "1"), ("unfinished", "30.5", "", "1"),
    ]
    assert_png(tmp_path / "cmp" / "loss_curves.png")


def test_compare_expands_a_folder_of_runs(hand_built, tmp_path):
    r = kx(["compare", hand_built, "-o", tmp_path / "cmp"])
    lines = r.output.splitlines()
    table = lines[lines.index(HEADER) + 2:]
    table = table[: table.index("")]
    names = [line.split("|")[1].strip() for line in table]
    assert names == ["noeval", "pretrained", "scratch", "unfinished (unfinished: 1/5 epochs)"]


def test_accuracy_column_says_what_it_was_measured_on(tmp_path):
    from kerasalex.compare import compare_runs

    a = write_run(tmp_path, "a", [1.0], 10, 5, 10, 0.5, {"x": 0.5}, split="val")
    b = write_run(tmp_path, "b", [1.0], 10, 5, 10, 0.6, {"x": 0.6}, split="test")
    assert "| Val accuracy (held-out) |" in compare_runs([a])["table_md"]
    mixed = compare_runs([a, b])["table_md"]
    assert "| Accuracy (split) |" in mixed and "| 50.00% (val) |" in mixed and "| 60.00% (test) |" in mixed


def test_evaluation_split_holds_out_for_folders_without_test(tmp_path):
    from kerasalex.compare import evaluation_split

    (tmp_path / "flat" / "a").mkdir(parents=True)
    (tmp_path / "split" / "train" / "a").mkdir(parents=True)
    (tmp_path / "split" / "test" / "a").mkdir(parents=True)
    assert evaluation_split("digits") == "test" and evaluation_split("cifar10") == "test"
    assert evaluation_split(str(tmp_path / "flat")) == "val"
    assert evaluation_split(str(tmp_path / "split")) == "test"


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    r = kx(["compare", tmp_path / "empty", "-o", tmp_path / "cmp"], expect=1)
    assert "not a kerasalex run folder" in r.output and "Traceback" not in r.output
    r = kx(["compare", tmp_path / "nowhere", "-o", tmp_path / "cmp"], expect=1)
    assert "run folder not found" in r.output


def test_compare_evaluates_a_missing_report_on_the_spot(study, tmp_path):
    out, _, _ = study
    run = tmp_path / "alexnet-copy"
    shutil.copytree(out / "runs" / "alexnet", run)
    expected = json.loads((run / "evaluation.json").read_text())["test_accuracy"]
    for name in ("evaluation.json", "confusion_matrix.png", "test_predictions.png"):
        (run / name).unlink()

    r = kx(["compare", run, "-o", tmp_path / "cmp"])
    assert "missing (no evaluation.json)" in r.output and "alexnet-copy: not evaluated" in r.output

    r = kx(["compare", run, "--evaluate", "-o", tmp_path / "cmp"])
    assert "evaluating" in r.output and "Not evaluated" not in r.output
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["test_accuracy"] == pytest.approx(expected) and ev["split"] == "test"
    assert f"| {expected:.2%} |" in r.output
    assert_png(run / "confusion_matrix.png")
