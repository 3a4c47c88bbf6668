"""Is a registry entry's model file the one it names, and can it serve? sha256, load, shape.

`check_model_file` / `check_entry` are the cheap checks (no TensorFlow) that `registry
validate` and the registry page run on every model; `load_verified` is the full one
ModelManager runs before serving a model, whose failure makes it serve the placeholder.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from xray_ai.registry import ModelEntry, Registry
from xray_ai.serving.artifacts import file_sha256

if TYPE_CHECKING:
    import keras

__all__ = ["ModelProblem", "check_model_file", "check_entry", "load_verified"]


class ModelProblem(Exception):
    """The entry's file cannot serve; the message becomes the placeholder reason."""


@functools.lru_cache(maxsize=64)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    # Keyed by size and mtime, so the registry page (which checks every model on every
    # rerun) hashes a 28 MB file once per version, not once per click.
    return file_sha256(path)


def check_model_file(entry: ModelEntry, base_dir: Path) -> str | None:
    """Why the entry's file cannot serve (missing, unverifiable, sha256 mismatch), or None if it can.

    A cheap check without tensorflow, for `registry validate` and the registry page; a file
    that passes can still fail to load (corrupt archive, wrong shape), which `get` reports.
    """
    path = entry.resolve_path(base_dir)
    if not path.is_file():
        return f"model file {entry.path} not found"
    if entry.sha256 is None:
        return f"registry entry {entry.id} records no sha256, so {entry.path} cannot be verified"
    st = path.stat()
    actual = _sha256_of_version(str(path), st.st_size, st.st_mtime_ns)
    if actual != entry.sha256:
        return (
            f"sha256 of {entry.path} is {actual[:12]}..., the registry expects {entry.sha256[:12]}... "
            "(file replaced or damaged)"
        )
    return None


def check_entry(entry: ModelEntry, registry: Registry) -> str | None:
    """`check_model_file` for any entry: for an ensemble, the problems of its members, by id."""
    if not entry.is_ensemble:
        return check_model_file(entry, registry.base_dir)
    problems = [(m, check_model_file(registry.model(m), registry.base_dir)) for m in entry.members]
    return "; ".join(f"member {m}: {p}" for m, p in problems if p) or None


def load_verified(entry: ModelEntry, path: Path, base_dir: Path) -> keras.Model:
    """The keras model in `path` (the entry's file, resolved against `base_dir`), verified:
    its sha256 (`check_model_file`), that it loads, and that it takes the entry's input
    shape and returns one sigmoid unit (a measurement model: the masks and features of
    xray_ai.measurement.network's contract).

    Raises:
        ModelProblem: the first check that fails, in words for the placeholder reason.
    """
    import keras  # TensorFlow: imported by the first load, not by importing the manager

    problem = check_model_file(entry, base_dir)
    if problem:
        raise ModelProblem(problem)
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelProblem(f"{entry.path} could not be loaded ({type(exc).__name__}: {exc})") from None
    want = (None, *entry.input.shape)
    have = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else None
    if have != want:
        raise ModelProblem(f"{entry.path} takes input {have}, the registry entry says {want}")
    if entry.is_measurement:
        _check_segmentation_outputs(entry, model)
        return model
    out = tuple(model.outputs[0].shape) if len(model.outputs) == 1 else None
    if out != (None, 1):
        raise ModelProblem(f"{entry.path} outputs {out}; one sigmoid unit (None, 1) is required")
    return model


def _check_segmentation_outputs(entry: ModelEntry, model: keras.Model) -> None:
    from xray_ai.measurement.network import MASK_CHANNELS, OUTPUT_FEATURES, OUTPUT_MASKS

    outputs = model.output if isinstance(model.output, dict) else {}
    shapes = {name: tuple(t.shape) for name, t in outputs.items()}
    want = (None, entry.input.height, entry.input.width, len(MASK_CHANNELS))
    if sorted(shapes) != sorted((OUTPUT_MASKS, OUTPUT_FEATURES)) or shapes[OUTPUT_MASKS] != want \
            or len(shapes[OUTPUT_FEATURES]) != 2:
        raise ModelProblem(f"{entry.path} outputs {shapes or [tuple(t.shape) for t in model.outputs]}; a measurement "
                           f"model returns {OUTPUT_MASKS!r} {want} and {OUTPUT_FEATURES!r} (None, K)")
