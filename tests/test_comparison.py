"""The tiers side by side (xray_ai.registry.comparison): what the performance page's first
table and the README Status table show."""

import json

from conftest import write_tiny_registry

from xray_ai.registry import load_registry
from xray_ai.registry.comparison import SPEED_FILE, TIERS_SUFFIX, read_speeds, tier_comparison


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
    registry = _registry(tmp_path)
    speeds = {"tiny-test": {"sha256": registry.models["tiny-test"].sha256, "ms_median": 12.04},
              "big-test": {"sha256": "1" * 64, "ms_median": 30.0}}  # measured on another file: not used
    rows = tier_comparison(registry, speeds)
    fast = rows[1].as_table_row()
    assert fast["model"] == "tiny-test (active)"
    assert fast["test AUC (95% CI)"] == "0.900 (0.850-0.950)" and fast["accuracy (95% CI)"] == "0.800 (0.700-0.900)"
    assert fast["kappa"] == "0.600" and fast["pointing 15 px"] == "0.70" and fast["ms per analysis"] == "12.0"
    intensive = rows[0].as_table_row()
    assert intensive["test AUC (95% CI)"] == "0.950" and intensive["kappa"] == "" and intensive["ms per analysis"] == ""
    assert rows[3].as_table_row()["model"] == "none registered"


def test_speeds_are_read_from_the_benchmark_record_and_a_missing_one_is_empty(tmp_path):
    record = tmp_path / "analysis_speed.json"
    record.write_text(json.dumps({"measured": "2026-12-02", "models": {"a": {"sha256": "0" * 64, "ms_median": 9.5}}}))
    assert read_speeds(record) == {"a": {"sha256": "0" * 64, "ms_median": 9.5}}
    assert read_speeds(tmp_path / "absent.json") == {}
    record.write_text("not json")
    assert read_speeds(record) == {}


def test_the_shipped_speed_record_covers_every_shipped_model_file():
    """models/analysis_speed.json was measured on the files the registry names (rerun
    benchmarks/tier_speed.py --write when a model changes)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    registry = load_registry(repo / "model_registry.json")
    speeds = read_speeds(repo / SPEED_FILE)
    stale = [m.id for m in registry.models.values()
             if not m.is_ensemble and speeds.get(m.id, {}).get("sha256") != m.sha256]
    assert not stale, f"no speed measured for the current file of: {stale}"


def _tiers_record(registry, difference, ci, **changes):
    record = {"models": {"intensive": "big-test", "fast": "tiny-test"},
              "sha256": {"intensive": registry.models["big-test"].sha256, "fast": registry.models["tiny-test"].sha256},
              "valid_auc_difference_intensive_minus_fast": {"difference": difference, "ci95": ci}}
    record.update(changes)
    (registry.base_dir / f"missing{TIERS_SUFFIX}").write_text(json.dumps(record))  # beside big-test's file


def test_an_intensive_model_says_whether_it_is_better_on_validation(tmp_path):
    registry = _registry(tmp_path)
    assert tier_comparison(registry)[0].as_table_row()["validation AUC vs fast (95% CI)"] == "not compared"
    _tiers_record(registry, -0.0063, [-0.0157, 0.0033])
    rows = tier_comparison(registry)
    assert rows[0].as_table_row()["validation AUC vs fast (95% CI)"] == "-0.0063 (-0.0157 to +0.0033): not better"
    assert rows[1].as_table_row()["validation AUC vs fast (95% CI)"] == ""  # a fast row compares nothing
    _tiers_record(registry, 0.02, [0.004, 0.035])
    assert tier_comparison(registry)[0].as_table_row()["validation AUC vs fast (95% CI)"] == \
        "+0.0200 (+0.0040 to +0.0350): better"


def test_a_tiers_record_of_other_model_files_is_not_used(tmp_path):
    registry = _registry(tmp_path)
    _tiers_record(registry, 0.02, [0.004, 0.035], sha256={"intensive": "1" * 64, "fast": "0" * 64})
    assert tier_comparison(registry)[0].versus_fast is None
    _tiers_record(registry, 0.02, [0.004, 0.035], sha256={})  # a record that names no files
    assert tier_comparison(registry)[0].versus_fast is None


def test_every_shipped_intensive_model_is_compared_with_its_fast_one():
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    rows = [r for r in tier_comparison(load_registry(repo / "model_registry.json"))
            if r.tier == "intensive" and r.model_id is not None]
    assert rows and all(r.versus_fast is not None for r in rows), [r.model_id for r in rows if r.versus_fast is None]
