import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from conftest import write_tiny_registry
from xray_ai.serving.manager import ModelManager
from xray_ai.registry import RegistryError


def test_real_model_loads_verified_and_cached(tiny_registry):
    manager = ModelManager(tiny_registry)
    loaded = manager.get("fracture")
    assert loaded.placeholder is False and loaded.placeholder_reason is None
    assert loaded.target_layer == "conv2" and loaded.heatmap_method == "gradcam"
    assert manager.get(model_id="tiny-test") is loaded  # cached by id and file identity


def _placeholder_reason(tmp_path, model_file, sha, **shape):
    registry = write_tiny_registry(tmp_path, model_file, sha256=sha, **shape)
    loaded = ModelManager(registry).get("fracture")
    assert loaded.placeholder is True
    assert loaded.model.name == "placeholder_untrained"
    return loaded.placeholder_reason


def test_missing_file_gives_placeholder(tmp_path):
    reason = _placeholder_reason(tmp_path, tmp_path / "gone.keras", "0" * 64)
    assert "gone.keras not found" in reason


def test_corrupt_file_gives_placeholder(tmp_path):
    from xray_ai.serving.artifacts import file_sha256

    bad = tmp_path / "corrupt.keras"
    bad.write_bytes(b"PK\x03\x04 this is not a keras archive")
    reason = _placeholder_reason(tmp_path, bad, file_sha256(bad))
    assert "corrupt.keras could not be loaded" in reason


def test_sha_mismatch_gives_placeholder(tmp_path, tiny_model_file):
    src, _ = tiny_model_file
    dst = tmp_path / "tiny.keras"
    shutil.copy(src, dst)
    reason = _placeholder_reason(tmp_path, dst, "f" * 64)
    assert "sha256" in reason and "expects ffffffffffff" in reason


def test_missing_sha_gives_placeholder(tmp_path, tiny_model_file):
    src, _ = tiny_model_file
    shutil.copy(src, tmp_path / "tiny.keras")
    assert "records no sha256" in _placeholder_reason(tmp_path, tmp_path / "tiny.keras", None)


def test_shape_disagreeing_with_entry_gives_placeholder(tmp_path, tiny_model_file):
    src, sha = tiny_model_file
    shutil.copy(src, tmp_path / "tiny.keras")
    reason = _placeholder_reason(tmp_path, tmp_path / "tiny.keras", sha, height=64, width=64)
    assert "(None, 32, 32, 1)" in reason and "(None, 64, 64, 1)" in reason


def test_placeholder_has_the_entry_input_shape(tmp_path):
    registry = write_tiny_registry(tmp_path, tmp_path / "gone.keras", sha256=None, height=48, width=40, channels=3)
    loaded = ModelManager(registry).get("fracture")
    assert tuple(loaded.model.inputs[0].shape) == (None, 48, 40, 3)


def test_unknown_ids_raise_registry_error(tiny_registry):
    manager = ModelManager(tiny_registry)
    with pytest.raises(RegistryError, match="unknown condition 'gout'"):
        manager.get("gout")
    with pytest.raises(RegistryError, match="unknown model id 'nope'"):
        manager.get(model_id="nope")


def test_replaced_file_is_reloaded_and_verified(tiny_registry):
    manager = ModelManager(tiny_registry)
    first = manager.get("fracture")
    model_file = tiny_registry.parent / "tiny.keras"
    model_file.write_bytes(model_file.read_bytes() + b"tampered")
    os.utime(model_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = manager.get("fracture")
    assert second is not first and second.placeholder and "sha256" in second.placeholder_reason


def test_registry_edits_are_picked_up(tiny_registry):
    manager = ModelManager(tiny_registry)
    assert manager.get("fracture").entry.threshold == 0.5
    raw = json.loads(tiny_registry.read_text())
    raw["models"]["tiny-test"]["threshold"] = 0.25
    tiny_registry.write_text(json.dumps(raw))
    os.utime(tiny_registry, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert manager.get("fracture").entry.threshold == 0.25


def test_concurrent_gets_load_once(tiny_registry, monkeypatch):
    manager = ModelManager(tiny_registry)
    calls = []
    original = manager._load

    def counting_load(*args):
        calls.append(1)
        time.sleep(0.2)  # widen the race window
        return original(*args)

    monkeypatch.setattr(manager, "_load", counting_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.get("fracture"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(r is results[0] for r in results)


def test_warm_up_makes_analyzer_ready(tiny_registry):
    loaded = ModelManager(tiny_registry).get("fracture")
    out = loaded.analyzer(np.zeros((1, 32, 32, 1), np.float32))
    assert out.probabilities.shape == (1,)
