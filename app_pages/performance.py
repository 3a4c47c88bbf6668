"""Model performance: the tiers side by side (source 004's Table 1 shape), then each registered
model's stored evaluation (ROC, confusion matrix, calibration)."""

import pandas as pd
import streamlit as st

from ui.common import get_manager, registry_or_stop
from ui.text import plain
from xray_ai.explain.evaluate import read_heatmap_table
from xray_ai.registry.comparison import SPEED_FILE, read_speeds, tier_comparison

SCALARS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "kappa", "ece")

st.title("Model performance")
st.caption("Figures from the evaluation run that produced each model, on the split named; "
           "they describe that data only. Models trained on synthetic phantoms say nothing about patients.")
registry = registry_or_stop(get_manager())

st.subheader("Intensive and fast models per condition")
st.dataframe([row.as_table_row() for row in tier_comparison(registry, read_speeds(registry.base_dir / SPEED_FILE))],
             hide_index=True)
st.caption("Held-out test split of each model's own data (see its section below); pointing 15 px: the share of "
           "abnormal test images whose default heatmap peak lies within 15 px (at 224 px) of the lesion mask; "
           "ms per analysis: one warm analysis on ONNX Runtime, median, as benchmarks/tier_speed.py measured it "
           "on the machine of models/analysis_speed.json (2 cores). "
           "Each model's test figures are on its own renders of the split (the fast models' 224 px, the intensive "
           "models' 320 px phantoms: the same files and labels, not the same pixels), so compare tiers by "
           "'validation AUC vs fast': the intensive model's validation AUC minus the fast model's on the same 320 px images, "
           "with its paired-bootstrap 95% interval (models/compare_tiers.py); 'better' only where the interval lies "
           "above 0, otherwise 'not better', and the fast model, which answers sooner, is the one to make active. "
           "'none registered': no model of that tier for the condition. The active model is the one the "
           "administrator chose (README, \"Model registry\").")

for entry in registry.models.values():
    metrics = dict(entry.metrics)
    # registry text (ids, names, how a threshold was chosen) is shown as plain text: ui.text.plain
    with st.expander(plain(f"{entry.id} ({registry.conditions[entry.condition].name}, {entry.profile})"),
                     expanded=bool(metrics)):
        st.markdown(f"**Trained on:** {plain(entry.trained_on.describe())}  \n**Threshold:** {entry.threshold:.3f} "
                    f"({plain(entry.threshold_method)})"
                    + (f"  \n**Ensemble of:** {plain(', '.join(entry.members))}" if entry.is_ensemble else ""))
        if not metrics:
            st.info("No evaluation stored for this model.")
            continue
        st.markdown(f"**Split:** {plain(metrics['split'])}" + (f", n = {plain(metrics['n'])}" if "n" in metrics else ""))
        ci = metrics.get("ci95", {})
        st.dataframe(
            [{"metric": k, "value": metrics[k], "95% CI": " - ".join(f"{v:.3f}" for v in ci[k]) if k in ci else ""}
             for k in SCALARS if k in metrics],
            hide_index=True,
        )
        left, right = st.columns(2)
        if "roc" in metrics:
            left.markdown("ROC curve")
            left.line_chart(pd.DataFrame(metrics["roc"]), x="fpr", y="tpr")
        if "calibration" in metrics:
            right.markdown("Calibration (reliability)")
            cal = metrics["calibration"]
            right.line_chart(pd.DataFrame({"mean predicted": cal["mean_predicted"],
                                           "observed fraction positive": cal["fraction_positive"]}),
                             x="mean predicted", y="observed fraction positive")
        if "confusion_matrix" in metrics:
            cm = metrics["confusion_matrix"]
            st.markdown(f"Confusion matrix at threshold {entry.threshold:.3f}")
            st.table(pd.DataFrame({"predicted negative": [cm["tn"], cm["fn"]], "predicted positive": [cm["fp"], cm["tp"]]},
                                  index=["actual negative", "actual positive"]))
        if "per_body_part" in metrics:
            st.markdown("By body part")
            st.dataframe(pd.DataFrame(metrics["per_body_part"]).T)
        where = metrics.get("localisation")
        if where:
            tolerant = (f"; within {where['pointing_tolerance'] * 224:.0f} px at 224: "
                        f"{where['pointing_game_tolerant']:.2f}" if "pointing_game_tolerant" in where else "")
            st.markdown(f"**Grad-CAM pointing game** (heatmap peak inside the lesion mask, {plain(where['n'])} abnormal "
                        f"images): {where['pointing_game']:.2f}{tolerant}")
        measured = metrics.get("measurement")
        if measured:  # a measurement model: how well it measures, beside how well the rule decides
            agreement = measured["bland_altman"]
            st.markdown(
                f"**Cardiothoracic ratio** ({plain(measured['n'])} {plain(metrics['split'])} images; truth: the phantom "
                f"generator's CTR): mean absolute error {measured['ctr_mae']:.4f} "
                f"({measured['ctr_mae_ci95'][0]:.4f}-{measured['ctr_mae_ci95'][1]:.4f}); Bland-Altman bias "
                f"{agreement['bias']:+.4f}, 95% limits of agreement {agreement['limits_of_agreement'][0]:+.4f} to "
                f"{agreement['limits_of_agreement'][1]:+.4f}; Dice heart {measured['dice_heart']:.3f}, thorax "
                f"{measured['dice_thorax']:.3f}; decision rule {plain(measured['decision_rule'])}; "
                f"{plain(measured['n_not_measured'])} images without outlines")
        part = metrics.get("body_part")
        if part and part.get("accuracy") is not None:
            st.markdown(f"**Body-part head:** accuracy {part['accuracy']:.3f} on {plain(part['n'])} "
                        f"{plain(part['split'])} images ({plain(', '.join(part['classes']))})")
        # an ensemble has no file, so no heatmap-trust report beside one (its members have theirs)
        found = None if entry.is_ensemble else read_heatmap_table(entry.resolve_path(registry.base_dir))
        if found:
            explanations, rows = found
            st.markdown(f"Heatmap trust on the {plain(explanations.get('split', 'stored'))} split, up to "
                        f"{plain(explanations['n_images'])} abnormal images with lesion masks (pointing game, energy "
                        "inside and insertion: higher is better; deletion: lower is better). Default: "
                        + plain(entry.heatmap.label + ", chosen on the validation split" if entry.heatmap
                                else "last-layer Grad-CAM"))
            st.dataframe(pd.DataFrame(rows).set_index("method"))
