"""The model registry: which models exist and which one serves each condition.

`model_registry.json` is one JSON object (schema in DESIGN.md and the README):
`schema_version`, `conditions`, `models`, `active_models`. Labels, thresholds and input
sizes live here and nowhere else. Loading validates the whole file and names the first
wrong field; saving is atomic (temporary file + rename) and keeps the previous version
as `<name>.bak`; every change made through the app or the CLI is appended to an audit
log (SQLite, beside the registry unless `XRAY_AI_AUDIT_DB` says otherwise).

An entry is a single model (a file) or, with `"kind": "ensemble"`, the mean of two or more
registered single models of the same condition (`members`); an ensemble has no file, so
no `path`, `sha256` or `preprocessing` (each member prepares its own input).

No tensorflow here: the app's registry page and the CLI's `registry` commands use it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import getpass
import json
import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "SCHEMA_VERSION",
    "ARCHITECTURES",
    "PREPROCESSING",
    "PROFILES",
    "KINDS",
    "RegistryError",
    "Condition",
    "InputSpec",
    "TrainingData",
    "ModelEntry",
    "Registry",
    "default_registry_path",
    "load_registry",
    "save_registry",
    "audit_db_path",
    "read_audit_log",
    "repo_root",
]

SCHEMA_VERSION = 1
# Backbones a registry entry may name; architectures.py builds each of them.
ARCHITECTURES = (
    "densenet121",
    "mobilenetv2",
    "compactcnn",
    "efficientnetlite0",
    "densenet169",
    "resnet50",
    "resnet101",
    "efficientnetb0",
    "vgg16",
    "vgg19",
    "xception",
    "convnext_tiny",
    "custom",
)
# How a model wants its input; preprocessing.py implements each.
PREPROCESSING = ("unit", "imagenet_tf", "imagenet_torch", "imagenet_caffe", "raw255")
PROFILES = ("fast", "intensive")
# "single": one model file; "ensemble": the mean of its members' outputs (no file of its own).
KINDS = ("single", "ensemble")
ENSEMBLE_ARCHITECTURE = "ensemble"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def repo_root() -> Path:
    """The repository root (the folder holding `xray_ai/`)."""
    return Path(__file__).resolve().parent.parent


def default_registry_path() -> Path:
    """`$XRAY_AI_REGISTRY` if set, else `model_registry.json` at the repository root."""
    env = os.environ.get("XRAY_AI_REGISTRY")
    return Path(env) if env else repo_root() / "model_registry.json"


class RegistryError(ValueError):
    """The registry is invalid, or an id is unknown. The message names the file and field."""


@dataclass(frozen=True)
class Condition:
    id: str
    name: str
    positive_label: str
    negative_label: str


@dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class TrainingData:
    dataset: str
    version: str
    synthetic: bool

    def describe(self) -> str:
        text = f"{self.dataset} ({self.version})" if self.version else self.dataset
        return text + (" [synthetic data]" if self.synthetic else "")


@functools.lru_cache(maxsize=256)
def _joined(path: str, base: Path) -> Path:
    # Cached: ModelManager.get resolves the model file on every analysis, and pathlib's
    # joins cost more than the stat that follows.
    p = Path(path)
    return p if p.is_absolute() else base / p


@dataclass(frozen=True)
class ModelEntry:
    """One registered model. `path` is relative to the registry file's folder.

    An ensemble (`kind == "ensemble"`) has `path` and `sha256` None, `architecture`
    "ensemble" and two or more `members` (ids of single models of the same condition);
    its `input` is informational, as each member uses its own.
    """

    id: str
    condition: str
    architecture: str
    path: str | None
    sha256: str | None
    version: str
    input: InputSpec
    threshold: float
    threshold_method: str
    profile: str
    trained_on: TrainingData
    intended_use: str
    metrics: Mapping[str, Any]
    created: str
    preprocessing: str = "unit"
    notes: str = ""
    kind: str = "single"
    members: tuple[str, ...] = ()
    # Fields this version does not model, kept so that a save never drops them.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_ensemble(self) -> bool:
        return self.kind == "ensemble"

    def resolve_path(self, base: Path) -> Path:
        """The model file. RegistryError for an ensemble, which has none (see `members`)."""
        if self.path is None:
            raise RegistryError(
                f"model {self.id!r} is an ensemble of {', '.join(self.members)}; it has no file of its own"
            )
        return _joined(self.path, base)

    def to_dict(self) -> dict[str, Any]:
        if self.is_ensemble:  # no file, no preprocessing of its own: each member has them
            file_keys: dict[str, Any] = {"kind": self.kind, "members": list(self.members)}
            input_keys: dict[str, Any] = {"input": dataclasses.asdict(self.input)}
        else:  # a single model writes exactly the keys it always did (no "kind")
            file_keys = {"path": self.path, "sha256": self.sha256}
            input_keys = {"input": dataclasses.asdict(self.input), "preprocessing": self.preprocessing}
        out: dict[str, Any] = {
            "condition": self.condition,
            "architecture": self.architecture,
            **file_keys,
            "version": self.version,
            **input_keys,
            "threshold": self.threshold,
            "threshold_method": self.threshold_method,
            "profile": self.profile,
            "trained_on": dataclasses.asdict(self.trained_on),
            "intended_use": self.intended_use,
            "metrics": dict(self.metrics),
            "created": self.created,
            "notes": self.notes,
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Registry:
    """A validated registry. Change it with the `with_*` methods, which return a new one."""

    schema_version: int
    conditions: Mapping[str, Condition]
    models: Mapping[str, ModelEntry]
    active_models: Mapping[str, str]
    path: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else repo_root()

    def condition(self, condition_id: str) -> Condition:
        try:
            return self.conditions[condition_id]
        except KeyError:
            raise RegistryError(
                f"unknown condition {condition_id!r}; valid: {', '.join(sorted(self.conditions))}"
            ) from None

    def model(self, model_id: str) -> ModelEntry:
        try:
            return self.models[model_id]
        except KeyError:
            raise RegistryError(
                f"unknown model id {model_id!r}; valid: {', '.join(sorted(self.models))}"
            ) from None

    def active_entry(self, condition_id: str) -> ModelEntry:
        self.condition(condition_id)
        model_id = self.active_models.get(condition_id)
        if model_id is None:
            raise RegistryError(f"no active model for condition {condition_id!r}")
        return self.model(model_id)

    def models_for(self, condition_id: str) -> list[ModelEntry]:
        return [m for m in self.models.values() if m.condition == condition_id]

    def with_active(self, condition_id: str, model_id: str) -> "Registry":
        self.condition(condition_id)
        entry = self.model(model_id)
        if entry.condition != condition_id:
            raise RegistryError(
                f"model {model_id!r} serves {entry.condition!r}, not {condition_id!r}"
            )
        active = dict(self.active_models)
        active[condition_id] = model_id
        return dataclasses.replace(self, active_models=active)

    def with_model(self, entry: ModelEntry) -> "Registry":
        models = dict(self.models)
        models[entry.id] = entry
        new = dataclasses.replace(self, models=models)
        return parse_registry(new.to_dict(), self.path)  # re-validate the whole file

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "conditions": {
                c.id: {
                    "name": c.name,
                    "positive_label": c.positive_label,
                    "negative_label": c.negative_label,
                }
                for c in self.conditions.values()
            },
            "models": {m.id: m.to_dict() for m in self.models.values()},
            "active_models": dict(self.active_models),
        }


# --------------------------------------------------------------------------- parsing


class _Fields:
    """Reads typed fields from one JSON object and names the exact field when one is wrong."""

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
    "created", "notes", "kind", "members",
}
# Keys that belong to a file, so to an ensemble's members and never to the ensemble.
_FILE_KEYS = ("path", "sha256", "preprocessing")


def _channels(inp: _Fields) -> int:
    value = inp.integer("channels", 1, 3)
    if value == 2:
        raise RegistryError(f"{inp.where}.channels: must be 1 (gray) or 3 (gray replicated), got 2")
    return value


def _parse_entry(model_id: str, raw: Any, conditions: Mapping[str, Condition]) -> ModelEntry:
    where = f"models.{model_id}"
    if not _ID.match(model_id):
        raise RegistryError(f"{where}: model id must be letters, digits, '.', '_' or '-'")
    f = _Fields(raw, where)
    condition = f.text("condition")
    if condition not in conditions:
        raise RegistryError(
            f"{where}.condition: unknown condition {condition!r}; valid: {', '.join(sorted(conditions))}"
        )
    kind = f.text("kind", "single", choices=KINDS)
    architecture, path, sha, members = (_ensemble_fields if kind == "ensemble" else _single_fields)(f)
    inp = _Fields(f.obj_("input"), f"{where}.input")
    tr = _Fields(f.obj_("trained_on"), f"{where}.trained_on")
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
        extra={k: v for k, v in raw.items() if k not in _ENTRY_KEYS},
    )


def _single_fields(f: _Fields) -> tuple[str, str, str | None, tuple[str, ...]]:
    """(architecture, path, sha256, members) of a single model: a file, checked by its sha256."""
    if "members" in f.obj:
        raise RegistryError(f'{f.where}.members: only an entry with "kind": "ensemble" has members')
    sha = f._get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise RegistryError(f"{f.where}.sha256: must be 64 lowercase hex digits or null, got {sha!r}")
    path = f.text("path")
    if "\\" in path:
        raise RegistryError(f"{f.where}.path: use '/' separators, got {path!r}")
    return f.text("architecture", choices=ARCHITECTURES), path, sha, ()


def _ensemble_fields(f: _Fields) -> tuple[str, None, None, tuple[str, ...]]:
    """(architecture, path, sha256, members) of an ensemble: no file, two or more distinct members.

    The members themselves are checked against the other entries by `_check_members`.
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


def _check_members(models: Mapping[str, ModelEntry]) -> None:
    """Every ensemble's members exist, are single models, and serve the ensemble's condition."""
    for entry in models.values():
        where = f"models.{entry.id}.members"
        for member_id in entry.members:
            member = models.get(member_id)
            if member is None:
                valid = sorted(m.id for m in models.values() if m.condition == entry.condition and not m.is_ensemble)
                raise RegistryError(
                    f"{where}: unknown model id {member_id!r}; valid: {', '.join(valid) or 'none registered'}"
                )
            if member.is_ensemble:
                raise RegistryError(f"{where}: {member_id!r} is itself an ensemble; members must be single models")
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


def parse_registry(raw: Any, path: Path | None = None) -> Registry:
    """Validate a registry object (already parsed JSON). Raises RegistryError naming the field."""
    try:
        top = _Fields(raw, "registry")
        version = top.integer("schema_version", 1, 1_000)
        if version != SCHEMA_VERSION:
            raise RegistryError(
                f"schema_version: this version of xray_ai reads schema {SCHEMA_VERSION}, got {version}"
            )
        conditions: dict[str, Condition] = {}
        for cid, craw in top.obj_("conditions").items():
            c = _Fields(craw, f"conditions.{cid}")
            conditions[cid] = Condition(cid, c.text("name"), c.text("positive_label"), c.text("negative_label"))
        if not conditions:
            raise RegistryError("conditions: at least one condition is needed")
        models = {mid: _parse_entry(mid, mraw, conditions) for mid, mraw in top.obj_("models").items()}
        _check_members(models)
        active = top.obj_("active_models")
        for cid, mid in active.items():
            if cid not in conditions:
                raise RegistryError(f"active_models.{cid}: unknown condition")
            if mid not in models:
                raise RegistryError(
                    f"active_models.{cid}: unknown model id {mid!r}; valid: {', '.join(sorted(models))}"
                )
            if models[mid].condition != cid:
                raise RegistryError(f"active_models.{cid}: model {mid!r} serves {models[mid].condition!r}")
        extra_keys = set(raw) - {"schema_version", "conditions", "models", "active_models"}
        if extra_keys:
            raise RegistryError(f"registry: unknown top-level field(s) {', '.join(sorted(extra_keys))}")
    except RegistryError as exc:
        name = str(path) if path else "registry"
        raise RegistryError(f"{name}: {exc}") from None
    return Registry(version, conditions, models, dict(active), path)


def load_registry(path: str | Path | None = None) -> Registry:
    """Read and validate a registry file (default: `default_registry_path()`)."""
    path = Path(path) if path is not None else default_registry_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read registry ({exc.strerror or exc})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_registry(raw, path)


# --------------------------------------------------------------------------- saving and audit


def audit_db_path(registry_path: Path) -> Path:
    """`$XRAY_AI_AUDIT_DB`, else `<registry stem>.audit.sqlite3` beside the registry."""
    env = os.environ.get("XRAY_AI_AUDIT_DB")
    return Path(env) if env else registry_path.with_name(registry_path.stem + ".audit.sqlite3")


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable list of what changed between two registry dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        where = f"{prefix}{key}"
        if key not in old:
            changes.append(f"added {where}")
        elif key not in new:
            changes.append(f"removed {where}")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            changes.extend(_diff(old[key], new[key], where + "."))
        elif old[key] != new[key]:
            changes.append(f"{where}: {old[key]!r} -> {new[key]!r}")
    return changes


def save_registry(registry: Registry, path: str | Path | None = None, *, user: str | None = None, action: str = "edit") -> list[str]:
    """Validate, then write atomically; keep the previous file as `.bak`; audit the change.

    Returns the list of changes written to the audit log (empty when nothing changed).
    """
    path = Path(path) if path is not None else (registry.path or default_registry_path())
    # As JSON will hold it (int dict keys become strings), so the diff compares like with like.
    new = json.loads(json.dumps(registry.to_dict(), ensure_ascii=False))
    parse_registry(new, path)  # never write an invalid registry
    old: dict = {}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
    changes = _diff(old, new)
    payload = json.dumps(new, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            backup.write_bytes(path.read_bytes())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if changes:
        _append_audit(path, user or _current_user(), action, changes)
    return changes


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _connect(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db, timeout=10)
    con.execute(
        "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, time TEXT NOT NULL, "
        "user TEXT NOT NULL, action TEXT NOT NULL, registry TEXT NOT NULL, changes TEXT NOT NULL)"
    )
    return con


def _append_audit(registry_path: Path, user: str, action: str, changes: list[str]) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with _connect(audit_db_path(registry_path)) as con:
        con.execute(
            "INSERT INTO audit (time, user, action, registry, changes) VALUES (?, ?, ?, ?, ?)",
            (now, user, action, str(registry_path.resolve()), json.dumps(changes)),
        )


def read_audit_log(registry_path: str | Path | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The most recent audit records, newest first."""
    registry_path = Path(registry_path) if registry_path is not None else default_registry_path()
    db = audit_db_path(registry_path)
    if not db.exists():
        return []
    with _connect(db) as con:
        rows = con.execute(
            "SELECT time, user, action, changes FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
    return [{"time": t, "user": u, "action": a, "changes": json.loads(c)} for t, u, a, c in rows]
