"""Shared fixtures: tiny flat, nested and Sequential models (32x32x1) and a temporary registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The app preloads every active model in a background thread (ui.common); page tests that
# run the app in-process would pay for loads they do not use. The browser tests start the
# app with the README's command, preload included.
os.environ.setdefault("XRAY_AI_PRELOAD", "0")
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TINY_SHAPE = (32, 32, 1)


def _tiny_backbone(keras, name="backbone"):
    inputs = keras.Input(TINY_SHAPE)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture(scope="session", autouse=True)
def _private_onnx_cache(tmp_path_factory):
    """Keep tests off the user's ONNX export cache (~/.cache/xray_ai/onnx): a fresh one per run."""
    old = os.environ.get("XRAY_AI_ONNX_CACHE")
    os.environ["XRAY_AI_ONNX_CACHE"] = str(tmp_path_factory.mktemp("onnx_cache"))
    yield
    if old is None:
        os.environ.pop("XRAY_AI_ONNX_CACHE", None)
    else:
        os.environ["XRAY_AI_ONNX_CACHE"] = old


@pytest.fixture(scope="session")
def keras_mod():
    import keras

    keras.utils.set_random_seed(0)
    return keras


@pytest.fixture(scope="session")
def flat_model(keras_mod):
    keras = keras_mod
    keras.utils.set_random_seed(1)  # same weights whatever ran before (tests compare maps)
    inputs = keras.Input(TINY_SHAPE)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    out = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(inputs, out, name="tiny_flat")


@pytest.fixture(scope="session")
def nested_model(keras_mod):
    keras = keras_mod
    keras.utils.set_random_seed(2)  # same weights whatever ran before (tests compare maps)
    backbone = _tiny_backbone(keras)
    inputs = keras.Input(TINY_SHAPE)
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="norm")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="head")(x)
    return keras.Model(inputs, out, name="tiny_nested")


@pytest.fixture(scope="session")
def sequential_model(keras_mod):
    keras = keras_mod
    keras.utils.set_random_seed(3)  # same weights whatever ran before (tests compare maps)
    return keras.Sequential(
        [
            keras.Input(TINY_SHAPE),
            _tiny_backbone(keras, "seq_backbone"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(1, activation="sigmoid", name="head"),
        ],
        name="tiny_sequential",
    )


def assert_registry_refused(tmp_path: Path, raw: dict, message: str) -> None:
    """Write `raw` as a registry file; loading it must fail with an error naming `message` and the file."""
    from xray_ai.registry import RegistryError, load_registry

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def write_tiny_registry(tmp_path: Path, model_file: Path | None, *, sha256: str | None, height=32, width=32, channels=1) -> Path:
    """A registry with one condition ('fracture') whose active model is `model_file`."""
    entry = {
        "condition": "fracture",
        "architecture": "custom",
        "path": str(model_file.name if model_file else "missing.keras"),
        "sha256": sha256,
        "version": "0.0.1-test",
        "input": {"height": height, "width": width, "channels": channels},
        "preprocessing": "unit",
        "threshold": 0.5,
        "threshold_method": "fixed 0.5 (test fixture)",
        "profile": "fast",
        "trained_on": {"dataset": "test fixture", "version": "", "synthetic": True},
        "intended_use": "unit tests only",
        "metrics": {},
        "created": "2026-11-22",
    }
    registry = {
        "schema_version": 1,
        "conditions": {
            "fracture": {"name": "Fracture", "positive_label": "fracture", "negative_label": "no fracture"}
        },
        "models": {"tiny-test": entry},
        "active_models": {"fracture": "tiny-test"},
    }
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(registry, indent=2))
    return path


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory, flat_model):
    """The tiny flat model saved as .keras, with its sha256."""
    from xray_ai.serving.artifacts import file_sha256

    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    flat_model.save(path)
    return path, file_sha256(path)


@pytest.fixture()
def tiny_registry(tmp_path, tiny_model_file):
    """A registry (in tmp_path) whose active 'fracture' model is the tiny model, verified."""
    import shutil

    src, sha = tiny_model_file
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    return write_tiny_registry(tmp_path, dst, sha256=sha)


def bright_square_data(n: int, seed: int = 0, size: int = 32, side: int = 8):
    """Noise images; half hold a bright square. Returns (x (n,size,size,1), y (n,), boxes)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.4, (n, size, size, 1)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float32)
    boxes = []
    for i in range(n):
        r, c = rng.integers(0, size - side, 2)
        boxes.append((int(r), int(c)))
        if y[i]:
            x[i, r : r + side, c : c + side, 0] = rng.uniform(0.8, 1.0)
    return x, y, boxes
