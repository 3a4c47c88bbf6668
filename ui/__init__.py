"""Streamlit-side helpers shared by the pages (the xray_ai library never imports streamlit)."""
