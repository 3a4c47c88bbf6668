"""A shipped export that reads its weights from the model file it was made from.

A shipped export lies beside its `.keras` file, and both are pinned by sha256 in the
registry (serving.onnx_backend.load_pinned checks both before it opens a session). Written
as tf2onnx writes it, the export holds a second copy of every weight: about half of
models/, which has a budget. `read_weights_from_model_file` rewrites each large
initializer of an export that is a Keras weight of the model, transposed into ONNX's layout,
spatially flipped where it is a kernel of the backward pass (serving.gradient_ops) and,
where tf2onnx folded a batch norm into it, scaled per output channel, as ONNX external data
that points at that weight's bytes inside the `.keras` file, followed by the Transpose,
Slice and Mul nodes that rebuild it. ONNX Runtime folds those nodes into constants when it opens
the session (graph optimisation, as for every export), so what runs is the same float32
graph as before, and the export file keeps the graph and the small tensors only.

This works because a `.keras` file is a zip archive whose `model.weights.h5` member is
stored uncompressed, and h5py writes each weight as one contiguous little-endian float32
dataset: its bytes lie at a fixed offset in the `.keras` file. Every offset is checked
against the weight's values before it is used, and the rewritten export is checked against
TensorFlow like any export (serving.onnx_export.export_to). A model file with another
layout (compressed, chunked) keeps its export self-contained.

Imports onnx and h5py when called.
"""

from __future__ import annotations

import io
import itertools
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["MIN_SHARED_ELEMENTS", "channel_scale", "read_weights_from_model_file", "save_with_initializers"]

MIN_SHARED_ELEMENTS = 1024  # smaller tensors are not worth the nodes that rebuild them
_WEIGHTS_MEMBER = "model.weights.h5"
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # a zip member's local file header (30 bytes)
_LOCAL_HEADER_SIGNATURE = 0x04034B50
_BEFORE_FIRST = -(2**63)  # Slice's end for "down to and including index 0" with step -1


def channel_scale(merged: np.ndarray, raw: np.ndarray) -> np.ndarray | None:
    """s with merged = raw * s[o] for every output channel o (axis 0), or None."""
    flat_m, flat_r = merged.reshape(len(merged), -1).astype(np.float64), raw.reshape(len(raw), -1).astype(np.float64)
    pivot = np.argmax(np.abs(flat_r), axis=1)
    denominator = flat_r[np.arange(len(raw)), pivot]
    if np.any(denominator == 0):
        return None
    scale = flat_m[np.arange(len(merged)), pivot] / denominator
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        return None
    rebuilt = (flat_m / scale[:, None]).astype(np.float32)
    if not np.allclose(rebuilt, flat_r, rtol=1e-5, atol=1e-7 * float(np.abs(flat_r).max())):
        return None
    return scale


def read_weights_from_model_file(onnx_path: Path, keras_path: Path) -> tuple[int, int]:
    """Rewrite the export at `onnx_path` (in the folder of `keras_path`, which it was made
    from) to read its large weights from `keras_path`; returns (tensors moved, bytes moved).
    (0, 0), with the file untouched, when the model file's layout does not allow it or no
    tensor matches."""
    import onnx

    if onnx_path.parent.resolve() != keras_path.parent.resolve():
        raise ValueError(f"{onnx_path.name} must lie beside {keras_path.name}: external data is found by its name")
    by_size: dict[int, list[tuple[np.ndarray, int]]] = {}
    for array, offset in _weights_with_offsets(keras_path):
        by_size.setdefault(array.size, []).append((array, offset))
    if not by_size:
        return 0, 0
    graph_model = onnx.load(str(onnx_path))
    graph = graph_model.graph
    kept, nodes, moved = [], [], 0
    for tensor in graph.initializer:
        found = _source_of(tensor, by_size)
        if found is None:
            kept.append(tensor)
            continue
        raw, offset, perm, flipped, scale = found
        source = _external_tensor(f"{tensor.name}__model_file", raw, keras_path.name, offset)
        rebuilt, constants = _rebuilding(source.name, tensor.name, perm, flipped, scale)
        kept += [source, *constants]
        nodes += rebuilt
        moved += raw.nbytes
    if not nodes:
        return 0, 0
    save_with_initializers(graph_model, kept, nodes, onnx_path)
    return sum(1 for n in nodes if n.op_type == "Transpose"), moved


def save_with_initializers(graph_model, initializers: list, leading_nodes: list, path: Path) -> None:
    """Save `graph_model` to `path` with `initializers` as its initializers and `leading_nodes`
    (the ones that compute the tensors taken out of them) before its own nodes, so that the
    graph stays topologically sorted."""
    import onnx

    graph = graph_model.graph
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    ordered = list(leading_nodes) + list(graph.node)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.save(graph_model, str(path))


def _external_tensor(name: str, raw: np.ndarray, location: str, offset: int):
    """A float32 initializer of `raw`'s shape whose bytes are `location`'s from `offset` on."""
    import onnx

    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=list(raw.shape),
                              data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(raw.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _rebuilding(source: str, target: str, perm: tuple[int, ...], flipped: bool, scale: np.ndarray | None):
    """(nodes computing `target` from `source`: Transpose, then Slice (flip) and Mul (scale)
    where needed; the constants they read)."""
    from onnx import helper, numpy_helper

    steps: list[tuple[str, list[str], dict]] = [("Transpose", [], {"perm": list(perm)})]
    constants = []
    if flipped:  # the two spatial axes reversed; Slice takes its bounds as tensors
        bounds = {"starts": [-1, -1], "ends": [_BEFORE_FIRST] * 2, "axes": [-2, -1], "steps": [-1, -1]}
        constants += [numpy_helper.from_array(np.array(v, np.int64), f"{target}__flip_{k}") for k, v in bounds.items()]
        steps.append(("Slice", [c.name for c in constants], {}))
    if scale is not None:
        shape = (-1, *[1] * (len(perm) - 1))
        constants.append(numpy_helper.from_array(scale.astype(np.float32).reshape(shape), f"{target}__model_file_scale"))
        steps.append(("Mul", [constants[-1].name], {}))
    nodes, current = [], source
    for i, (op, extra_inputs, attributes) in enumerate(steps):
        out = target if i == len(steps) - 1 else f"{target}__from_model_file_{i}"
        nodes.append(helper.make_node(op, [current, *extra_inputs], [out], name=f"{target}__from_model_file_{op.lower()}",
                                      **attributes))
        current = out
    return nodes, constants


def _source_of(tensor, by_size: dict[int, list[tuple[np.ndarray, int]]]
               ) -> tuple[np.ndarray, int, tuple[int, ...], bool, np.ndarray | None] | None:
    """(Keras weight, its offset, the permutation into the initializer's layout, whether it is
    then flipped on its two spatial axes (a 4-D kernel's last two in ONNX's layout), the
    per-channel scale or None) of the weight the float32 initializer `tensor` is built from,
    or None (another type, too small, or no weight matches)."""
    import onnx
    from onnx import numpy_helper

    if tensor.data_type != onnx.TensorProto.FLOAT or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    size = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    if size < MIN_SHARED_ELEMENTS or size not in by_size:
        return None
    array = numpy_helper.to_array(tensor)
    for raw, offset in by_size[size]:
        for perm in itertools.permutations(range(raw.ndim)):
            if tuple(raw.shape[p] for p in perm) != array.shape:
                continue
            transposed = np.transpose(raw, perm)
            for flipped in (False, True) if array.ndim == 4 else (False,):
                candidate = transposed[:, :, ::-1, ::-1] if flipped else transposed
                if np.array_equal(candidate, array):
                    return raw, offset, perm, flipped, None
                scale = channel_scale(array, candidate) if array.ndim >= 2 else None
                if scale is not None:
                    rebuilt = candidate * scale.astype(np.float32).reshape(-1, *[1] * (array.ndim - 1))
                    if np.allclose(rebuilt, array, rtol=1e-6, atol=1e-7 * float(np.abs(array).max())):
                        return raw, offset, perm, flipped, scale
    return None


def _weights_with_offsets(keras_path: Path) -> list[tuple[np.ndarray, int]]:
    """Every float32 weight of the `.keras` file with the offset of its bytes in that file;
    [] when the file's layout does not keep them as plain bytes (a compressed member, a
    chunked or filtered dataset)."""
    import h5py

    data = keras_path.read_bytes()  # read once: the member's bytes are taken from it, not read again
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        try:
            info = archive.getinfo(_WEIGHTS_MEMBER)
        except KeyError:
            return []
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
        return []
    header = _LOCAL_HEADER.unpack_from(data, info.header_offset)
    if header[0] != _LOCAL_HEADER_SIGNATURE:
        return []
    start = info.header_offset + _LOCAL_HEADER.size + header[9] + header[10]  # + name + extra field
    member = data[start:start + info.file_size]
    if len(member) != info.file_size or zlib.crc32(member) != info.CRC:  # not where the archive says
        return []
    found: list[tuple[np.ndarray, int]] = []

    def visit(_name, item):
        if not isinstance(item, h5py.Dataset) or item.dtype != np.dtype("<f4") or item.size == 0:
            return
        plist = item.id.get_create_plist()
        offset = item.id.get_offset()
        if plist.get_layout() != h5py.h5d.CONTIGUOUS or plist.get_nfilters() or offset is None:
            return
        values = item[()]
        if member[offset:offset + values.nbytes] == values.tobytes():  # the bytes are where h5py says
            found.append((values, start + offset))

    with h5py.File(io.BytesIO(member), "r") as weights:
        weights.visititems(visit)
    return found
