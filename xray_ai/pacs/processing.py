"""One closed study of the DICOM node: rule, analysis, results, queued for delivery.

The rules (xray_ai.pacs.rules) pick the condition from the study's BodyPartExamined and
ViewPosition values and the sender's AE title; no match: the study is logged and not
analysed, and its files are dropped. Otherwise its images are analysed together as the
views of one study (`xray_ai.analysis.analyze`, at most MAX_VIEWS of them) with the node's
ModelManager, and the three kinds of result (`write_dicom_results`: Secondary Captures,
Encapsulated PDF, SR) are queued for the destination. A study whose analysis fails keeps its
files and says why in the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pydicom import dcmread

from xray_ai.pacs.queue import Queue
from xray_ai.pacs.rules import Rule, describe_rule, pick_condition

__all__ = ["analyse_study"]

log = logging.getLogger(__name__)


def analyse_study(study: dict[str, Any], queue: Queue, rules: Sequence[Rule], manager: Any) -> str:
    """Analyse one study claimed from the queue; returns the state it ends in."""
    from xray_ai.analysis import MAX_VIEWS

    study_id, study_uid, calling_ae = study["id"], study["study_uid"], study["calling_ae"]
    paths = queue.instance_paths(study_id)
    tags = []
    for path in paths:
        try:
            header = dcmread(path, stop_before_pixels=True)
            tags.append((header.get("BodyPartExamined"), header.get("ViewPosition")))
        except Exception as exc:  # noqa: BLE001 - a damaged file is named, the others still count
            log.warning("study %s: cannot read %s (%s)", study_uid, path.name, exc)
    rule = pick_condition(rules, tags, calling_ae)
    if rule is None:
        seen = "; ".join(sorted({f"BodyPartExamined {b or '(none)'}, ViewPosition {v or '(none)'}" for b, v in tags}))
        note = f"no rule matches ({seen or 'no readable image'}; calling AE {calling_ae}): not analysed"
        log.warning("study %s: %s", study_uid, note)
        queue.finish(study_id, "not_analysed", note, drop_files=True)
        return "not_analysed"
    log.info("study %s: %d image(s), rule %s", study_uid, len(paths), describe_rule(rule))
    try:
        return _analyse(study_id, study_uid, paths, rule, queue, manager, MAX_VIEWS)
    except Exception as exc:  # noqa: BLE001 - the node keeps serving; the study keeps its files
        note = f"analysis failed: {type(exc).__name__}: {exc}"
        log.exception("study %s: %s", study_uid, note)
        queue.finish(study_id, "failed", note, condition=rule.condition, drop_files=False)
        return "failed"


def _analyse(study_id: int, study_uid: str, paths, rule: Rule, queue: Queue, manager: Any, max_views: int) -> str:
    from xray_ai.analysis import analyze
    from xray_ai.images import ImageLoadError, load_image
    from xray_ai.outputs.dicom_results import write_dicom_results

    started = time.monotonic()
    images, problems = [], []
    for path in paths:
        try:
            images.append(load_image(path))
        except ImageLoadError as exc:
            problems.append(str(exc))
            log.warning("study %s: image not analysed: %s", study_uid, exc)
    if len(images) > max_views:
        log.warning("study %s: %d images; the first %d are analysed as its views", study_uid, len(images), max_views)
        images = images[:max_views]
    if not images:
        note = "no image could be loaded: " + "; ".join(problems)
        queue.finish(study_id, "failed", note, condition=rule.condition, drop_files=False)
        log.error("study %s: %s", study_uid, note)
        return "failed"
    result = analyze(images, rule.condition, manager=manager)
    written = write_dicom_results(result, queue.results_folder(study_id))
    said = f"{result.condition}: {result.decision} (probability {result.probability:.3f}, model {result.model_id})"
    if problems:
        said += f"; {len(problems)} image(s) not loaded"
    queue.queue_deliveries(study_id, rule.condition, written, note=said)
    log.info("study %s: %s; %d results queued (%.1f s)", study_uid, said, len(written), time.monotonic() - started)
    return "delivering"
