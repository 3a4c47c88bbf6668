"""xray_ai web app: page config, the decision-support disclaimer, navigation.

Start with `streamlit run app.py`. Nothing heavy happens here: the shared ModelManager
(ui.common) loads the active models in a background thread, from their shipped ONNX
exports, so the first paint is immediate and the first analysis finds its model loaded.

The pages live in `app_pages/`, not `pages/`: with a folder named `pages` beside the main
script, Streamlit (1.67) decides per process that the app uses its old automatic page
navigation, and a deep link that is the server's first request (`/about` from a bookmark)
then runs that page without this script: no disclaimer, every page file listed.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # should a model load on TensorFlow: its banner off the log

import streamlit as st  # noqa: E402

from ui.common import DISCLAIMER  # noqa: E402

st.set_page_config(page_title="xray_ai: radiograph decision support", page_icon=":material/radiology:", layout="wide")
st.caption(DISCLAIMER)

navigation = st.navigation(
    [
        st.Page("app_pages/analyse.py", title="Analyse", icon=":material/search:", default=True),
        st.Page("app_pages/registry.py", title="Model registry", icon=":material/inventory_2:"),
        st.Page("app_pages/performance.py", title="Model performance", icon=":material/monitoring:"),
        st.Page("app_pages/about.py", title="About", icon=":material/info:"),
    ]
)
navigation.run()
