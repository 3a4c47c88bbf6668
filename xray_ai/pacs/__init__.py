"""The DICOM node: images in by C-STORE, results back into the study by C-STORE.

`node` (DicomNode: the Storage SCP and its threads), `rules` (which condition a study is read
for), `queue` (the persistent SQLite queue and the private spool), `processing` (one closed
study: rule, analysis, results), `delivery` (C-STORE SCU and the retry back-off). The CLI is
`python -m xray_ai dicom-node` (xray_ai.cli.pacs); README, "Connecting to PACS".
"""

from xray_ai.pacs.delivery import Destination, parse_destination
from xray_ai.pacs.rules import DEFAULT_RULES, Rule, RulesError, load_rules, pick_condition

__all__ = ["DicomNode", "Destination", "parse_destination", "Rule", "RulesError", "DEFAULT_RULES", "load_rules",
           "pick_condition"]


def __getattr__(name: str):
    if name == "DicomNode":  # pynetdicom and the analysis load only when a node is made
        from xray_ai.pacs.node import DicomNode

        return DicomNode
    raise AttributeError(f"module 'xray_ai.pacs' has no attribute {name!r}")
