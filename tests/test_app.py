"""Every page through Streamlit's own AppTest, against a temporary registry with a tiny verified model."""

import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from conftest import EXAMPLES, REPO, write_tiny_registry
from xray_ai.auth import hash_password

TIMEOUT = 120
METRICS = {
    "split": "test", "n": 200, "auc": 0.91, "accuracy": 0.85, "sensitivity": 0.8, "specificity": 0.9, "kappa": 0.7,
    "ci95": {"auc": [0.87, 0.95]},
    "roc": {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0]},
    "confusion_matrix": {"tn": 90, "fp": 10, "fn": 20, "tp": 80},
    "calibration": {"mean_predicted": [0.1, 0.5, 0.9], "fraction_positive": [0.12, 0.45, 0.88]},
    "per_body_part": {"wrist": {"n": 100, "auc": 0.93}, "hand": {"n": 100, "auc": 0.88}},
    "localisation": {"n": 90, "pointing_game": 0.41, "pointing_game_tolerant": 0.77, "pointing_tolerance": 15 / 224},
    "body_part": {"split": "test", "n": 200, "accuracy": 0.985, "classes": ["hand", "wrist"]},
}


@pytest.fixture()
def app_registry(tiny_registry, monkeypatch):
    raw = json.loads(tiny_registry.read_text())
    raw["models"]["tiny-test"]["metrics"] = METRICS
    tiny_registry.write_text(json.dumps(raw))
    monkeypatch.setenv("XRAY_AI_REGISTRY", str(tiny_registry))
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tiny_registry.parent / "audit.sqlite3"))
    monkeypatch.delenv("XRAY_AI_ADMIN_PASSWORD_HASH", raising=False)
    return tiny_registry


def page(name):
    return AppTest.from_file(str(REPO / "app_pages" / name), default_timeout=TIMEOUT)


def shown(elements):
    """Elements' text as a reader sees it: Markdown source with ui.text.plain's backslash
    escapes undone (the escapes themselves are tested in tests/test_auth.py)."""
    return re.sub(r"\\(.)", r"\1", " ".join(e.value for e in elements))


def text_of(at):
    return shown(e for kind in ("markdown", "caption", "error", "warning", "info", "success") for e in getattr(at, kind))


def test_entry_script_runs_and_shows_the_disclaimer(app_registry):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "not a diagnosis" in text_of(at)


def test_example_gives_probability_and_download(app_registry):
    at = page("analyse.py").run()
    assert "Try an example" in [b.label for b in at.button]
    at.button(key="analyse.example").click().run()
    assert not at.exception
    metric = at.metric[0]
    assert metric.value in ("fracture", "no fracture") and "probability" in metric.delta
    assert "tiny-test" in text_of(at) and "threshold" in text_of(at)
    assert at.get("download_button"), "the PDF download button is missing"


def test_synthetic_training_data_is_said_once_as_a_neutral_note(app_registry):
    """The tiny model is marked synthetic: one info note says so (not a banner and a repeat),
    and it does not look like the out-of-scope reasons (error colour) or a warning."""
    at = page("analyse.py").run()
    at.button(key="analyse.example").click().run()
    assert not at.exception
    said = [w.value for w in at.info if "synthetic data" in w.value]
    assert len(said) == 1 and "tiny-test" in said[0], said
    assert not [w for kind in ("warning", "error") for w in getattr(at, kind) if "synthetic data" in w.value]


def test_moving_the_slider_does_not_rerun_the_model(app_registry, monkeypatch):
    import xray_ai.analysis as analysis

    calls = []
    real = analysis.analyze
    monkeypatch.setattr(analysis, "analyze", lambda *a, **k: calls.append(1) or real(*a, **k))
    at = page("analyse.py").run()
    at.button(key="analyse.example").click().run()
    assert len(calls) == 1
    at.slider(key="analyse.intensity").set_value(0.9).run()
    at.toggle(key="analyse.annotate").set_value(False).run()
    at.toggle(key="analyse.heatmap").set_value(False).run()
    assert not at.exception and len(calls) == 1


def test_a_body_part_head_is_shown_with_the_result(app_registry, tiny_model_file):
    import numpy as np

    from xray_ai.serving import body_part

    # (written before the app first loads the model: the manager reads it at load, as the input check)
    body_part.save(body_part.BodyPartHead(("elbow", "wrist"), np.ones((8, 2)), np.array([0.0, 1.0]),
                                          tiny_model_file[1]), app_registry.parent / "tiny.bodypart.npz")
    at = page("analyse.py").run()
    at.button(key="analyse.example").click().run()
    assert not at.exception
    assert "**Body part:** wrist (" in text_of(at) and "the model's own estimate" in text_of(at)


def test_bad_upload_shows_an_error_and_the_good_one_is_analysed(app_registry):
    at = page("analyse.py").run()
    good = (EXAMPLES / "rg3_tibia.png").read_bytes()
    at.file_uploader(key="analyse.uploads").set_value(
        [("broken.dcm", b"not a dicom at all", "application/dicom"), ("tibia.png", good, "image/png")]
    ).run()
    assert not at.exception
    errors = shown(at.error)
    assert "broken.dcm" in errors
    assert at.metric, "the readable upload was not analysed"


def test_missing_model_file_shows_the_placeholder_banner(tmp_path, monkeypatch):
    registry = write_tiny_registry(tmp_path, tmp_path / "gone.keras", sha256=None)
    monkeypatch.setenv("XRAY_AI_REGISTRY", str(registry))
    at = page("analyse.py").run()
    at.button(key="analyse.example").click().run()
    errors = shown(at.error)
    assert "PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT" in errors and "gone.keras not found" in errors


def test_invalid_registry_is_an_error_not_a_traceback(tmp_path, monkeypatch):
    bad = tmp_path / "registry.json"
    bad.write_text('{"schema_version": 1, "conditions": {}}')
    monkeypatch.setenv("XRAY_AI_REGISTRY", str(bad))
    for name in ("analyse.py", "registry.py", "performance.py", "about.py"):
        at = page(name).run()
        assert not at.exception, name
        assert "registry is invalid" in shown(at.error), name


def test_registry_page_is_read_only_without_a_password(app_registry):
    at = page("registry.py").run()
    assert not at.exception
    assert "Read-only" in " ".join(i.value for i in at.info)
    assert "registry.activate" not in [b.key for b in at.button]
    assert "tiny-test" in str(at.dataframe[0].value)


def test_registry_page_edits_with_the_password_and_audits(app_registry, monkeypatch):
    monkeypatch.setenv("XRAY_AI_ADMIN_PASSWORD_HASH", hash_password("s3cret", iterations=100_000))
    at = page("registry.py").run()
    at.text_input(key="admin.name_input").set_value("Dr Admin")
    at.text_input(key="admin.password").set_value("wrong")
    at.button[0].click().run()
    assert "Wrong administrator password" in shown(at.error)
    at.text_input(key="admin.password").set_value("s3cret")
    at.button[0].click().run()
    assert not at.exception
    at.number_input(key="registry.t.tiny-test").set_value(0.3)
    at.text_input(key="registry.m.tiny-test").set_value("chosen by test")
    at.button(key="registry.save").click().run()
    assert not at.exception
    assert "0.5 -> 0.3" in " ".join(s.value for s in at.success)
    saved = json.loads(app_registry.read_text())["models"]["tiny-test"]
    assert saved["threshold"] == 0.3 and saved["threshold_method"] == "chosen by test"
    from xray_ai.registry import read_audit_log

    assert read_audit_log(app_registry)[0]["user"] == "Dr Admin"


def test_performance_page_plots_stored_metrics(app_registry):
    scores = {"pointing_game": 0.8, "energy_inside": 0.4, "deletion_auc": 0.2, "insertion_auc": 0.7,
              "seconds_per_image": 0.05}
    (app_registry.parent / "tiny.explain.json").write_text(
        json.dumps({"model_id": "tiny-test", "n_images": 12, "methods": {"gradcam": scores}}))
    at = page("performance.py").run()
    assert not at.exception
    assert len(at.get("vega_lite_chart")) == 2  # ROC and calibration
    table = at.table[0].value
    assert table.loc["actual positive", "predicted positive"] == 80
    tiers = at.dataframe[0].value  # the tiers side by side, first on the page
    assert list(tiers["tier"]) == ["intensive", "fast"]
    assert list(tiers["model"]) == ["none registered", "tiny-test (active)"]
    assert tiers["pointing 15 px"][1] == "0.77" and tiers["test AUC (95% CI)"][1].endswith("(0.870-0.950)")
    assert "0.870 - 0.950" in str(at.dataframe[1].value)
    assert at.dataframe[-1].value.loc["gradcam", "pointing_game"] == 0.8  # heatmap-trust table
    said = text_of(at)
    assert "pointing game** (heatmap peak inside the lesion mask, 90 abnormal images): 0.41; within 15 px" in said
    assert "**Body-part head:** accuracy 0.985 on 200 test images (hand, wrist)" in said


def test_about_page_lists_models_and_their_data(app_registry):
    at = page("about.py").run()
    assert not at.exception
    assert "test fixture" in str(at.dataframe[0].value)


def test_first_paint_does_not_import_tensorflow():
    """The landing page renders before any model (and tensorflow) is loaded."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=60).run()\n"
        "assert not at.exception\nprint('tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_condition_without_models_is_explained(app_registry):
    raw = json.loads(app_registry.read_text())
    raw["conditions"]["pneumonia"] = {"name": "Pneumonia", "positive_label": "pneumonia", "negative_label": "normal"}
    app_registry.write_text(json.dumps(raw))
    at = page("analyse.py").run()
    at.selectbox(key="analyse.condition").set_value("pneumonia").run()
    assert not at.exception
    assert "No model is registered for this condition" in " ".join(i.value for i in at.info)


def test_choosing_another_heatmap_method(app_registry):
    at = page("analyse.py").run()
    at.button(key="analyse.example").click().run()
    at.selectbox(key="analyse.method").set_value("saliency").run()
    assert not at.exception
    assert "**Heatmap:** saliency (input space)" in text_of(at)


def test_bad_backend_setting_is_an_error_not_a_traceback(app_registry, monkeypatch):
    monkeypatch.setenv("XRAY_AI_BACKEND", "cuda-magic")
    at = page("analyse.py").run()
    assert not at.exception
    assert "misconfigured" in shown(at.error) and "cuda-magic" in shown(at.error)


# --- scope: "Not assessable" instead of a confident answer (issue 15) ----------------------

from ui.examples import examples_for  # noqa: E402
from ui.result_view import NOT_ASSESSABLE_CARD_KEY, NOT_ASSESSABLE_TITLE, UNRELIABLE_EXPANDER  # noqa: E402


@pytest.fixture()
def shipped_registry(tmp_path, monkeypatch):
    """The repository's own registry and shipped models (read only; the audit log elsewhere)."""
    monkeypatch.delenv("XRAY_AI_REGISTRY", raising=False)
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    return REPO / "model_registry.json"


def _blocks(node):
    for child in getattr(node, "children", {}).values():
        yield child
        yield from _blocks(child)


_TEXTS = ("Markdown", "Caption", "Title", "Header", "Subheader", "Text", "Metric", "Error", "Warning", "Info",
          "Success", "Table")


def _outside_expanders(node):
    for child in getattr(node, "children", {}).values():
        if type(child).__name__ == "Expander":
            continue
        yield child
        yield from _outside_expanders(child)


def _card(at):
    """The grey "Not assessable" container, or None."""
    found = [b for b in _blocks(at.main) if getattr(getattr(b, "proto", None), "id", "").endswith(
        f"-{NOT_ASSESSABLE_CARD_KEY}")]
    assert len(found) <= 1
    return found[0] if found else None


def _upload(at, *names):
    from pydicom.data import get_testdata_file

    files = []
    for name in names:
        path = EXAMPLES / name if (EXAMPLES / name).is_file() else get_testdata_file(name)
        files.append((name, open(path, "rb").read(), "application/dicom"))
    return at.file_uploader(key="analyse.uploads").set_value(files).run()


def _assert_not_assessable(at, reason_part, decision_labels):
    assert not at.exception
    card = _card(at)
    assert card is not None, "no Not assessable card"
    assert f":gray[{NOT_ASSESSABLE_TITLE}]" in " ".join(m.value for m in card.markdown)
    reasons = shown(card.error)  # the reasons, in error colour, inside the card
    assert reason_part in reasons, reasons
    assert not at.metric, "a decision headline is shown"
    assert [e.label for e in at.expander] == [UNRELIABLE_EXPANDER]
    # the model's output (a percentage) only inside the expander; no decision label as a headline
    outside = [str(e.value) for e in _outside_expanders(at.main) if type(e).__name__ in _TEXTS]
    inside = " ".join(m.value for m in at.expander[0].markdown)
    assert re.search(r"probability \d+\.\d%", inside), inside
    assert not [t for t in outside if re.search(r"\d+\.\d%", t)], outside
    for label in decision_labels:
        assert not [t for t in outside if t.strip(" #*") == label], label  # the result.decision it would be


def test_the_example_on_the_default_condition_is_assessable_with_a_decision(shipped_registry):
    at = page("analyse.py").run()
    condition = at.selectbox(key="analyse.condition").value
    choice = at.selectbox(key=f"analyse.example_choice.{condition}")
    assert choice.value.file.startswith(f"phantom_{condition}_") and "synthetic phantom" in choice.value.label
    at.button(key="analyse.example").click().run()
    assert not at.exception
    assert _card(at) is None and not at.expander
    assert len(at.metric) == 1 and at.metric[0].value in ("abnormal", "normal"), at.metric
    assert "probability" in at.metric[0].delta
    assert not [e.value for e in at.error], "the default example is out of scope"
    assert "**Automatic marks.** Solid box" in text_of(at)


def test_the_picker_offers_a_conditions_phantoms_then_the_real_radiographs(shipped_registry):
    from xray_ai.registry import load_registry

    for condition in load_registry(shipped_registry).conditions:
        offered = examples_for(condition)
        phantoms = [e for e in offered if e.condition == condition]
        assert phantoms and offered[: len(phantoms)] == phantoms, condition
        real = {e.file: e.label for e in offered if e.condition is None}
        assert set(real) == {"rg1_chest.dcm", "rg3_tibia.dcm"}, condition
        assert all(label.startswith("real radiograph: out of scope for the synthetic-data models")
                   for label in real.values())


def test_a_real_chest_under_pneumonia_is_not_assessable(shipped_registry):
    at = page("analyse.py").run()
    at.selectbox(key="analyse.condition").set_value("pneumonia").run()
    choice = at.selectbox(key="analyse.example_choice.pneumonia")
    real = [e for e in examples_for("pneumonia") if e.file == "rg1_chest.dcm"]
    choice.set_value(real[0]).run()
    at.button(key="analyse.example").click().run()
    _assert_not_assessable(at, "rg1_chest.dcm: unlike the images pneumonia-mobilenetv2-fast was trained on",
                           ("pneumonia", "normal"))
    assert "UNLIKE THE IMAGES" not in " ".join(w.value for w in at.warning)  # said once, in the card
    assert at.get("download_button"), "the PDF download button is missing"


def test_a_ct_slice_is_not_assessable_and_names_ct(app_registry):
    at = _upload(page("analyse.py").run(), "CT_small.dcm")
    _assert_not_assessable(at, "CT_small.dcm: DICOM modality CT (computed tomography) is not a projection radiograph",
                           ("fracture", "no fracture"))


def test_a_view_out_of_scope_is_named_and_not_counted(app_registry):
    at = _upload(page("analyse.py").run(), "phantom_fracture_abnormal.dcm", "CT_small.dcm")
    assert not at.exception
    assert _card(at) is None and len(at.metric) == 1 and "mean of 1 of 2 views" in at.metric[0].delta
    errors = shown(at.error)
    assert "**Not counted:** 1 of 2 views" in errors and "CT_small.dcm: DICOM modality CT" in errors
    assert list(at.table[0].value["counted"]) == ["yes", "no: out of scope"]
    # its heatmap only in the unreliable-output expander
    assert [e.label for e in at.expander] == [UNRELIABLE_EXPANDER]
    captions = [re.sub(r"\\(.)", r"\1", img.caption)  # Markdown captions: plain's escapes undone
                for b in _blocks(at.expander[0]) if type(b).__name__ == "Image" for img in b.proto.imgs]
    assert len(captions) == 1 and "CT_small.dcm: heatmap, model output" in captions[0]


@pytest.mark.parametrize("threshold, high_sensitivity, level", [
    (1e-6, None, "finding"),               # at or above the operating point: a solid box
    (1 - 1e-6, 1e-6, "possible finding"),  # between the two points: a dotted box
    (1 - 1e-6, None, None),                # below both: none
])
def test_automatic_marks_are_the_results_finding_levels(app_registry, monkeypatch, threshold, high_sensitivity, level):
    """The page draws what AnalysisResult.finding_level says, and nothing when not assessable."""
    import ui.result_view as view_module
    import xray_ai.analysis as analysis

    raw = json.loads(app_registry.read_text())
    raw["models"]["tiny-test"]["threshold"] = threshold
    if high_sensitivity is not None:
        raw["models"]["tiny-test"]["metrics"]["high_sensitivity_operating_point"] = {
            "threshold": high_sensitivity, "method": "test fixture"}
    app_registry.write_text(json.dumps(raw))
    drawn, results = [], []
    real_render, real_analyze = view_module.render_overlay, analysis.analyze
    monkeypatch.setattr(view_module, "render_overlay", lambda *a, **k: drawn.append(k.get("finding")) or real_render(*a, **k))
    monkeypatch.setattr(analysis, "analyze", lambda *a, **k: results.append(real_analyze(*a, **k)) or results[-1])
    at = page("analyse.py").run()
    at.button(key="analyse.example").click().run()
    assert not at.exception and drawn
    assert results[-1].finding_level(results[-1].views[0]) == level
    assert set(drawn) == {level}
    assert (f"· {level}" in text_of(at)) == (level is not None)  # the view's caption names its mark
    drawn.clear()
    _upload(at, "CT_small.dcm")
    assert not at.exception and drawn and set(drawn) == {None}
