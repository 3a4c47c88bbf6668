"""The model registry: which models exist and which one serves each condition.

`model_registry.json` (README, "The model registry") is validated as a whole when loaded,
saved atomically with a `.bak` of the previous version, and every change through the app or
the CLI is appended to an audit log. An entry is a classifier (a file; `kind` absent or
"classifier", the old name "single" still read), with `"kind": "ensemble"` the mean of two
or more registered classifiers of the same condition (`members`; no file, so no `path`,
`sha256` or `preprocessing`), or with `"kind": "measurement"` a segmentation network
whose outlines are measured and decided by a clinical rule (`measurement`: cardiomegaly's
cardiothoracic ratio).

The modules: `schema` (allowed values, entry dataclasses, default paths), `parse` (field
by field validation), `document` (the `Registry` value, `parse_registry`,
`load_registry`), `store` (atomic save, audit log). Import from here. No tensorflow: the
app's registry page and the CLI's `registry` commands use it.
"""

from xray_ai.registry.document import Registry, load_registry, parse_registry
from xray_ai.registry.schema import (
    ARCHITECTURES,
    ENSEMBLE_ARCHITECTURE,
    KIND_ALIASES,
    KINDS,
    MEASURED_CONDITIONS,
    MEASUREMENT_ARCHITECTURES,
    PREPROCESSING,
    PROFILES,
    SCHEMA_VERSION,
    Condition,
    InputSpec,
    ModelEntry,
    RegistryError,
    TrainingData,
    default_registry_path,
    repo_root,
)
from xray_ai.registry.store import append_audit, audit_db_path, audit_events, edit_registry, read_audit_log, save_registry

__all__ = [
    "SCHEMA_VERSION",
    "ARCHITECTURES",
    "PREPROCESSING",
    "PROFILES",
    "KINDS",
    "KIND_ALIASES",
    "ENSEMBLE_ARCHITECTURE",
    "MEASURED_CONDITIONS",
    "MEASUREMENT_ARCHITECTURES",
    "RegistryError",
    "Condition",
    "InputSpec",
    "TrainingData",
    "ModelEntry",
    "Registry",
    "default_registry_path",
    "parse_registry",
    "load_registry",
    "save_registry",
    "edit_registry",
    "append_audit",
    "audit_events",
    "audit_db_path",
    "read_audit_log",
    "repo_root",
]
