"""Widgets and cached resources shared by the pages.

The ModelManager is cached with st.cache_resource, so every browser session shares one
set of loaded models (loading DenseNet121 takes seconds; reloading it on every rerun is
the memory leak users of such apps report). It is keyed by the registry path, so a
deployment (or a test) that points XRAY_AI_REGISTRY elsewhere gets its own manager.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from xray_ai.serving.manager import ModelManager
from xray_ai.registry import Registry, RegistryError, default_registry_path
from xray_ai.result import DISCLAIMER, PLACEHOLDER_WATERMARK, AnalysisResult

__all__ = [
    "DISCLAIMER",
    "EXAMPLES_DIR",
    "get_manager",
    "registry_or_stop",
    "show_provenance",
    "digest",
]

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


@st.cache_resource(show_spinner=False)
def _manager_for(registry_path: str) -> ModelManager:
    return ModelManager(registry_path)


def get_manager() -> ModelManager:
    """The shared ModelManager for the current registry (thread-safe; re-reads an edited registry)."""
    try:
        return _manager_for(str(default_registry_path()))
    except ValueError as exc:  # e.g. an unknown XRAY_AI_BACKEND value
        st.error(f"The app is misconfigured: {exc}")
        st.stop()


def registry_or_stop(manager: ModelManager) -> Registry:
    """The validated registry, or an error naming the bad field and a stopped page."""
    try:
        return manager.registry
    except RegistryError as exc:
        st.error(f"The model registry is invalid, so no model can be served: {exc}")
        st.stop()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def show_provenance(result: AnalysisResult) -> None:
    """What produced the result: always visible beside it."""
    # A model trained on synthetic data is said once, by the result's own warning (the page
    # shows result.warnings right after this block).
    if result.placeholder:
        st.error(f"**{PLACEHOLDER_WATERMARK}**  \n{result.placeholder_reason}. The numbers below mean nothing.")
    ensemble = f"**Ensemble:** mean of {', '.join(f'`{m}`' for m in result.members)}  \n" if result.members else ""
    st.markdown(
        f"**Model** `{result.model_id}` v{result.model_version} ({result.architecture}, {result.profile}) · "
        f"**threshold** {result.threshold:.3f} ({result.threshold_method})  \n"
        f"**Intended use:** {result.intended_use}  \n"
        f"{ensemble}"
        f"**Heatmap:** {result.heatmap_method} "
        f"{f'at `{result.target_layer}`' if result.target_layer else '(input space)'} · backend {result.backend}  \n"
        f"**Input check:** {result.input_check_summary}"
        + (f"  \n**Body part:** {result.body_part_summary}" if result.body_part_summary else "")
    )
