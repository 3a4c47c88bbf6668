"""About: intended use, limitations, where each shipped model's data came from, how to retrain."""

import streamlit as st

from ui.common import DISCLAIMER, get_manager, registry_or_stop

st.title("About xray_ai")
st.markdown(f"""
**Intended use.** A second look for clinicians reading radiographs: a probability for one
condition, a decision at the model's registered operating point, and a heatmap showing
which regions drove the model. {DISCLAIMER}

**Limitations.**
- Not a medical device and not validated on patient data.
- A model only knows what it was trained on. The shipped models' training data is listed
  below; models trained on synthetic phantoms carry no clinical meaning.
- A heatmap shows where the model looked, not where a finding is; it can be wrong while
  the probability is right, and the reverse.
- When a model file is missing or fails its checksum, an untrained **placeholder** serves
  and every screen and report says so.
""")

registry = registry_or_stop(get_manager())
st.subheader("Registered models and their data")
st.dataframe(
    [{"model id": m.id, "condition": registry.conditions[m.condition].name, "architecture": m.architecture,
      "trained on": m.trained_on.describe(), "intended use": m.intended_use} for m in registry.models.values()],
    hide_index=True,
)
st.subheader("Retraining")
st.markdown("""
Models are trained and registered with the command line, on a MURA-layout or class-folder dataset
(see the README): `python -m xray_ai train --protocol quick|intensive --condition ID --arch
densenet121|mobilenetv2|efficientnetlite0|compactcnn --data DIR --register`. Administrators then switch models on the
*Model registry* page or with `python -m xray_ai registry activate CONDITION MODEL_ID`.

The shipped models were trained on synthetic phantoms: MobileNetV2 from random weights (pneumonia,
osteoarthritis, osteoporosis, cardiomegaly, fitted on a GPU) and EfficientNet-Lite0 fine-tuned from
ImageNet weights (fracture; musculoskeletal abnormality, with a body-part head). `models/README.md`
has their figures and how each was made. With ImageNet weights at hand, train MobileNetV2 or
DenseNet121 with `--weights imagenet` and register them instead.
""")
