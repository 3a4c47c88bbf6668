"""Manual markers: click on the overlay to place a numbered marker with a short label.

streamlit-image-coordinates returns the click position in *displayed* pixels together
with the displayed size, so markers are stored as fractions of the image (overlay.Marker)
and survive any resizing, the overlay and the PDF included.
"""

from __future__ import annotations

import numpy as np
import streamlit as st
from streamlit_image_coordinates import streamlit_image_coordinates

from ui.text import plain
from xray_ai.outputs.overlay import Marker

__all__ = ["marker_editor"]


def marker_editor(overlay: np.ndarray, view: int, filename: str | None, caption: str, *,
                  jpeg_quality: int | None = None) -> None:
    """Show the overlay as a clickable image (sent as a JPEG of that quality when given, else
    a PNG); a click adds a marker to session state."""
    markers: list[Marker] = st.session_state.setdefault("analyse.markers", [])
    label = st.text_input("Label for the next marker (then click on the image)", value="marker",
                          max_chars=40, key=f"analyse.marker_label.{view}")
    encoding = {"image_format": "JPEG", "jpeg_quality": jpeg_quality} if jpeg_quality else {}
    click = streamlit_image_coordinates(overlay, key=f"analyse.click.{view}", use_column_width="always", **encoding)
    st.caption(caption)
    last_key = f"analyse.last_click.{view}"
    if click and click.get("width") and click != st.session_state.get(last_key):
        st.session_state[last_key] = click  # each click is added once, not again on every rerun
        markers.append(Marker(click["x"] / click["width"], click["y"] / click["height"], label.strip() or "marker", view))
        st.rerun()
    mine = [m for m in markers if m.view == view]
    if mine:
        st.caption("; ".join(f"{i}. {plain(m.label)} ({m.x:.0%}, {m.y:.0%})" for i, m in enumerate(mine, start=1)))
        if st.button("Clear markers on this view", key=f"analyse.clear.{view}"):
            st.session_state["analyse.markers"] = [m for m in markers if m.view != view]
            st.rerun()
