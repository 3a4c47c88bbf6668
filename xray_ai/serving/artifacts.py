"""The one place that names and hashes a model's side files.

A model file `models/<id>.keras` may carry, beside it:

| file | written by | read by |
| --- | --- | --- |
| `<id>.metrics.json` | train (held-out test figures) | the performance page, the report |
| `<id>.features.npz` | train / fit-input-check (`serving.input_check`) | ModelManager at load |
| `<id>.bodypart.npz` | train --body-part-weight (`serving.body_part`) | ModelManager at load |
| `<id>.explain.json` | explain-eval (`explain.evaluate`) | the performance page |
| `<id>.fit.json` | models/fit_on_gpu.py | train --initial-model |
| `<id>.onnx` (+ `.onnx.json`) | export-onnx --ship, pinned in the registry entry | ModelManager (serving.onnx_backend.load_pinned) |

A shipped `<id>.onnx` holds the graph and small tensors only: its large weights are read from
`<id>.keras` beside it (serving.model_file_weights), so the two travel together.

and, outside the repository, an ONNX export in the cache (`serving.settings.cache_dir()`)
named by the `.keras` file's sha256: `<sha256>.onnx` and its JSON sidecar `<sha256>.json`.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = [
    "METRICS_SUFFIX",
    "INPUT_CHECK_SUFFIX",
    "BODY_PART_SUFFIX",
    "EXPLAIN_SUFFIX",
    "FIT_RECORD_SUFFIX",
    "file_sha256",
    "side_file",
    "metrics_path",
    "input_check_path",
    "body_part_path",
    "explain_path",
    "fit_record_path",
    "onnx_export_paths",
]

METRICS_SUFFIX = ".metrics.json"
INPUT_CHECK_SUFFIX = ".features.npz"
BODY_PART_SUFFIX = ".bodypart.npz"
EXPLAIN_SUFFIX = ".explain.json"
FIT_RECORD_SUFFIX = ".fit.json"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def side_file(model_path: str | Path, suffix: str) -> Path:
    """`models/x.keras` + `.features.npz` -> `models/x.features.npz`."""
    return Path(model_path).with_suffix(suffix)


def metrics_path(model_path: str | Path) -> Path:
    """`models/x.keras` -> `models/x.metrics.json`: the held-out evaluation of the model."""
    return side_file(model_path, METRICS_SUFFIX)


def input_check_path(model_path: str | Path) -> Path:
    """`models/x.keras` -> `models/x.features.npz`: the input check's feature distribution."""
    return side_file(model_path, INPUT_CHECK_SUFFIX)


def body_part_path(model_path: str | Path) -> Path:
    """`models/x.keras` -> `models/x.bodypart.npz`: the auxiliary body-part head."""
    return side_file(model_path, BODY_PART_SUFFIX)


def explain_path(model_path: str | Path) -> Path:
    """`models/x.keras` -> `models/x.explain.json`: the heatmap methods' localisation scores."""
    return side_file(model_path, EXPLAIN_SUFFIX)


def fit_record_path(model_path: str | Path) -> Path:
    """`out/x.keras` -> `out/x.fit.json`: how models/fit_on_gpu.py fitted the model."""
    return side_file(model_path, FIT_RECORD_SUFFIX)


@functools.lru_cache(maxsize=256)
def onnx_export_paths(keras_sha256: str, root: Path, variant: str | None = None) -> tuple[Path, Path]:
    """(ONNX file, JSON sidecar) in `root` for the `.keras` file with this sha256.

    `variant`: which map the export computes when it is not last-layer Grad-CAM
    (`onnx_export.variant_name`), so that the exports of two heatmap settings of one model
    sit side by side. Cached: the export's stamp is asked for on every analysis, and
    pathlib's joins cost more than the stat.
    """
    stem = keras_sha256 if variant is None else f"{keras_sha256}.{variant}"
    return root / f"{stem}.onnx", root / f"{stem}.json"
