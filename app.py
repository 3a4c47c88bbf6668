"""xray_ai web app: page config, the decision-support disclaimer, navigation.

Start with `streamlit run app.py`. Nothing heavy happens here: tensorflow is imported
only when the first analysis loads a model, so the first paint is immediate.
"""

import streamlit as st

from ui.common import DISCLAIMER

st.set_page_config(page_title="xray_ai: radiograph decision support", page_icon="🩻", layout="wide")
st.caption(DISCLAIMER)

navigation = st.navigation(
    [
        st.Page("pages/analyse.py", title="Analyse", icon="🔍", default=True),
        st.Page("pages/registry.py", title="Model registry", icon="🗂️"),
        st.Page("pages/performance.py", title="Model performance", icon="📈"),
        st.Page("pages/about.py", title="About", icon="ℹ️"),
    ]
)
navigation.run()
