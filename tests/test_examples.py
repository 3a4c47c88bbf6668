"""examples/: reproducible from make_examples.py, labelled, and each phantom in scope for its
condition's shipped model (the first thing a newcomer tries must give a real answer)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import EXAMPLES, REPO


@pytest.fixture(scope="module")
def make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_examples_are_what_make_examples_builds(make_examples):
    pytest.importorskip("data_store", reason="pydicom-data holds the real radiographs' sources")
    assert make_examples.main(["--check"]) == 0


def test_every_example_is_listed_and_labelled(make_examples):
    manifest = json.loads((EXAMPLES / "examples.json").read_text())["examples"]
    files = {e["file"]: e for e in manifest}
    assert all((EXAMPLES / name).is_file() for name in files)
    phantoms = {e["condition"] for e in manifest if e["kind"] == "phantom"}
    registry = json.loads((REPO / "model_registry.json").read_text())
    assert phantoms == set(registry["conditions"]), "one phantom (at least) per condition"
    for entry in manifest:
        if entry["kind"] == "phantom":
            assert entry["label"].startswith("synthetic phantom: ") and entry["file"].startswith("phantom_")
        else:
            assert entry["condition"] is None
            assert entry["label"].startswith("real radiograph: out of scope for the synthetic-data models")
    assert {n for n, e in files.items() if e["kind"] == "real"} == {"rg1_chest.dcm", "rg3_tibia.dcm"}


def test_each_phantom_is_in_scope_for_its_conditions_shipped_model(make_examples):
    from xray_ai import ModelManager, analyze, load_image
    from xray_ai.registry import load_registry

    registry = load_registry(REPO / "model_registry.json")
    manager = ModelManager(REPO / "model_registry.json")
    for stem, (condition, _abnormal, _seed, _part) in make_examples.PHANTOMS.items():
        image = load_image(EXAMPLES / f"{stem}.dcm")
        assert image.metadata.get("modality") in ("CR", "DX"), stem
        result = analyze(image, condition, manager=manager)
        view = result.views[0]
        assert not result.placeholder, f"{stem}: the shipped model did not load ({result.placeholder_reason})"
        assert result.assessable and result.decision != "not assessable", (stem, view.scope_reasons)
        assert view.input_checks and not view.unlike_training_data, (stem, view.input_checks)
        allowed = registry.condition(condition).body_parts
        if view.body_part is not None and allowed is not None:
            assert view.body_part.part in allowed, (stem, view.body_part)
