import json

import pytest

from xray_ai.registry import (
    RegistryError,
    load_registry,
    read_audit_log,
    save_registry,
)
from conftest import REPO, assert_registry_refused, write_tiny_registry


def test_repo_registry_is_valid_and_covers_all_six_conditions():
    reg = load_registry(REPO / "model_registry.json")
    assert set(reg.conditions) == {
        "msk_abnormality", "fracture", "osteoporosis", "arthritis", "pneumonia", "cardiomegaly"
    }
    assert set(reg.active_models) == set(reg.conditions)
    for entry in reg.models.values():
        assert entry.profile in ("fast", "intensive")
        assert 0 <= entry.threshold <= 1 and entry.threshold_method


def _raw(tmp_path):
    return json.loads(write_tiny_registry(tmp_path, None, sha256=None).read_text())


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r["models"]["tiny-test"].update(threshold=1.5), "models.tiny-test.threshold"),
        (lambda r: r["models"]["tiny-test"].update(threshold="high"), "models.tiny-test.threshold"),
        (lambda r: r["models"]["tiny-test"].pop("intended_use"), "models.tiny-test.intended_use: missing"),
        (lambda r: r["models"]["tiny-test"].update(sha256="abc"), "models.tiny-test.sha256"),
        (lambda r: r["models"]["tiny-test"].update(architecture="alexnet"), "models.tiny-test.architecture"),
        (lambda r: r["models"]["tiny-test"].update(profile="medium"), "models.tiny-test.profile"),
        (lambda r: r["models"]["tiny-test"]["input"].update(channels=2), "models.tiny-test.input.channels"),
        (lambda r: r["models"]["tiny-test"].update(condition="gout"), "models.tiny-test.condition"),
        (lambda r: r["models"]["tiny-test"].update(created="22/11/2026"), "models.tiny-test.created"),
        (lambda r: r["models"]["tiny-test"].update(metrics={"auc": 0.9}), "metrics.split"),
        (lambda r: r["models"]["tiny-test"]["trained_on"].pop("synthetic"), "trained_on.synthetic"),
        (lambda r: r["active_models"].update(fracture="nope"), "active_models.fracture"),
        (lambda r: r.update(schema_version=2), "schema_version"),
        (lambda r: r.update(extra=1), "unknown top-level field"),
    ],
)
def test_validation_names_the_first_wrong_field(tmp_path, mutate, field):
    raw = _raw(tmp_path)
    mutate(raw)
    assert_registry_refused(tmp_path, raw, field)


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema_version": 1,\n  oops}')
    with pytest.raises(RegistryError, match=r"line 2"):
        load_registry(path)


def test_unknown_ids_list_the_valid_ones(tmp_path):
    reg = load_registry(write_tiny_registry(tmp_path, None, sha256=None))
    with pytest.raises(RegistryError, match="valid: tiny-test"):
        reg.model("nope")
    with pytest.raises(RegistryError, match="valid: fracture"):
        reg.active_entry("gout")


def test_save_is_atomic_keeps_backup_and_audits(tmp_path, monkeypatch):
    monkeypatch.delenv("XRAY_AI_AUDIT_DB", raising=False)
    path = write_tiny_registry(tmp_path, None, sha256=None)
    before = path.read_text()
    reg = load_registry(path)
    raw = reg.to_dict()
    raw["models"]["tiny-test"]["threshold"] = 0.3
    raw["models"]["tiny-test"]["notes"] = "lowered for sensitivity"
    from xray_ai.registry import parse_registry

    changes = save_registry(parse_registry(raw, path), user="dr-test", action="edit threshold")
    assert "models.tiny-test.threshold: 0.5 -> 0.3" in changes
    assert load_registry(path).model("tiny-test").threshold == 0.3
    assert (tmp_path / "registry.json.bak").read_text() == before
    assert not list(tmp_path.glob("*.tmp"))
    log = read_audit_log(path)
    assert log[0]["user"] == "dr-test" and log[0]["action"] == "edit threshold"
    assert "models.tiny-test.threshold: 0.5 -> 0.3" in log[0]["changes"]


def test_round_trip_keeps_unknown_entry_fields(tmp_path):
    raw = _raw(tmp_path)
    raw["models"]["tiny-test"]["training"] = {"epochs": 5}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    save_registry(load_registry(path), user="t")
    assert json.loads(path.read_text())["models"]["tiny-test"]["training"] == {"epochs": 5}


def test_with_active_rejects_model_of_another_condition(tmp_path):
    raw = _raw(tmp_path)
    raw["conditions"]["pneumonia"] = {"name": "Pneumonia", "positive_label": "p", "negative_label": "n"}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match="serves 'fracture'"):
        load_registry(path).with_active("pneumonia", "tiny-test")


def test_registry_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, xray_ai.registry, xray_ai.serving.preprocessing, xray_ai.result; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_replacing_an_entry_whose_metrics_have_int_keys_saves_and_audits(tmp_path, monkeypatch):
    """Metrics computed in Python may carry int keys (class weights {0: .., 1: ..}); the file
    holds them as strings. Re-registering such an entry once crashed the audit diff."""
    import dataclasses

    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    path = write_tiny_registry(tmp_path, None, sha256=None)
    reg = load_registry(path)
    entry = next(iter(reg.models.values()))
    first = dataclasses.replace(entry, metrics={"split": "test", "training": {"class_weights": {0: 0.5, 1: 2.0}}})
    save_registry(reg.with_model(first), path)
    second = dataclasses.replace(first, metrics={"split": "test", "training": {"class_weights": {0: 0.75, 1: 1.5}}})
    changes = save_registry(load_registry(path).with_model(second), path)
    assert any("class_weights.0" in c for c in changes)
    assert load_registry(path).models[entry.id].metrics["training"]["class_weights"] == {"0": 0.75, "1": 1.5}


def test_default_registry_is_the_one_at_the_repository_root(monkeypatch):
    """repo_root() climbs from its own file; it must still land on the checkout's root."""
    from xray_ai.registry import default_registry_path, repo_root

    monkeypatch.delenv("XRAY_AI_REGISTRY", raising=False)
    assert repo_root() == REPO.resolve()
    assert default_registry_path() == REPO.resolve() / "model_registry.json"


def test_the_package_keeps_every_name_the_flat_module_had():
    import xray_ai.registry as registry

    names = {"SCHEMA_VERSION", "ARCHITECTURES", "PREPROCESSING", "PROFILES", "KINDS", "ENSEMBLE_ARCHITECTURE",
             "RegistryError", "Condition", "InputSpec", "TrainingData", "ModelEntry", "Registry",
             "default_registry_path", "parse_registry", "load_registry", "save_registry", "audit_db_path",
             "read_audit_log", "repo_root"}
    assert names <= set(registry.__all__)
    assert all(hasattr(registry, n) for n in registry.__all__)
