"""`kerasalex port-weights`: torchvision AlexNet state_dict -> Keras, proven equal.

No pretrained file can be downloaded here, so the port is proven on weights
made in the test: an AlexNet with torchvision's exact structure and
state_dict keys (defined below, independently of kerasalex.porting), random
weights from a fixed seed, saved with torch.save, ported through the real CLI
and compared logit for logit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kerasalex.models.torch_alexnet import CONV_LAYERS, DENSE_LAYERS

TOL = 1e-4


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def make_torchvision_alexnet(torch, num_classes=1000):
    """torchvision.models.AlexNet, written out (torchvision is not installed)."""
    nn = torch.nn

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
            )
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                nn.Dropout(p=0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    return AlexNet()


@pytest.fixture(scope="module")
def reference(torch, tmp_path_factory):
    """(torch AlexNet in eval mode, path of its saved state_dict), random weights
    scaled so the logits are O(1): a wrong port cannot hide under tiny numbers."""
    torch.manual_seed(1234)
    net = make_torchvision_alexnet(torch)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight"):
                fan_in = int(np.prod(p.shape[1:]))
                p.normal_(0.0, (1.0 / fan_in) ** 0.5)
            else:
                p.normal_(0.0, 0.02)
    net.eval()
    path = tmp_path_factory.mktemp("ckpt") / "alexnet-owt-test.pth"
    torch.save(net.state_dict(), path)
    return net, path


def torch_logits(torch, net, x_nhwc):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


def assert_nothing_written(folder: Path):
    assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


# ---------------------------------------------------------------------------
# Equivalence
# ---------------------------------------------------------------------------


@pytest.mark.torch
def test_port_through_cli_matches_torch_at_224_and_256(torch, reference, invoke, tmp_path):
    from kerasalex.models.torch_alexnet import build_torch_alexnet_core

    net, pth = reference
    result = invoke(["port-weights", pth])  # default output
    out = tmp_path / "saved_models" / "alexnet_imagenet.weights.h5"
    assert out.is_file()
    assert "61,100,840 parameters, 1000 classes" in result.output
    assert "Check: max |keras - torch| logit difference" in result.output
    assert "top-1 agrees" in result.output

    for size, pooled_from in [(224, 6), (256, 7)]:
        with torch.no_grad():  # at 256 the adaptive pool really pools (7x7 -> 6x6)
            assert net.features(torch.zeros(1, 3, size, size)).shape[-1] == pooled_from
        core = build_torch_alexnet_core(1000, input_shape=(size, size, 3))
        core.load_weights(out)
        x = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
        want = torch_logits(torch, net, x)
        got = np.asarray(core(x, training=False))
        assert np.abs(want).max() > 0.5, "logits too small to make the comparison meaningful"
        diff = np.abs(got - want).max()
        print(f"{size}px: max|logit| {np.abs(want).max():.3g}, max|diff| {diff:.3g}")
        assert diff <= TOL, (size, diff)
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.torch
def test_ported_keras_model_is_torchvision_inference_end_to_end(torch, reference, invoke, tmp_path):
    """The full .keras (uint8 in; resize 256, crop 224, normalize inside) equals
    torch's eval transform + AlexNet, and fine-tuning starts from it."""
    from kerasalex.files import load_model
    from kerasalex.models.torch_alexnet import build_torch_alexnet

    net, pth = reference
    result = invoke(["port-weights", pth, "-o", "imagenet.keras", "--no-check"])
    assert "Check skipped" in result.output
    model = load_model(tmp_path / "imagenet.keras")

    images = np.random.default_rng(7).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    x = torch.nn.functional.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
    x = x[:, :, 16:240, 16:240]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net((x - mean) / std).numpy()
    got = np.asarray(model.predict(images, verbose=0))
    assert np.abs(got - want).max() <= TOL * max(1.0, np.abs(want).max())

    # It predicts ImageNet class names (torchvision's order), not class numbers.
    from PIL import Image

    from kerasalex.models import get_class_names
    from kerasalex.porting import imagenet_class_names

    names = get_class_names(model)
    assert names[:3] == ["tench", "goldfish", "great white shark"] and names[-1] == "toilet tissue"
    assert names == imagenet_class_names() and len(set(names)) == 1000
    Image.fromarray(images[0]).save(tmp_path / "photo.png")
    out = invoke(["predict", "imagenet.keras", "photo.png", "--top-k", "1", "--json"]).output
    import json

    top = json.loads(out[out.index("["):])[0]["top"][0]["class"]
    assert top == names[int(want[0].argmax())]

    tuned = build_torch_alexnet(10, input_shape=(32, 32, 3), weights=str(tmp_path / "imagenet.keras"), resize=96, crop=95)
    for name in CONV_LAYERS + DENSE_LAYERS[:-1]:
        for a, b in zip(tuned.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.torch
def test_a_wrong_port_is_refused_by_the_check(torch, reference, invoke, tmp_path, monkeypatch):
    """Without the CHW -> HWC row reorder the logits differ, and nothing is written."""
    from kerasalex import porting

    real = porting.convert_state_dict

    def no_reorder(state_dict):
        out = real(state_dict)
        out["classifier_1"][0] = np.ascontiguousarray(np.asarray(state_dict["classifier.1.weight"]).T)
        return out

    monkeypatch.setattr(porting, "convert_state_dict", no_reorder)
    line = one_line_error(invoke(["port-weights", reference[1], "-o", "out/bad.weights.h5"], expect_ok=False))
    assert "disagrees with torch" in line
    assert_nothing_written(tmp_path / "out")


# ---------------------------------------------------------------------------
# Bad files: one line, nothing written, no code run
# ---------------------------------------------------------------------------


def _random_bytes(torch, tmp_path, reference):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(0).bytes(10_000))
    return path, r"is not a PyTorch checkpoint"


def _truncated(torch, tmp_path, reference):
    data = Path(reference[1]).read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    return path, r"is a truncated or corrupt PyTorch checkpoint"


def _other_net(torch, tmp_path, reference):
    nn = torch.nn
    net = nn.Module()
    net.features = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3))
    net.classifier = nn.Sequential(nn.Linear(32, 10))
    path = tmp_path / "other.pth"
    torch.save(net.state_dict(), path)
    return path, (
        r"not a torchvision AlexNet state_dict: missing keys: .*features\.3\.weight.*; "
        r"unexpected keys: .*classifier\.0\.weight.*features\.2\.weight.*; "
        r"first shape mismatch: features\.0\.weight is \(16, 3, 3, 3\), expected \(64, 3, 11, 11\)"
    )


def _shape_mismatch(torch, tmp_path, reference):
    state = {k: v.clone() for k, v in reference[0].state_dict().items()}
    state["features.3.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "mismatch.pth"
    torch.save(state, path)
    return path, r"first shape mismatch: features\.3\.weight is \(128, 64, 5, 5\), expected \(192, 64, 5, 5\)$"


def _training_checkpoint(torch, tmp_path, reference):
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {"features.0.weight": torch.zeros(2)}}, path)
    return path, r"not a flat state_dict: 'epoch' is a int, expected a tensor"


BAD_FILES = {
    "random-bytes": _random_bytes,
    "truncated": _truncated,
    "other-architecture": _other_net,
    "shape-mismatch": _shape_mismatch,
    "training-checkpoint": _training_checkpoint,
}


@pytest.mark.torch
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_checkpoint_is_one_line_error_and_writes_nothing(case, torch, reference, invoke, tmp_path):
    path, pattern = BAD_FILES[case](torch, tmp_path, reference)
    line = one_line_error(invoke(["port-weights", path, "-o", "out/ported.weights.h5"], expect_ok=False))
    assert str(path.name) in line
    assert __import__("re").search(pattern, line), line
    assert_nothing_written(tmp_path / "out")


class _Payload:
    """A pickle that runs code when loaded: creates ``sentinel``."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (exec, (f"open({self.sentinel!r}, 'w').close()",))


@pytest.mark.torch
def test_code_executing_pickle_is_refused_and_never_runs(torch, invoke, tmp_path):
    # The payload is real: a plain (unsafe) load runs it.
    control = tmp_path / "control_sentinel"
    torch.save({"x": _Payload(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()

    sentinel = tmp_path / "SENTINEL"
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "x": _Payload(sentinel)}, evil)
    line = one_line_error(invoke(["port-weights", evil, "-o", "out/ported.weights.h5"], expect_ok=False))
    assert "refused to load" in line and "weights_only=True" in line and "exec" in line
    assert not sentinel.exists()
    assert_nothing_written(tmp_path / "out")


def test_missing_torch_says_how_to_install(invoke, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    (tmp_path / "a.pth").write_bytes(b"PK\x03\x04")
    line = one_line_error(invoke(["port-weights", "a.pth", "-o", "out/a.weights.h5"], expect_ok=False))
    assert 'pip install "kerasalex[torch]"' in line
    assert "torch==2.13.0" in line
    assert_nothing_written(tmp_path / "out")


@pytest.mark.torch
def test_bad_output_and_missing_checkpoint(torch, reference, invoke, tmp_path):
    line = one_line_error(invoke(["port-weights", reference[1], "-o", "out/ported.txt"], expect_ok=False))
    assert "must end in .weights.h5 or .keras" in line
    line = one_line_error(invoke(["port-weights", "nope.pth", "-o", "out/a.weights.h5"], expect_ok=False))
    assert "checkpoint not found: nope.pth" in line
    assert_nothing_written(tmp_path / "out")


def test_port_weights_help_imports_neither_torch_nor_the_porting_code():
    from conftest import run_python

    proc = run_python(
        "import sys; sys.argv = ['kerasalex']; from kerasalex.cli import cli, COMMANDS; "
        "assert COMMANDS['port-weights'] == 'kerasalex.commands.port:port_weights'; "
        "from click.testing import CliRunner; r = CliRunner().invoke(cli, ['port-weights', '--help']); "
        "print(r.output); assert r.exit_code == 0; assert 'torch' not in sys.modules and 'kerasalex.porting' not in sys.modules"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--no-check" in proc.stdout and "weights_only=True" in proc.stdout
