"""xray_ai web app: page config, the decision-support disclaimer, navigation.

Start with `streamlit run app.py`. Nothing heavy happens here: the shared ModelManager
(ui.common) loads the active models in a background thread, from their shipped ONNX
exports, so the first paint is immediate and the first analysis finds its model loaded.

The pages live in `app_pages/`, not `pages/`: with a folder named `pages` beside the main
script, Streamlit (1.67) decides per process that the app uses its old automatic page
navigation, and a deep link that is the server's first request (`/about` from a bookmark)
then runs that page without this script: no disclaimer, every page file listed.

The page icon is a PNG of the repository (ui/favicon.png), which Streamlit serves from its
own server (/media/...). With a `:material/...:` page icon, Streamlit's frontend points the
favicon at Google's CDN (fonts.gstatic.com): no favicon and a console error on a hospital
network without internet access, and a request leaving that network. The navigation's
`:material/...:` icons are drawn with the Material Symbols font that Streamlit bundles, so
they stay. tests/test_browser.py checks that no request leaves the app's server.
"""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # should a model load on TensorFlow: its banner off the log

import streamlit as st  # noqa: E402

from ui.common import DISCLAIMER  # noqa: E402

# A white bone on a dark blue rounded square, 128x128: drawn once with Pillow (at 8x, with
# ImageDraw's rounded_rectangle, rectangle and ellipses, the bone rotated 45 degrees, then
# downsampled with LANCZOS), legible at 16 px.
PAGE_ICON = Path(__file__).resolve().parent / "ui" / "favicon.png"

st.set_page_config(page_title="xray_ai: radiograph decision support", page_icon=PAGE_ICON, layout="wide")
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
