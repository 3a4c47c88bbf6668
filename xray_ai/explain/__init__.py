"""Explanations: the heatmap methods (their table in `base`, the `Explainer` in `methods`, one
module per family: `cam_family`, `gradients`, `lime`), and how far to trust them (`scores`,
`evaluate`)."""
