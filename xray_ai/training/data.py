"""The names the former `xray_ai.training.data` module held, now defined in:

- `xray_ai.training.datasets`: the MURA and class-folder readers (`read_mura`, `read_folders`);
- `xray_ai.training.splits`: patient-level split, leakage check, class weights, oversampling,
  body-part targets;
- `xray_ai.training.augment`: `AugmentConfig`;
- `xray_ai.training.pipeline`: the tf.data pipeline (`make_dataset`) and its throughput.

Kept so that `from xray_ai.training import data as datamod; datamod.X` goes on working while
its importers are repointed; new code imports from the modules above.
"""

from __future__ import annotations

# re-exported for importers outside training/ (to be repointed)
from xray_ai.training.augment import AugmentConfig
from xray_ai.training.datasets import COLUMNS, IMAGE_SUFFIXES, MASK_SUFFIX, MURA_SPLITS, read_folders, read_mura
from xray_ai.training.pipeline import LESION_PRESENCE, Throughput, make_dataset, measure_throughput
from xray_ai.training.splits import (assert_no_patient_leakage, body_part_targets, class_weights,
                                     oversample_minority, split_by_patient)

__all__ = [
    "COLUMNS",
    "IMAGE_SUFFIXES",
    "MURA_SPLITS",
    "MASK_SUFFIX",
    "LESION_PRESENCE",
    "read_mura",
    "read_folders",
    "split_by_patient",
    "assert_no_patient_leakage",
    "class_weights",
    "body_part_targets",
    "oversample_minority",
    "AugmentConfig",
    "make_dataset",
    "Throughput",
    "measure_throughput",
]
