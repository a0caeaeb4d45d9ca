"""The model registry (kerasalex.models.ARCHITECTURES): one row per
architecture holds everything the rest of the package knows about it.

``MODEL_LIST`` (as Keras applications' tests) drives every check: each
architecture builds in a tiny configuration, its file goes through the
checked loader (``kerasalex.files.load_model``, what ``evaluate`` and
``--resume`` use), so a layer missing from its row's allowlist fails here, and
an architecture added at runtime (a builder + a row, nothing else) trains and
reloads. The layering rules are checked on the source (ast).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from kerasalex import files
from kerasalex.config import RECIPES, TrainConfig, resolve_config
from kerasalex.models import (
    ARCHITECTURES,
    TRAINING_FRONT_LAYERS,
    Architecture,
    build_model,
    get_architecture,
    get_class_names,
    training_model,
)

PACKAGE = Path(__file__).resolve().parents[1] / "kerasalex"

# One row per architecture: (name, tiny build arguments). Adding an
# architecture adds one row here.
MODEL_LIST = [
    ("alexnet", dict(input_shape=(32, 32, 3), filters=(4, 4, 8, 8, 4), dense_units=8)),
    ("alexnet-torch", dict(input_shape=(32, 32, 3), resize=96, crop=95)),  # no tiny option: 61M parameters
    ("vgg16", dict(input_shape=(32, 32, 3), input_size=32, base_weights="none", head=(8, 8))),
]
CLASSES = ["a", "b", "c"]


def serialized_objects(config) -> set[tuple[str, str]]:
    """(module, class_name) of every object with a module in a serialized
    model (``keras.saving.serialize_keras_object``), at any depth."""
    found = set()

    def walk(node):
        if isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            if isinstance(node.get("class_name"), str) and "module" in node:
                found.add((node.get("module") or "", node["class_name"]))
            for v in node.values():
                walk(v)

    walk(config)
    return found


def _serialized_classes(model) -> set[str]:
    """class_name of every object of ``model``'s config under a Keras layer,
    model or ops module."""
    prefixes = ("keras.layers", "keras.src.layers", "keras.src.models", "keras.src.ops")
    return {c for m, c in serialized_objects(keras.saving.serialize_keras_object(model)) if m.startswith(prefixes)}


def test_model_list_covers_every_architecture():
    assert [name for name, _ in MODEL_LIST] == list(ARCHITECTURES)


@pytest.mark.parametrize("arch, tiny", MODEL_LIST, ids=[n for n, _ in MODEL_LIST])
def test_row_is_complete_and_its_module_imports(arch, tiny):
    """No skip hides a broken row: the builder imports, takes the shared
    arguments and the tiny ones, and every field names something real."""
    from kerasalex.training import training_loop

    a = get_architecture(arch)
    args = a.builder_args()  # an ImportError / AttributeError of our module fails here
    assert {"num_classes", "input_shape", "class_names", "seed", "dropout"} <= args
    assert set(tiny) <= args
    assert a.description and 8 <= a.min_image_size <= a.image_size
    assert a.resize in ("squash", "crop")
    assert callable(training_loop(a.loop))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if a.weights_option is not None:
        assert a.weights_option in fields and a.weights_option in args
    assert a.study_weights_flag is None or a.weights_option is not None
    for recipe, values in a.recipes.items():
        assert recipe in RECIPES and set(values) <= fields, (recipe, values)
    assert a.layers
    assert a.layers <= files.model_file_rules().layers and a.ops <= files.model_file_rules().ops


@pytest.mark.parametrize("arch, tiny", MODEL_LIST, ids=[n for n, _ in MODEL_LIST])
def test_tiny_model_reloads_through_the_checked_loader(arch, tiny, tmp_path):
    """The inference file and the resume file (training front, compiled with
    the optimizer state) both pass ``kerasalex.files.load_model``'s checks and
    give the same logits; the row declares exactly the classes its model holds."""
    a = get_architecture(arch)
    model = a.build(num_classes=3, class_names=CLASSES, dropout=0.5, seed=0, **tiny)
    assert _serialized_classes(model) == a.layers | a.ops
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expected = model.predict(x, verbose=0)
    path = files.save_model(model, tmp_path / f"{arch}.keras")
    loaded = files.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert get_class_names(loaded) == CLASSES

    # Every augmentation the training front can hold (flip, translation,
    # random erasing): the resume file must pass the checked loader with it.
    trainer = training_model(model, augment=True, seed=0, random_erasing=0.25)
    assert _serialized_classes(trainer) <= a.layers | a.ops | TRAINING_FRONT_LAYERS
    if model.count_params() > 20_000_000:  # alexnet-torch (no tiny option): its 0.5 GB resume file costs a minute
        return
    from kerasalex.optimizers import FusedSGD

    trainer.compile(optimizer=FusedSGD(1e-3, momentum=0.9), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    trainer.fit(x, np.eye(3, dtype="float32")[[0, 1]], epochs=1, verbose=0)
    resumed = files.load_model(files.save_model(trainer, tmp_path / "resume.keras"), compile=True)
    assert type(resumed.optimizer) is FusedSGD and int(resumed.optimizer.iterations) == 1
    keras.backend.clear_session()


def test_recipes_come_from_the_rows():
    """A recipe's value for an architecture: the row's, else the recipe's
    shared one, else TrainConfig's default."""
    for name, a in ARCHITECTURES.items():
        for recipe in RECIPES:
            config = resolve_config(arch=name, recipe=recipe).to_dict()
            expected = {**TrainConfig().to_dict(), **RECIPES[recipe], **a.recipe(recipe), "arch": name, "recipe": recipe}
            assert config == expected, (name, recipe)
    assert resolve_config(arch="alexnet").min_steps == 2500
    assert resolve_config(arch="alexnet-torch").lr == 0.01
    assert resolve_config(arch="alexnet-torch", recipe="study").dropout == 0.5
    assert resolve_config(arch="vgg16").unfreeze_from == "block5_conv1"


# --------------------------------------------------------------------------
# An option the builder does not take
# --------------------------------------------------------------------------


def test_an_option_the_architecture_does_not_take_is_an_error_naming_both():
    with pytest.raises(ValueError) as err:
        build_model("alexnet", num_classes=3, weights="x.h5")
    message = str(err.value)
    assert "'alexnet'" in message and "weights" in message and "x.h5" in message and "\n" not in message
    with pytest.raises(ValueError, match="'vgg16' does not take the option crop"):
        build_model("vgg16", num_classes=3, crop=32, base_weights=None)
    # None is "unset"; the options every run passes are dropped where unused.
    model = build_model("vgg16", num_classes=3, weights=None, freeze_base=None, kernel_initializer="he_normal",
                        head_initializer="zeros", **dict(MODEL_LIST)["vgg16"])
    assert model.output_shape == (None, 3)


def test_train_with_weights_for_the_scratch_alexnet_is_refused(tmp_path, monkeypatch):
    from kerasalex.training import train

    monkeypatch.chdir(tmp_path)
    config = resolve_config(arch="alexnet", dataset="digits", limit=40, epochs=1, weights=str(tmp_path / "x.h5"),
                            run_dir=str(tmp_path / "run"), output=str(tmp_path / "m.keras"))
    with pytest.raises(ValueError, match="architecture 'alexnet' does not take the option weights"):
        train(config, verbose=0)
    assert not (tmp_path / "m.keras").exists()
    # refused before the run folder exists or any data is read
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------
# A new architecture: one builder, one row, nothing else
# --------------------------------------------------------------------------


def build_tinynet(num_classes=10, input_shape=(16, 16, 3), class_names=None, dropout=0.0, seed=None, width=4,
                  name="tinynet"):
    """A tiny classifier with a layer no other architecture uses (GroupNormalization)."""
    from kerasalex import preprocessing
    from kerasalex.models import set_model_info

    inputs = preprocessing.image_input((None, None, 3))
    x = preprocessing.rescale_symmetric(inputs)
    x = preprocessing.resize(x, input_shape[0], input_shape[1])
    x = keras.layers.Conv2D(width, 3, activation="relu", name="block1_conv1")(x)
    x = keras.layers.GroupNormalization(groups=2, name="block1_norm")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name="predictions", dtype="float32")(x)
    model = keras.Model(inputs, logits, name=name)
    return set_model_info(model, class_names=preprocessing.check_class_names(class_names, num_classes),
                          image_shape=tuple(input_shape))


TINYNET_LAYERS = frozenset({"InputLayer", "Functional", "Rescaling", "Resizing", "Conv2D", "GroupNormalization",
                            "GlobalAveragePooling2D", "Dropout", "Dense"})


def _tinynet_row(layers=TINYNET_LAYERS) -> Architecture:
    return Architecture(
        "tinynet", f"{__name__}:build_tinynet", "a tiny test network", image_size=16, min_image_size=8,
        recipes={"default": dict(optimizer="adam", lr=0.003, schedule="constant", batch_size=20, dropout=0.1)},
        layers=layers,
    )


def test_a_new_architecture_trains_and_reloads_with_one_row(tmp_path, monkeypatch):
    from kerasalex.training import read_run_config, train

    monkeypatch.setitem(ARCHITECTURES, "tinynet", _tinynet_row())
    monkeypatch.chdir(tmp_path)
    config = resolve_config(arch="tinynet", dataset="digits", limit=60, epochs=1, precision="float32",
                            run_dir=str(tmp_path / "run"), output=str(tmp_path / "tinynet.keras"))
    assert (config.optimizer, config.lr, config.batch_size, config.image_size) == ("adam", 0.003, 20, None)
    result = train(config, verbose=0)
    assert len(result.history) == 1
    model = files.load_model(result.model_path)  # the checked loader knows GroupNormalization from the row
    assert model.output_shape == (None, 10) and model.get_layer("block1_norm").groups == 2
    assert files.read_model_metadata(result.model_path)["config"]["optimizer"] == "adam"
    assert read_run_config(result.run_dir)["config"]["lr"] == 0.003


def test_a_layer_missing_from_the_row_is_refused_by_the_checked_loader(tmp_path, monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "tinynet", _tinynet_row(TINYNET_LAYERS - {"GroupNormalization"}))
    path = files.save_model(build_tinynet(3), tmp_path / "t.keras")
    with pytest.raises(files.ModelFileError, match="'GroupNormalization' is not on kerasalex's allowlist"):
        files.load_model(path)
    monkeypatch.setitem(ARCHITECTURES, "tinynet", _tinynet_row())
    assert files.load_model(path).output_shape == (None, 3)


# --------------------------------------------------------------------------
# Layering (docs/architecture.md)
# --------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (relative ones as ".name")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            if node.module in ("kerasalex", None):
                found |= {f"{base}.{alias.name}".replace("..", ".") for alias in node.names}
    return found


def test_files_imports_nothing_from_kerasalex():
    """The files layer (kerasalex/files/) imports only its own modules."""
    sources = sorted((PACKAGE / "files").glob("*.py"))
    assert {p.name for p in sources} >= {"__init__.py", "archive.py", "checks.py"}
    for path in sources:
        imports = _imports(path)
        ours = sorted(m for m in imports if (m == "kerasalex" or m.startswith(("kerasalex.", "."))) and not
                      (m == "kerasalex.files" or m.startswith("kerasalex.files.")))
        assert not ours, f"kerasalex/files/{path.name} imports {ours}; the files layer imports nothing from the package"
        assert "import_module" not in path.read_text()


def test_the_command_line_process_has_the_file_rules_without_tensorflow():
    """`kerasalex evaluate` checks a file before TensorFlow is imported: the
    model table's rules are installed by `import kerasalex` alone."""
    from tests.conftest import run_python

    code = ("import sys; sys.argv = ['kerasalex']\n"
            "from kerasalex import files\n"
            "rules = files.model_file_rules()\n"
            "print(sorted(rules.layers & {'Conv2D', 'ZeroPadding2D'}), sorted(rules.ops), 'tensorflow' in sys.modules)")
    r = run_python(code, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "['Conv2D', 'ZeroPadding2D'] ['Flip'] False"


def test_the_model_table_never_reaches_training_or_the_commands():
    higher = ("kerasalex.training", "kerasalex.transfer", "kerasalex.tuning", "kerasalex.study", "kerasalex.cli",
              "kerasalex.commands", "kerasalex.evaluation", "kerasalex.export", "kerasalex.data", "kerasalex.config")
    for path in sorted((PACKAGE / "models").glob("*.py")):
        bad = sorted(m for m in _imports(path) if m.startswith(higher))
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"
        assert "kerasalex.transfer:" not in path.read_text()


def test_keras_internals_live_in_one_module():
    """Only kerasalex/_keras_internals.py names Keras's private modules."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_keras_internals.py":
            continue
        if any(m.startswith("keras.src") for m in _imports(path)):
            offenders.append(str(path.relative_to(PACKAGE.parent)))
    owned = {"kerasalex/optimizers.py", "kerasalex/preprocessing.py", "kerasalex/config.py"}
    assert not [p for p in offenders if p in owned or p.startswith(("kerasalex/models/", "kerasalex/files/"))], offenders
