"""Explanations: the heatmap methods (their table in `base`, the `Explainer` in `methods`, one
module per family: `cam_family`, `gradients`, `lime`), the CAM arithmetic both backends share
(`cam_math`) and the layers it reads (`layers`), and how far to trust them (`scores`,
`evaluate`, and `choose`, which picks a model's default heatmap on its validation split)."""
