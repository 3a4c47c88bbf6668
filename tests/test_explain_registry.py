"""The registry's optional `heatmap` field, explain-eval's choice on the validation split and
its test table, and the end-of-run choice of `train`."""

import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import assert_registry_refused, bright_square_data, write_tiny_registry
from xray_ai.cli.entry import main
from xray_ai.explain.cam_math import HeatmapSpec
from xray_ai.registry import load_registry, save_registry

FIELD = {"method": "layercam", "layers": ["conv1"], "contour_level": 0.4, "chosen_on": "validation split",
         "pointing_game_tolerant": 0.9}


def _registry_with(tmp_path, field):
    path = write_tiny_registry(tmp_path, tmp_path / "tiny.keras", sha256=None)
    raw = json.loads(path.read_text())
    raw["models"]["tiny-test"]["heatmap"] = field
    path.write_text(json.dumps(raw))
    return path, raw


def test_an_entry_without_the_field_keeps_gradcam_and_writes_none(tmp_path):
    path = write_tiny_registry(tmp_path, tmp_path / "tiny.keras", sha256=None)
    entry = load_registry(path).model("tiny-test")
    assert entry.heatmap is None and "heatmap" not in entry.to_dict()


def test_the_field_parses_and_saves_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    path, _ = _registry_with(tmp_path, FIELD)
    registry = load_registry(path)
    spec = registry.model("tiny-test").heatmap
    assert spec == HeatmapSpec("layercam", ("conv1",)) and spec.contour_level == 0.4
    save_registry(registry.with_active("fracture", "tiny-test"), path)
    assert json.loads(path.read_text())["models"]["tiny-test"]["heatmap"] == FIELD


@pytest.mark.parametrize("field,message", [
    ({"method": "occlusion", "layers": ["conv1"]}, "models.tiny-test.heatmap: method 'occlusion' is not one of"),
    ({"layers": ["conv1"]}, "models.tiny-test.heatmap: method: missing"),
    ({"method": "layercam", "layers": "conv1"}, "models.tiny-test.heatmap: layers: must be a list"),
    ({"method": "layercam", "layers": ["conv1"], "contour_level": 2}, "models.tiny-test.heatmap: contour_level"),
    ("layercam", "models.tiny-test.heatmap: must be an object"),
])
def test_a_bad_field_names_itself(tmp_path, field, message):
    _, raw = _registry_with(tmp_path, field)
    assert_registry_refused(tmp_path, raw, message)


def test_an_ensemble_has_no_heatmap_of_its_own(tmp_path):
    _, raw = _registry_with(tmp_path, FIELD)
    member = dict(raw["models"]["tiny-test"])
    member.pop("heatmap")
    raw["models"]["tiny-2"] = member
    raw["models"]["ens"] = {k: v for k, v in member.items() if k not in ("path", "sha256", "preprocessing")}
    raw["models"]["ens"].update(kind="ensemble", architecture="ensemble", members=["tiny-test", "tiny-2"], heatmap=FIELD)
    assert_registry_refused(tmp_path, raw, "models.ens.heatmap: an ensemble has no heatmap setting of its own")


def test_candidates_are_each_method_at_the_three_coarsest_strides_and_fusions_cheapest_first():
    from xray_ai.explain.choose import candidate_settings

    settings = candidate_settings({32: "top", 16: "mid", 8: "low", 4: "early", 1: "input_norm"})
    assert list(settings)[:3] == ["gradcam@32", "hirescam@32", "layercam@32"]
    assert set(settings) == {f"{m}@{s}" for m in ("gradcam", "hirescam", "layercam") for s in ("32", "16", "8", "16+8")} | {
        "layercam@32+16+8"}
    assert settings["layercam@16+8"] == HeatmapSpec("layercam", ("mid", "low"))


def _square_dataset(root, n_per_split=8, seed=0):
    """A class-folder dataset of bright-square images with their masks, as the phantoms lay out."""
    x, y, boxes = bright_square_data(3 * n_per_split, seed=seed)
    for i in range(len(y)):
        split = ("train", "valid", "test")[i // n_per_split]
        label = "fracture" if y[i] else "no fracture"
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), np.round(x[i, :, :, 0] * 255).astype(np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        if y[i]:
            r, c = boxes[i]
            mask[r : r + 8, c : c + 8] = 255
        cv2.imwrite(str(folder / f"img{i:03d}_mask.png"), mask)
    return root


def test_explain_eval_chooses_on_validation_writes_the_registry_then_adds_test_figures(tiny_registry, tmp_path,
                                                                                       capsys, monkeypatch):
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    data = _square_dataset(tmp_path / "squares")
    assert main(["explain-eval", "--model", "tiny-test", "--data", str(data), "--split", "valid", "--max-images", "0",
                 "--write-registry", "--registry", str(tiny_registry)]) == 0
    out = capsys.readouterr().out
    assert "gradcam@2" in out and "layercam@2+1" in out and "chosen:" in out
    field = json.loads(tiny_registry.read_text())["models"]["tiny-test"]["heatmap"]
    assert field["chosen_on"] == "validation split" and field["n"] == 4
    assert field["method"] in ("gradcam", "hirescam", "layercam") and field["layers"]
    assert field["contour_level"] in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    best = max(field["candidates"].values())
    assert field["pointing_game_tolerant"] == best  # the winner has the best 15-px pointing game
    choice = json.loads((tmp_path / "tiny.heatmap-choice.json").read_text())
    assert choice["split"] == "valid" and choice["chosen"] in choice["settings"]

    assert main(["explain-eval", "--model", "tiny-test", "--data", str(data), "--methods", "gradcam", "layercam@1",
                 choice["chosen"], "--faithfulness-images", "2", "--write-registry",
                 "--registry", str(tiny_registry)]) == 0
    table = capsys.readouterr().out
    assert f"{choice['chosen']} *" in table
    report = json.loads((tmp_path / "tiny.explain.json").read_text())
    assert report["split"] == "test" and report["default"] == choice["chosen"]
    assert set(report["methods"]) == {"gradcam", "layercam@1", choice["chosen"]}
    assert all(r["n_faithfulness"] == 2 and r["n"] == 4 for r in report["methods"].values())
    test = json.loads(tiny_registry.read_text())["models"]["tiny-test"]["heatmap"]["test"]
    assert test["split"] == "test" and test["n"] == 4
    assert test["pointing_game_tolerant"] == pytest.approx(report["methods"][choice["chosen"]]["pointing_game_tolerant"],
                                                           abs=1e-4)

    from xray_ai.explain.evaluate import read_heatmap_table

    _, rows = read_heatmap_table(tmp_path / "tiny.keras")
    assert [r["method"] for r in rows if r["method"].endswith("(default)")] == [f"{choice['chosen']} (default)"]


def test_explain_eval_refuses_unknown_settings_and_data_not_the_models(tiny_registry, tmp_path, capsys):
    data = _square_dataset(tmp_path / "squares")
    assert main(["explain-eval", "--model", "tiny-test", "--data", str(data), "--methods", "layercam@64",
                 "--registry", str(tiny_registry)]) == 2
    assert "layercam@64: unknown" in capsys.readouterr().err
    raw = json.loads(tiny_registry.read_text())
    raw["models"]["tiny-test"]["metrics"] = {"split": "test", "n": 99, "training": {"train_images": 8, "valid_images": 8}}
    tiny_registry.write_text(json.dumps(raw))
    assert main(["explain-eval", "--model", "tiny-test", "--data", str(data), "--split", "valid", "--write-registry",
                 "--registry", str(tiny_registry)]) == 2
    assert "test 8 (recorded 99)" in capsys.readouterr().err


def test_train_chooses_the_default_heatmap_on_validation(tmp_path, flat_model, monkeypatch):
    """The end-of-run step: chosen on the validation split, its test figures added after."""
    import pandas as pd

    import xray_ai.training.held_out as held_out
    from xray_ai.registry import InputSpec
    from xray_ai.training.datasets import read_folders

    data = _square_dataset(tmp_path / "squares")
    df = read_folders(data, "no fracture", "fracture")
    parts = {s: df[df["split"] == s].reset_index(drop=True) for s in ("train", "valid", "test")}
    seen = []
    real = held_out.lesion_cases
    monkeypatch.setattr(held_out, "lesion_cases", lambda rows, *a, **k: seen.append(set(rows["split"])) or real(rows, *a, **k))
    spec = held_out.choose_default_heatmap(flat_model, parts, InputSpec(32, 32, 1), data="squares")
    assert seen == [{"valid"}, {"test"}]  # chosen on validation; test measured afterwards
    assert spec.provenance["chosen_on"] == "validation split" and spec.provenance["test"]["n"] == 4
    no_masks = {k: v.assign(mask_path=pd.NA) for k, v in parts.items()}
    assert held_out.choose_default_heatmap(flat_model, no_masks, InputSpec(32, 32, 1)) is None
