"""Finer heatmaps on ONNX Runtime, and exports shipped beside the model (serving.gradient_ops,
serving.onnx_export, serving.onnx_backend.load_pinned).

- The exportable gradients equal TensorFlow's own, op by op, on a small network holding every
  op they replace (ReLU, ReLU6, 1x1 and 3x3 convolutions, depthwise convolutions of stride 1
  and 2 with SAME and VALID padding, a residual sum, a concatenation, average pooling, the
  spatial mean).
- A LayerCAM / HiResCAM / fusion export's maps agree with GradCam's for the same setting, and
  its probability with keras'.
- `export-onnx --ship` writes the export beside the model and pins it in the registry; a
  `predict` then serves it without importing TensorFlow (asserted in a fresh interpreter).
- A pinned export that was replaced, that computes another setting, or whose model file is
  gone is never served as if it were fine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, write_tiny_registry
from xray_ai.explain.cam_math import HeatmapSpec
from xray_ai.serving.artifacts import file_sha256

SHAPE = (32, 32, 3)


def _every_op_model(keras):
    """A tiny MobileNet/EfficientNet/DenseNet mixture: every op gradient_ops overrides, with a
    head of the project's form (GAP, dense, one logit, sigmoid)."""
    L = keras.layers
    inputs = keras.Input(SHAPE, name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)  # 16 x 16
    x = L.ReLU(6.0, name="stem_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw_same")(x)
    y = L.ReLU(6.0, name="dw_same_relu")(y)
    x = L.Add(name="residual")([x, L.Conv2D(8, 1, name="project")(y)])
    x = L.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="valid", name="dw_valid_s2")(x)  # 8 x 8
    x = L.ReLU(name="mid_relu")(x)
    x = L.Concatenate(name="concat")([x, L.Conv2D(4, 1, activation="relu", name="branch")(x)])
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw_same_s2")(x)  # 4 x 4
    x = L.Conv2D(16, 1, activation="relu", name="expand_relu")(x)
    x = L.AveragePooling2D(2, name="avg")(L.Conv2D(16, 3, padding="same", activation="relu", name="c4")(x))  # 2 x 2
    x = L.Conv2D(256, 1, use_bias=False, name="wide")(x)  # 16 x 256: big enough to be shared (4096 weights)
    x = L.BatchNormalization(name="wide_bn")(x)  # folded into the forward kernel by tf2onnx, not the backward one
    x = L.Conv2D(64, 1, name="top")(L.ReLU(name="wide_relu")(x))
    x = L.ReLU(name="top_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(8, activation="relu", name="head_dense")(x)
    logit = L.Dense(1, name="logit")(x)
    return keras.Model(inputs, L.Activation("sigmoid", name="probability")(logit), name="every_op")


@pytest.fixture(scope="module")
def every_op(tmp_path_factory, keras_mod):
    keras_mod.utils.set_random_seed(4)
    model = _every_op_model(keras_mod)
    bn = model.get_layer("wide_bn")  # statistics that make the fold a real scaling
    rng = np.random.default_rng(5)
    bn.set_weights([rng.uniform(0.5, 2.0, 256), rng.normal(0, 0.2, 256), rng.normal(0, 0.1, 256), rng.uniform(0.2, 2.0, 256)])
    path = tmp_path_factory.mktemp("every_op") / "every_op.keras"
    model.save(path)
    return keras_mod.models.load_model(path, compile=False), path


def _probe(n=3, seed=2):
    return np.random.default_rng(seed).uniform(0, 1, (n, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("layer", ["stem_relu", "mid_relu", "expand_relu", "concat"])
def test_exportable_gradients_equal_tensorflows(every_op, layer):
    import tensorflow as tf

    from xray_ai.explain.gradcam import build_feature_gradient_model
    from xray_ai.serving.gradient_ops import exportable_gradients

    replay = build_feature_gradient_model(every_op[0], [layer])
    x = tf.constant(_probe())

    @tf.function
    def ours(x):
        with exportable_gradients():
            features, logit, _ = replay(x, training=False)
        return tf.gradients(tf.reduce_sum(logit), features)[0]

    with tf.GradientTape() as tape:
        tape.watch(x)
        features, logit, _ = replay(x, training=False)
        score = tf.reduce_sum(logit)
    theirs = tape.gradient(score, features).numpy()
    got = ours(x).numpy()
    assert np.abs(theirs).max() > 0  # the comparison is not of two zero arrays
    np.testing.assert_allclose(got, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("spec, grid", [
    (HeatmapSpec("layercam", ("mid_relu",)), 8),
    (HeatmapSpec("hirescam", ("expand_relu",)), 4),
    (HeatmapSpec("layercam", ("expand_relu", "mid_relu")), 8),  # fusion of two strides: the finer grid
])
def test_a_gradient_export_matches_tensorflows_maps(every_op, spec, grid, tmp_path):
    from xray_ai.explain.gradcam import GradCam
    from xray_ai.serving.onnx_backend import export_model, load_export

    model, path = every_op
    sha = file_sha256(path)
    export_model(model, sha, tmp_path, spec)
    analyzer, reason = load_export(model, sha, tmp_path, spec=spec)
    assert analyzer is not None, reason
    x = _probe(4, seed=7)
    ours, theirs = analyzer(x), GradCam(model, heatmap=spec, strict=True)(x)
    np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-4)
    assert ours.heatmaps.shape == theirs.heatmaps.shape == (4, grid, grid)  # the finest layer's grid
    r = np.corrcoef(ours.heatmaps.ravel(), theirs.heatmaps.ravel())[0, 1]
    assert r >= 0.999, r
    np.testing.assert_allclose(ours.pooled_features, theirs.pooled_features, rtol=1e-3, atol=1e-5)
    assert (ours.method, ours.target_layer) == (spec.method, "+".join(spec.layers))
    # the closed-form export of the same model sits beside it, under its own name
    assert load_export(model, sha, tmp_path)[0] is None


def _shipped_registry(every_op, tmp_path, spec: HeatmapSpec | None):
    dst = tmp_path / "models" / "every_op.keras"
    dst.parent.mkdir()
    shutil.copy(every_op[1], dst)
    registry = write_tiny_registry(tmp_path, dst, sha256=file_sha256(dst), height=32, width=32, channels=3)
    raw = json.loads(registry.read_text())
    raw["models"]["tiny-test"]["path"] = "models/every_op.keras"
    if spec is not None:
        raw["models"]["tiny-test"]["heatmap"] = {**spec.to_json(), "chosen_on": "test fixture"}
    registry.write_text(json.dumps(raw, indent=2))
    return registry


def _cli(*args, env_extra=None, check=True):
    import os

    env = dict(os.environ, XRAY_AI_BACKEND="auto", **(env_extra or {}))
    done = subprocess.run([sys.executable, "-m", "xray_ai", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def shipped(every_op, tmp_path_factory):
    """A registry whose model has a LayerCAM setting and its shipped, pinned export."""
    root = tmp_path_factory.mktemp("shipped")
    registry = _shipped_registry(every_op, root, HeatmapSpec("layercam", ("mid_relu",)))
    out = _cli("export-onnx", "--ship", "tiny-test", "--registry", str(registry)).stdout
    assert "every_op.onnx" in out
    return registry


def test_ship_pins_the_export_in_the_registry(shipped):
    entry = json.loads(shipped.read_text())["models"]["tiny-test"]
    pinned = entry["onnx"]
    onnx_file = shipped.parent / pinned["path"]
    assert pinned["path"] == "models/every_op.onnx" and onnx_file.is_file()
    assert pinned["sha256"] == file_sha256(onnx_file) and pinned["keras_sha256"] == entry["sha256"]
    assert pinned["heatmap"] == {"method": "layercam", "layers": ["mid_relu"]}
    assert pinned["output_shapes"] == [[64], [8, 8], [1]]
    # large kernels are stored once, the backward ones derived from the forward ones (a division by the fold)
    shared = int(pinned["exporter"].split("; ")[1].split()[0])
    assert shared >= 1, pinned["exporter"]
    # ... and the forward ones are read from the model file beside it (serving.model_file_weights)
    assert "read from every_op.keras" in pinned["exporter"], pinned["exporter"]
    assert (shipped.parent / "models" / "every_op.onnx.json").is_file()


_NO_TF_PREDICT = """
import json, sys
from xray_ai.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
"""


def test_predict_on_a_shipped_export_never_imports_tensorflow(shipped):
    image = str(EXAMPLES / "rg3_tibia.png")
    done = subprocess.run([sys.executable, "-c", _NO_TF_PREDICT, "predict", image, "--condition", "fracture",
                           "--json", "--registry", str(shipped)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result_line, state_line = done.stdout.strip().rsplit("\n", 1)
    state = json.loads(state_line)
    assert state == {"code": 0, "tensorflow": False, "keras": False}
    result = json.loads(result_line)
    assert result["backend"] == "onnxruntime"
    assert (result["heatmap_method"], result["target_layer"]) == ("layercam", "mid_relu")
    assert "oneDNN" not in done.stderr and "absl" not in done.stderr  # no library noise on stderr


def _manager(registry):
    from xray_ai.serving.manager import ModelManager

    return ModelManager(registry, backend="auto", warm_up=False)


def test_a_replaced_shipped_export_is_refused_and_tensorflow_serves(shipped, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(shipped.parent, root)
    onnx_file = root / "models" / "every_op.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    loaded = _manager(root / "registry.json").get(condition="fracture")
    assert loaded.backend == "tensorflow" and not loaded.placeholder
    assert "fails its check" in loaded.backend_reason


def test_a_shipped_export_of_another_setting_is_not_used(shipped, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(shipped.parent, root)
    raw = json.loads((root / "registry.json").read_text())
    raw["models"]["tiny-test"]["heatmap"] = {"method": "hirescam", "layers": ["expand_relu"]}
    (root / "registry.json").write_text(json.dumps(raw))
    loaded = _manager(root / "registry.json").get(condition="fracture")
    assert loaded.backend == "tensorflow"
    assert "the shipped export computes" in loaded.backend_reason
    assert (loaded.analyzer.method, loaded.analyzer.target_layer) == ("hirescam", "expand_relu")


def test_a_missing_model_file_means_the_placeholder_whatever_the_export(shipped, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(shipped.parent, root)
    (root / "models" / "every_op.keras").unlink()
    loaded = _manager(root / "registry.json").get(condition="fracture")
    assert loaded.placeholder and loaded.backend == "tensorflow"
    assert "not found" in loaded.placeholder_reason


def test_the_keras_model_of_a_shipped_export_loads_on_demand(shipped):
    loaded = _manager(shipped).get(condition="fracture")
    assert loaded.backend == "onnxruntime" and loaded.keras_model is None
    assert loaded.model.name == "every_op"  # loaded (verified) when a non-default method needs it
