"""The benchmark scripts still run against the package as it is now.

They are not tests of speed (no timing is asserted); they are scripts a user
runs by hand, so nothing else would notice when a refactor breaks one (the
redesign broke ``bench_gpu.py``: every row came back as an error). Each script
must answer ``--help``; the ones that train a model run once on a tiny budget
and must print numbers, not error rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py"))


def _run(args, timeout=300, cwd=None):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO
    )


def test_every_benchmark_script_is_listed():
    # A new script gets its --help check for free; this guards the glob itself.
    assert {"bench_gpu.py", "bench_time_to_accuracy.py", "bench_train.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_answers_help(script):
    proc = _run([f"benchmarks/{script}", "--help"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout.lower()


def test_bench_gpu_smoke_rows_are_numbers(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run([
        "benchmarks/bench_gpu.py", "--archs", "alexnet", "--precisions", "float32", "--jit", "off",
        "--images", "256", "--batch-size", "32", "--steps", "2", "--warmup", "1", "--json", str(out),
    ])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    # the study-style baseline and one kerasalex row
    assert len(rows) == 2
    for row in rows:
        assert "error" not in row, row
        assert row["train_img_s"] > 0 and row["pipeline_img_s"] > 0
        assert row["peak_mem_mb"] > 0
    ours = [r for r in rows if r["arch"] == "alexnet"][0]
    assert ours["batch"] == 32 and ours["timed_steps"] == 2
    assert "| alexnet | float32 |" in proc.stdout
    from kerasalex.device import cpu_model_name

    # The machine line names the CPU as the package reads it (one reader for every report).
    assert f"CPU only: {cpu_model_name()}, " in proc.stdout


def _jpeg_folder(root, classes=3, per_class=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / f"{i:04d}.jpg", quality=90)
    return root


def test_bench_time_to_accuracy_smoke_reports_both_recipes(tmp_path):
    data = _jpeg_folder(tmp_path / "jpegs")
    out = tmp_path / "tta.json"
    proc = _run([
        "benchmarks/bench_time_to_accuracy.py", "--data", str(data), "--epochs", "1",
        "--targets", "0.0", "--out", str(tmp_path / "runs"), "--json", str(out),
    ], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["rows"] if isinstance(result, dict) else result
    assert {r["recipe"] for r in rows} == {"default", "study"}
    from kerasalex.device import cpu_flags, cpu_model_name

    found = [f for f in ("avx512_bf16", "amx_bf16") if f in cpu_flags()]
    bf16 = f"with {' + '.join(found)}" if found else "no avx512_bf16/amx_bf16"
    assert result["cpu"] == f"{cpu_model_name()}, {os.cpu_count()} cores, {bf16}"
    for row in rows:
        assert row["epochs"] == 1
        # a target of 0 is reached at the first epoch, after a positive time
        assert row["epoch_to_0"] == 1
        assert row["seconds_to_0"] > 0
        assert 0.0 <= row["final_val_accuracy"] <= 1.0


def test_bench_batch_speed_smoke_pairs_the_configurations(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run([
        "benchmarks/bench_batch_speed.py", "--configs", "small:4:0:0,old-default:8:0.125:0.5",
        "--rounds", "2", "--steps", "1", "--warmup", "1", "--precision", "float32", "--json", str(out),
    ])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["reference"] == "old-default" and report["rounds"] == 2
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["old-default"]["images_per_second_vs_reference"] == pytest.approx(1.0)
    small = rows["small"]
    assert (small["batch"], small["translate"], small["dropout"]) == (4, 0.0, 0.0)
    assert small["ms_per_step"] > 0 and small["images_per_second"] == pytest.approx(4000 / small["ms_per_step"])
    assert "| small | 4 | 0 | 0 |" in proc.stdout
    bad = _run(["benchmarks/bench_batch_speed.py", "--configs", "small:4"])
    assert bad.returncode == 2 and "is not name:batch:translate:dropout" in bad.stderr
