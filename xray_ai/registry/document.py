"""The whole registry: the validated `Registry` value, `parse_registry` and `load_registry`.

`model_registry.json` is one JSON object (README, "The model registry"): `schema_version`,
`conditions`, `models`, `active_models`. Labels, thresholds and input sizes live there and
nowhere else. Loading validates the whole file and names the first wrong field. `Registry`
and `parse_registry` share this module because `Registry.with_model` re-validates through
`parse_registry`, which builds a `Registry`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from xray_ai.registry.parse import FieldReader, check_members, parse_condition, parse_entry
from xray_ai.registry.schema import (
    SCHEMA_VERSION,
    Condition,
    ModelEntry,
    RegistryError,
    default_registry_path,
    repo_root,
)

__all__ = ["Registry", "parse_registry", "load_registry", "read_registry_json", "MODELS_ROOT_ENV", "MAX_DEPTH"]

# A model file must resolve inside the registry's folder, or inside this folder when set.
MODELS_ROOT_ENV = "XRAY_AI_MODELS_ROOT"
# Deepest nesting of objects and lists accepted (the registry itself needs about 6).
MAX_DEPTH = 32


@dataclass(frozen=True)
class Registry:
    """A validated registry. Change it with the `with_*` methods, which return a new one."""

    schema_version: int
    conditions: Mapping[str, Condition]
    models: Mapping[str, ModelEntry]
    active_models: Mapping[str, str]
    path: Path | None = None
    # The JSON this registry was read from (None when built in memory): save_registry
    # applies only what an edit changed relative to it, to the file as it is when saving.
    source: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

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
        checked = parse_registry(new.to_dict(), self.path)  # re-validate the whole file
        return dataclasses.replace(checked, source=self.source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "conditions": {c.id: c.to_dict() for c in self.conditions.values()},
            "models": {m.id: m.to_dict() for m in self.models.values()},
            "active_models": dict(self.active_models),
        }


def parse_registry(raw: Any, path: Path | None = None) -> Registry:
    """Validate a registry object (already parsed JSON). Raises RegistryError naming the field."""
    try:
        top = FieldReader(raw, "registry")
        version = top.integer("schema_version", 1, 1_000)
        if version != SCHEMA_VERSION:
            raise RegistryError(
                f"schema_version: this version of xray_ai reads schema {SCHEMA_VERSION}, got {version}"
            )
        conditions: dict[str, Condition] = {}
        for cid, craw in top.obj_("conditions").items():
            conditions[cid] = parse_condition(cid, craw)
        if not conditions:
            raise RegistryError("conditions: at least one condition is needed")
        models = {mid: parse_entry(mid, mraw, conditions) for mid, mraw in top.obj_("models").items()}
        check_members(models)
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
        base = path.parent if path else repo_root()
        for entry in models.values():
            if entry.path is not None:
                check_model_path(entry.id, entry.path, base)
    except RegistryError as exc:
        name = str(path) if path else "registry"
        raise RegistryError(f"{name}: {exc}") from None
    return Registry(version, conditions, models, dict(active), path)


def check_model_path(model_id: str, rel: str, base: Path) -> None:
    """`models.<id>.path` must resolve (symbolic links followed) inside the registry's folder
    `base`, or inside `$XRAY_AI_MODELS_ROOT` when that is set; otherwise another file could
    be served under this entry's id. RegistryError names the field."""
    where = f"models.{model_id}.path"
    roots = [base]
    if os.environ.get(MODELS_ROOT_ENV):
        roots.append(Path(os.environ[MODELS_ROOT_ENV]).expanduser())
    try:
        target = (base / rel).resolve()
        resolved_roots = [r.resolve() for r in roots]
    except (OSError, RuntimeError, ValueError) as exc:  # a symbolic-link loop, an unusable name
        raise RegistryError(f"{where}: {rel!r} cannot be resolved ({exc})") from None
    if not any(target == r or target.is_relative_to(r) for r in resolved_roots):
        allowed = " or ".join(str(r) for r in resolved_roots)
        hint = "" if len(roots) > 1 else f" (set {MODELS_ROOT_ENV} to allow another models folder)"
        raise RegistryError(f"{where}: {rel!r} resolves to {target}, outside {allowed}{hint}")


def read_registry_json(path: Path) -> dict[str, Any]:
    """The registry file's JSON, strictly: valid UTF-8 JSON, no duplicate keys, nesting at
    most MAX_DEPTH deep. RegistryError naming the file and the problem otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise RegistryError(f"{path}: cannot read registry ({reason})") from None
    return _parse_json(text, path)


def _parse_json(text: str, path: Path | str) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _Duplicate(key)
            out[key] = value
        return out

    try:
        raw = json.loads(text, object_pairs_hook=unique)
    except _Duplicate as exc:
        raise RegistryError(f"{path}: duplicate key {exc.args[0]!r} in one object (JSON keeps only the last; "
                            "remove one)") from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise RegistryError(f"{path}: JSON nested too deeply (more than {MAX_DEPTH} levels)") from None
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise RegistryError(f"{path}: JSON nested too deeply ({depth} levels, at most {MAX_DEPTH})")
    return raw


class _Duplicate(Exception):
    pass


def _depth(value: Any) -> int:
    """Nesting depth of objects and lists, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


def load_registry(path: str | Path | None = None) -> Registry:
    """Read and validate a registry file (default: `default_registry_path()`)."""
    path = Path(path) if path is not None else default_registry_path()
    raw = read_registry_json(path)
    registry = parse_registry(raw, path)
    return dataclasses.replace(registry, source=raw)
