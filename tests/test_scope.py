"""The scope gate: which views a model may read, and what a study that has none says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES
from pydicom.data import get_testdata_file

from xray_ai import analyze, load_image
from xray_ai.cli import main
from xray_ai.images import XRay
from xray_ai.registry import Condition, InputSpec, RegistryError, parse_registry
from xray_ai.result import FINDING, NOT_ASSESSABLE, POSSIBLE_FINDING
from xray_ai.scope import dicom_body_parts, view_scope_reasons

CHEST = Condition("pneumonia", "Pneumonia (chest)", "pneumonia", "normal", ("chest",))
UPPER_LIMB = Condition("msk_abnormality", "MSK", "abnormal", "normal",
                       ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist"))
ANY_REGION = Condition("fracture", "Fracture", "fracture", "no fracture")
INPUT_224 = [InputSpec(224, 224, 3)]


def _view(name="scan.dcm", size=(256, 256), **meta) -> XRay:
    return XRay(np.zeros(size, np.float32), metadata={"modality": None, "body_part": None, "colour": False, **meta},
                filename=f"/home/jane_doe/{name}")


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "NM", "PT", "XA", "MG", "OT", "SC", "RF", "XYZ"])
def test_a_modality_that_is_not_a_projection_radiograph_is_refused_by_name(modality):
    (reason,) = view_scope_reasons(_view(modality=modality), ANY_REGION, INPUT_224)
    assert reason.startswith("scan.dcm: ") and f"modality {modality}" in reason and "projection radiograph" in reason
    assert "jane_doe" not in reason  # the file's name, not its path


@pytest.mark.parametrize("modality", ["CR", "DX", "dx", None, ""])
def test_projection_radiographs_and_files_without_a_modality_pass(modality):
    assert view_scope_reasons(_view(modality=modality), ANY_REGION, INPUT_224) == ()


def test_colour_input_check_and_size_each_give_a_reason():
    (colour,) = view_scope_reasons(_view(colour=True), ANY_REGION, INPUT_224)
    assert "colour image" in colour
    checks = [("model-a", 2.5, 1.0), ("model-b", 0.5, 1.0)]
    (unlike,) = view_scope_reasons(_view(), ANY_REGION, INPUT_224, checks)
    assert "model-a" in unlike and "2.50" in unlike and "model-b" not in unlike
    assert view_scope_reasons(_view(size=(112, 400)), ANY_REGION, INPUT_224) == ()  # half the input: enough
    (small,) = view_scope_reasons(_view(size=(111, 400)), ANY_REGION, INPUT_224)
    assert "400 x 111 px is too small" in small and "224 x 224" in small
    # an ensemble: the largest member input decides
    assert view_scope_reasons(_view(size=(100, 100)), ANY_REGION, [InputSpec(128, 128, 1), InputSpec(320, 320, 3)])


def test_dicom_body_part_decides_where_it_names_a_part():
    (reason,) = view_scope_reasons(_view(body_part="KNEE"), CHEST, INPUT_224)
    assert "body part KNEE" in reason and "BodyPartExamined" in reason and "chest" in reason
    assert view_scope_reasons(_view(body_part="CHEST"), CHEST, INPUT_224) == ()
    assert view_scope_reasons(_view(body_part="Thorax"), CHEST, INPUT_224) == ()
    # DICOM wins over the head where it names a part
    assert view_scope_reasons(_view(body_part="CHEST"), CHEST, INPUT_224, head_part=("knee", 0.9)) == ()
    assert view_scope_reasons(_view(body_part="HAND"), ANY_REGION, INPUT_224) == ()  # any region


def test_a_generic_or_missing_body_part_falls_back_to_the_models_head():
    assert dicom_body_parts("EXTREMITY") and dicom_body_parts("") is None and dicom_body_parts("FOO") is None
    # EXTREMITY covers the upper limb and the lower: the head decides
    assert view_scope_reasons(_view(body_part="EXTREMITY"), UPPER_LIMB, INPUT_224, head_part=("wrist", 0.8)) == ()
    (reason,) = view_scope_reasons(_view(body_part="EXTREMITY"), UPPER_LIMB, INPUT_224, head_part=("knee", 0.8))
    assert "body-part head reads a knee (80%)" in reason
    (lower,) = view_scope_reasons(_view(body_part="LOWER EXTREMITY"), UPPER_LIMB, INPUT_224)
    assert "LOWER EXTREMITY" in lower
    assert view_scope_reasons(_view(), UPPER_LIMB, INPUT_224) == ()  # nothing says: the other checks decide
    (unknown,) = view_scope_reasons(_view(body_part="GOUTYTOE"), UPPER_LIMB, INPUT_224)
    assert "GOUTYTOE" in unknown


def test_registry_conditions_carry_an_optional_body_part_scope(tmp_path):
    from conftest import write_tiny_registry

    raw = json.loads(write_tiny_registry(tmp_path, None, sha256="0" * 64).read_text())
    raw["conditions"]["fracture"]["body_parts"] = ["wrist", "hand"]
    registry = parse_registry(raw)
    assert registry.condition("fracture").body_parts == ("wrist", "hand")
    assert registry.to_dict()["conditions"]["fracture"]["body_parts"] == ["wrist", "hand"]
    for bad in ([], ["Wrist"], "wrist", [""]):
        raw["conditions"]["fracture"]["body_parts"] = bad
        with pytest.raises(RegistryError, match="body_parts"):
            parse_registry(raw)


def test_a_study_is_scored_on_its_assessable_views_only(tiny_registry):
    from xray_ai.serving.manager import ModelManager

    manager = ModelManager(tiny_registry)
    in_scope = load_image(EXAMPLES / "rg3_tibia.png")
    ct = load_image(get_testdata_file("CT_small.dcm"))
    alone = analyze(in_scope, "fracture", manager=manager)
    both = analyze([ct, in_scope], "fracture", manager=manager)
    assert both.assessable and [v.assessable for v in both.views] == [False, True]
    assert both.probability == pytest.approx(alone.probability, abs=1e-6)
    assert both.decision in ("fracture", "no fracture")
    assert any("1 of 2 views are out of the model's scope" in w for w in both.warnings)

    only_ct = analyze(ct, "fracture", manager=manager)
    assert not only_ct.assessable and only_ct.decision == NOT_ASSESSABLE and not only_ct.is_positive
    assert only_ct.probability == pytest.approx(only_ct.views[0].probability)  # kept for the record
    assert "CT_small.dcm: DICOM modality CT" in only_ct.scope_reasons[0]
    assert only_ct.finding_level(only_ct.views[0]) is None


def test_finding_levels_follow_the_two_operating_points(tiny_registry):
    import dataclasses

    from xray_ai.serving.manager import ModelManager

    result = analyze(load_image(EXAMPLES / "rg3_tibia.png"), "fracture", manager=ModelManager(tiny_registry))
    view = result.views[0]
    at = dataclasses.replace(result, threshold=0.6, high_sensitivity_threshold=0.3)
    assert at.finding_level(dataclasses.replace(view, probability=0.6)) == FINDING
    assert at.finding_level(dataclasses.replace(view, probability=0.45)) == POSSIBLE_FINDING
    assert at.finding_level(dataclasses.replace(view, probability=0.29)) is None
    assert dataclasses.replace(at, high_sensitivity_threshold=None).finding_level(
        dataclasses.replace(view, probability=0.45)) is None
    assert dataclasses.replace(at, placeholder=True).finding_level(dataclasses.replace(view, probability=0.9)) is None
    out = dataclasses.replace(view, probability=0.9, scope_reasons=("x: too small",))
    assert at.finding_level(out) is None


def test_predict_json_says_not_assessable_and_exits_0(tiny_registry, capsys):
    ct = get_testdata_file("CT_small.dcm")
    assert main(["predict", ct, "--condition", "fracture", "--json", "--registry", str(tiny_registry)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["assessable"] is False and result["decision"] == "not assessable"
    assert result["probability_reliable"] is False and 0 <= result["probability"] <= 1
    (view,) = result["views"]
    assert view["assessable"] is False and any("modality CT" in r for r in view["scope_reasons"])
    assert main(["predict", ct, "--condition", "fracture", "--registry", str(tiny_registry)]) == 0
    text = capsys.readouterr().out
    assert "NOT ASSESSABLE" in text and "modality CT" in text and "fracture (probability" not in text


def test_predict_json_of_an_in_scope_image_is_assessable(tiny_registry, capsys):
    assert main(["predict", str(EXAMPLES / "rg3_tibia.png"), "--condition", "fracture", "--json",
                 "--registry", str(tiny_registry)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["assessable"] is True and result["probability_reliable"] is True
    assert result["views"][0]["scope_reasons"] == [] and result["decision"] in ("fracture", "no fracture")


@pytest.mark.parametrize("image, condition, expect", [
    ("rg1_chest.dcm", "pneumonia", "unlike the images"),
    ("rg1_chest.dcm", "osteoporosis", "body part CHEST"),
    ("CT_small.dcm", "fracture", "modality CT"),
    ("US1_J2KR.dcm", "fracture", "modality US"),
])
def test_shipped_models_refuse_real_and_non_radiograph_images(image, condition, expect):
    """The images issue 15 found given confident answers: none carries a decision now."""
    path = EXAMPLES / image if (EXAMPLES / image).exists() else get_testdata_file(image)
    result = analyze(load_image(path), condition)
    assert result.decision == NOT_ASSESSABLE and not result.placeholder
    assert any(expect in r for r in result.scope_reasons), result.scope_reasons


def test_warnings_and_reasons_name_files_without_their_folders(tiny_registry):
    """Folders often carry patient names: the result (and so the JSON and the PDF) names a
    view by its file name only."""
    from xray_ai.outputs.report import build_report
    from xray_ai.serving.manager import ModelManager
    from test_report import flat, pdf_text

    base = load_image(EXAMPLES / "rg3_tibia.png")
    named = XRay(base.pixels, {**base.metadata, "warnings": ["a loader note"]}, "/home/DOE_JANE_1970/scan.png")
    result = analyze(named, "fracture", manager=ModelManager(tiny_registry))
    assert "scan.png: a loader note" in result.warnings
    assert not any("DOE_JANE" in w for w in result.warnings + result.scope_reasons)
    text = flat(pdf_text(build_report(result)))
    assert "a loader note" in text and text.count("a loader note") == 1 and "DOE_JANE" not in text
