"""The tiers side by side (xray_ai.registry.comparison): what the performance page's first
table and the README Status table show."""

import json

from conftest import write_tiny_registry

from xray_ai.registry import load_registry
from xray_ai.registry.comparison import tier_comparison


def _registry(tmp_path):
    path = write_tiny_registry(tmp_path, None, sha256="0" * 64)
    raw = json.loads(path.read_text())
    fast = raw["models"]["tiny-test"]
    fast["metrics"] = {"split": "test", "n": 100, "auc": 0.9, "accuracy": 0.8, "kappa": 0.6,
                       "ci95": {"auc": [0.85, 0.95], "accuracy": [0.7, 0.9]},
                       "localisation": {"pointing_game_tolerant": 0.7}}
    intensive = dict(fast, profile="intensive", version="0.0.2-test", metrics={"split": "test", "auc": 0.95})
    second_fast = dict(fast, metrics={})
    raw["models"].update({"big-test": intensive, "another-fast": second_fast})
    raw["models"]["pair"] = {"condition": "fracture", "kind": "ensemble", "members": ["tiny-test", "big-test"],
                             "version": "1", "threshold": 0.5, "threshold_method": "fixed", "profile": "fast",
                             "trained_on": {"dataset": "test fixture", "version": "", "synthetic": True},
                             "intended_use": "unit tests only", "created": "2026-12-02",
                             "input": fast["input"], "metrics": {}}
    raw["conditions"]["pneumonia"] = {"name": "Pneumonia", "positive_label": "pneumonia", "negative_label": "normal"}
    path.write_text(json.dumps(raw))
    return load_registry(path)


def test_each_condition_has_both_tiers_intensive_first_active_first(tmp_path):
    rows = tier_comparison(_registry(tmp_path))
    said = [(r.condition, r.tier, r.model_id) for r in rows]
    assert said == [("fracture", "intensive", "big-test"), ("fracture", "fast", "tiny-test"),
                    ("fracture", "fast", "another-fast"), ("pneumonia", "intensive", None), ("pneumonia", "fast", None)]
    assert [r.active for r in rows[:3]] == [False, True, False]  # ensembles are not a tier's model


def test_cells_come_from_the_registry_and_stay_empty_where_it_holds_nothing(tmp_path):
    rows = tier_comparison(_registry(tmp_path), {"tiny-test": {"default": "gradcam",
                                                               "methods": {"gradcam": {"seconds_per_image": 0.012}}}})
    fast = rows[1].as_table_row()
    assert fast["model"] == "tiny-test (active)"
    assert fast["test AUC (95% CI)"] == "0.900 (0.850-0.950)" and fast["accuracy (95% CI)"] == "0.800 (0.700-0.900)"
    assert fast["kappa"] == "0.600" and fast["pointing 15 px"] == "0.70" and fast["ms per map"] == "12.0"
    intensive = rows[0].as_table_row()
    assert intensive["test AUC (95% CI)"] == "0.950" and intensive["kappa"] == "" and intensive["ms per map"] == ""
    assert rows[3].as_table_row()["model"] == "none registered"
