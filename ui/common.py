"""Widgets and cached resources shared by the pages.

The ModelManager is cached with st.cache_resource, so every browser session shares one
set of loaded models (loading DenseNet121 takes seconds; reloading it on every rerun is
the memory leak users of such apps report).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from xray_ai.manager import ModelManager
from xray_ai.result import DISCLAIMER, PLACEHOLDER_WATERMARK, AnalysisResult

__all__ = ["DISCLAIMER", "EXAMPLES_DIR", "get_manager", "show_provenance", "digest"]

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


@st.cache_resource(show_spinner=False)
def get_manager() -> ModelManager:
    """One ModelManager for all sessions (it is thread-safe and re-reads an edited registry)."""
    return ModelManager()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def show_provenance(result: AnalysisResult) -> None:
    """What produced the result: always visible beside it."""
    if result.placeholder:
        st.error(f"**{PLACEHOLDER_WATERMARK}**  \n{result.placeholder_reason}. The numbers below mean nothing.")
    elif result.synthetic:
        st.warning(f"Model trained on synthetic data ({result.trained_on}): no clinical meaning.")
    st.markdown(
        f"**Model** `{result.model_id}` v{result.model_version} ({result.architecture}, {result.profile}) · "
        f"**threshold** {result.threshold:.3f} ({result.threshold_method})  \n"
        f"**Intended use:** {result.intended_use}  \n"
        f"**Heatmap:** {result.heatmap_method} at `{result.target_layer}` · backend {result.backend}"
    )
