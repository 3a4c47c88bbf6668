"""serving.model_file_weights: a shipped export reads its large weights from the `.keras` file
beside it (the bytes of the weights member, stored uncompressed) instead of a second copy."""

import shutil
import zipfile

import numpy as np
import pytest

from xray_ai.serving.model_file_weights import read_weights_from_model_file

SHAPE = (24, 24, 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, keras_mod):
    """A model with a batch norm after a convolution (tf2onnx folds it into the kernel) and a
    wide dense layer, saved and exported by keras (weights embedded)."""
    L = keras_mod.layers
    keras_mod.utils.set_random_seed(3)
    inputs = keras_mod.Input(SHAPE)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)  # 432 weights: stays in the export
    x = L.Conv2D(64, 3, padding="same", use_bias=False, name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Conv2D(96, 1, activation="relu", name="wide")(L.ReLU()(x))
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(64, activation="relu", name="hidden")(x)
    model = keras_mod.Model(inputs, L.Dense(1, activation="sigmoid", name="out")(x))
    rng = np.random.default_rng(0)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 64), rng.normal(0, 0.2, 64), rng.normal(0, 0.1, 64),
                                       rng.uniform(0.2, 2, 64)])
    root = tmp_path_factory.mktemp("weights")
    model.save(root / "m.keras")
    model(np.zeros((1, *SHAPE), np.float32))  # keras' export needs a called model
    model.export(str(root / "m.onnx"), format="onnx", verbose=False)
    return root


def _copy(exported, tmp_path):
    for name in ("m.keras", "m.onnx"):
        shutil.copy(exported / name, tmp_path / name)
    return tmp_path / "m.onnx", tmp_path / "m.keras"


def _run(path, x):
    from xray_ai.serving.onnx_session import open_session

    session = open_session(path)
    return session.run(None, {session.get_inputs()[0].name: x})


def test_the_rewritten_export_computes_the_same_and_holds_no_second_copy(exported, tmp_path):
    import onnx

    onnx_path, keras_path = _copy(exported, tmp_path)
    moved, size = read_weights_from_model_file(onnx_path, keras_path)
    assert moved == 3  # conv (scaled by the folded batch norm), wide, hidden; the small tensors stay
    assert size == 4 * (3 * 3 * 16 * 64 + 64 * 96 + 96 * 64)
    assert onnx_path.stat().st_size < (exported / "m.onnx").stat().st_size - size + 4096
    external = [t for t in onnx.load(str(onnx_path), load_external_data=False).graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"m.keras"}
    x = np.random.default_rng(1).uniform(0, 1, (2, *SHAPE)).astype(np.float32)
    before, after = _run(exported / "m.onnx", x), _run(onnx_path, x)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_each_offset_points_at_the_weight_s_own_bytes(exported, tmp_path):
    import onnx

    onnx_path, keras_path = _copy(exported, tmp_path)
    read_weights_from_model_file(onnx_path, keras_path)
    data = keras_path.read_bytes()
    weights = {w.shape: np.asarray(w) for w in _keras_weights(keras_path) if w.size >= 4096}
    for tensor in onnx.load(str(onnx_path), load_external_data=False).graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = {e.key: e.value for e in tensor.external_data}
        start, length = int(where["offset"]), int(where["length"])
        values = np.frombuffer(data[start:start + length], "<f4").reshape(tuple(tensor.dims))
        np.testing.assert_array_equal(values, weights[values.shape])


def _keras_weights(path):
    import keras

    return keras.models.load_model(path, compile=False).get_weights()


def test_a_compressed_model_file_keeps_the_export_self_contained(exported, tmp_path):
    onnx_path, keras_path = _copy(exported, tmp_path)
    with zipfile.ZipFile(exported / "m.keras") as src, zipfile.ZipFile(keras_path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    before = onnx_path.read_bytes()
    assert read_weights_from_model_file(onnx_path, keras_path) == (0, 0)
    assert onnx_path.read_bytes() == before


def test_the_export_must_lie_beside_its_model_file(exported, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    onnx_path = tmp_path / "elsewhere" / "m.onnx"
    shutil.copy(exported / "m.onnx", onnx_path)
    with pytest.raises(ValueError, match="must lie beside m.keras"):
        read_weights_from_model_file(onnx_path, exported / "m.keras")
