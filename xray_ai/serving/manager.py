"""ModelManager: load, verify, cache and warm models; fall back to an unmistakable placeholder.

One manager is shared by every app session (Streamlit serves sessions on threads), so
loading is guarded by a lock per model id and the cache is keyed by model id and file
identity (path, size, mtime, sha256): replacing a `.keras` file or editing the registry
is picked up on the next `get` without restarting anything.

When the active model's file is missing, corrupt, fails its sha256 check or disagrees
with its entry (input shape, single sigmoid output; serving.verify checks), `get` returns
an *untrained* placeholder CNN of the entry's input shape with `placeholder=True` and the
reason; every consumer must say so loudly (README, "Placeholder fallback").

An ensemble entry (`kind: "ensemble"`) has no file: `get` loads each member as above
(each cached, verified and, where it applies, served by ONNX Runtime on its own) and
returns a LoadedEnsemble. If any member is a placeholder, so is the ensemble.

Backends: with `backend="auto"` (the default, or `$XRAY_AI_BACKEND`) a model is served by
ONNX Runtime when its registry entry pins a shipped export (`onnx` field; opened without
keras or TensorFlow: serving.onnx_backend.load_pinned) or a verified export of it is in the
cache, computing the map its entry's `heatmap` setting names (last-layer Grad-CAM when it
has none). Any other model, a placeholder, or a model not yet exported is served by
TensorFlow, so no analysis ever waits for an export. "onnx" exports on first load when
needed (and still falls back, with the reason, when it cannot); "tensorflow" never uses
ONNX Runtime.

A model file may carry its input check (`<model>.features.npz`, serving.input_check) and
its body-part head (`<model>.bodypart.npz`, serving.body_part) beside it (serving.artifacts
names them); they are read when the model loads, and used only if they were fitted on that
very file (its sha256).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

# numpy only at import: keras (TensorFlow) and onnxruntime are imported when a model loads
from xray_ai.registry import ModelEntry, Registry, RegistryError, default_registry_path, load_registry
from xray_ai.serving import body_part, input_check
from xray_ai.serving.analyzer import Analyzer
from xray_ai.serving.loaded import LoadedEnsemble, LoadedModel
from xray_ai.explain.cam_math import HeatmapSpec
from xray_ai.serving.artifacts import body_part_path, input_check_path
from xray_ai.serving.head import UnsupportedHead, detect_head
from xray_ai.serving.onnx_backend import (OnnxGradCam, export_model, export_paths, export_stamp, load_export,
                                          load_pinned)
from xray_ai.serving.settings import BACKENDS, cache_dir, default_backend
from xray_ai.serving.verify import ModelProblem, load_verified

if TYPE_CHECKING:
    import keras

__all__ = [
    "ModelManager",
    "LoadedModel",
    "LoadedEnsemble",
]

log = logging.getLogger(__name__)

_Found = TypeVar("_Found")


class ModelManager:
    """Loads registry models on demand and keeps them; safe to share between threads.

    Args:
        registry_path: the registry file; default `default_registry_path()` (the repo's
            `model_registry.json` or `$XRAY_AI_REGISTRY`).
        warm_up: trace and run the compiled analysis once at load, so the first real
            analysis does not pay for graph tracing.
        backend: "auto", "onnx" or "tensorflow" (see the module docstring); default
            `$XRAY_AI_BACKEND`, else "auto".
        onnx_cache: where ONNX exports live; default `settings.cache_dir()`.
    """

    def __init__(
        self,
        registry_path: str | Path | None = None,
        *,
        warm_up: bool = True,
        backend: str | None = None,
        onnx_cache: str | Path | None = None,
    ):
        self.registry_path = Path(registry_path) if registry_path is not None else default_registry_path()
        self.warm_up = warm_up
        self.backend = default_backend() if backend is None else backend
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        self.onnx_cache = Path(onnx_cache) if onnx_cache is not None else cache_dir()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        # id -> (file key, export stamp at load, the model)
        self._cache: dict[str, tuple[tuple, tuple | None, LoadedModel]] = {}
        self._registry: Registry | None = None
        self._registry_stamp: tuple | None = None

    # ------------------------------------------------------------------ registry

    @property
    def registry(self) -> Registry:
        """The registry, re-read when its file changed on disk (validated on every read)."""
        stamp = _stamp(self.registry_path)
        with self._lock:
            if self._registry is None or stamp != self._registry_stamp:
                self._registry = load_registry(self.registry_path)
                self._registry_stamp = stamp
            return self._registry

    def resolve(self, condition: str | None = None, model_id: str | None = None) -> ModelEntry:
        """The entry for a model id, or the active model of a condition. RegistryError if unknown."""
        return self._resolve(self.registry, condition, model_id)

    @staticmethod
    def _resolve(registry: Registry, condition: str | None, model_id: str | None) -> ModelEntry:
        if model_id is not None:
            entry = registry.model(model_id)
            if condition is not None and entry.condition != condition:
                raise RegistryError(f"model {model_id!r} serves {entry.condition!r}, not {condition!r}")
            return entry
        if condition is None:
            raise RegistryError("give a condition or a model id")
        return registry.active_entry(condition)

    # ------------------------------------------------------------------ loading

    def get(self, condition: str | None = None, model_id: str | None = None,
            registry: Registry | None = None) -> LoadedModel | LoadedEnsemble:
        """The loaded model for `model_id`, or the active model of `condition`.

        A LoadedEnsemble for an ensemble entry (its members loaded and cached one by one).
        Never raises for a bad model file: that yields the placeholder. Raises
        RegistryError for an unknown condition or model id, or an invalid registry.

        `registry`: one this manager's `registry` just returned (analyze reads it once for
        the model and the condition's labels); default: read now. Each read stats the file,
        and get() runs on every analysis.
        """
        registry = self.registry if registry is None else registry
        entry = self._resolve(registry, condition, model_id)
        if entry.is_ensemble:  # the registry guarantees members are single models of this condition
            return LoadedEnsemble(entry, tuple(self.get(model_id=m, registry=registry) for m in entry.members))
        path = entry.resolve_path(registry.base_dir)
        key = (entry, _stamp(path))
        cached = self._cached(entry, key)
        if cached is not None:
            return cached
        with self._lock:
            key_lock = self._key_locks.setdefault(entry.id, threading.Lock())
        with key_lock:  # one thread loads a given model; others wait for it, not for all loads
            cached = self._cached(entry, key)
            if cached is not None:
                return cached
            loaded = self._load(entry, path)
            with self._lock:  # the export as the load left it (backend "onnx" may export)
                self._cache[entry.id] = (key, self._export_stamp(entry), loaded)
            return loaded

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._cache)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def _export_stamp(self, entry: ModelEntry) -> tuple | None:
        if self.backend == "tensorflow" or entry.sha256 is None:
            return None
        return export_stamp(entry.sha256, self.onnx_cache, entry.heatmap)

    def _cached(self, entry: ModelEntry, key: tuple) -> LoadedModel | None:
        """The cached model for `entry` if it is still current: same entry and model file,
        and, for a TensorFlow-served model, no export appeared or changed since it loaded
        (`export-onnx` in another process: the next get picks it up). A model served by ONNX
        Runtime keeps the verified session it opened, so its export is not checked (a stat
        per analysis saved)."""
        with self._lock:
            cached = self._cache.get(entry.id)
        if cached is None or cached[0] != key:
            return None
        _, stamp_at_load, loaded = cached
        if loaded.backend != "onnxruntime" and self._export_stamp(entry) != stamp_at_load:
            return None
        return loaded

    def _load(self, entry: ModelEntry, path: Path) -> LoadedModel:
        start = time.perf_counter()
        base = self.registry.base_dir
        serve = self._measurement_analyzer if entry.is_measurement else self._classifier_analyzer
        model, placeholder, reason, analyzer, backend_reason = serve(entry, path)
        if self.warm_up:
            analyzer.warm_up()
        backend = getattr(analyzer, "backend", "tensorflow")
        if placeholder:
            check, check_reason, part_head = None, "a placeholder has no training data", None
        else:
            check, check_reason = _read_sidecar(input_check.load, input_check_path(path), "input check", entry)
            part_head, _ = _read_sidecar(body_part.load, body_part_path(path), "body-part head", entry)
        seconds = time.perf_counter() - start
        log.info("loaded %s in %.2f s (placeholder=%s, backend=%s)", entry.id, seconds, placeholder, backend)
        return LoadedModel(entry, placeholder, reason, analyzer, seconds, backend, backend_reason,
                           check, check_reason, part_head, keras_model=model,
                           load_keras=lambda: load_verified(entry, path, base))

    def _classifier_analyzer(self, entry: ModelEntry, path: Path) -> tuple:
        """(keras model or None, placeholder?, why, analyzer, why TensorFlow serves) of a classifier."""
        spec = entry.heatmap or HeatmapSpec.default()
        base = self.registry.base_dir
        pinned: OnnxGradCam | None = None
        pinned_reason: str | None = None
        if self.backend != "tensorflow":
            # a shipped export the registry pins opens without keras, so without TensorFlow
            pinned, pinned_reason = load_pinned(entry, base, spec)
        if pinned is not None:
            model, placeholder, reason = None, False, None
            analyzer: Analyzer | None = pinned
            backend_reason: str | None = None
        else:
            try:
                model = load_verified(entry, path, base)
                placeholder, reason = False, None
            except ModelProblem as exc:
                reason = str(exc)
                model, placeholder = _placeholder(entry, reason), True
            analyzer, backend_reason = None, None
            if placeholder:
                backend_reason = "a placeholder is never served by ONNX Runtime"
            elif self.backend != "tensorflow":
                analyzer, backend_reason = self._onnx_analyzer(entry, model, spec)
                if analyzer is None and pinned_reason:
                    backend_reason = f"{pinned_reason}; {backend_reason}"
            if analyzer is None:
                from xray_ai.explain.gradcam import GradCam  # tensorflow is imported here, on first load only

                analyzer = GradCam(model, heatmap=None if placeholder else entry.heatmap)
        return model, placeholder, reason, analyzer, backend_reason

    def _measurement_analyzer(self, entry: ModelEntry, path: Path) -> tuple:
        """The same for a measurement model (serving.segmentation): its pinned export on ONNX
        Runtime, else the network on TensorFlow; the placeholder CNN when the file is unusable
        (analysis then measures nothing and says why)."""
        from xray_ai.serving.segmentation import KerasSegmenter, load_pinned_segmenter

        pinned, pinned_reason = (None, "backend tensorflow asked for") if self.backend == "tensorflow" else \
            load_pinned_segmenter(entry, self.registry.base_dir)
        if pinned is not None:
            return None, False, None, pinned, None
        try:
            model = load_verified(entry, path, self.registry.base_dir)
        except ModelProblem as exc:
            from xray_ai.explain.gradcam import GradCam

            placeholder = _placeholder(entry, str(exc))
            return placeholder, True, str(exc), GradCam(placeholder), "a placeholder is never served by ONNX Runtime"
        return model, False, None, KerasSegmenter(model), pinned_reason or "no shipped ONNX export pinned"

    def _onnx_analyzer(self, entry: ModelEntry, model: keras.Model, spec: HeatmapSpec
                       ) -> tuple[OnnxGradCam | None, str | None]:
        """(ONNX Runtime analyzer from the cache, None), or (None, why TensorFlow serves instead)."""
        if spec.is_default:
            try:
                detect_head(model)
            except UnsupportedHead as exc:
                reason = f"head not supported by the ONNX Runtime backend: {exc}"
                log.info("model %s: %s; serving TensorFlow", entry.id, reason)
                return None, reason
        if self.backend == "onnx" and not export_paths(entry.sha256, self.onnx_cache, spec)[0].is_file():
            try:  # asked for ONNX Runtime explicitly: export now rather than decline
                export_model(model, entry.sha256, self.onnx_cache, spec)
            except (RuntimeError, OSError, ValueError) as exc:
                return None, f"ONNX export failed ({type(exc).__name__}: {exc})"
        analyzer, reason = load_export(model, entry.sha256, self.onnx_cache, spec=spec)
        if analyzer is None:
            log.info("model %s: %s; serving TensorFlow", entry.id, reason)
        return analyzer, reason

    def export_onnx(self, model_id: str, *, force: bool = False, ship: bool = False) -> Path:
        """Build (or keep) the verified ONNX export of a registered model, for the map its
        entry's heatmap setting names; returns its path.

        ship: write it beside the model file (`<model>.onnx`, with a `<model>.onnx.json`
        sidecar) and pin it in the registry entry's `onnx` field (its sha256, the model
        file's, the setting, the output shapes), so that it is served without TensorFlow on
        any machine with the repository: `load_pinned`. Otherwise into the cache.

        Raises:
            RegistryError: unknown id. ValueError: the model file is unusable, its head has
            no closed-form Grad-CAM (serving.head.UnsupportedHead), or its heatmap setting
            cannot be exported. RuntimeError: the export failed or disagrees with TensorFlow.
        """
        entry = self.resolve(model_id=model_id)
        if entry.is_measurement:  # no cache: its export always lies beside it, pinned
            return self._ship_segmenter(entry, force)
        spec = entry.heatmap or HeatmapSpec.default()
        path = entry.resolve_path(self.registry.base_dir)
        if ship and not force:
            analyzer, _ = load_pinned(entry, self.registry.base_dir, spec)
            if analyzer is not None:
                return analyzer.onnx_path
        try:
            model = load_verified(entry, path, self.registry.base_dir)
        except ModelProblem as exc:
            raise ValueError(str(exc)) from None
        if ship:
            return self._ship_export(entry, model, spec, path)
        if not force:
            analyzer, _ = load_export(model, entry.sha256, self.onnx_cache, spec=spec)
            if analyzer is not None:
                return analyzer.onnx_path
        return export_model(model, entry.sha256, self.onnx_cache, spec)

    def _ship_export(self, entry: ModelEntry, model: keras.Model, spec: HeatmapSpec, path: Path) -> Path:
        from xray_ai.serving.onnx_export import export_to

        onnx_path, meta_path = path.with_suffix(".onnx"), path.with_suffix(".onnx.json")
        meta = export_to(model, entry.sha256, onnx_path, meta_path, spec, weights_from=path)
        base = self.registry.base_dir.resolve()
        pinned = {
            "path": onnx_path.resolve().relative_to(base).as_posix(),
            "sha256": meta["onnx_sha256"],
            "keras_sha256": entry.sha256,
            "format": meta["format"],
            "heatmap": meta["heatmap"],
            "target_layer": meta["target_layer"],
            "output_shapes": meta["output_shapes"],
            "exporter": meta["exporter"],
            "check_max_probability_diff": meta["check_max_probability_diff"],
            "created": meta["created"],
        }
        self._pin_export(entry, pinned)
        return onnx_path

    def _ship_segmenter(self, entry: ModelEntry, force: bool) -> Path:
        """A measurement model's export (serving.segmentation) beside its file, pinned in its entry."""
        from xray_ai.serving.segmentation import export_segmenter, load_pinned_segmenter, pin_json

        if not force:
            pinned, _ = load_pinned_segmenter(entry, self.registry.base_dir)
            if pinned is not None:
                return pinned.onnx_path
        path = entry.resolve_path(self.registry.base_dir)
        try:
            model = load_verified(entry, path, self.registry.base_dir)
        except ModelProblem as exc:
            raise ValueError(str(exc)) from None
        onnx_path = path.with_suffix(".onnx")
        pinned = pin_json(export_segmenter(model, entry.sha256, onnx_path, weights_from=path), onnx_path,
                          self.registry.base_dir)
        self._pin_export(entry, pinned)
        return onnx_path

    def _pin_export(self, entry: ModelEntry, pinned: dict) -> None:
        """Write `pinned` as the entry's `onnx` field, unless its model file changed meanwhile."""
        import dataclasses

        from xray_ai.registry import edit_registry

        def pin(registry: Registry) -> Registry:
            current = registry.model(entry.id)
            if current.sha256 != entry.sha256:
                raise RegistryError(f"model {entry.id}: its file changed while it was exported; export again")
            return registry.with_model(dataclasses.replace(current, extra={**current.extra, "onnx": pinned}))

        edit_registry(self.registry_path, pin, action="export-onnx --ship")


def _placeholder(entry: ModelEntry, reason: str) -> keras.Model:
    """The untrained placeholder CNN of the entry's input shape, served when its file is
    unusable (README, "Placeholder fallback"); logged as a WARNING with the reason."""
    log.warning("model %s unusable, serving a PLACEHOLDER: %s", entry.id, reason)
    from xray_ai.training.architectures import build_placeholder  # keras: only when a model fails

    return build_placeholder(entry.input.shape)


def _read_sidecar(load: Callable[[Path, str | None], tuple[_Found | None, str | None]], path: Path, what: str,
                  entry: ModelEntry) -> tuple[_Found | None, str | None]:
    """`load(path, entry.sha256)`: (what it read, None) or (None, why not), for a side file
    beside a model (input_check.load, body_part.load); a file there that belongs to another
    model file, or cannot be read, is logged."""
    found, reason = load(path, entry.sha256)
    if reason and path.exists():  # there is one, but not for this model file
        log.warning("model %s: %s not used: %s", entry.id, what, reason)
    return found, reason


def _stamp(path: Path) -> tuple:
    """File identity for cache keys: (path, size, mtime_ns), or a 'missing' marker."""
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), None, None)
    return (str(path), st.st_size, st.st_mtime_ns)
