"""The cardiothoracic-ratio measurement model (issue 19): its registry kind, serving on the
shipped ONNX export and on TensorFlow, analyze()'s measurement and decision by the rule,
the placeholder, and the export's check. The shipped `cardiomegaly-ctr-unet` is used where
the figures matter; a tiny random U-Net where only the plumbing does."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_registry_refused

from xray_ai.images import XRay
from xray_ai.measurement.ctr import measure_ctr
from xray_ai.phantoms import generate

REPO = Path(__file__).resolve().parent.parent
MODEL_ID = "cardiomegaly-ctr-unet"
SHIPPED = json.loads((REPO / "model_registry.json").read_text())["models"].get(MODEL_ID)
pytestmark = pytest.mark.skipif(SHIPPED is None, reason=f"{MODEL_ID} is not registered")


def _raw_registry() -> dict:
    raw = json.loads((REPO / "model_registry.json").read_text())
    raw["models"] = {MODEL_ID: json.loads(json.dumps(raw["models"][MODEL_ID]))}
    raw["active_models"] = {"cardiomegaly": MODEL_ID}
    return raw


def _copy_registry(tmp_path: Path) -> Path:
    """The CTR model's entry and files in a registry of their own (paths inside its folder)."""
    raw = _raw_registry()
    entry = raw["models"][MODEL_ID]
    (tmp_path / "models").mkdir()
    for rel in (entry["path"], entry["onnx"]["path"], "models/cardiomegaly-ctr-unet.features.npz"):
        shutil.copyfile(REPO / rel, tmp_path / rel)
    path = tmp_path / "model_registry.json"
    path.write_text(json.dumps(raw))
    return path


def _manager(registry: Path, backend: str = "auto"):
    from xray_ai.serving.manager import ModelManager

    return ModelManager(registry, backend=backend, warm_up=False)


def _phantom(abnormal: bool, seed: int) -> tuple[XRay, float]:
    ph = generate("cardiomegaly", abnormal=abnormal, seed=seed, size=224)
    return XRay(pixels=ph.image, filename=f"chest_{seed}.png"), ph.ctr


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(condition="fracture"), "condition: a measurement model measures cardiomegaly"),
    (lambda e: e["measurement"].pop("calibration_scale"), "measurement.calibration_scale"),
    (lambda e: e["measurement"].update(quantity="area"), "measurement.quantity"),
    (lambda e: e.update(threshold=0.4), "threshold: a measurement model decides by its rule's limit"),
    (lambda e: e.update(heatmap={"method": "gradcam", "layers": []}), "heatmap: a measurement model"),
    (lambda e: e.update(kind="classifier"), "measurement: only an entry with \"kind\": \"measurement\""),
])
def test_a_bad_measurement_entry_is_refused_naming_the_field(tmp_path, change, message):
    raw = _raw_registry()
    raw["conditions"]["fracture"] = {"name": "Fracture", "positive_label": "fracture", "negative_label": "no fracture"}
    change(raw["models"][MODEL_ID])
    assert_registry_refused(tmp_path, raw, message)


def test_an_ensemble_of_a_measurement_model_is_refused(tmp_path):
    raw = json.loads((REPO / "model_registry.json").read_text())
    classifier = raw["active_models"]["cardiomegaly"]
    raw["models"]["pair"] = {**{k: raw["models"][classifier][k] for k in
                                ("condition", "version", "input", "threshold", "threshold_method", "profile",
                                 "trained_on", "intended_use", "created")},
                             "kind": "ensemble", "architecture": "ensemble", "members": [classifier, MODEL_ID],
                             "metrics": {}}
    assert_registry_refused(tmp_path, raw, f"{MODEL_ID!r} is a measurement model; members must be classifiers")


def test_the_entry_round_trips_with_its_kind_and_measurement():
    from xray_ai.registry import load_registry

    registry = load_registry(REPO / "model_registry.json")
    entry = registry.model(MODEL_ID)
    assert entry.is_measurement and entry.kind == "measurement" and entry.measurement["quantity"] == "ctr"
    assert entry.to_dict() == SHIPPED


def test_the_shipped_export_serves_it_and_agrees_with_tensorflow():
    from xray_ai.analysis import analyze

    onnx_manager, tf_manager = _manager(REPO / "model_registry.json"), _manager(REPO / "model_registry.json",
                                                                                 "tensorflow")
    assert onnx_manager.get(model_id=MODEL_ID).backend == "onnxruntime"
    assert tf_manager.get(model_id=MODEL_ID).backend == "tensorflow"
    views = [_phantom(True, 3)[0], _phantom(False, 4)[0]]
    ort, tf = (analyze(views, None, m, model_id=MODEL_ID) for m in (onnx_manager, tf_manager))
    for a, b in zip(ort.views, tf.views):
        assert abs(a.measurement.ctr - b.measurement.ctr) < 1e-3
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-3)


@pytest.mark.parametrize("abnormal, seed", [(True, 11), (True, 12), (False, 13), (False, 14)])
def test_analyze_measures_the_ctr_and_decides_by_the_rule(abnormal, seed):
    from xray_ai.analysis import analyze

    xray, truth = _phantom(abnormal, seed)
    result = analyze(xray, "cardiomegaly", _manager(REPO / "model_registry.json"), model_id=MODEL_ID)
    view = result.views[0]
    assert result.kind == "measurement" and result.assessable and not result.placeholder
    assert abs(result.measurements["ctr"] - truth) < 0.03, (result.measurements, truth)
    # the figures are measure_ctr's on the view's own masks, in the image's pixels
    again = measure_ctr(view.measurement.heart, view.measurement.thorax, xray.pixels.shape[1])
    assert again.ctr == pytest.approx(view.measurement.ctr) and again.cardiac_width_px == pytest.approx(
        result.measurements["cardiac_width_px"])
    assert result.decision == ("cardiomegaly" if result.measurements["ctr"] >= 0.5 else "normal")
    assert result.decision == ("cardiomegaly" if abnormal else "normal")
    assert (result.probability >= result.threshold) == (result.measurements["ctr"] >= 0.5)
    data = result.to_json()
    assert data["kind"] == "measurement" and set(data["measurements"]) == {"ctr", "cardiac_width_px",
                                                                           "thoracic_width_px"}
    assert data["views"][0]["measurement"]["ctr"] == pytest.approx(data["measurements"]["ctr"], abs=1e-4)
    assert data["threshold"] == 0.5 and "clinical rule" in data["threshold_method"]


def test_a_real_chest_is_unlike_its_training_images_and_not_assessable():
    from xray_ai import load_image
    from xray_ai.analysis import analyze

    result = analyze(load_image(REPO / "examples" / "rg1_chest.dcm"), "cardiomegaly",
                     _manager(REPO / "model_registry.json"), model_id=MODEL_ID)
    assert result.decision == "not assessable"
    assert any("rg1_chest.dcm: unlike the images cardiomegaly-ctr-unet was trained on" in r
               for r in result.scope_reasons)


def test_a_view_without_outlines_is_not_assessable_naming_the_file(monkeypatch):
    """Masks that never reach one half: no CTR, and the scope gate says why."""
    from xray_ai.analysis import analyze
    from xray_ai.serving.segmentation import MeasurementOutput

    manager = _manager(REPO / "model_registry.json")
    loaded = manager.get(model_id=MODEL_ID)
    real = loaded.analyzer

    class Faint(type(real)):  # the same analyzer, its masks scaled below one half
        def __call__(self, batch):
            out = real(batch)
            return MeasurementOutput(out.masks * 0.1, out.pooled_features)

    faint = Faint.__new__(Faint)
    faint.__dict__.update(real.__dict__)
    blank = dataclasses.replace(loaded, analyzer=faint)
    monkeypatch.setattr(manager, "get", lambda *a, **k: blank)
    result = analyze(_phantom(True, 21)[0], None, manager, model_id=MODEL_ID)
    assert result.decision == "not assessable" and result.measurements is None
    assert result.views[0].measurement is None
    assert any(r.startswith("chest_21.png: the heart or thorax outline was not found") for r in result.scope_reasons)


def test_heatmap_methods_do_not_apply_to_a_measurement_model():
    from xray_ai.analysis import analyze

    with pytest.raises(ValueError, match="measures the cardiothoracic ratio; it has no heatmap method 'gradcam'"):
        analyze(_phantom(True, 5)[0], None, _manager(REPO / "model_registry.json"), model_id=MODEL_ID,
                method="gradcam")


def test_a_damaged_model_file_means_the_placeholder_never_a_measurement(tmp_path):
    from xray_ai.analysis import analyze

    registry = _copy_registry(tmp_path)
    model_file = tmp_path / SHIPPED["path"]
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated: its sha256 no longer matches
    result = analyze(_phantom(True, 6)[0], None, _manager(registry), model_id=MODEL_ID)
    assert result.placeholder and "sha256" in result.placeholder_reason
    assert result.kind == "measurement" and result.measurements is None
    assert result.views[0].measurement is None and result.finding_level(result.views[0]) is None


def test_a_changed_export_is_refused_and_tensorflow_serves(tmp_path):
    registry = _copy_registry(tmp_path)
    onnx_file = tmp_path / SHIPPED["onnx"]["path"]
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    loaded = _manager(registry).get(model_id=MODEL_ID)
    assert loaded.backend == "tensorflow" and not loaded.placeholder
    assert "was changed" in loaded.backend_reason


def test_predict_on_the_shipped_export_never_imports_tensorflow(tmp_path):
    code = ("import json, sys\nfrom xray_ai.cli import main\ncode = main(sys.argv[1:])\n"
            "print(json.dumps({'code': code, 'tensorflow': 'tensorflow' in sys.modules}))")
    image = REPO / "examples" / "phantom_cardiomegaly_abnormal.dcm"
    done = subprocess.run([sys.executable, "-c", code, "predict", str(image), "--model", MODEL_ID, "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result_line, state_line = done.stdout.strip().rsplit("\n", 1)
    assert json.loads(state_line) == {"code": 0, "tensorflow": False}
    result = json.loads(result_line)
    assert result["backend"] == "onnxruntime" and result["decision"] == "cardiomegaly"
    assert result["measurements"]["ctr"] > 0.5


def test_export_checks_the_conversion_against_tensorflow(tmp_path, keras_mod):
    from xray_ai.measurement.network import build_ctr_unet
    from xray_ai.serving.segmentation import EXPORT_FORMAT, KerasSegmenter, OnnxSegmenter, export_segmenter
    from xray_ai.serving.onnx_session import open_session

    model = build_ctr_unet(32, widths=(4, 8, 8))
    meta = export_segmenter(model, "0" * 64, tmp_path / "tiny.onnx")
    assert meta["format"] == EXPORT_FORMAT and meta["check_max_abs_diff"] <= 1e-4
    x = np.random.default_rng(3).uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
    ours, theirs = OnnxSegmenter(open_session(tmp_path / "tiny.onnx"), tmp_path / "tiny.onnx")(x), KerasSegmenter(model)(x)
    assert ours.masks.shape == (3, 32, 32, 2) and ours.pooled_features.shape == (3, 8)
    np.testing.assert_allclose(ours.masks, theirs.masks, atol=1e-4)


def test_evaluation_and_predict_batch_measure_as_analyze_does(tmp_path):
    """predict_probabilities (evaluate, fit-input-check) and predict-batch's batched forward
    give the CTR model's own probabilities and measurements, not a classifier's."""
    from xray_ai.analysis import analyze, predict_probabilities, result_from_outputs
    from xray_ai.serving.preprocessing import prepare_batch

    manager = _manager(REPO / "model_registry.json")
    loaded = manager.get(model_id=MODEL_ID)
    views = [_phantom(True, 31)[0], _phantom(False, 32)[0], _phantom(True, 33)[0]]
    singles = [analyze(v, None, manager, model_id=MODEL_ID) for v in views]
    np.testing.assert_allclose(predict_probabilities(loaded, [v.pixels for v in views]),
                               [r.probability for r in singles], atol=1e-6)
    batch = prepare_batch([v.pixels for v in views], loaded.entry.input, loaded.entry.preprocessing)
    out = loaded.analyzer(batch)  # one forward for the three "studies", as predict-batch runs them
    from xray_ai.batch.core import _rows

    for k, (view, single) in enumerate(zip(views, singles)):
        result = result_from_outputs(view, loaded, [_rows(out, k, k + 1)], manager, manager.registry)
        assert result.measurements == pytest.approx(single.measurements)
        assert result.decision == single.decision and result.kind == "measurement"


def test_the_performance_page_shows_how_well_it_measures(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("XRAY_AI_REGISTRY", str(REPO / "model_registry.json"))
    at = AppTest.from_file(str(REPO / "app_pages" / "performance.py"), default_timeout=120).run()
    assert not at.exception
    said = [m.value for m in at.markdown if m.value.startswith("**Cardiothoracic ratio**")]
    mae = SHIPPED["metrics"]["measurement"]["ctr_mae"]
    assert len(said) == 1 and f"mean absolute error {mae:.4f}" in said[0] and "decision rule CTR > 0.50" in said[0]
    tiers = at.dataframe[0].value
    assert MODEL_ID in list(tiers["model"])


def test_its_dicom_results_of_a_chest_are_valid_and_hold_the_ctr(tmp_path):
    """SC, Encapsulated PDF and SR of a chest CR (an unpaired part: no Laterality in the SC)."""
    import pydicom

    from test_dicom_results import assert_valid_iod
    from xray_ai import load_image
    from xray_ai.analysis import analyze
    from xray_ai.outputs.dicom_results import write_dicom_results

    source = REPO / "examples" / "phantom_cardiomegaly_abnormal.dcm"
    result = analyze(load_image(source.read_bytes(), filename=source.name), None,
                     _manager(REPO / "model_registry.json"), model_id=MODEL_ID)
    paths = write_dicom_results(result, tmp_path)
    assert len(paths) == 3
    for path in paths:
        assert_valid_iod(path)
    sc = pydicom.dcmread(next(p for p in paths if "_sc_" in p.name))
    assert "Laterality" not in sc and sc.BodyPartExamined == "CHEST"
    sr = pydicom.dcmread(next(p for p in paths if p.name.endswith("_sr.dcm")))
    values = [float(item.MeasuredValueSequence[0].NumericValue) for item in _walk(sr)
              if item.get("ValueType") == "NUM" and "ctr" in item.ConceptNameCodeSequence[0].CodeMeaning.lower()]
    assert any(v == pytest.approx(result.measurements["ctr"], abs=1e-3) for v in values), values


def _walk(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_a_missing_export_is_named_and_tensorflow_serves(tmp_path):
    registry = _copy_registry(tmp_path)
    (tmp_path / SHIPPED["onnx"]["path"]).unlink()
    loaded = _manager(registry).get(model_id=MODEL_ID)
    assert loaded.backend == "tensorflow" and not loaded.placeholder
    assert f"{SHIPPED['onnx']['path']} is missing" in loaded.backend_reason
