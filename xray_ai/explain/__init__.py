"""Explanations: heatmap methods (the method table in `base`), and how well they point at a lesion (`scores`)."""
