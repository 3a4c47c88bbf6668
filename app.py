"""xray_ai web app: page config, the decision-support disclaimer, navigation.

Start with `streamlit run app.py`. Nothing heavy happens here: tensorflow is imported
only when the first analysis loads a model, so the first paint is immediate.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # should a model load on TensorFlow: its banner off the log

import streamlit as st  # noqa: E402

from ui.common import DISCLAIMER  # noqa: E402

st.set_page_config(page_title="xray_ai: radiograph decision support", page_icon=":material/radiology:", layout="wide")
st.caption(DISCLAIMER)

navigation = st.navigation(
    [
        st.Page("pages/analyse.py", title="Analyse", icon=":material/search:", default=True),
        st.Page("pages/registry.py", title="Model registry", icon=":material/inventory_2:"),
        st.Page("pages/performance.py", title="Model performance", icon=":material/monitoring:"),
        st.Page("pages/about.py", title="About", icon=":material/info:"),
    ]
)
navigation.run()
