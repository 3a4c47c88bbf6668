"""The tiers side by side, in the shape of source document 004's Table 1: for each condition,
its intensive and its fast models with their held-out test figures as the registry stores
them (AUC and accuracy with 95% CIs, kappa, the default heatmap's 15-px pointing game) and,
where benchmarks/tier_speed.py measured it (models/analysis_speed.json), the milliseconds per
analysis on that machine, for the very model file (its sha256) the registry names; and, for
an intensive model, whether it is better than the condition's fast one on validation
(models/compare_tiers.py's record beside it, `<id>.tiers.json`: the paired-bootstrap
validation AUC difference; "better" only where its 95% interval lies above 0).

Nothing here measures or invents a figure: a cell the registry does not hold stays empty,
and a tier a condition has no model of says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xray_ai.registry.document import Registry
from xray_ai.registry.schema import ModelEntry

__all__ = ["SPEED_FILE", "TIERS", "TIERS_SUFFIX", "TierRow", "read_speeds", "read_tier_record", "tier_comparison"]

TIERS = ("intensive", "fast")
SPEED_FILE = "models/analysis_speed.json"  # benchmarks/tier_speed.py --write, beside the models
TIERS_SUFFIX = ".tiers.json"  # models/compare_tiers.py: models/<intensive id>.tiers.json


@dataclass(frozen=True)
class TierRow:
    """One condition x tier cell group. `model_id` None: the condition has no model of this tier."""

    condition: str
    condition_name: str
    tier: str
    model_id: str | None
    architecture: str | None = None
    kind: str | None = None
    active: bool = False
    split: str | None = None
    n: int | None = None
    auc: float | None = None
    auc_ci: tuple[float, float] | None = None
    accuracy: float | None = None
    accuracy_ci: tuple[float, float] | None = None
    kappa: float | None = None
    pointing_15px: float | None = None
    ms_per_analysis: float | None = None
    # intensive rows: (AUC difference intensive - fast on validation, its 95% CI), or None: not compared
    versus_fast: tuple[float, tuple[float, float]] | None = None

    def as_table_row(self) -> dict[str, str]:
        """The row as the performance page and the README print it."""
        # the comparison right after the model: the verdict a reader looks for first
        if self.model_id is None:
            return {"condition": self.condition_name, "tier": self.tier, "model": "none registered",
                    "validation AUC vs fast (95% CI)": "", "test AUC (95% CI)": "", "accuracy (95% CI)": "",
                    "kappa": "", "pointing 15 px": "", "ms per analysis": ""}
        return {
            "condition": self.condition_name, "tier": self.tier,
            "model": f"{self.model_id}{' (active)' if self.active else ''}",
            "validation AUC vs fast (95% CI)": self._versus_fast(),
            "test AUC (95% CI)": _with_ci(self.auc, self.auc_ci),
            "accuracy (95% CI)": _with_ci(self.accuracy, self.accuracy_ci),
            "kappa": _number(self.kappa), "pointing 15 px": _number(self.pointing_15px, 2),
            "ms per analysis": _number(self.ms_per_analysis, 1),
        }

    def _versus_fast(self) -> str:
        if self.tier != "intensive":
            return ""
        if self.versus_fast is None:
            return "not compared"
        difference, (low, high) = self.versus_fast
        return f"{difference:+.4f} ({low:+.4f} to {high:+.4f}): {'better' if low > 0 else 'not better'}"


def read_speeds(path: str | Path) -> dict[str, dict]:
    """model id -> its figures in a benchmarks/tier_speed.py record; {} when there is none."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    models = record.get("models") if isinstance(record, dict) else None
    return {k: v for k, v in models.items() if isinstance(v, dict)} if isinstance(models, dict) else {}


def tier_comparison(registry: Registry, speeds: dict[str, dict] | None = None) -> list[TierRow]:
    """Every condition x tier (intensive first, as Table 1 puts DenseNet121 first), with each
    registered single or measurement model of that tier on a row of its own (the active one
    first); a tier without a model gets one empty row. `speeds`: `read_speeds` of the
    benchmark's record; a model's figure is used only where its sha256 is the entry's."""
    rows: list[TierRow] = []
    for condition_id, condition in registry.conditions.items():
        active = registry.active_models.get(condition_id)
        for tier in TIERS:
            entries = sorted((e for e in registry.models.values()
                              if e.condition == condition_id and e.profile == tier and not e.is_ensemble),
                             key=lambda e: (e.id != active, e.id))
            if not entries:
                rows.append(TierRow(condition_id, condition.name, tier, None))
            for entry in entries:
                versus_fast = _auc_difference(read_tier_record(registry, entry)) if tier == "intensive" else None
                rows.append(_row(entry, condition.name, entry.id == active, (speeds or {}).get(entry.id), versus_fast))
    return rows


def read_tier_record(registry: Registry, entry: ModelEntry) -> dict | None:
    """models/compare_tiers.py's record for the intensive `entry` (`<id>.tiers.json` beside
    its file), or None: there is none, it is unreadable, it names another model, or it was
    measured on another file of either model than the registry's (its recorded sha256)."""
    if entry.path is None:
        return None
    try:
        record = json.loads(Path(entry.resolve_path(registry.base_dir)).with_suffix(TIERS_SUFFIX).read_text())
        ids, hashes = record["models"], record.get("sha256", {})
        fast = registry.models.get(ids["fast"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if ids.get("intensive") != entry.id or fast is None:
        return None
    if any(hashes.get(tier) != model.sha256 for tier, model in (("intensive", entry), ("fast", fast))):
        return None
    return record


def _auc_difference(record: dict | None) -> tuple[float, tuple[float, float]] | None:
    """A tiers record's validation AUC difference and its 95% CI, or None."""
    try:
        figures = record["valid_auc_difference_intensive_minus_fast"]  # type: ignore[index]
        return float(figures["difference"]), (float(figures["ci95"][0]), float(figures["ci95"][1]))
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def _row(entry: ModelEntry, condition_name: str, active: bool, speed: dict | None,
         versus_fast: tuple[float, tuple[float, float]] | None = None) -> TierRow:
    metrics: dict[str, Any] = dict(entry.metrics or {})
    ci = metrics.get("ci95") or {}
    pointing = None
    if entry.heatmap is not None:
        test = entry.heatmap.provenance.get("test") or {}
        pointing = test.get("pointing_game_tolerant")
    elif isinstance(metrics.get("localisation"), dict):
        pointing = metrics["localisation"].get("pointing_game_tolerant")
    ms = speed.get("ms_median") if speed and speed.get("sha256") == entry.sha256 else None
    return TierRow(
        condition=entry.condition, condition_name=condition_name, tier=entry.profile, model_id=entry.id,
        architecture=entry.architecture, kind=getattr(entry, "kind", "classifier"), active=active,
        split=metrics.get("split"), n=metrics.get("n"), auc=metrics.get("auc"), auc_ci=_pair(ci.get("auc")),
        accuracy=metrics.get("accuracy"), accuracy_ci=_pair(ci.get("accuracy")), kappa=metrics.get("kappa"),
        pointing_15px=pointing, ms_per_analysis=None if ms is None else float(ms), versus_fast=versus_fast,
    )


def _pair(value) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if isinstance(value, (list, tuple)) and len(value) == 2 else None


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _with_ci(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
