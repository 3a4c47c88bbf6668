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
from dataclasses import dataclass
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

__all__ = ["Registry", "parse_registry", "load_registry"]


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
