"""analyze(): the one pipeline that the app, the CLI and the benchmarks call.

images (the views of one study) -> model-ready batch -> one compiled pass giving each
view's probability and Grad-CAM -> the scope gate (xray_ai.scope: is each view one the
model may read?) -> the study probability (mean of the assessable views, as the MURA paper
scores studies by the mean of its views) -> an AnalysisResult that carries its own
provenance. A study with no assessable view is "not assessable".

For an ensemble entry every member runs that same path with its own input size and
preprocessing (and its own backend); per view, the result is the mean of the members'
probabilities and of their heatmaps (resized to a common size), then the study mean.

Stages: `manager.get`; each model of `study_models` runs the views; `_assemble` (scope gate,
study mean, warnings, provenance). `result_from_outputs` is the last stage alone, for
predict-batch (xray_ai.batch), which runs several studies' views through one forward call.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from xray_ai.explain.base import DEFAULT_METHOD, METHODS, GradCamOutput
from xray_ai.images import XRay
from xray_ai.measurement import analysis as measuring
from xray_ai.registry import Registry
from xray_ai.result import (NOT_ASSESSABLE_WARNING, NOT_COUNTED_WARNING, SYNTHETIC_WARNING, UNLIKE_WARNING,
                            AnalysisResult, BodyPartEstimate, ViewResult)
from xray_ai.scope import view_scope_reasons
from xray_ai.serving.manager import LoadedEnsemble, LoadedModel, ModelManager
from xray_ai.serving.forward import batches as _batches, pooled_features, predict_probabilities
from xray_ai.serving.preprocessing import resize_image

__all__ = ["analyze", "predict_probabilities", "pooled_features", "default_manager", "MAX_VIEWS",
           "study_models", "study_views", "result_from_outputs"]

MAX_VIEWS = 16  # views per study; more is almost certainly a wrong upload

_default_manager: ModelManager | None = None
_default_lock = threading.Lock()


def default_manager() -> ModelManager:
    """A process-wide ModelManager on the default registry (created on first use)."""
    global _default_manager
    with _default_lock:
        if _default_manager is None:
            _default_manager = ModelManager()
        return _default_manager


def analyze(
    images: XRay | Sequence[XRay],
    condition: str | None,
    manager: ModelManager | None = None,
    model_id: str | None = None,
    method: str = DEFAULT_METHOD,
    progress: Callable[[float], None] | None = None,
) -> AnalysisResult:
    """Score one study and explain it.

    Args:
        images: one XRay, or several: the views of one study.
        condition: a registry condition id; may be None when `model_id` is given.
        manager: the ModelManager to use (default: the process-wide one).
        model_id: a specific registered model instead of the condition's active one. For an
            ensemble entry every member is run and the result is their mean (module docstring);
            every method works, member by member.
        method: the heatmap method, one of xray_ai.explain.METHODS. "default" (the model's
            own map: its registry `heatmap` setting, else last-layer Grad-CAM) comes from the
            same compiled pass as the probability, on either backend, and so does "gradcam"
            for a model whose own map it is; the others are computed afterwards on the keras
            model (TensorFlow), view by view.
        progress: called with 0..1 while a slow method (LIME) runs.

    Returns:
        AnalysisResult: each view's scope reasons, probability and heatmap (float32 2-D in
        [0, 1]); the study probability (mean of the assessable views) and decision at the
        entry's threshold, or "not assessable" when no view is in scope; provenance.

    Raises:
        ValueError: no images or too many; RegistryError (a ValueError): unknown condition
        or model id, or an invalid registry.
    """
    if method not in METHODS:
        raise ValueError(f"unknown heatmap method {method!r}; valid: {', '.join(METHODS)}")
    views = study_views(images)
    manager = manager or default_manager()
    registry = manager.registry  # read once: each read stats the file
    loaded = manager.get(condition=condition, model_id=model_id, registry=registry)

    if loaded.entry.is_measurement and not loaded.placeholder:  # its outlines: xray_ai.measurement.analysis
        if method != DEFAULT_METHOD:
            raise ValueError(f"model {loaded.entry.id} measures the cardiothoracic ratio; it has no heatmap "
                             f"method {method!r} (use {DEFAULT_METHOD!r}: its outlines)")
        views_measured = tuple(measuring.measure_views(loaded, views, _view_results))
        return _assemble(loaded, views, [_Run(views_measured, loaded.heatmap_method, None, loaded.backend)],
                         manager, registry)
    models = study_models(loaded)  # an ensemble's members each with its own input size and preprocessing
    runs = [_run_model(model, views, method, (lambda f, i=i: progress((i + f) / len(models))) if progress else None)
            for i, model in enumerate(models)]
    return _assemble(loaded, views, runs, manager, registry)


def study_views(images: XRay | Sequence[XRay]) -> list[XRay]:
    """The views of one study as a list; ValueError for none or more than MAX_VIEWS."""
    views = [images] if isinstance(images, XRay) else list(images)
    if not views:
        raise ValueError("no images to analyse")
    if len(views) > MAX_VIEWS:
        raise ValueError(f"{len(views)} images given; one study has at most {MAX_VIEWS} views")
    return views


def study_models(loaded: LoadedModel | LoadedEnsemble) -> tuple[LoadedModel, ...]:
    """The models whose forward pass a study needs: an ensemble's members, else the model itself."""
    return tuple(loaded.members) if isinstance(loaded, LoadedEnsemble) else (loaded,)


def result_from_outputs(images: XRay | Sequence[XRay], loaded: LoadedModel | LoadedEnsemble,
                        outputs: Sequence[GradCamOutput], manager: ModelManager, registry: Registry) -> AnalysisResult:
    """What analyze(images, ...) returns with the default method, from forward passes run elsewhere.

    `loaded` is what `manager.get` returned (with `registry`); `outputs` holds one analyzer
    output per model of `study_models(loaded)`, each with exactly these views' rows in view
    order: `model.analyzer(prepare_batch(views...))`, or the matching rows of a larger batch.
    """
    views = study_views(images)
    models = study_models(loaded)
    rows = [len(getattr(out, "masks", getattr(out, "probabilities", ()))) for out in outputs]
    if len(outputs) != len(models) or any(n != len(views) for n in rows):
        raise ValueError(f"expected {len(models)} analyzer output(s) of {len(views)} rows each")
    if loaded.entry.is_measurement and not loaded.placeholder:
        measured = measuring.measured_views(loaded, views, outputs[0], _view_results)
        return _assemble(loaded, views, [_Run(tuple(measured), loaded.heatmap_method, None, loaded.backend)],
                         manager, registry)
    runs = [_Run(tuple(_view_results(model, views, out, list(zip(out.heatmaps, out.flags)))),
                 model.heatmap_method, model.target_layer, model.backend)  # as _run_model gives them
            for model, out in zip(models, outputs)]
    return _assemble(loaded, views, runs, manager, registry)


def _assemble(loaded: LoadedModel | LoadedEnsemble, views: list[XRay], runs: list[_Run],
              manager: ModelManager, registry: Registry) -> AnalysisResult:
    """Stage 3: from each model's run over the views (one per model of `study_models`), the
    scope gate, the study probability, the warnings and the provenance."""
    entry = loaded.entry
    registry_condition = registry.condition(entry.condition)
    models = list(study_models(loaded))
    members = tuple(m.entry.id for m in models) if isinstance(loaded, LoadedEnsemble) else ()
    run = _mean_of_members(list(members), runs) if members else runs[0]
    scoped = tuple(_with_scope(v, registry_condition, models) for v in run.views)
    counted = [v for v in scoped if v.assessable] or list(scoped)  # none in scope: all, for the record
    measured = entry.is_measurement and not loaded.placeholder
    probability = (measuring.study_probability(entry, counted) if measured else None)

    warnings: list[str] = []
    if loaded.placeholder:
        warnings.append(f"PLACEHOLDER MODEL: {loaded.placeholder_reason}. The result has no meaning.")
    if entry.trained_on.synthetic:
        warnings.append(
            f"Model {entry.id} {SYNTHETIC_WARNING} ({entry.trained_on.describe()}); "
            "its output carries no clinical meaning."
        )
    for model in models:
        if manager.backend == "onnx" and model.backend != "onnxruntime":
            which = "this result" if model is loaded else f"ensemble member {model.entry.id}"
            warnings.append(f"ONNX Runtime was requested but TensorFlow computed {which}: {model.backend_reason}")
    for view in views:
        warnings.extend(f"{view.name or 'image'}: {w}" for w in view.warnings)  # names, never paths
    for view in run.views:
        if view.heatmap_flag:
            warnings.append(f"{view.image.name or 'image'}: heatmap {view.heatmap_flag}")
    for view in run.views:
        for checked_by, distance, threshold in view.input_checks:
            if distance > threshold:
                warnings.append(
                    f"{view.image.name or 'image'}: {UNLIKE_WARNING} {checked_by} WAS TRAINED ON (input-check "
                    f"distance {distance:.2f}, above {threshold:.2f}, which few in-distribution images exceed): "
                    "its probability is unreliable for this image"
                )
    if not any(v.assessable for v in scoped):
        warnings.append(f"{NOT_ASSESSABLE_WARNING} no view is in the model's scope; the probability is kept for the "
                        "record only and is unreliable")
    elif len(counted) < len(scoped):
        warnings.append(f"{len(scoped) - len(counted)} of {len(scoped)} views are {NOT_COUNTED_WARNING} "
                        "towards the study probability")

    architecture, trained_on = _describe_models(loaded, models)
    return AnalysisResult(
        condition=entry.condition,
        condition_name=registry_condition.name,
        positive_label=registry_condition.positive_label,
        negative_label=registry_condition.negative_label,
        model_id=entry.id,
        model_version=entry.version,
        architecture=architecture,
        profile=entry.profile,
        sha256=None if loaded.placeholder else entry.sha256,
        trained_on=trained_on,
        intended_use=entry.intended_use,
        threshold=entry.threshold,
        threshold_method=entry.threshold_method,
        probability=float(np.mean([v.probability for v in counted])) if probability is None else probability,
        placeholder=loaded.placeholder,
        placeholder_reason=loaded.placeholder_reason,
        heatmap_method=run.method,
        target_layer=run.target_layer,
        views=scoped,
        warnings=tuple(warnings),
        backend=run.backend,
        synthetic=entry.trained_on.synthetic,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        metrics=dict(entry.metrics),
        members=members,
        high_sensitivity_threshold=_high_sensitivity_threshold(entry.metrics),
        contour_level=_contour_level(loaded, run),
        kind="measurement" if entry.is_measurement else "classifier",
    )


def _contour_level(loaded: LoadedModel | LoadedEnsemble, run: _Run) -> float | None:
    """The model's validated contour level (registry `heatmap`) when the map shown is its own default."""
    heatmap = loaded.entry.heatmap if isinstance(loaded, LoadedModel) else None
    own = heatmap is not None and (run.method, run.target_layer) == (loaded.heatmap_method, loaded.target_layer)
    return heatmap.contour_level if own else None


def _with_scope(view: ViewResult, condition, models: list[LoadedModel]) -> ViewResult:
    """The view with its scope reasons (xray_ai.scope) from what the models said of it."""
    head = (view.body_part.part, view.body_part.probability) if view.body_part is not None else None
    reasons = view_scope_reasons(view.image, condition, [m.entry.input for m in models],
                                 view.input_checks, head)
    if models[0].entry.is_measurement and not models[0].placeholder:
        reasons = tuple(reasons) + measuring.not_measured_reasons(view)
    return dataclasses.replace(view, scope_reasons=reasons)


def _high_sensitivity_threshold(metrics) -> float | None:
    """The entry's second operating point (train stores it beside the Youden point), if any."""
    point = (metrics or {}).get("high_sensitivity_operating_point")
    value = point.get("threshold") if isinstance(point, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class _Run:
    """What one model (or the mean of an ensemble's members) said about the views of a study:
    one ViewResult per view, in the order given; the rest describes the run as a whole."""

    views: tuple[ViewResult, ...]
    method: str
    target_layer: str | None
    backend: str


def _run_model(loaded: LoadedModel, views: list[XRay], method: str,
               progress: Callable[[float], None] | None) -> _Run:
    """Probability and heatmap of every view from one model, prepared as its entry says."""
    results: list[ViewResult] = []
    heatmap_method, target_layer = loaded.heatmap_method, loaded.target_layer
    for start, batch, out in _batches(loaded, [v.pixels for v in views]):
        n = len(batch)
        if _analyzer_computes(loaded, method):
            maps = list(zip(out.heatmaps, out.flags))
        else:
            from xray_ai.explain.methods import explainer_for  # tensorflow; only for the non-default methods

            explainer = explainer_for(loaded.model)
            maps = []
            for k in range(n):
                done = (start + k) / len(views)
                step = (lambda f, done=done: progress(done + f / len(views))) if progress else None
                explanation = explainer.explain(batch[k : k + 1], method, step)
                maps.append((explanation.heatmap, explanation.flag))
                heatmap_method, target_layer = explanation.method, explanation.target_layer
        results.extend(_view_results(loaded, views[start : start + n], out, maps))
    backend = (loaded.backend if _analyzer_computes(loaded, method) or loaded.backend == "tensorflow"
               else f"{loaded.backend} (probability), tensorflow ({method})")
    return _Run(tuple(results), heatmap_method, target_layer, backend)


def _analyzer_computes(loaded: LoadedModel, method: str) -> bool:
    """Whether the analyzer's own pass gives `method`'s map: the model's default, or
    last-layer Grad-CAM asked for by name when that is the default."""
    if method == DEFAULT_METHOD:
        return True
    return method == "gradcam" and loaded.heatmap_method == "gradcam" and (
        loaded.entry.heatmap is None or loaded.entry.heatmap.is_default)


def _view_results(loaded: LoadedModel, views: Sequence[XRay], out: GradCamOutput,
                  maps: list[tuple[np.ndarray, str | None]]) -> list[ViewResult]:
    """One ViewResult per view from one forward pass's output (its rows match `views`) and
    each view's (heatmap, flag)."""
    n = len(views)
    distribution, part_head = loaded.input_check, loaded.body_part_head
    # The input check and the body-part head both read the pooled features of this same
    # pass: no second forward call. A model without a feature map has neither.
    if part_head is not None and out.pooled_features is not None:
        parts = [BodyPartEstimate(loaded.entry.id, part, p) for part, p in part_head.predict(out.pooled_features)]
    else:
        parts = [None] * n
    if distribution is not None and out.pooled_features is not None:
        checks = [((loaded.entry.id, float(d), distribution.threshold),)
                  for d in distribution.distances(out.pooled_features)]
    else:
        checks = [()] * n
    return [ViewResult(image=views[k], probability=float(out.probabilities[k]), heatmap=maps[k][0],
                       heatmap_flag=maps[k][1], input_checks=checks[k], body_part=parts[k]) for k in range(n)]


def _mean_of_members(ids: list[str], runs: list[_Run]) -> _Run:
    """The ensemble's run: per view, the mean of the members' probabilities and of their heatmaps.

    Members' maps differ in size (feature-map or input resolution of each model); each one
    covers the whole image, so each is resized (bilinear) to the largest height and width
    among them and the mean taken there. A mean of maps in [0, 1] stays in [0, 1]; it is not
    re-scaled, so a region that only some members mark shows fainter than one they all mark.
    """
    merged = []
    for k in range(len(runs[0].views)):
        said = [r.views[k] for r in runs]  # what each member said about view k
        maps = [v.heatmap for v in said]
        height, width = max(m.shape[0] for m in maps), max(m.shape[1] for m in maps)
        probabilities = tuple(v.probability for v in said)
        merged.append(ViewResult(
            image=said[0].image,
            probability=float(np.mean(probabilities)),
            heatmap=np.mean([resize_image(m, height, width) for m in maps], axis=0).astype(np.float32),
            heatmap_flag="; ".join(f"member {i}: {v.heatmap_flag}" for i, v in zip(ids, said) if v.heatmap_flag) or None,
            member_probabilities=probabilities,
            input_checks=tuple(c for v in said for c in v.input_checks),
            # the first member with a body-part head says which part a view shows
            body_part=next((v.body_part for v in said if v.body_part is not None), None),
        ))
    methods = [r.method for r in runs]
    method = (f"{methods[0]} (mean of {len(runs)} members)" if len(set(methods)) == 1
              else f"mean of {len(runs)} members ({_per_member(ids, methods)})")
    layers = [r.target_layer for r in runs]
    if all(layer is None for layer in layers):  # input-space methods (saliency, LIME, ...)
        target_layer = None
    else:
        target_layer = _per_member(ids, [layer or "input space" for layer in layers])
    return _Run(views=tuple(merged), method=method, target_layer=target_layer,
                backend=_per_member(ids, [r.backend for r in runs]))


def _per_member(ids: list[str], values: list[str]) -> str:
    """One value when the members agree, else `id: value` for each member."""
    if len(set(values)) == 1:
        return values[0]
    return "; ".join(f"{i}: {v}" for i, v in zip(ids, values))


def _describe_models(loaded: LoadedModel | LoadedEnsemble, models: list[LoadedModel]) -> tuple[str, str]:
    """(architecture, trained_on) as the result states them; a placeholder says it is untrained."""
    untrained = "placeholder CNN (untrained)"
    if not isinstance(loaded, LoadedEnsemble):
        if loaded.placeholder:
            return untrained, "nothing (untrained placeholder)"
        return loaded.entry.architecture, loaded.entry.trained_on.describe()
    archs = " + ".join(untrained if m.placeholder else m.entry.architecture for m in models)
    trained_on = loaded.entry.trained_on.describe()
    if not loaded.placeholder:
        return f"ensemble: {archs}", trained_on
    broken = ", ".join(m.entry.id for m in models if m.placeholder)
    return f"placeholder ensemble: {archs}", f"{trained_on}, except {broken}: nothing (untrained placeholder)"
