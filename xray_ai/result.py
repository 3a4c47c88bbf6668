"""The result of one analysis: plain data, no tensorflow, shared by the app, CLI and report.

`AnalysisResult.to_json()` is the `predict --json` contract (README, "Command line"); the
heatmaps and images ride along as arrays for the overlay and the report but stay out of
the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xray_ai.images import XRay

__all__ = ["BodyPartEstimate", "ViewResult", "AnalysisResult", "PLACEHOLDER_WATERMARK", "DISCLAIMER",
           "NOT_ASSESSABLE", "FINDING", "POSSIBLE_FINDING", "warning_kind"]

PLACEHOLDER_WATERMARK = "PLACEHOLDER MODEL - NOT A DIAGNOSTIC RESULT"
DISCLAIMER = (
    "Decision support only, not a diagnosis. The result comes from a machine-learning model "
    "and must be reviewed by a qualified clinician, who makes the decision."
)
NOT_ASSESSABLE = "not assessable"  # the decision of a study with no view in the model's scope
# What an automatic mark on a view says (README, "The app"): at or above the operating point a
# finding (solid box); between the high-sensitivity point and it a possible finding (dotted).
FINDING = "finding"
POSSIBLE_FINDING = "possible finding"

# The words that xray_ai.analysis puts in the warnings it writes, so that `warning_kind` can
# tell them apart; the JSON keeps `warnings` a plain list of strings.
SYNTHETIC_WARNING = "was trained on synthetic data"
UNLIKE_WARNING = "UNLIKE THE IMAGES"
NOT_ASSESSABLE_WARNING = "NOT ASSESSABLE:"
NOT_COUNTED_WARNING = "out of the model's scope and do not count"


def warning_kind(warning: str) -> str:
    """What one of a result's warnings says: "synthetic" (the model was trained on synthetic
    data), "scope" (what `scope_reasons` says too: not assessable, views not counted, unlike
    the training images) or "other"."""
    if SYNTHETIC_WARNING in warning:
        return "synthetic"
    if warning.startswith(NOT_ASSESSABLE_WARNING) or UNLIKE_WARNING in warning or NOT_COUNTED_WARNING in warning:
        return "scope"
    return "other"


@dataclass(frozen=True)
class BodyPartEstimate:
    """Which body part a model's auxiliary body-part head (xray_ai.serving.body_part) reads
    in one view: its most probable class.

    Attributes:
        model_id: the registered model whose head said it.
        part: the body part ('wrist', 'elbow', ...).
        probability: the head's softmax probability of `part`, 0..1.
    """

    model_id: str
    part: str
    probability: float

    def to_json(self) -> dict[str, Any]:
        """A view's `body_part` object in `predict --json`."""
        return {"model_id": self.model_id, "part": self.part, "probability": round(float(self.probability), 6)}


@dataclass(frozen=True)
class ViewResult:
    """One image (view) of a study and what the model said about it.

    Attributes:
        image: the loaded radiograph (float32 H x W in [0, 1]).
        probability: the model's probability of the positive label, 0..1.
        heatmap: float32 2-D map in [0, 1] at the model's feature-map resolution
            (resize to the image for display; `overlay.render_overlay` does).
        heatmap_flag: None, or why the map is a fallback (e.g. "zero gradient").
        member_probabilities: for an ensemble, each member's probability in the order of
            `AnalysisResult.members` (`probability` is their mean); empty for a single model.
        input_checks: (model id, distance, threshold) for each model that checked whether
            this image is like its training images (xray_ai.serving.input_check); the image
            is unlike them where distance > threshold. Empty when no model has the check.
        body_part: which part the model takes the image to show, from its auxiliary
            body-part head; None when the model has no such head.
        scope_reasons: why the view is out of the model's scope (xray_ai.scope), one
            sentence each naming the file; empty when it is in scope.
        measurement: a measurement model's reading of the view (for cardiomegaly's CTR a
            xray_ai.measurement.ctr.CtrMeasurement: the ratio, the two widths, where they lie,
            the masks); None for a classifier, or where the outlines were not found.
    """

    image: XRay
    probability: float
    heatmap: np.ndarray
    heatmap_flag: str | None = None
    member_probabilities: tuple[float, ...] = ()
    input_checks: tuple[tuple[str, float, float], ...] = ()
    body_part: BodyPartEstimate | None = None
    scope_reasons: tuple[str, ...] = ()
    measurement: Any = None

    @property
    def assessable(self) -> bool:
        """In the model's scope: its probability counts towards the study's."""
        return not self.scope_reasons

    @property
    def unlike_training_data(self) -> bool:
        return any(distance > threshold for _, distance, threshold in self.input_checks)

    @property
    def filename(self) -> str | None:
        return self.image.filename


@dataclass(frozen=True)
class AnalysisResult:
    """Everything one analysis produced, with the provenance a clinician needs to weigh it.

    For an ensemble, `model_id`, `model_version`, `threshold` and `intended_use` are the
    ensemble entry's and `members` lists the ids of the models it averaged; `members` is
    empty for a single model.

    `probability` is the mean over the assessable views (xray_ai.scope); when no view is
    assessable it is the mean over all of them, kept for the record but unreliable, and the
    decision is "not assessable". `high_sensitivity_threshold` is the entry's second
    operating point (chosen on validation for sensitivity 0.9), None where it has none.
    """

    condition: str
    condition_name: str
    positive_label: str
    negative_label: str
    model_id: str
    model_version: str
    architecture: str
    profile: str
    sha256: str | None
    trained_on: str
    intended_use: str
    threshold: float
    threshold_method: str
    probability: float
    placeholder: bool
    placeholder_reason: str | None
    heatmap_method: str
    target_layer: str | None
    views: tuple[ViewResult, ...]
    warnings: tuple[str, ...] = ()
    backend: str = "tensorflow"
    synthetic: bool = False
    created: str = ""  # ISO 8601 time of the analysis (UTC)
    metrics: dict[str, Any] = field(default_factory=dict)
    members: tuple[str, ...] = ()
    high_sensitivity_threshold: float | None = None
    # the share of the map's peak at which the overlay outlines the hot region, chosen on
    # validation with the model's default map (registry `heatmap.contour_level`); None: the
    # overlay's own level (another method, or a model without the setting)
    contour_level: float | None = None
    # registry `kind`: "classifier", or "measurement" (the decision is a clinical rule on
    # `measurements`, e.g. CTR above 0.50; `probability` is then the rule's calibration)
    kind: str = "classifier"

    @property
    def measurements(self) -> dict[str, float] | None:
        """A measurement model's study figures: the mean of the counted views' `ctr`,
        `cardiac_width_px` and `thoracic_width_px` (the assessable views, else all, as for
        the probability); None for a classifier or when no view was measured."""
        if self.kind != "measurement":
            return None
        counted = [v for v in self.views if v.assessable] or list(self.views)
        measured = [v.measurement for v in counted if v.measurement is not None]
        if not measured:
            return None
        return {"ctr": float(np.mean([m.ctr for m in measured])),
                "cardiac_width_px": float(np.mean([m.cardiac_width_px for m in measured])),
                "thoracic_width_px": float(np.mean([m.thoracic_width_px for m in measured]))}

    @property
    def assessable(self) -> bool:
        """At least one view is in the model's scope."""
        return any(v.assessable for v in self.views)

    @property
    def scope_reasons(self) -> tuple[str, ...]:
        """Every view's reasons for being out of scope, in view order."""
        return tuple(r for v in self.views for r in v.scope_reasons)

    @property
    def decision(self) -> str:
        """"not assessable" when no view is in scope; else the positive label when
        probability >= threshold, else the negative label."""
        if not self.assessable:
            return NOT_ASSESSABLE
        return self.positive_label if self.probability >= self.threshold else self.negative_label

    @property
    def is_positive(self) -> bool:
        return self.assessable and self.probability >= self.threshold

    def finding_level(self, view: ViewResult) -> str | None:
        """The automatic mark a view gets: FINDING at or above the operating point,
        POSSIBLE_FINDING between the high-sensitivity point and it, None below both, and
        None for a view out of scope, a study that is not assessable or a placeholder model
        (nothing from an untrained model may look like a finding)."""
        if self.placeholder or not self.assessable or not view.assessable:
            return None
        if view.probability >= self.threshold:
            return FINDING
        low = self.high_sensitivity_threshold
        if low is not None and low <= view.probability:
            return POSSIBLE_FINDING
        return None

    @property
    def input_check_summary(self) -> str:
        """One line for the app, the report and the CLI: did the images look like the
        model's training images (xray_ai.serving.input_check)?"""
        checks = [c for v in self.views for c in v.input_checks]
        if not checks:
            return "not available for this model (no training-feature distribution)"
        unlike = [v for v in self.views if v.unlike_training_data]
        if unlike:
            which = "the image is" if len(self.views) == 1 else f"{len(unlike)} of {len(self.views)} views are"
            return (f"{which} UNLIKE the model's training images: the probability is unreliable "
                    "(see the scope reasons)")
        _, distance, threshold = max(checks, key=lambda c: c[1] - c[2])
        which = "the image is" if len(self.views) == 1 else f"all {len(self.views)} views are"
        return f"{which} like the model's training images (distance {distance:.2f}, threshold {threshold:.2f})"

    @property
    def body_part_summary(self) -> str | None:
        """One line for the app, the report and the CLI: the body part the model's auxiliary
        head reads in each view (xray_ai.serving.body_part); None when the model has no such head."""
        parts = [v.body_part for v in self.views]
        if all(p is None for p in parts):
            return None
        said = [f"{p.part} ({p.probability:.0%})" if p is not None else "not estimated" for p in parts]
        text = said[0] if len(said) == 1 else "; ".join(f"view {i}: {s}" for i, s in enumerate(said, start=1))
        return f"{text}, the model's own estimate (an auxiliary output; check it against the image)"

    def to_json(self) -> dict[str, Any]:
        """The `predict --json` object (README, "Command line"): no arrays, no patient identifiers.

        On top of its keys: `members` (an ensemble's member ids; [] for a single model); the
        scope fields `assessable`, `probability_reliable`, `high_sensitivity_threshold`; each
        view's `input_check`, `body_part` (null without a body-part head), `assessable`,
        `scope_reasons` and `finding`; for an ensemble, each view's `member_probabilities`
        (member id -> probability).
        """
        return {
            "condition": self.condition,
            "condition_name": self.condition_name,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "architecture": self.architecture,
            "profile": self.profile,
            "sha256": self.sha256,
            "trained_on": self.trained_on,
            "intended_use": self.intended_use,
            "synthetic_training_data": self.synthetic,
            "probability": round(float(self.probability), 6),
            "assessable": self.assessable,
            # false when no view is in scope: the probability is kept for the record only
            "probability_reliable": self.assessable and not self.placeholder,
            "decision": self.decision,
            "threshold": self.threshold,
            "threshold_method": self.threshold_method,
            "high_sensitivity_threshold": self.high_sensitivity_threshold,
            "placeholder": self.placeholder,
            "placeholder_reason": self.placeholder_reason,
            "heatmap_method": self.heatmap_method,
            "target_layer": self.target_layer,
            "contour_level": self.contour_level,
            "kind": self.kind,
            # a measurement model's figures (null for a classifier): ctr, cardiac_width_px, thoracic_width_px
            "measurements": _rounded(self.measurements),
            "backend": self.backend,
            "members": list(self.members),
            "views": [self._view_json(v) for v in self.views],
            "warnings": list(self.warnings),
            "created": self.created,
        }

    def _view_json(self, view: ViewResult) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": view.filename,
            "probability": round(float(view.probability), 6),
            "heatmap_flag": view.heatmap_flag,
            # [] when no model checks its input; see xray_ai.serving.input_check
            "input_check": [
                {"model_id": m, "distance": round(d, 4), "threshold": round(t, 4), "unlike_training_data": d > t}
                for m, d, t in view.input_checks
            ],
            # null when the model has no body-part head; see xray_ai.serving.body_part
            "body_part": None if view.body_part is None else view.body_part.to_json(),
            "assessable": view.assessable,
            "scope_reasons": list(view.scope_reasons),  # [] when the view is in scope; xray_ai.scope
            "finding": self.finding_level(view),
        }
        if self.kind == "measurement":  # the view's own CTR, widths and where they were measured
            out["measurement"] = None if view.measurement is None else view.measurement.to_json()
        if self.members:  # an ensemble: what each member said about this view
            out["member_probabilities"] = {
                m: round(float(p), 6) for m, p in zip(self.members, view.member_probabilities)
            }
        return out


def _rounded(measurements: dict[str, float] | None) -> dict[str, float] | None:
    if measurements is None:
        return None
    return {k: round(v, 4 if k == "ctr" else 1) for k, v in measurements.items()}
