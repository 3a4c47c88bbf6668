"""The Analyse page's example picker: a condition's synthetic phantoms, then the real radiographs.

What examples exist, which condition each is for and how it is labelled is
`examples/examples.json`, written by `examples/make_examples.py` (examples/README.md): the
phantoms there are in scope for the shipped models of their condition, the real radiographs
are offered for every condition and labelled as out of scope for the synthetic-data models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import streamlit as st

from ui.common import EXAMPLES_DIR

__all__ = ["Example", "examples_for", "example_picker"]

MANIFEST = EXAMPLES_DIR / "examples.json"
_FALLBACK = ("rg3_tibia.dcm", "rg1_chest.dcm")  # should the manifest be missing


@dataclass(frozen=True)
class Example:
    file: str
    label: str
    condition: str | None  # None: offered for every condition


def _all_examples() -> list[Example]:
    try:
        entries = json.loads(MANIFEST.read_text())["examples"]
        found = [Example(e["file"], e["label"], e.get("condition")) for e in entries]
    except (OSError, ValueError, KeyError, TypeError):
        found = [Example(name, name, None) for name in _FALLBACK]
    return [e for e in found if (EXAMPLES_DIR / e.file).is_file()]


def examples_for(condition: str) -> list[Example]:
    """The examples offered for a condition: its own phantoms first, then those for any condition."""
    every = _all_examples()
    return [e for e in every if e.condition == condition] + [e for e in every if e.condition is None]


def example_picker(condition: str) -> list[tuple[str, bytes]]:
    """A choice of example and the "Try an example" button; the (name, bytes) of the example
    last loaded in this session, or [] before one was."""
    offered = examples_for(condition)
    if offered:
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        # keyed by condition: switching condition offers that condition's own phantom first
        choice = left.selectbox("Example", offered, format_func=lambda e: f"{e.file}: {e.label}",
                                key=f"analyse.example_choice.{condition}")
        if right.button("Try an example", key="analyse.example"):
            st.session_state["analyse.example_file"] = choice.file
    name = st.session_state.get("analyse.example_file")
    if not name or not (EXAMPLES_DIR / name).is_file():
        return []
    return [(name, (EXAMPLES_DIR / name).read_bytes())]
