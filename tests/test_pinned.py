"""serving.pinned: the checks a shipped export's pin (registry field `onnx`) must pass before
either loader (a classifier's, the measurement network's) opens the file."""

import json

import pytest

from conftest import write_tiny_registry
from xray_ai.registry import load_registry
from xray_ai.serving.pinned import pinned_export

SHA = "a" * 64


def _entry(tmp_path, pin):
    path = write_tiny_registry(tmp_path, None, sha256=SHA)
    raw = json.loads(path.read_text())
    if pin is not None:
        raw["models"]["tiny-test"]["onnx"] = pin
    path.write_text(json.dumps(raw))
    return load_registry(path).models["tiny-test"]


def _pin(**changes):
    return {"path": "m.onnx", "sha256": "b" * 64, "keras_sha256": SHA, "format": 3, **changes}


def test_a_well_formed_pin_gives_the_resolved_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    pin, path = pinned_export(_entry(tmp_path, _pin()), tmp_path, 3)
    assert path == (tmp_path / "m.onnx").resolve() and pin["sha256"] == "b" * 64


def test_no_pin_is_none(tmp_path):
    assert pinned_export(_entry(tmp_path, None), tmp_path, 3) is None


@pytest.mark.parametrize("pin, why", [
    ("models/m.onnx", "must be an object"),
    (_pin(sha256=None), "sha256 missing"),
    (_pin(format=2), "format 2; this version reads format 3"),
    (_pin(keras_sha256="c" * 64), "made from another model file"),
    (_pin(path="../m.onnx"), "outside the registry's folder"),
    (_pin(path="."), "outside the registry's folder"),
    (_pin(path="gone.onnx"), "gone.onnx is missing"),
])
def test_a_pin_that_cannot_be_used_says_why(pin, why, tmp_path):
    root = tmp_path / "registry"
    root.mkdir()
    (root / "m.onnx").write_bytes(b"onnx")
    (tmp_path / "m.onnx").write_bytes(b"onnx")  # what "../m.onnx" would reach
    with pytest.raises(ValueError, match=why):
        pinned_export(_entry(root, pin), root, 3)


def test_a_caller_s_own_keys_are_required_too(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(ValueError, match="output_shapes missing or not a list"):
        pinned_export(_entry(tmp_path, _pin()), tmp_path, 3, (("output_shapes", list),))
