"""ONNX Runtime backend: exact Grad-CAM from the head's weights, the export cache, the switches."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, TINY_SHAPE, write_tiny_registry

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from xray_ai.serving import head as hd  # noqa: E402
from xray_ai.serving import onnx_backend as ob  # noqa: E402
from xray_ai.serving import settings  # noqa: E402
from xray_ai.serving.artifacts import file_sha256  # noqa: E402
from xray_ai.serving.manager import ModelManager  # noqa: E402

PROB_TOL = 1e-4
MIN_CORR = 0.999


def _corr(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.std() == 0 or b.std() == 0:  # constant maps: equal or not, no correlation to take
        return 1.0 if np.allclose(a, b, atol=1e-6) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _head_model(keras, shape=TINY_SHAPE, *, bn=True, hidden=16, dropout=True, name="tiny_head"):
    """Tiny conv backbone + the head architectures.build_classifier builds (with random BN stats,
    so that the batch norm is not the identity and some hidden ReLUs are off)."""
    rng = np.random.default_rng(3)
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="input_norm")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if bn:
        x = keras.layers.BatchNormalization(name="head_bn")(x)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu", name="head_dense")(x)
    if dropout:
        x = keras.layers.Dropout(0.5, name="head_dropout")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    prob = keras.layers.Activation("sigmoid", name="probability")(logit)
    model = keras.Model(inputs, prob, name=name)
    if bn:
        layer = model.get_layer("head_bn")
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 2.0, gamma.shape), rng.normal(0, 0.3, beta.shape),
                           rng.normal(0, 0.05, mean.shape), rng.uniform(0.01, 0.2, var.shape)])
    return model


def _calibrate_batch_norm(keras, model, x):
    """Set every batch norm's moving statistics to those of batch `x` (momentum 0 for one
    training-mode call): a randomly initialised keras.applications backbone otherwise lets
    its activations vanish, every map is empty, and the comparison would prove nothing."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def _inputs(model, n=4, seed=1):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, *shape)).astype(np.float32)


def _export_and_load(model, tmp_path, key="a" * 64):
    ob.export_model(model, key, tmp_path)
    analyzer, reason = ob.load_export(model, key, tmp_path)
    assert analyzer is not None, reason
    return analyzer


def _assert_equivalent(model, analyzer, x, reference=None):
    """`analyzer` (ONNX Runtime) agrees with `reference` (TensorFlow; default: last-layer Grad-CAM)."""
    from xray_ai.explain.gradcam import GradCam

    reference = reference or GradCam(model)
    tf_out, ort_out = reference(x), analyzer(x)
    assert ort_out.target_layer == tf_out.target_layer and ort_out.method == tf_out.method
    np.testing.assert_allclose(ort_out.probabilities, tf_out.probabilities, atol=PROB_TOL, rtol=0)
    assert ort_out.heatmaps.shape == tf_out.heatmaps.shape and ort_out.heatmaps.dtype == np.float32
    assert ort_out.flags == tf_out.flags
    assert any(flag is None for flag in tf_out.flags), "every map empty: the comparison would be vacuous"
    corrs = [_corr(a, b) for a, b in zip(ort_out.heatmaps, tf_out.heatmaps)]
    assert min(corrs) >= MIN_CORR, corrs
    return float(np.max(np.abs(ort_out.probabilities - tf_out.probabilities))), min(corrs)


# ---------------------------------------------------------------------------- the closed form


def test_module_imports_neither_tensorflow_nor_onnxruntime():
    code = ("import sys, xray_ai.serving.onnx_backend, xray_ai.serving.head, xray_ai.serving.manager\n"
            "print([m for m in ('tensorflow', 'keras', 'onnxruntime') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_channel_weights_equal_the_tape_gradient(keras_mod):
    """The numpy weights are the spatial mean of dlogit/dA that TensorFlow's tape computes."""
    import tensorflow as tf

    model = _head_model(keras_mod)
    head = hd.detect_head(model)
    assert [s[0] for s in head.steps] == ["affine", "dense"] and head.target_layer == "conv2"
    x = _inputs(model, n=6)
    features_model = keras_mod.Model(model.inputs[0], [model.get_layer("conv2").output, model.get_layer("logit").output])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        features, logit = features_model(xt, training=False)
        score = tf.reduce_sum(logit)
    grads = tape.gradient(score, features).numpy()
    logits, weights = head.evaluate(features.numpy())
    np.testing.assert_allclose(logits, logit.numpy().ravel(), atol=1e-5)
    np.testing.assert_allclose(weights, grads.mean(axis=(1, 2)), rtol=1e-4, atol=1e-7)
    # the gradient really is constant over space, and the ReLU masks differ between images
    assert np.allclose(grads, grads.mean(axis=(1, 2), keepdims=True), atol=1e-6)
    hidden = keras_mod.Model(model.inputs[0], model.get_layer("head_dense").output)(x).numpy()
    assert (hidden > 0).any() and (hidden == 0).any()


def test_folding_batch_norms_keeps_a_deep_head_exact(keras_mod):
    """Batch norms folded into the next dense layer or the logit (two in a row, one before a
    linear dense layer, one last) still give TensorFlow's logits and tape gradients."""
    import tensorflow as tf

    keras_mod.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    inputs = keras_mod.Input(TINY_SHAPE)
    x = keras_mod.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras_mod.layers.GlobalAveragePooling2D()(x)
    for layer in [keras_mod.layers.BatchNormalization(), keras_mod.layers.BatchNormalization(),
                  keras_mod.layers.Dense(12, activation="relu"), keras_mod.layers.BatchNormalization(),
                  keras_mod.layers.Dense(6), keras_mod.layers.BatchNormalization()]:
        x = layer(x)
        if isinstance(layer, keras_mod.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2.0, gamma.shape), rng.normal(0, 0.3, beta.shape),
                               rng.normal(0, 0.05, mean.shape), rng.uniform(0.01, 0.2, var.shape)])
    logit = keras_mod.layers.Dense(1, name="logit")(x)
    model = keras_mod.Model(inputs, keras_mod.layers.Activation("sigmoid")(logit))
    head = hd.detect_head(model)
    assert [s[0] for s in head.steps] == ["affine", "affine", "dense", "affine", "dense", "affine"]
    assert len(head.folded[0]) == 2  # the four batch norms are gone
    features_model = keras_mod.Model(inputs, [model.get_layer("conv").output, logit])
    xt = tf.constant(_inputs(model, n=6))
    with tf.GradientTape() as tape:
        features, logits = features_model(xt, training=False)
        score = tf.reduce_sum(logits)
    grads = tape.gradient(score, features).numpy()
    ours, weights = head.evaluate(features.numpy())
    # float32 rounding through batch norms that scale by up to 20: 1e-4 on a logit moves a
    # probability by at most 2.5e-5, inside the backend's 1e-4 contract
    np.testing.assert_allclose(ours, logits.numpy().ravel(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(weights, grads.mean(axis=(1, 2)), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "variant",
    ["full_head", "no_batch_norm", "no_hidden_layer", "mobilenetv2_classifier"],
)
def test_onnx_matches_tensorflow_gradcam(variant, keras_mod, tmp_path):
    if variant == "mobilenetv2_classifier":
        from xray_ai.training.architectures import build_classifier

        keras_mod.utils.set_random_seed(0)
        model = build_classifier("mobilenetv2", (96, 96, 3), dense_units=16)  # 3 x 3 feature map
        _calibrate_batch_norm(keras_mod, model, _inputs(model, n=8, seed=5))
    else:
        kwargs = {"no_batch_norm": {"bn": False}, "no_hidden_layer": {"hidden": 0}}.get(variant, {})
        model = _head_model(keras_mod, **kwargs)
    analyzer = _export_and_load(model, tmp_path)
    _assert_equivalent(model, analyzer, _inputs(model))


@pytest.mark.parametrize("fixture", ["flat_model", "nested_model", "sequential_model"])
def test_degenerate_heads_gap_dense_sigmoid_are_exact_too(fixture, request, tmp_path):
    """GAP -> [Dropout] -> Dense(1, sigmoid) is the head without BN and hidden layer: still closed form,
    nested backbones and Sequential included (the target layer is inside the inner model)."""
    model = request.getfixturevalue(fixture)
    analyzer = _export_and_load(model, tmp_path)
    assert "/" in analyzer.target_layer or fixture == "flat_model"
    _assert_equivalent(model, analyzer, _inputs(model))


def _other_head(keras, kind):
    inputs = keras.Input(TINY_SHAPE)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    if kind == "max_pooling":
        x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    elif kind == "flatten":
        x = keras.layers.Flatten(name="flat")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if kind == "tanh_hidden":
        x = keras.layers.Dense(8, activation="tanh", name="tanh_dense")(x)
    out = keras.layers.Dense(1, activation="sigmoid" if kind != "no_sigmoid" else None, name="logit")(x)
    return keras.Model(inputs, out, name=f"other_{kind}")


@pytest.mark.parametrize(
    "kind, layer",
    [("max_pooling", "gmp"), ("flatten", "flat"), ("tanh_hidden", "tanh_dense"), ("no_sigmoid", "logit")],
)
def test_a_different_head_is_refused_with_the_layer_named(kind, layer, keras_mod, tmp_path):
    model = _other_head(keras_mod, kind)
    with pytest.raises(hd.UnsupportedHead, match=repr(layer)):
        hd.detect_head(model)
    analyzer, reason = ob.load_export(model, "b" * 64, tmp_path)
    assert analyzer is None and "head not supported" in reason and repr(layer) in reason
    with pytest.raises(hd.UnsupportedHead):
        ob.export_model(model, "b" * 64, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------------------- the cache


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny head model as a .keras file, with its export in a private cache."""
    import keras

    keras.utils.set_random_seed(0)
    model = _head_model(keras)
    root = tmp_path_factory.mktemp("exported")
    model_file = root / "tiny_head.keras"
    model.save(model_file)
    sha = file_sha256(model_file)
    cache = root / "cache"
    reloaded = keras.models.load_model(model_file, compile=False)
    ob.export_model(reloaded, sha, cache)
    return model_file, sha, cache


def _copy_cache(exported, tmp_path):
    _, sha, cache = exported
    dst = tmp_path / "cache"
    shutil.copytree(cache, dst)
    return sha, dst, *ob.export_paths(sha, dst)


def test_export_writes_onnx_and_a_verifiable_sidecar(exported, keras_mod):
    model_file, sha, cache = exported
    onnx_path, meta_path = ob.export_paths(sha, cache)
    assert sorted(p.name for p in cache.iterdir()) == [f"{sha}.json", f"{sha}.onnx"]  # no temp files left
    meta = json.loads(meta_path.read_text())
    assert meta["keras_sha256"] == sha and meta["onnx_sha256"] == file_sha256(onnx_path)
    assert meta["format"] == ob.EXPORT_FORMAT and meta["target_layer"] == "conv2"
    assert meta["feature_shape"] == [16, 16, 12]
    assert len(meta["output_names"]) == 3  # feature map, the head's ReLU layer, probability
    assert meta["check_max_probability_diff"] <= PROB_TOL
    model = keras_mod.models.load_model(model_file, compile=False)
    analyzer, reason = ob.load_export(model, sha, cache)
    assert reason is None and analyzer.onnx_path == onnx_path
    inputs = analyzer.session.get_inputs()
    assert len(inputs) == 1 and list(inputs[0].shape[1:]) == list(TINY_SHAPE)  # only the image goes in


@pytest.mark.parametrize(
    "damage", ["tampered_onnx", "missing_sidecar", "other_keras_sha", "old_format", "other_weights", "feature_map_only"]
)
def test_a_damaged_or_foreign_export_is_ignored_with_a_reason(damage, exported, tmp_path, keras_mod):
    model_file, _, _ = exported
    sha, cache, onnx_path, meta_path = _copy_cache(exported, tmp_path)
    model = keras_mod.models.load_model(model_file, compile=False)
    meta = json.loads(meta_path.read_text())
    if damage == "tampered_onnx":
        with open(onnx_path, "ab") as fh:
            fh.write(b"\0")
    elif damage == "missing_sidecar":
        meta_path.unlink()
    elif damage == "other_keras_sha":
        meta["keras_sha256"] = "c" * 64
    elif damage == "old_format":
        meta["format"] = 0
    elif damage == "other_weights":
        layer = model.get_layer("logit")
        layer.set_weights([w + 0.1 for w in layer.get_weights()])
    elif damage == "feature_map_only":  # a graph with the feature map only (format 1), sidecar made to match
        features = keras_mod.Model(model.inputs[0], model.get_layer("conv2").output)
        features(np.zeros((1, *TINY_SHAPE), np.float32))
        features.export(str(onnx_path), format="onnx", verbose=False)
        meta["onnx_sha256"] = file_sha256(onnx_path)
    if damage in ("other_keras_sha", "old_format", "feature_map_only"):
        meta_path.write_text(json.dumps(meta))
    analyzer, reason = ob.load_export(model, sha, cache)
    assert analyzer is None
    expected = {"tampered_onnx": "fails its check", "missing_sidecar": "sidecar", "other_keras_sha": "keras_sha256",
                "old_format": "format", "other_weights": "head_sha256",
                "feature_map_only": "pooled features, one 2-D map per layer, probability"}[damage]
    assert expected in reason


def test_cache_dir_and_backend_switch_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XRAY_AI_ONNX_CACHE", str(tmp_path / "c"))
    assert settings.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XRAY_AI_ONNX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert settings.cache_dir() == tmp_path / "xray_ai" / "onnx"
    monkeypatch.delenv("XRAY_AI_BACKEND", raising=False)
    assert settings.default_backend() == "auto"
    monkeypatch.setenv("XRAY_AI_BACKEND", "TensorFlow")
    assert settings.default_backend() == "tensorflow"
    monkeypatch.setenv("XRAY_AI_BACKEND", "cuda")
    with pytest.raises(ValueError, match="XRAY_AI_BACKEND='cuda'"):
        ModelManager(tmp_path / "registry.json")


# ---------------------------------------------------------------------------- manager, analyze, CLI


def _registry_for(exported, tmp_path):
    model_file, sha, _ = exported
    dst = tmp_path / model_file.name
    shutil.copy(model_file, dst)
    return write_tiny_registry(tmp_path, dst, sha256=sha)


def _xray():
    from xray_ai import load_image

    return load_image(EXAMPLES / "rg3_tibia.png")


def test_manager_serves_onnx_when_the_export_exists_and_analyze_says_so(exported, tmp_path, monkeypatch):
    from xray_ai import analyze

    monkeypatch.delenv("XRAY_AI_BACKEND", raising=False)
    registry = _registry_for(exported, tmp_path)
    sha, cache, _, _ = _copy_cache(exported, tmp_path)
    onnx_manager = ModelManager(registry, onnx_cache=cache)
    tf_manager = ModelManager(registry, onnx_cache=cache, backend="tensorflow")
    loaded = onnx_manager.get("fracture")
    assert loaded.backend == "onnxruntime" and loaded.backend_reason is None and not loaded.placeholder
    assert loaded.target_layer == "conv2" and loaded.heatmap_method == "gradcam"
    on_ort, on_tf = analyze(_xray(), "fracture", manager=onnx_manager), analyze(_xray(), "fracture", manager=tf_manager)
    assert on_ort.backend == "onnxruntime" and on_ort.to_json()["backend"] == "onnxruntime"
    assert on_tf.backend == "tensorflow" and tf_manager.get("fracture").backend == "tensorflow"
    assert abs(on_ort.probability - on_tf.probability) <= PROB_TOL
    assert _corr(on_ort.views[0].heatmap, on_tf.views[0].heatmap) >= MIN_CORR


def test_env_switch_forces_tensorflow(exported, tmp_path, monkeypatch):
    registry = _registry_for(exported, tmp_path)
    _, cache, _, _ = _copy_cache(exported, tmp_path)
    monkeypatch.setenv("XRAY_AI_BACKEND", "tensorflow")
    loaded = ModelManager(registry, onnx_cache=cache).get("fracture")
    assert loaded.backend == "tensorflow"


def test_without_an_export_tensorflow_serves_at_once_and_a_later_export_is_picked_up(exported, tmp_path, monkeypatch):
    monkeypatch.delenv("XRAY_AI_BACKEND", raising=False)
    registry = _registry_for(exported, tmp_path)
    cache = tmp_path / "empty_cache"
    manager = ModelManager(registry, onnx_cache=cache)
    first = manager.get("fracture")
    assert first.backend == "tensorflow" and "no ONNX export yet" in first.backend_reason
    assert not cache.exists()  # auto never exports by itself
    manager.export_onnx("tiny-test")
    assert manager.get("fracture").backend == "onnxruntime"


def test_a_model_served_by_onnx_keeps_its_verified_session(exported, tmp_path, monkeypatch):
    """get() does not stat the export of a model ONNX Runtime already serves: the session it
    opened was verified, so removing or replacing the files does not disturb it; a new
    model file (new sha256) does load anew."""
    monkeypatch.delenv("XRAY_AI_BACKEND", raising=False)
    registry = _registry_for(exported, tmp_path)
    cache = tmp_path / "c"
    manager = ModelManager(registry, onnx_cache=cache)
    manager.export_onnx("tiny-test")
    loaded = manager.get("fracture")
    assert loaded.backend == "onnxruntime"
    for path in ob.export_paths(exported[1], cache):
        path.unlink()
    assert manager.get("fracture") is loaded
    model_file = tmp_path / exported[0].name
    model_file.write_bytes(model_file.read_bytes())  # same bytes, new mtime: the file is checked again
    os.utime(model_file, ns=(0, 0))
    again = manager.get("fracture")
    assert again is not loaded and again.backend == "tensorflow" and "no ONNX export yet" in again.backend_reason


def test_backend_onnx_exports_on_demand(exported, tmp_path):
    registry = _registry_for(exported, tmp_path)
    manager = ModelManager(registry, onnx_cache=tmp_path / "c", backend="onnx")
    loaded = manager.get("fracture")
    assert loaded.backend == "onnxruntime" and ob.export_paths(exported[1], tmp_path / "c")[0].is_file()
    assert manager.get("fracture") is loaded  # the export it wrote does not invalidate its own cache entry


def test_a_different_head_falls_back_to_tensorflow_and_says_so(tmp_path, keras_mod):
    from xray_ai import analyze

    model = _other_head(keras_mod, "max_pooling")
    model_file = tmp_path / "gmp.keras"
    model.save(model_file)
    registry = write_tiny_registry(tmp_path, model_file, sha256=file_sha256(model_file))
    manager = ModelManager(registry, onnx_cache=tmp_path / "c", backend="onnx")
    result = analyze(_xray(), "fracture", manager=manager)
    assert result.backend == "tensorflow" and not result.placeholder
    assert any("ONNX Runtime was requested" in w and "'gmp'" in w for w in result.warnings)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_a_placeholder_is_never_served_by_onnx(tmp_path):
    registry = write_tiny_registry(tmp_path, tmp_path / "gone.keras", sha256="0" * 64)
    loaded = ModelManager(registry, onnx_cache=tmp_path / "c", backend="onnx").get("fracture")
    assert loaded.placeholder and loaded.backend == "tensorflow"
    assert "placeholder" in loaded.backend_reason


def test_cli_export_then_predict_json_reports_the_backend(exported, tmp_path, capsys, monkeypatch):
    from xray_ai.cli import main

    registry = _registry_for(exported, tmp_path)
    monkeypatch.setenv("XRAY_AI_ONNX_CACHE", str(tmp_path / "cli_cache"))
    monkeypatch.delenv("XRAY_AI_BACKEND", raising=False)
    image = str(EXAMPLES / "rg3_tibia.png")
    assert main(["predict", image, "--condition", "fracture", "--json", "--registry", str(registry)]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "tensorflow"  # no export yet
    assert main(["export-onnx", "tiny-test", "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert f"{exported[1]}.onnx" in out
    assert main(["predict", image, "--condition", "fracture", "--json", "--registry", str(registry)]) == 0
    ort_json = json.loads(capsys.readouterr().out)
    assert ort_json["backend"] == "onnxruntime"
    assert main(["predict", image, "--condition", "fracture", "--json", "--backend", "tensorflow",
                 "--registry", str(registry)]) == 0
    tf_json = json.loads(capsys.readouterr().out)
    assert tf_json["backend"] == "tensorflow"
    assert abs(tf_json["probability"] - ort_json["probability"]) <= PROB_TOL


def test_cli_export_of_a_model_that_cannot_be_exported_exits_2(tmp_path, capsys, keras_mod, monkeypatch):
    from xray_ai.cli import main

    monkeypatch.setenv("XRAY_AI_ONNX_CACHE", str(tmp_path / "c"))
    model = _other_head(keras_mod, "flatten")
    model_file = tmp_path / "flat.keras"
    model.save(model_file)
    registry = write_tiny_registry(tmp_path, model_file, sha256=file_sha256(model_file))
    assert main(["export-onnx", "tiny-test", "--registry", str(registry)]) == 2
    captured = capsys.readouterr()
    assert "not exported" in captured.out and "'flat'" in captured.out and "tiny-test" in captured.err
    assert main(["export-onnx", "nope", "--registry", str(registry)]) == 2
    assert "nope" in capsys.readouterr().err


# ---------------------------------------------------------------------------- every shipped model


def _shipped_models():
    from xray_ai.serving.verify import check_model_file
    from xray_ai.registry import load_registry

    registry = load_registry(REPO / "model_registry.json")
    # classifiers: the measurement model's export is checked by tests/test_measurement_serving.py
    return [m.id for m in registry.models.values()
            if not m.is_measurement and not m.is_ensemble and check_model_file(m, registry.base_dir) is None]


SHIPPED = _shipped_models()


@pytest.mark.skipif(not SHIPPED, reason="no shipped model file exists (and verifies) yet")
@pytest.mark.parametrize("model_id", SHIPPED or ["none"])
def test_every_shipped_model_is_equivalent_on_onnx(model_id):
    """The export shipped and pinned beside each model (what a fresh clone serves) gives
    TensorFlow's probability and map for the entry's heatmap setting on real radiographs."""
    from xray_ai import load_image
    from xray_ai.explain.gradcam import GradCam
    from xray_ai.serving.preprocessing import prepare_batch

    manager = ModelManager(REPO / "model_registry.json", backend="tensorflow", warm_up=False)
    loaded = manager.get(model_id=model_id)
    assert not loaded.placeholder, loaded.placeholder_reason
    try:
        hd.detect_head(loaded.model)
    except hd.UnsupportedHead as exc:
        pytest.fail(f"{model_id}: a model this project trains must have the closed-form head: {exc}")
    spec = loaded.entry.heatmap
    analyzer, reason = ob.load_pinned(loaded.entry, manager.registry.base_dir, spec)
    assert analyzer is not None, reason or f"{model_id} ships no pinned export"
    images = [load_image(EXAMPLES / name).pixels for name in ("rg3_tibia.png", "rg1_chest.png")]
    batch = prepare_batch(images, loaded.entry.input, loaded.entry.preprocessing)
    _assert_equivalent(loaded.model, analyzer, batch, GradCam(loaded.model, heatmap=spec))


# ---------------------------------------------------------------------------- bound to its model (issue 18)


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """Two models of one architecture and shape (different weights), each saved and exported."""
    import keras

    root = tmp_path_factory.mktemp("two")
    out = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = _head_model(keras, name=f"tiny_head_{seed}")
        path = root / f"m{seed}.keras"
        model.save(path)
        sha = file_sha256(path)
        ob.export_model(keras.models.load_model(path, compile=False), sha, root / "cache")
        out.append((path, sha))
    return root / "cache", out


def _forge_sidecar(onnx_path, meta_path):
    """What whoever replaces an export can do: make the sidecar's digest match the new file."""
    meta = json.loads(meta_path.read_text())
    meta["onnx_sha256"] = file_sha256(onnx_path)
    meta_path.write_text(json.dumps(meta))


def test_another_models_export_with_a_consistent_sidecar_is_refused(two_exports, tmp_path, keras_mod, caplog):
    cache, [(path_a, sha_a), (_, sha_b)] = two_exports
    dst = tmp_path / "cache"
    shutil.copytree(cache, dst)
    onnx_a, meta_a = ob.export_paths(sha_a, dst)
    shutil.copy(ob.export_paths(sha_b, dst)[0], onnx_a)  # B's graph under A's name
    _forge_sidecar(onnx_a, meta_a)  # sidecar: A's keras sha, A's head digest, B's file digest
    model_a = keras_mod.models.load_model(path_a, compile=False)
    with caplog.at_level("WARNING", logger="xray_ai.serving.onnx_backend"):
        analyzer, reason = ob.load_export(model_a, sha_a, dst)
    assert analyzer is None and "not made from this model file" in reason and "head weights" in reason
    assert any(r.levelname == "WARNING" and "not made from this model file" in r.getMessage() for r in caplog.records)
    # the untouched export of A still serves
    analyzer, reason = ob.load_export(model_a, sha_a, cache)
    assert analyzer is not None, reason


@pytest.mark.parametrize("where", ["backbone", "head"])
def test_a_flipped_weight_byte_with_a_fixed_sidecar_is_refused(two_exports, tmp_path, keras_mod, where):
    import onnx
    from onnx import numpy_helper

    cache, [(path_a, sha_a), _] = two_exports
    dst = tmp_path / "cache"
    shutil.copytree(cache, dst)
    onnx_a, meta_a = ob.export_paths(sha_a, dst)
    graph = onnx.load(str(onnx_a))
    name = "conv1" if where == "backbone" else "exact_grad_cam"
    tensor = next(t for t in graph.graph.initializer if name in t.name and t.data_type == onnx.TensorProto.FLOAT
                  and len(t.dims) >= 2)
    array = numpy_helper.to_array(tensor).copy()
    raw = bytearray(array.tobytes())
    raw[3] ^= 0x40  # one byte of the first weight (its exponent: the weight changes, as damage or tampering would)
    tensor.CopyFrom(numpy_helper.from_array(np.frombuffer(bytes(raw), np.float32).reshape(array.shape), tensor.name))
    onnx.save(graph, str(onnx_a))
    _forge_sidecar(onnx_a, meta_a)
    analyzer, reason = ob.load_export(keras_mod.models.load_model(path_a, compile=False), sha_a, dst)
    assert analyzer is None and "not made from this model file" in reason
    assert ("head weights" if where == "head" else "results differ") in reason


def test_a_refused_export_is_a_warning_on_the_clis_stderr(two_exports, tmp_path):
    """The manager serves TensorFlow, says why in backend_reason, and `predict` prints the WARNING."""
    cache, [(path_a, sha_a), (_, sha_b)] = two_exports
    dst = tmp_path / "cache"
    shutil.copytree(cache, dst)
    onnx_a, meta_a = ob.export_paths(sha_a, dst)
    shutil.copy(ob.export_paths(sha_b, dst)[0], onnx_a)
    _forge_sidecar(onnx_a, meta_a)
    shutil.copy(path_a, tmp_path / path_a.name)
    registry = write_tiny_registry(tmp_path, tmp_path / path_a.name, sha256=sha_a)
    loaded = ModelManager(registry, onnx_cache=dst, backend="auto").get("fracture")
    assert loaded.backend == "tensorflow" and "not made from this model file" in loaded.backend_reason
    env = dict(os.environ, XRAY_AI_ONNX_CACHE=str(dst), XRAY_AI_BACKEND="auto")
    done = subprocess.run([sys.executable, "-m", "xray_ai", "predict", str(EXAMPLES / "rg3_tibia.png"), "--condition", "fracture", "--registry",
                           str(registry), "--json"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["backend"] == "tensorflow"
    assert "WARNING" in done.stderr and "not made from this model file" in done.stderr
