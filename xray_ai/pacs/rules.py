"""Which condition a study received by the DICOM node is read for: the routing rules.

A rule names a condition and what a study must show to be read for it: BodyPartExamined
values, ViewPosition values, the calling AE title (the sender), each a string or a list of
strings; every criterion a rule names must match (an instance of the study matches a rule
when its values are among the listed ones), and a rule with no criterion matches every
study. The first rule that an instance of the study matches wins; when none does, the study
is logged and not analysed. Values are compared without case, spaces and punctuation
("Lower Leg" matches "LOWERLEG").

A rules file is JSON:

    {"rules": [
      {"calling_ae": "CHEST_DR", "condition": "cardiomegaly"},
      {"body_part": ["CHEST", "THORAX"], "view_position": ["PA", "AP"], "condition": "pneumonia"},
      {"body_part": "KNEE", "condition": "arthritis"}
    ]}

Without a file the node uses DEFAULT_RULES (README, "Connecting to PACS"): chest to
pneumonia, knee to arthritis, hip and pelvis to osteoporosis, the upper limb's parts to
msk_abnormality, the lower limb's and generic extremity terms to fracture.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Rule", "RulesError", "DEFAULT_RULES", "load_rules", "check_conditions", "pick_condition", "normalise",
           "describe_rule"]

_KEYS = {"body_part": "BodyPartExamined", "view_position": "ViewPosition", "calling_ae": "calling AE title"}


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file and the problem."""


def normalise(value: object) -> str:
    """Upper case, letters and digits only: the form values are compared in."""
    return "".join(ch for ch in str(value or "").upper() if ch.isalnum())


@dataclass(frozen=True)
class Rule:
    """One routing rule: every criterion that is not None must match.

    Attributes:
        condition: the registry condition id the study is read for.
        body_part, view_position, calling_ae: the accepted values, normalised; None: any.
    """

    condition: str
    body_part: frozenset[str] | None = None
    view_position: frozenset[str] | None = None
    calling_ae: frozenset[str] | None = None

    def matches(self, body_part: object, view_position: object, calling_ae: object) -> bool:
        said = {"body_part": body_part, "view_position": view_position, "calling_ae": calling_ae}
        return all(getattr(self, key) is None or normalise(value) in getattr(self, key)
                   for key, value in said.items())


def _rule(condition: str, **criteria: Iterable[str]) -> Rule:
    return Rule(condition, **{k: frozenset(normalise(v) for v in values) for k, values in criteria.items()})


DEFAULT_RULES: tuple[Rule, ...] = (
    _rule("pneumonia", body_part=("CHEST", "THORAX", "LUNG", "RIB")),
    _rule("arthritis", body_part=("KNEE", "PATELLA")),
    _rule("osteoporosis", body_part=("HIP", "PELVIS")),
    _rule("msk_abnormality", body_part=("SHOULDER", "CLAVICLE", "SCAPULA", "HUMERUS", "ARM", "UPPER ARM", "ELBOW",
                                        "FOREARM", "RADIUS", "ULNA", "WRIST", "HAND", "FINGER", "THUMB",
                                        "UPPER EXTREMITY", "UPPER LIMB", "UPEXM")),
    _rule("fracture", body_part=("FEMUR", "THIGH", "LEG", "LOWER LEG", "TIBIA", "FIBULA", "ANKLE", "FOOT", "TOE",
                                 "HEEL", "CALCANEUS", "LOWER EXTREMITY", "LOWER LIMB", "LOWEXM", "EXTREMITY", "LIMB")),
)


def load_rules(path: str | Path) -> tuple[Rule, ...]:
    """Read a rules file (module docstring). Raises RulesError naming the file and the problem."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RulesError(f"{path}: not a readable JSON rules file ({exc})") from None
    items = raw.get("rules") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise RulesError(f"{path}: expected an object with a non-empty list \"rules\"")
    rules = []
    for number, item in enumerate(items, start=1):
        where = f"{path}: rule {number}"
        if not isinstance(item, dict):
            raise RulesError(f"{where}: expected an object, got {type(item).__name__}")
        unknown = sorted(set(item) - {"condition", *_KEYS})
        if unknown:
            raise RulesError(f"{where}: unknown key(s) {', '.join(unknown)}; a rule has condition and any of "
                             f"{', '.join(_KEYS)}")
        condition = item.get("condition")
        if not isinstance(condition, str) or not condition.strip():
            raise RulesError(f"{where}: \"condition\" must be a registry condition id (a string)")
        criteria = {}
        for key in _KEYS:
            if key not in item:
                continue
            values = [item[key]] if isinstance(item[key], str) else item[key]
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and normalise(v)
                                                                    for v in values):
                raise RulesError(f"{where}: \"{key}\" must be a string or a non-empty list of strings")
            criteria[key] = frozenset(normalise(v) for v in values)
        rules.append(Rule(condition.strip(), **criteria))
    return tuple(rules)


def check_conditions(rules: Sequence[Rule], known: Iterable[str], source: str) -> None:
    """Raise RulesError when a rule names a condition the registry does not have."""
    known = set(known)
    for number, rule in enumerate(rules, start=1):
        if rule.condition not in known:
            raise RulesError(f"{source}: rule {number} names condition {rule.condition!r}, which the registry does "
                             f"not have (known: {', '.join(sorted(known))})")


def pick_condition(rules: Sequence[Rule], instances: Sequence[tuple[object, object]],
                   calling_ae: object) -> Rule | None:
    """The first rule that one of the study's instances, given as (BodyPartExamined,
    ViewPosition) pairs, matches together with the calling AE title; None when none does."""
    for rule in rules:
        if any(rule.matches(body_part, view_position, calling_ae) for body_part, view_position in instances):
            return rule
    return None


def describe_rule(rule: Rule) -> str:
    """'BodyPartExamined in {KNEE, PATELLA} -> arthritis', for the log."""
    said = [f"{_KEYS[key]} in {{{', '.join(sorted(getattr(rule, key)))}}}" for key in _KEYS
            if getattr(rule, key) is not None]
    return f"{' and '.join(said) or 'any study'} -> {rule.condition}"
