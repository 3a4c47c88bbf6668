"""The rows predict-batch writes, and the writer that makes a run resumable.

A row is one study: `study`, `status` ("ok" or "error"), `error` (the file and the reason,
or null), `files`, `n_views`, then every field of `predict --json` (AnalysisResult.to_json,
views nested), then what was written beside it: `heatmaps` (paths), `report` (path or
null), `dicom` (paths), `output_error` (why an output could not be written, or null). An
error row carries the study, its files, the error and the model; the result fields are null.

JSONL (`.jsonl`) holds the rows as they are, one JSON object a line. CSV (`.csv`) flattens
them into `CSV_COLUMNS`: scalars as they are (booleans `true`/`false`, null empty), lists and
objects as JSON text, and each view field as one column `view_<field>` holding the JSON list
of that field over the views. A field the JSON contract gains later than this list lands in
`extra` (a JSON object), never lost. Line breaks inside a CSV value become spaces, so one line
is one row.

Resumable: the writer reads the rows already in the file and reports their studies as done.
Each row is appended with one write() on a file opened O_APPEND, so a crash leaves at most
one incomplete last line: the next run cuts it off and scores that study again. The file
is locked (flock) while a run writes it, so two runs cannot interleave rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from xray_ai.batch.inputs import Study

__all__ = ["CSV_COLUMNS", "OUTPUT_FORMATS", "RowWriter", "result_row", "error_row", "flatten_row", "read_rows"]

log = logging.getLogger(__name__)

OUTPUT_FORMATS = (".csv", ".jsonl")
_VIEW_FIELDS = ("file", "probability", "heatmap_flag", "input_check", "body_part", "assessable",
                "scope_reasons", "finding", "member_probabilities", "measurement")
_RESULT_FIELDS = ("condition", "condition_name", "model_id", "model_version", "architecture", "profile", "sha256",
                  "trained_on", "intended_use", "synthetic_training_data", "probability", "assessable",
                  "probability_reliable", "decision", "threshold", "threshold_method", "high_sensitivity_threshold",
                  "placeholder", "placeholder_reason", "heatmap_method", "target_layer", "contour_level", "backend",
                  "members", "kind", "measurements")
CSV_COLUMNS = ("study", "status", "error", "files", "n_views", *_RESULT_FIELDS,
               *(f"view_{f}" for f in _VIEW_FIELDS), "warnings", "created",
               "heatmaps", "report", "dicom", "output_error", "extra")
_OUTPUT_KEYS = ("heatmaps", "report", "dicom", "output_error")


def result_row(study: Study, result_json: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row of a scored study: its keys, the `predict --json` object, what was written beside it."""
    row: dict[str, Any] = {"study": study.study_id, "status": "ok", "error": None, "files": list(study.names),
                           "n_views": len(study.names)}
    row.update(result_json)
    row.update({"heatmaps": [], "report": None, "dicom": [], "output_error": None})
    row.update(outputs or {})
    return row


def error_row(study: Study, error: str, entry: Any) -> dict[str, Any]:
    """The row of a study that could not be scored: `error` names the file and the reason."""
    return {"study": study.study_id, "status": "error", "error": error, "files": list(study.names),
            "n_views": len(study.names), "condition": entry.condition, "model_id": entry.id,
            "model_version": entry.version, "probability": None, "assessable": None, "decision": None,
            "views": [], "warnings": [], "heatmaps": [], "report": None, "dicom": [], "output_error": None}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def flatten_row(row: dict[str, Any]) -> dict[str, str]:
    """A row as CSV cells keyed by CSV_COLUMNS (module docstring)."""
    flat = {c: "" for c in CSV_COLUMNS}
    extra = {}
    for key, value in row.items():
        if key == "views":
            for field in _VIEW_FIELDS:
                if value and any(field in v for v in value):
                    flat[f"view_{field}"] = _cell([v.get(field) for v in value])
            extra.update({f"view_{k}": [v.get(k) for v in value] for k in {k for v in value for k in v}
                          if k not in _VIEW_FIELDS})
        elif key in flat and key != "extra":
            flat[key] = _cell(value)
        else:
            extra[key] = value
    flat["extra"] = _cell(extra) if extra else ""
    return flat


def _encode_csv(values: list[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode("utf-8")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a finished output file: JSONL as dicts, CSV as dicts of cells."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(text)))


class RowWriter:
    """Appends rows to `path` (.csv or .jsonl), one atomic write per row; see the module docstring.

    Args:
        path: the output file; created with its parent folder if missing.
        model_id: the model this run scores with. Rows already in the file from another
            model are refused (ValueError), since a resumed file must hold one model's results.

    Attributes:
        done: the study ids whose rows are in the file already (a resumed run skips them).

    Raises:
        ValueError: unknown suffix, a file that is not one of ours (another CSV header, a
            line that is not JSON before the last one), rows of another model, or a file
            another run is writing now.
    """

    def __init__(self, path: str | Path, model_id: str):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"{self.path}: --out must end in .csv or .jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _lock(self._fd, self.path)
            self.done = self._resume(model_id)
        except BaseException:
            os.close(self._fd)
            raise

    def _resume(self, model_id: str) -> set[str]:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a crash can leave one incomplete last line
        lines = complete.decode("utf-8").splitlines()
        if self.format == ".csv" and lines:
            if next(csv.reader([lines[0]])) != list(CSV_COLUMNS):
                raise ValueError(f"{self.path}: not a predict-batch CSV of this version (its header differs); "
                                 "give another --out")
            lines = lines[1:]
        rows = []
        for i, line in enumerate(lines):
            try:
                row = (json.loads(line) if self.format == ".jsonl" else
                       dict(zip(CSV_COLUMNS, next(csv.reader([line])), strict=True)))
                if not isinstance(row, dict) or not row.get("study"):
                    raise ValueError("no study")
                rows.append(row)
            except (ValueError, StopIteration):
                if i < len(lines) - 1:
                    raise ValueError(f"{self.path}: line {i + 1 + (self.format == '.csv')} is not a predict-batch "
                                     "row; give another --out") from None
                complete = complete[: complete.rstrip(b"\n").rfind(b"\n") + 1]  # a torn row that ends in "\n"
        others = sorted({str(r.get("model_id")) for r in rows} - {model_id})
        if others:
            raise ValueError(f"{self.path} holds results of model {others[0]}; this run uses {model_id}: "
                             "give another --out")
        if len(complete) < len(data):
            log.warning("%s: dropped an incomplete last row (the previous run was interrupted)", self.path)
            os.ftruncate(self._fd, len(complete))
        if self.format == ".csv" and not complete:
            self._write(_encode_csv(list(CSV_COLUMNS)))
        return {str(r["study"]) for r in rows}

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (one write() call: a crash never leaves half of it before a later row)."""
        if self.format == ".jsonl":
            data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        else:
            flat = flatten_row(row)
            data = _encode_csv([flat[c] for c in CSV_COLUMNS])
        self._write(data)
        self.done.add(str(row["study"]))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a regular file takes it whole; the loop is for the exotic rest
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)  # closing releases the lock
            self._fd = -1

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(fd: int, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock, as before this existed
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise ValueError(f"{path}: another predict-batch run is writing this file") from None
