"""The registry's pin of an export shipped beside its model (an entry's `onnx` field): the
checks that every kind of shipped export shares, whatever it computes.

A pin names the export's `path` (relative to the registry's folder), its `sha256`, the
`keras_sha256` of the model file it was made from and its `format`. Before an export is
opened, the pin must be well formed and of the reader's format, made from the very model
file the entry names, and point at a file inside the registry's folder: the same trust as
the model file itself. The callers then check the model file on disk
(serving.verify.check_model_file, which decides the placeholder) and the export's own
sha256, and open it: serving.onnx_backend.load_pinned for a classifier (probability and
heatmap), serving.segmentation.load_pinned_segmenter for the measurement network.

No file is read here; numpy, keras and onnxruntime are not imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xray_ai.registry import ModelEntry

__all__ = ["PIN_KEYS", "pinned_export"]

PIN_KEYS: tuple[tuple[str, type], ...] = (("path", str), ("sha256", str), ("keras_sha256", str))


def pinned_export(entry: ModelEntry, base_dir: Path, export_format: Any,
                  extra_keys: tuple[tuple[str, type], ...] = ()) -> tuple[Mapping, Path] | None:
    """(the pin, the export's resolved path), or None when the entry pins no export.

    Raises ValueError saying why the pin cannot be used (without the model id, which the
    caller adds): not an object; a key of PIN_KEYS or `extra_keys` missing or of the wrong
    type; another format than `export_format`; made from another model file than the
    entry's; a path outside the registry's folder; no file there.
    """
    pin = entry.extra.get("onnx")
    if pin is None:
        return None
    if not isinstance(pin, Mapping):
        raise ValueError(f"registry field onnx must be an object, got {type(pin).__name__}")
    for key, kind in PIN_KEYS + extra_keys:
        if not isinstance(pin.get(key), kind):
            raise ValueError(f"registry field onnx: {key} missing or not a {kind.__name__}")
    if pin.get("format") != export_format:
        raise ValueError(f"registry field onnx: format {pin.get('format')!r}; this version reads format "
                         f"{export_format}")
    if pin["keras_sha256"] != entry.sha256:
        raise ValueError(f"the shipped export was made from another model file (sha256 {pin['keras_sha256'][:12]}..., "
                         f"the entry's is {str(entry.sha256)[:12]}...)")
    base = base_dir.resolve()
    path = (base / pin["path"]).resolve()
    if not path.is_relative_to(base) or path == base:
        raise ValueError(f"onnx.path {pin['path']!r} is outside the registry's folder")
    if not path.is_file():
        raise ValueError(f"the shipped export {pin['path']} is missing")
    return pin, path
