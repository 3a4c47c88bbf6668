"""Synthetic radiograph phantoms with lesion masks for the six conditions.

No labelled radiographs can be had on the project's machines, so it makes its own:
procedural anatomy drawn as path-length maps of soft tissue, cortical and medullary
bone and metal (:mod:`.limbs`, :mod:`.chest`), findings that edit the anatomy and
mark a pixel mask (:mod:`.findings`), a global pose (rotation, scale, shift), then a
Beer-Lambert projection with detector effects (:mod:`.render`); :mod:`.generator`
puts these together into `generate`. Writers for the MURA and class-folder layouts,
the gallery, the histogram-shortcut check and the CLI are in :mod:`.writers`. This
package module only re-exports the public names of those two.

Images are float32 H x W in [0, 1], bone bright (the library's one internal form);
masks are bool H x W, non-empty exactly when the phantom is abnormal.
"""

from .generator import (
    CONDITIONS,
    GENERATOR_VERSION,
    LABELS,
    MURA_PARTS,
    SUBTLE_SHARE,
    Phantom,
    body_parts,
    check_condition,
    generate,
    sample_severity,
    views_for,
)
from .writers import MANIFEST, add_cli_arguments, histogram_shortcut_auc, make_gallery, run_cli, write_dataset

__all__ = ["GENERATOR_VERSION", "CONDITIONS", "LABELS", "MURA_PARTS", "Phantom", "generate",
           "write_dataset", "make_gallery", "histogram_shortcut_auc", "add_cli_arguments", "run_cli",
           "SUBTLE_SHARE", "check_condition", "body_parts", "views_for", "sample_severity", "MANIFEST"]
