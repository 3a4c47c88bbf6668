"""Reading registry JSON field by field: each entry checked, the first wrong field named.

`parse_condition`, `parse_entry` and `check_members` turn the parsed JSON of one condition,
one model entry, and the set of entries into the `schema` dataclasses, raising
RegistryError with the field's dotted path (`models.<id>.threshold: ...`). The whole file
(top-level keys, active models) is checked by `document.parse_registry`, which calls these.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from xray_ai.registry.schema import (
    ARCHITECTURES,
    ENSEMBLE_ARCHITECTURE,
    KIND_ALIASES,
    KINDS,
    MEASURED_CONDITIONS,
    MEASUREMENT_ARCHITECTURES,
    PREPROCESSING,
    PROFILES,
    Condition,
    HeatmapSpec,
    InputSpec,
    ModelEntry,
    RegistryError,
    TrainingData,
)

__all__ = ["FieldReader", "parse_condition", "parse_entry", "check_members"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class FieldReader:
    """Reads typed fields from one JSON object and names the exact field when one is wrong.

    `where` is the object's dotted path in the file (`models.<id>.input`); every error
    message starts with it, so that the user can find the field.
    """

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise RegistryError(f"{where}: must be an object, got {type(obj).__name__}")
        self.obj, self.where = obj, where

    def _get(self, key: str, default: Any = ...) -> Any:
        if key not in self.obj:
            if default is ...:
                raise RegistryError(f"{self.where}.{key}: missing")
            return default
        return self.obj[key]

    def text(self, key: str, default: Any = ..., *, choices: tuple[str, ...] = (), pattern: re.Pattern | None = None, empty_ok: bool = False) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or (not value.strip() and not empty_ok):
            raise RegistryError(f"{self.where}.{key}: must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise RegistryError(f"{self.where}.{key}: {value!r} is not one of {', '.join(choices)}")
        if pattern is not None and not pattern.match(value):
            raise RegistryError(f"{self.where}.{key}: {value!r} has the wrong form")
        return value

    def number(self, key: str, lo: float, hi: float) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise RegistryError(f"{self.where}.{key}: must be a number in [{lo}, {hi}], got {value!r}")
        return float(value)

    def integer(self, key: str, lo: int, hi: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise RegistryError(f"{self.where}.{key}: must be an integer in [{lo}, {hi}], got {value!r}")
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise RegistryError(f"{self.where}.{key}: must be true or false, got {value!r}")
        return value

    def obj_(self, key: str, default: Any = ...) -> dict:
        value = self._get(key, default)
        if not isinstance(value, dict):
            raise RegistryError(f"{self.where}.{key}: must be an object, got {value!r}")
        return value


_ENTRY_KEYS = {
    "condition", "architecture", "path", "sha256", "version", "input", "preprocessing",
    "threshold", "threshold_method", "profile", "trained_on", "intended_use", "metrics",
    "created", "notes", "kind", "members", "heatmap", "measurement",
}
# Keys that belong to a file, so to an ensemble's members and never to the ensemble.
_FILE_KEYS = ("path", "sha256", "preprocessing")


def _channels(inp: FieldReader) -> int:
    value = inp.integer("channels", 1, 3)
    if value == 2:
        raise RegistryError(f"{inp.where}.channels: must be 1 (gray) or 3 (gray replicated), got 2")
    return value


def parse_condition(condition_id: str, raw: Any) -> Condition:
    """One `conditions.<id>` object."""
    c = FieldReader(raw, f"conditions.{condition_id}")
    parts = c._get("body_parts", None)
    if parts is not None:
        if (not isinstance(parts, list) or not parts
                or not all(isinstance(p, str) and p.strip() and p == p.strip().lower() for p in parts)):
            raise RegistryError(f"{c.where}.body_parts: must be a non-empty list of lower-case body-part names "
                                f"(or absent for any region), got {parts!r}")
        parts = tuple(parts)
    return Condition(condition_id, c.text("name"), c.text("positive_label"), c.text("negative_label"), parts)


def parse_entry(model_id: str, raw: Any, conditions: Mapping[str, Condition]) -> ModelEntry:
    """One `models.<id>` object, a single model or an ensemble; its members are checked
    against the other entries by `check_members` once all are read."""
    where = f"models.{model_id}"
    if not _ID.match(model_id):
        raise RegistryError(f"{where}: model id must be letters, digits, '.', '_' or '-'")
    f = FieldReader(raw, where)
    condition = f.text("condition")
    if condition not in conditions:
        raise RegistryError(
            f"{where}.condition: unknown condition {condition!r}; valid: {', '.join(sorted(conditions))}"
        )
    kind = f.text("kind", "classifier", choices=KINDS + tuple(KIND_ALIASES))
    kind = KIND_ALIASES.get(kind, kind)
    architecture, path, sha, members = (_ensemble_fields if kind == "ensemble" else _single_fields)(f)
    inp = FieldReader(f.obj_("input"), f"{where}.input")
    tr = FieldReader(f.obj_("trained_on"), f"{where}.trained_on")
    metrics = f.obj_("metrics")
    if metrics and not isinstance(metrics.get("split"), str):
        raise RegistryError(f"{where}.metrics.split: metrics must name the split they were measured on")
    return ModelEntry(
        id=model_id,
        condition=condition,
        architecture=architecture,
        path=path,
        sha256=sha,
        version=f.text("version"),
        input=InputSpec(
            height=inp.integer("height", 8, 4096),
            width=inp.integer("width", 8, 4096),
            channels=_channels(inp),
        ),
        # an ensemble has none of its own: each member prepares its input as its entry says
        preprocessing="unit" if members else f.text("preprocessing", "unit", choices=PREPROCESSING),
        threshold=f.number("threshold", 0.0, 1.0),
        threshold_method=f.text("threshold_method"),
        profile=f.text("profile", choices=PROFILES),
        trained_on=TrainingData(
            dataset=tr.text("dataset"),
            version=tr.text("version", "", empty_ok=True),
            synthetic=tr.boolean("synthetic"),
        ),
        intended_use=f.text("intended_use"),
        metrics=metrics,
        created=f.text("created", pattern=_DATE),
        notes=f.text("notes", "", empty_ok=True),
        kind=kind,
        members=members,
        heatmap=_heatmap(f, members, kind),
        measurement=_measurement(f, kind, condition, architecture),
        extra={k: v for k, v in raw.items() if k not in _ENTRY_KEYS},
    )


def _heatmap(f: FieldReader, members: tuple[str, ...], kind: str) -> HeatmapSpec | None:
    """The optional `heatmap` field: a CAM method and layer paths (checked against the model
    file when it loads: xray_ai.explain.gradcam.GradCam), a contour level, provenance."""
    raw = f.obj.get("heatmap")
    if raw is None:
        return None
    if kind == "measurement":
        raise RegistryError(f"{f.where}.heatmap: a measurement model shows its outlines, not a heatmap setting")
    if members:
        raise RegistryError(f"{f.where}.heatmap: an ensemble has no heatmap setting of its own; "
                            "each member's entry holds its own")
    try:
        return HeatmapSpec.from_json(raw)
    except ValueError as exc:
        message = str(exc)
        detail = message[len("heatmap"):].lstrip(".: ") if message.startswith("heatmap") else message
        raise RegistryError(f"{f.where}.heatmap: {detail}") from None


def _measurement(f: FieldReader, kind: str, condition: str, architecture: str) -> dict[str, Any] | None:
    """A measurement model's `measurement` field (what it measures, the rule's limit, the
    probability's calibration), and what a measurement entry must be besides: a condition
    that is measured, a segmentation network, "unit" input (the network's contract,
    xray_ai.measurement.network), and the threshold 0.5, the calibrated probability at the
    limit (so that the decision is the rule: value above the limit)."""
    raw = f.obj.get("measurement")
    if kind != "measurement":
        if raw is not None:
            raise RegistryError(f'{f.where}.measurement: only an entry with "kind": "measurement" has one')
        return None
    if condition not in MEASURED_CONDITIONS:
        raise RegistryError(f"{f.where}.condition: a measurement model measures {', '.join(MEASURED_CONDITIONS)} "
                            f"only (the cardiothoracic ratio), not {condition!r}")
    if architecture not in MEASUREMENT_ARCHITECTURES:
        raise RegistryError(f"{f.where}.architecture: a measurement model is a segmentation network "
                            f"({', '.join(MEASUREMENT_ARCHITECTURES)}), not {architecture!r}")
    if f.obj.get("preprocessing", "unit") != "unit":
        raise RegistryError(f"{f.where}.preprocessing: a measurement model takes \"unit\" input (its network's "
                            f"contract), got {f.obj['preprocessing']!r}")
    m = FieldReader(f.obj_("measurement"), f"{f.where}.measurement")
    m.text("quantity", choices=("ctr",))
    limit = m.number("limit", 0.0, 1.0)
    if not 0.0 < limit < 1.0:
        raise RegistryError(f"{m.where}.limit: must be strictly between 0 and 1, got {limit!r}")
    scale = m.number("calibration_scale", 0.0, 1.0)
    if scale <= 0.0:
        raise RegistryError(f"{m.where}.calibration_scale: must be above 0, got {scale!r}")
    m.text("calibrated_on")
    if f.obj.get("threshold") != 0.5:
        raise RegistryError(f"{f.where}.threshold: a measurement model decides by its rule's limit, whose "
                            f"probability is 0.5; got {f.obj.get('threshold')!r}")
    return dict(m.obj)


def _single_fields(f: FieldReader) -> tuple[str, str, str | None, tuple[str, ...]]:
    """(architecture, path, sha256, members) of a single model: a file, checked by its sha256."""
    if "members" in f.obj:
        raise RegistryError(f'{f.where}.members: only an entry with "kind": "ensemble" has members')
    sha = f._get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise RegistryError(f"{f.where}.sha256: must be 64 lowercase hex digits or null, got {sha!r}")
    path = f.text("path")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise RegistryError(f"{f.where}.path: must not contain NUL or other control characters, got {path!r}")
    if "\\" in path:
        raise RegistryError(f"{f.where}.path: use '/' separators, got {path!r}")
    # Where it resolves (inside the registry's folder or XRAY_AI_MODELS_ROOT) is checked by
    # document.parse_registry, which knows the registry's folder.
    return f.text("architecture", choices=ARCHITECTURES), path, sha, ()


def _ensemble_fields(f: FieldReader) -> tuple[str, None, None, tuple[str, ...]]:
    """(architecture, path, sha256, members) of an ensemble: no file, two or more distinct members.

    The members themselves are checked against the other entries by `check_members`.
    """
    for key in _FILE_KEYS:
        if f.obj.get(key) is not None:
            raise RegistryError(
                f"{f.where}.{key}: an ensemble has no file of its own ({key} belongs to each member); "
                f"leave it out, got {f.obj[key]!r}"
            )
    members = f._get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise RegistryError(f"{f.where}.members: must be a list of model ids, got {members!r}")
    if len(members) < 2:
        raise RegistryError(f"{f.where}.members: an ensemble needs at least 2 models, got {len(members)}")
    if len(set(members)) != len(members):
        raise RegistryError(f"{f.where}.members: lists a model twice: {members!r}")
    architecture = f.text("architecture", ENSEMBLE_ARCHITECTURE, choices=(ENSEMBLE_ARCHITECTURE,))
    return architecture, None, None, tuple(members)


def check_members(models: Mapping[str, ModelEntry]) -> None:
    """Every ensemble's members exist, are single models, and serve the ensemble's condition."""
    for entry in models.values():
        where = f"models.{entry.id}.members"
        for member_id in entry.members:
            member = models.get(member_id)
            if member is None:
                valid = sorted(m.id for m in models.values()
                               if m.condition == entry.condition and m.kind == "classifier")
                raise RegistryError(
                    f"{where}: unknown model id {member_id!r}; valid: {', '.join(valid) or 'none registered'}"
                )
            if member.is_ensemble:
                raise RegistryError(f"{where}: {member_id!r} is itself an ensemble; members must be single models")
            if member.is_measurement:
                raise RegistryError(f"{where}: {member_id!r} is a measurement model; members must be classifiers")
            if member.condition != entry.condition:
                raise RegistryError(
                    f"{where}: {member_id!r} serves {member.condition!r}, not {entry.condition!r}"
                )
            if member.trained_on.synthetic and not entry.trained_on.synthetic:
                # an ensemble of demonstration models is a demonstration model too
                raise RegistryError(
                    f"models.{entry.id}.trained_on.synthetic: member {member_id!r} was trained on "
                    "synthetic data, so the ensemble must say true"
                )
