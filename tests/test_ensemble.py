"""Ensembles (issue 5): a registry entry of kind "ensemble" averages its members' probabilities and heatmaps.

The two members differ on purpose: the tiny flat model (32x32x1, "unit" input) and a
40x48x3 model fed "imagenet_tf" input, so each member must get its own preprocessing and
the heatmaps (16x16 and 20x24 feature maps) must be brought to one size before the mean.
"""

import io
import json
import shutil

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, assert_registry_refused, write_tiny_registry
from xray_ai.registry import RegistryError, load_registry, parse_registry, save_registry

CONTRACT_FIELDS = {  # README "Command line", predict --json (as tests/test_cli.py checks for single models)
    "condition", "model_id", "model_version", "architecture", "probability", "decision", "threshold",
    "placeholder", "placeholder_reason", "heatmap_method", "target_layer", "views", "warnings",
}
B_SHAPE = (40, 48, 3)
ENSEMBLE = {
    "condition": "fracture",
    "architecture": "ensemble",
    "kind": "ensemble",
    "members": ["tiny-test", "tiny-b"],
    "version": "1.0.0-test",
    "input": {"height": 40, "width": 48, "channels": 3},
    "threshold": 0.4,
    "threshold_method": "fixed 0.4 (test fixture)",
    "profile": "fast",
    "trained_on": {"dataset": "test fixture", "version": "", "synthetic": True},
    "intended_use": "ensemble unit tests only",
    "metrics": {},
    "created": "2026-11-23",
    "notes": "",
}


def _member_b_entry(path, sha):
    return {
        "condition": "fracture", "architecture": "custom", "path": path, "sha256": sha, "version": "0.0.2-test",
        "input": {"height": B_SHAPE[0], "width": B_SHAPE[1], "channels": B_SHAPE[2]},
        "preprocessing": "imagenet_tf", "threshold": 0.5, "threshold_method": "fixed 0.5 (test fixture)",
        "profile": "fast", "trained_on": {"dataset": "test fixture", "version": "", "synthetic": True},
        "intended_use": "unit tests only", "metrics": {}, "created": "2026-11-22", "notes": "",
    }


def _raw_registry(tmp_path):
    """A registry dict with two single models and an ensemble of both (no model files needed)."""
    raw = json.loads(write_tiny_registry(tmp_path, None, sha256=None).read_text())
    raw["models"]["tiny-b"] = _member_b_entry("b.keras", None)
    raw["models"]["tiny-ens"] = json.loads(json.dumps(ENSEMBLE))
    return raw


# --------------------------------------------------------------------------- registry


def _add_pneumonia(raw):
    raw["conditions"]["pneumonia"] = {"name": "Pneumonia", "positive_label": "p", "negative_label": "n"}
    raw["models"]["chest"] = dict(_member_b_entry("c.keras", None), condition="pneumonia")


def _nest(raw):
    raw["models"]["tiny-ens2"] = dict(ENSEMBLE, members=["tiny-test", "tiny-ens"])


def _set(model_id, **changes):
    return lambda r: r["models"][model_id].update(changes)


def _drop(model_id, key):
    return lambda r: r["models"][model_id].pop(key)


ENS = "models.tiny-ens"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_drop("tiny-ens", "members"), f"{ENS}.members: missing"),
        (_set("tiny-ens", members="tiny-test"), f"{ENS}.members: must be a list"),
        (_set("tiny-ens", members=["tiny-test"]), f"{ENS}.members: an ensemble needs at least 2"),
        (_set("tiny-ens", members=[]), f"{ENS}.members: an ensemble needs at least 2"),
        (_set("tiny-ens", members=["tiny-test", "tiny-test"]), f"{ENS}.members: lists a model twice"),
        (_set("tiny-ens", members=["tiny-test", "gone"]),
         f"{ENS}.members: unknown model id 'gone'; valid: tiny-b, tiny-test"),
        (lambda r: (_add_pneumonia(r), _set("tiny-ens", members=["tiny-test", "chest"])(r)),
         f"{ENS}.members: 'chest' serves 'pneumonia', not 'fracture'"),
        (_nest, "models.tiny-ens2.members: 'tiny-ens' is itself an ensemble"),
        (_set("tiny-ens", members=["tiny-test", "tiny-ens"]), f"{ENS}.members: 'tiny-ens' is itself an ensemble"),
        (_set("tiny-ens", kind="committee"), f"{ENS}.kind: 'committee' is not one of"),
        (_set("tiny-ens", path="ens.keras"), f"{ENS}.path: an ensemble has no file"),
        (_set("tiny-ens", sha256="0" * 64), f"{ENS}.sha256: an ensemble has no file"),
        (_set("tiny-ens", preprocessing="unit"), f"{ENS}.preprocessing: an ensemble has no file"),
        (_set("tiny-ens", architecture="densenet121"), f"{ENS}.architecture"),
        (_set("tiny-ens", threshold=2), f"{ENS}.threshold"),
        (_drop("tiny-ens", "intended_use"), f"{ENS}.intended_use: missing"),
        (lambda r: r["models"]["tiny-ens"]["trained_on"].update(synthetic=False),
         f"{ENS}.trained_on.synthetic: member 'tiny-test' was trained on synthetic data"),
        (_set("tiny-test", members=["tiny-b", "tiny-ens"]), "models.tiny-test.members: only an entry"),
        (_drop("tiny-test", "path"), "models.tiny-test.path: missing"),  # still required for single models
        (_set("tiny-test", kind="single", architecture="ensemble"), "models.tiny-test.architecture"),
    ],
)
def test_validation_names_the_wrong_ensemble_field(tmp_path, mutate, message):
    raw = _raw_registry(tmp_path)
    mutate(raw)
    assert_registry_refused(tmp_path, raw, message)


def test_ensemble_entry_parses_and_round_trips_losslessly(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(tmp_path / "audit.sqlite3"))
    raw = _raw_registry(tmp_path)
    raw["active_models"]["fracture"] = "tiny-ens"
    raw["models"]["tiny-ens"]["review"] = {"by": "qa"}  # unknown fields survive, as for single models
    raw["models"]["tiny-test"]["notes"] = ""  # so that the file is exactly what to_dict writes
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    registry = load_registry(path)
    entry = registry.model("tiny-ens")
    assert entry.is_ensemble and entry.kind == "ensemble" and entry.members == ("tiny-test", "tiny-b")
    assert entry.path is None and entry.sha256 is None and entry.architecture == "ensemble"
    assert registry.active_entry("fracture") is entry and registry.models_for("fracture")[-1] is entry
    assert not registry.model("tiny-test").is_ensemble and registry.model("tiny-test").members == ()
    with pytest.raises(RegistryError, match="ensemble of tiny-test, tiny-b; it has no file"):
        entry.resolve_path(tmp_path)

    saved = registry.to_dict()
    assert saved["models"]["tiny-ens"] == raw["models"]["tiny-ens"]  # written back key for key
    assert parse_registry(saved, path) == registry
    assert save_registry(registry, user="t") == []  # nothing changed, nothing audited
    assert load_registry(path) == registry


def test_an_ensemble_may_omit_architecture_and_give_null_file_fields(tmp_path):
    raw = _raw_registry(tmp_path)
    ens = raw["models"]["tiny-ens"]
    del ens["architecture"]
    ens.update(path=None, sha256=None)
    entry = parse_registry(raw).model("tiny-ens")
    assert entry.architecture == "ensemble" and entry.path is None and entry.sha256 is None


def test_registries_without_kind_load_and_save_unchanged(tmp_path):
    raw = json.loads(write_tiny_registry(tmp_path, None, sha256=None).read_text())
    raw["models"]["tiny-test"]["notes"] = ""
    registry = parse_registry(raw)
    assert registry.model("tiny-test").kind == "classifier"
    assert registry.to_dict() == raw  # no "kind" or "members" appears in old entries


def test_the_old_kind_name_single_reads_as_classifier(tmp_path):
    raw = json.loads(write_tiny_registry(tmp_path, None, sha256=None).read_text())
    raw["models"]["tiny-test"].update(kind="single", notes="")
    registry = parse_registry(raw)
    assert registry.model("tiny-test").kind == "classifier"
    del raw["models"]["tiny-test"]["kind"]
    assert registry.to_dict() == raw  # saved as every classifier is: without "kind"


def test_editing_a_member_revalidates_its_ensembles(tmp_path):
    import dataclasses

    raw = _raw_registry(tmp_path)
    _add_pneumonia(raw)
    registry = parse_registry(raw)
    moved = dataclasses.replace(registry.model("tiny-b"), condition="pneumonia")
    with pytest.raises(RegistryError, match="models.tiny-ens.members: 'tiny-b' serves 'pneumonia'"):
        registry.with_model(moved)


# --------------------------------------------------------------------------- loading and analysis


@pytest.fixture(scope="session")
def model_b_file(tmp_path_factory, keras_mod):
    """A second tiny model, 40x48x3, with other weights: the ensemble's second member."""
    from xray_ai.serving.artifacts import file_sha256

    keras = keras_mod
    keras.utils.set_random_seed(7)
    inputs = keras.Input(B_SHAPE)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="b_conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="b_pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b_conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="b_gap")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="b_head")(x)
    path = tmp_path_factory.mktemp("model_b") / "b.keras"
    keras.Model(inputs, out, name="tiny_b").save(path)
    return path, file_sha256(path)


@pytest.fixture()
def ensemble_registry(tiny_registry, model_b_file):
    """tiny_registry plus member tiny-b and the active ensemble tiny-ens (both files verified)."""
    src, sha = model_b_file
    shutil.copy(src, tiny_registry.parent / "b.keras")
    raw = json.loads(tiny_registry.read_text())
    raw["models"]["tiny-b"] = _member_b_entry("b.keras", sha)
    raw["models"]["tiny-ens"] = json.loads(json.dumps(ENSEMBLE))
    raw["active_models"]["fracture"] = "tiny-ens"
    tiny_registry.write_text(json.dumps(raw, indent=2))
    return tiny_registry


@pytest.fixture()
def manager(ensemble_registry):
    from xray_ai.serving.manager import ModelManager

    return ModelManager(ensemble_registry, backend="tensorflow")


def _views():
    from xray_ai import XRay, load_image

    rng = np.random.default_rng(5)
    return [load_image(EXAMPLES / "rg3_tibia.png"), XRay(rng.random((70, 50), dtype=np.float32), {}, "noise.png")]


def _keras_probability(loaded, pixels):
    """A member's probability straight from its keras model (not through the analyzer)."""
    from xray_ai.serving.preprocessing import prepare_batch

    batch = prepare_batch([pixels], loaded.entry.input, loaded.entry.preprocessing)
    return float(loaded.model(batch, training=False).numpy()[0, 0])


def test_get_returns_the_members_loaded_one_by_one(manager):
    from xray_ai.serving.manager import LoadedEnsemble

    loaded = manager.get("fracture")
    assert isinstance(loaded, LoadedEnsemble) and loaded.entry.id == "tiny-ens"
    assert [m.entry.id for m in loaded.members] == ["tiny-test", "tiny-b"]
    assert not loaded.placeholder and loaded.placeholder_reason is None
    assert loaded.members[0] is manager.get(model_id="tiny-test")  # the members' cache is shared
    assert manager.loaded_ids() == ["tiny-b", "tiny-test"]


def test_ensemble_probability_is_exactly_the_mean_of_its_members(manager):
    from xray_ai import analyze

    views = _views()
    loaded = manager.get(model_id="tiny-ens")
    result = analyze(views, "fracture", manager=manager)
    per_view = [[_keras_probability(m, v.pixels) for m in loaded.members] for v in views]
    assert per_view[0][0] != pytest.approx(per_view[0][1], abs=1e-3)  # the members really differ
    for view, expected in zip(result.views, per_view):
        assert view.probability == pytest.approx(np.mean(expected), abs=1e-6)
        assert view.member_probabilities == pytest.approx(expected, abs=1e-6)
    assert result.probability == pytest.approx(np.mean([np.mean(p) for p in per_view]), abs=1e-6)
    assert result.decision == ("fracture" if result.probability >= 0.4 else "no fracture")  # the ensemble's threshold


def test_ensemble_heatmap_is_the_mean_of_the_members_maps(manager):
    import cv2

    from xray_ai import analyze

    views = _views()
    result = analyze(views, None, manager=manager, model_id="tiny-ens")
    alone = [analyze(views, "fracture", manager=manager, model_id=m) for m in ("tiny-test", "tiny-b")]
    for k, view in enumerate(result.views):
        maps = [r.views[k].heatmap for r in alone]
        assert [m.shape for m in maps] == [(16, 16), (20, 24)]
        resized = [cv2.resize(m, (24, 20), interpolation=cv2.INTER_LINEAR) for m in maps]
        assert view.heatmap.shape == (20, 24) and view.heatmap.dtype == np.float32
        np.testing.assert_allclose(view.heatmap, np.mean(resized, axis=0), atol=1e-6)
        assert 0.0 <= view.heatmap.min() and view.heatmap.max() <= 1.0 and not np.isnan(view.heatmap).any()
        assert view.probability == pytest.approx(np.mean([r.views[k].probability for r in alone]), abs=1e-6)


def test_ensemble_result_carries_the_ensembles_provenance(manager):
    from xray_ai import analyze

    result = analyze(_views()[0], "fracture", manager=manager)
    data = result.to_json()
    assert data["model_id"] == "tiny-ens" and data["model_version"] == "1.0.0-test"
    assert data["threshold"] == 0.4 and data["intended_use"] == "ensemble unit tests only"
    assert data["members"] == ["tiny-test", "tiny-b"] and result.members == ("tiny-test", "tiny-b")
    assert data["architecture"] == "ensemble: custom + custom" and data["sha256"] is None
    assert data["heatmap_method"] == "gradcam (mean of 2 members)"
    assert data["target_layer"] == "tiny-test: conv2; tiny-b: b_conv2"
    assert data["backend"] == "tensorflow" and data["placeholder"] is False
    assert set(data["views"][0]["member_probabilities"]) == {"tiny-test", "tiny-b"}
    assert any("synthetic" in w for w in data["warnings"])


def test_single_model_results_list_no_members(manager):
    from xray_ai import analyze

    data = analyze(_views()[0], "fracture", manager=manager, model_id="tiny-test").to_json()
    assert data["members"] == [] and "member_probabilities" not in data["views"][0]
    assert data["heatmap_method"] == "gradcam" and data["model_id"] == "tiny-test"


def test_other_heatmap_methods_are_averaged_at_the_largest_input(manager):
    from xray_ai import analyze

    result = analyze(_views()[0], "fracture", manager=manager, method="saliency")
    assert result.heatmap_method == "saliency (mean of 2 members)" and result.target_layer is None
    assert result.views[0].heatmap.shape == (40, 48)  # saliency is at each member's input size
    assert result.backend == "tensorflow"


def test_a_member_with_a_missing_file_makes_the_ensemble_a_placeholder(ensemble_registry):
    from xray_ai import analyze
    from xray_ai.serving.manager import ModelManager

    (ensemble_registry.parent / "b.keras").unlink()
    manager = ModelManager(ensemble_registry, backend="tensorflow")
    loaded = manager.get("fracture")
    assert loaded.placeholder and not loaded.members[0].placeholder and loaded.members[1].placeholder
    assert "tiny-b" in loaded.placeholder_reason and "b.keras not found" in loaded.placeholder_reason
    data = analyze(_views()[0], "fracture", manager=manager).to_json()
    assert data["placeholder"] is True and data["warnings"][0].startswith("PLACEHOLDER MODEL")
    assert "tiny-b" in data["placeholder_reason"] and data["sha256"] is None
    assert data["architecture"].startswith("placeholder ensemble") and "untrained" in data["trained_on"]


def test_members_are_served_by_onnx_runtime_where_it_applies(ensemble_registry, tmp_path):
    from xray_ai import analyze
    from xray_ai.serving.manager import ModelManager

    onnx = ModelManager(ensemble_registry, backend="onnx", onnx_cache=tmp_path / "onnx")
    tf = ModelManager(ensemble_registry, backend="tensorflow")
    on_ort, on_tf = analyze(_views()[0], "fracture", manager=onnx), analyze(_views()[0], "fracture", manager=tf)
    backends = [m.backend for m in onnx.get("fracture").members]
    expected = "onnxruntime" if backends == ["onnxruntime"] * 2 else "; ".join(
        f"{m}: {b}" for m, b in zip(("tiny-test", "tiny-b"), backends))
    assert on_ort.backend == expected and backends[0] == "onnxruntime"
    assert on_ort.probability == pytest.approx(on_tf.probability, abs=1e-4)


def test_report_names_the_ensemble_and_its_members(manager):
    from pypdf import PdfReader

    from xray_ai import analyze

    from xray_ai import build_report

    pdf = build_report(analyze(_views(), "fracture", manager=manager))
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages).split())
    assert "tiny-ens" in text and "Ensemble of" in text and "tiny-test, tiny-b" in text
    assert "Member probabilities" in text


# --------------------------------------------------------------------------- CLI


def test_predict_json_on_an_ensemble(ensemble_registry, capsys):
    from xray_ai.cli import main

    code = main(["predict", str(EXAMPLES / "rg3_tibia.png"), "--condition", "fracture", "--json",
                 "--registry", str(ensemble_registry), "--backend", "tensorflow"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert CONTRACT_FIELDS <= set(data)
    assert data["model_id"] == "tiny-ens" and data["members"] == ["tiny-test", "tiny-b"]
    assert data["placeholder"] is False and data["heatmap_method"] == "gradcam (mean of 2 members)"
    member_probs = data["views"][0]["member_probabilities"]
    assert data["probability"] == pytest.approx(np.mean(list(member_probs.values())), abs=1e-6)


def test_predict_on_a_placeholder_ensemble_warns(ensemble_registry, capsys):
    from xray_ai.cli import main

    (ensemble_registry.parent / "tiny.keras").unlink()
    code = main(["predict", str(EXAMPLES / "rg3_tibia.png"), "--model", "tiny-ens", "--json",
                 "--registry", str(ensemble_registry), "--backend", "tensorflow"])
    out = capsys.readouterr()
    assert code == 0 and json.loads(out.out)["placeholder"] is True
    assert "PLACEHOLDER MODEL" in out.err and "tiny-test" in out.err


def test_registry_list_and_validate_show_the_ensemble(ensemble_registry, capsys):
    from xray_ai.cli import main

    assert main(["registry", "list", "--registry", str(ensemble_registry)]) == 0
    assert "mean of: tiny-test, tiny-b" in capsys.readouterr().out
    (ensemble_registry.parent / "b.keras").unlink()
    assert main(["registry", "validate", "--registry", str(ensemble_registry)]) == 0
    out = capsys.readouterr().out
    assert "tiny-ens: member tiny-b: model file b.keras not found" in out


def _folder_dataset(root, n=8):
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(n):
        folder = root / ("fracture" if i % 2 else "no fracture")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.uniform(0.0, 0.5, (36, 44))
        if i % 2:
            pixels[8:24, 10:30] += rng.uniform(0.2, 0.5)
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return root


def test_evaluate_an_ensemble_averages_its_members_per_image(ensemble_registry, tmp_path, capsys):
    from xray_ai.training.datasets import read_folders
    from xray_ai import load_image
    from xray_ai.cli import main
    from xray_ai.serving.manager import ModelManager

    root = _folder_dataset(tmp_path / "data")
    df = read_folders(root, "no fracture", "fracture")
    loaded = ModelManager(ensemble_registry, backend="tensorflow").get(model_id="tiny-ens")
    pixels = [load_image(p).pixels for p in df["path"]]
    probs = np.array([np.mean([_keras_probability(m, x) for m in loaded.members]) for x in pixels])
    labels = df["label"].to_numpy()
    positives, negatives = probs[labels == 1], probs[labels == 0]
    expected_auc = np.mean([(pp > pn) + 0.5 * (pp == pn) for pp in positives for pn in negatives])
    code = main(["evaluate", "--model", "tiny-ens", "--data", str(root), "--json",
                 "--registry", str(ensemble_registry)])
    out = capsys.readouterr()
    assert code == 0, out.err
    metrics = json.loads(out.out)
    assert metrics["n"] == 8 and metrics["model_id"] == "tiny-ens" and metrics["members"] == ["tiny-test", "tiny-b"]
    assert metrics["threshold"] == 0.4
    assert metrics["auc"] == pytest.approx(expected_auc, abs=1e-9)
    predicted = probs >= 0.4
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels.astype(bool)), abs=1e-9)


def test_explain_eval_refuses_an_ensemble(ensemble_registry, tmp_path, capsys):
    from xray_ai.cli import main

    root = _folder_dataset(tmp_path / "data", n=2)
    assert main(["explain-eval", "--model", "tiny-ens", "--data", str(root), "--registry", str(ensemble_registry)]) == 2
    assert "run it on each ensemble member (tiny-test, tiny-b)" in capsys.readouterr().err


# --------------------------------------------------------------------------- app


def _page(name):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(REPO / "app_pages" / name), default_timeout=120)


@pytest.fixture()
def app_env(ensemble_registry, monkeypatch):
    monkeypatch.setenv("XRAY_AI_REGISTRY", str(ensemble_registry))
    monkeypatch.setenv("XRAY_AI_AUDIT_DB", str(ensemble_registry.parent / "audit.sqlite3"))
    monkeypatch.setenv("XRAY_AI_BACKEND", "tensorflow")
    monkeypatch.delenv("XRAY_AI_ADMIN_PASSWORD_HASH", raising=False)
    return ensemble_registry


def test_registry_and_performance_pages_list_the_ensemble(app_env):
    at = _page("registry.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    row = table[table["model id"] == "tiny-ens"].iloc[0]
    assert row["kind"] == "ensemble" and row["members"] == "tiny-test, tiny-b"
    assert row["file"] == "members verified (sha256)"
    at = _page("performance.py").run()
    assert not at.exception
    assert "tiny-test, tiny-b" in " ".join(m.value for m in at.markdown)


def test_analyse_page_with_the_active_ensemble(app_env):
    at = _page("analyse.py").run()
    assert at.selectbox(key="analyse.model.fracture").value == "tiny-ens"
    at.button(key="analyse.example").click().run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "tiny-ens" in text and "`tiny-test`, `tiny-b`" in text and "mean of 2 members" in text
    assert at.metric[0].value in ("fracture", "no fracture")
