"""What predict-batch writes beside a study's row: overlays, the PDF report, DICOM results.

Each study gets names derived from its id (`safe_name`): `HEATMAPS/<study>/view<i>_<stem>.png`
(the overlay at the image's resolution, as `predict --heatmap` draws it),
`REPORTS/<study>.pdf` (as `predict --report`, without patient fields) and the DICOM objects
of `xray_ai.outputs.dicom_results.write_dicom_results` in `DICOM_OUT/<study>/`. A failure to
write one of them is recorded in the row's `output_error`; the row's result stands.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from xray_ai.batch.inputs import BatchInputError, Study
from xray_ai.result import AnalysisResult

__all__ = ["OutputDirs", "safe_name", "write_outputs", "check_dicom_writer"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class OutputDirs:
    """Where to write each kind of output (None: not written) and the heatmap intensity."""

    heatmaps: Path | None = None
    reports: Path | None = None
    dicom: Path | None = None
    intensity: float = 0.5

    @property
    def any(self) -> bool:
        return any(d is not None for d in (self.heatmaps, self.reports, self.dicom))


def safe_name(study_id: str) -> str:
    """A file name for a study id: unsafe characters (path separators...) replaced by `_`, and
    a short digest of the id added whenever that changed it, so that two ids never share a name."""
    name = _UNSAFE.sub("_", study_id).strip("._")[:96] or "study"
    if name != study_id:
        name += "-" + hashlib.sha1(study_id.encode("utf-8")).hexdigest()[:8]
    return name


def check_dicom_writer() -> None:
    """Raise BatchInputError when the DICOM results writer cannot be imported (--dicom-out
    is refused before any work rather than failing on every row)."""
    try:
        from xray_ai.outputs.dicom_results import write_dicom_results  # noqa: F401  (lazy: only for --dicom-out)
    except ImportError as exc:
        raise BatchInputError(f"--dicom-out: the DICOM results writer is not available ({exc})") from None


def write_outputs(result: AnalysisResult, study: Study, dirs: OutputDirs) -> dict[str, Any]:
    """Write the study's outputs; returns the row's `heatmaps`, `report`, `dicom`, `output_error`."""
    name = safe_name(study.study_id)
    written: dict[str, Any] = {"heatmaps": [], "report": None, "dicom": [], "output_error": None}
    errors = []
    try:
        if dirs.heatmaps is not None:
            written["heatmaps"] = _write_overlays(result, dirs.heatmaps / name, dirs.intensity)
    except (OSError, ValueError) as exc:
        errors.append(f"heatmaps: {type(exc).__name__}: {exc}")
    try:
        if dirs.reports is not None:
            from xray_ai.outputs.report import build_report

            pdf = build_report(result, include_patient=False, intensity=dirs.intensity)
            dirs.reports.mkdir(parents=True, exist_ok=True)
            path = dirs.reports / f"{name}.pdf"
            path.write_bytes(pdf)
            written["report"] = str(path)
    except (OSError, ValueError) as exc:
        errors.append(f"report: {type(exc).__name__}: {exc}")
    if dirs.dicom is not None:
        from xray_ai.outputs.dicom_results import write_dicom_results

        try:
            # report_pdf=None: the writer builds the report without patient fields and marks
            # it so; a PDF handed in would be marked as possibly printing them
            paths = write_dicom_results(result, dirs.dicom / name, report_pdf=None)
            written["dicom"] = [str(p) for p in paths]
        except (OSError, ValueError) as exc:  # e.g. views that did not come from DICOM
            errors.append(f"dicom: {type(exc).__name__}: {exc}")
    written["output_error"] = "; ".join(errors) or None
    return written


def _write_overlays(result: AnalysisResult, folder: Path, intensity: float) -> list[str]:
    from PIL import Image

    from xray_ai.outputs.view_overlay import view_overlay

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, view in enumerate(result.views, start=1):
        rgb = view_overlay(result, view, intensity=intensity)  # as `predict --heatmap` draws it
        stem = _UNSAFE.sub("_", PurePosixPath(view.image.name or "image").stem)[:64]
        path = folder / f"view{i}_{stem}.png"
        Image.fromarray(rgb).save(path)
        paths.append(str(path))
    return paths
