"""Widgets and cached resources shared by the pages.

The ModelManager is cached with st.cache_resource, so every browser session shares one
set of loaded models (loading DenseNet121 takes seconds; reloading it on every rerun is
the memory leak users of such apps report). It is keyed by the registry path, so a
deployment (or a test) that points XRAY_AI_REGISTRY elsewhere gets its own manager.

When the manager is first made, a background thread loads every condition's active model
(`preload_active`), so the first analysis finds its model loaded: with the shipped ONNX
exports that is under a second per model and never imports TensorFlow. An analysis that
asks for a model still loading waits for that load (the manager's per-model lock), never
for the others. `XRAY_AI_PRELOAD=0` turns it off (the tests of single pages do).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import streamlit as st

from ui.text import code, plain

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
log = logging.getLogger(__name__)


@st.cache_resource(show_spinner=False)
def _manager_for(registry_path: str) -> ModelManager:
    manager = ModelManager(registry_path)
    if os.environ.get("XRAY_AI_PRELOAD", "1") != "0":
        threading.Thread(target=preload_active, args=(manager,), name="xray_ai-preload", daemon=True).start()
    return manager


def preload_active(manager: ModelManager) -> None:
    """Load each condition's active model, one after the other; a failure is logged and left
    for the analysis that needs the model to report (as the placeholder or an error)."""
    try:
        active = list(manager.registry.active_models)
    except Exception as exc:  # an invalid registry: the pages say so
        log.warning("preload skipped: %s", exc)
        return
    for condition in active:
        try:
            manager.get(condition=condition)
        except Exception as exc:  # reported by the page that asks for it
            log.warning("preload of %s failed: %s", condition, exc)


def get_manager() -> ModelManager:
    """The shared ModelManager for the current registry (thread-safe; re-reads an edited registry)."""
    try:
        return _manager_for(str(default_registry_path()))
    except ValueError as exc:  # e.g. an unknown XRAY_AI_BACKEND value
        st.error(plain(f"The app is misconfigured: {exc}"))
        st.stop()


def registry_or_stop(manager: ModelManager) -> Registry:
    """The validated registry, or an error naming the bad field and a stopped page."""
    try:
        return manager.registry
    except RegistryError as exc:
        st.error(plain(f"The model registry is invalid, so no model can be served: {exc}"))
        st.stop()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def show_provenance(result: AnalysisResult) -> None:
    """What produced the result: always visible beside it."""
    # A model trained on synthetic data is said once, by the result's own warning (the page
    # shows result.warnings right after this block).
    if result.placeholder:
        st.error(f"**{PLACEHOLDER_WATERMARK}**  \n{plain(result.placeholder_reason)}. The numbers below mean nothing.")
    ensemble = f"**Ensemble:** mean of {', '.join(code(m) for m in result.members)}  \n" if result.members else ""
    st.markdown(
        f"**Model** {code(result.model_id)} v{plain(result.model_version)} ({plain(result.architecture)}, {result.profile}) · "
        f"**threshold** {result.threshold:.3f} ({plain(result.threshold_method)})  \n"
        f"**Intended use:** {plain(result.intended_use)}  \n"
        f"{ensemble}"
        + (f"**Shown:** {plain(result.heatmap_method)} · backend {plain(result.backend)}  \n"
           if result.kind == "measurement" else  # outlines, not a heatmap of some layer
           f"**Heatmap:** {plain(result.heatmap_method)} "
           f"{'at ' + code(result.target_layer) if result.target_layer else '(input space)'} · "
           f"backend {plain(result.backend)}  \n")
        + f"**Input check:** {plain(result.input_check_summary)}"
        + (f"  \n**Body part:** {plain(result.body_part_summary)}" if result.body_part_summary else "")
    )
