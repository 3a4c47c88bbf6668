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


# --------------------------------------------------------------------------- hardening (issue 18)


def _two_model_registry(tmp_path):
    path = write_tiny_registry(tmp_path, None, sha256=None)
    raw = json.loads(path.read_text())
    for i in range(2, 5):
        raw["models"][f"tiny-{i}"] = dict(raw["models"]["tiny-test"], version=f"0.0.{i}")
    path.write_text(json.dumps(raw, indent=2))
    path.write_text(json.dumps(load_registry(path).to_dict(), indent=2) + "\n")  # as a save writes it
    return path


def test_a_no_op_edit_writes_nothing_and_audits_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    path = _two_model_registry(tmp_path)
    before, stat_before = path.read_bytes(), path.stat()
    reg = load_registry(path)
    assert save_registry(reg.with_active("fracture", "tiny-test"), user="a") == []
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert not path.with_name(path.name + ".bak").exists() and read_audit_log(path) == []


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_save_keeps_the_files_mode(tmp_path, monkeypatch, mode):
    import os
    import stat

    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    path = _two_model_registry(tmp_path)
    os.chmod(path, mode)
    assert save_registry(load_registry(path).with_active("fracture", "tiny-2"), user="a")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(path.with_name(path.name + ".bak").stat().st_mode) == mode


def test_a_stale_copy_does_not_undo_a_concurrent_change(tmp_path, monkeypatch):
    """Two editors read the same file; the second saves a change to notes after the first
    switched the active model: both changes survive, and both are audited."""
    import dataclasses

    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    path = _two_model_registry(tmp_path)
    first, second = load_registry(path), load_registry(path)
    save_registry(first.with_active("fracture", "tiny-3"), user="first")
    entry = dataclasses.replace(second.model("tiny-2"), notes="checked")
    changes = save_registry(second.with_model(entry), user="second")
    assert changes == ["models.tiny-2.notes: '' -> 'checked'"]
    now = load_registry(path)
    assert now.active_models["fracture"] == "tiny-3" and now.model("tiny-2").notes == "checked"
    assert [e["user"] for e in read_audit_log(path)] == ["second", "first"]
    # and a stale no-op (the second editor re-activating what it read) changes nothing
    assert save_registry(second.with_active("fracture", "tiny-test"), user="second") == []
    assert load_registry(path).active_models["fracture"] == "tiny-3"


_WORKER = """
import json, random, sys, time
sys.path[:0] = [{repo!r}]
from xray_ai.cli import main
from xray_ai.registry import load_registry
rng = random.Random({seed})
done = []
for round_ in range(10):
    target = rng.choice(["tiny-test", "tiny-2", "tiny-3", "tiny-4"])
    time.sleep(rng.uniform(0, 0.02))
    code = main(["registry", "activate", "fracture", target, "--registry", {path!r}, "--user", "w{seed}"])
    done.append((target, code))
print(json.dumps(done))
"""


def test_concurrent_activations_serialise_and_every_write_is_audited(tmp_path, monkeypatch):
    """8 processes x 10 `registry activate` each, at once: the file always parses, every
    change is in the audit log in the order it was written, and replaying the log from the
    start gives the final file (no write from a stale read, none unaudited)."""
    import subprocess
    import sys

    monkeypatch.delenv("XRAY_AI_AUDIT_DB", raising=False)
    path = _two_model_registry(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER.format(repo=str(REPO), seed=s, path=str(path))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in range(8)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.extend(json.loads(out.strip().splitlines()[-1]))
    assert len(results) == 80 and all(code == 0 for _, code in results)
    log = list(reversed(read_audit_log(path, limit=1000)))  # oldest first
    active = "tiny-test"
    for entry in log:
        assert entry["action"] == "activate" and len(entry["changes"]) == 1
        old, new = entry["changes"][0].split(": ", 1)[1].split(" -> ")
        assert old.strip("'") == active  # each write started from the file as the previous one left it
        active = new.strip("'")
    assert load_registry(path).active_models["fracture"] == active
    assert 0 < len(log) <= 80


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_a_model_path_outside_the_registry_folder_is_refused(tmp_path, monkeypatch, where):
    import os

    monkeypatch.delenv("XRAY_AI_MODELS_ROOT", raising=False)
    (tmp_path / "reg").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "other.keras").write_bytes(b"x")
    raw = _raw(tmp_path / "reg")
    if where == "absolute":
        raw["models"]["tiny-test"]["path"] = str(outside / "other.keras")
    elif where == "dotdot":
        raw["models"]["tiny-test"]["path"] = "../elsewhere/other.keras"
    else:
        os.symlink(outside, tmp_path / "reg" / "models")
        raw["models"]["tiny-test"]["path"] = "models/other.keras"
    assert_registry_refused(tmp_path / "reg", raw, "models.tiny-test.path")
    path = tmp_path / "reg" / "bad.json"
    with pytest.raises(RegistryError, match="outside"):
        load_registry(path)
    monkeypatch.setenv("XRAY_AI_MODELS_ROOT", str(outside))  # a configured models root is allowed
    assert load_registry(path).model("tiny-test").resolve_path(path.parent).resolve() == (outside / "other.keras")


@pytest.mark.parametrize(
    "text, message",
    [
        ("nul", "must not contain NUL"),
        ("deep", "nested too deeply"),
        ("deeper", "nested too deeply"),
        ("duplicate", "duplicate key 'threshold'"),
    ],
)
def test_nul_nesting_and_duplicate_keys_are_validation_errors_exit_2(tmp_path, capsys, text, message):
    from xray_ai.cli import main

    raw = _raw(tmp_path)
    path = tmp_path / "registry.json"
    if text == "nul":
        raw["models"]["tiny-test"]["path"] = "model\x00.keras"
        body = json.dumps(raw)
    elif text == "deep":
        raw["models"]["tiny-test"]["notes_extra"] = json.loads("[" * 40 + "]" * 40)
        body = json.dumps(raw)
    elif text == "deeper":  # beyond the JSON parser's own recursion limit
        body = json.dumps(raw)[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
    else:
        body = json.dumps(raw).replace('"threshold": 0.5', '"threshold": 0.5, "threshold": 0.9')
    path.write_text(body)
    with pytest.raises(RegistryError, match=message):
        load_registry(path)
    assert main(["registry", "validate", "--registry", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
