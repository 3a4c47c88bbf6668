"""The DICOM node's persistent queue (SQLite) and its private spool folder.

Nothing received is lost: an image is acknowledged to its sender only once its file is on
disk (fsync) and its row committed; results are queued for delivery in the same transaction
that marks their study analysed; a delivery is marked done only after the destination
confirmed it. The received files and the results stay in the spool until every result of
their study is delivered, then both are deleted. A node that stops, however it stops,
resumes from the queue when it starts again.

Spool layout (the folder and its files are private to the node's user, 0700 / 0600):

    SPOOL/queue.sqlite          studies, their instances, pending and done deliveries
    SPOOL/incoming/<id>/        received images of study <id> (one file per SOP instance)
    SPOOL/results/<id>/         its Secondary Captures, Encapsulated PDF and SR

A study's life: receiving (images arriving; it closes after the quiet period) -> analysing
-> delivering -> delivered; or not_analysed (no rule matched, or not a CR/DX study: the
files are dropped, the row says why) or failed (the analysis failed: the files stay).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Queue", "Delivery", "STATES"]

STATES = ("receiving", "analysing", "delivering", "delivered", "not_analysed", "failed")
_UID = re.compile(r"^[0-9.]{1,64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    condition TEXT,
    note TEXT NOT NULL DEFAULT '',
    received_first REAL NOT NULL,
    received_last REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state, study_uid);
CREATE TABLE IF NOT EXISTS instances (
    study_id INTEGER NOT NULL REFERENCES studies (id),
    sop_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    path TEXT,
    received REAL NOT NULL,
    PRIMARY KEY (study_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies (id),
    path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    delivered REAL
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (state, next_attempt);
"""


@dataclass(frozen=True)
class Delivery:
    id: int
    study_id: int
    path: Path
    attempts: int


class Queue:
    """The queue of one spool folder; safe to share between the node's threads."""

    def __init__(self, spool: str | os.PathLike):
        self.spool = Path(spool)
        for folder in (self.spool, self.spool / "incoming", self.spool / "results"):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.spool / "queue.sqlite", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        os.chmod(self.spool / "queue.sqlite", 0o600)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- receiving -----------------------------------------------------------------------

    def store_instance(self, study_uid: str, sop_uid: str, modality: str, calling_ae: str, data: bytes) -> int:
        """Spool one received image and record it in its study's open entry (a new entry
        when the study has none receiving); returns the study's id. The file is synced to
        disk before the row is committed, and the row before the sender hears "stored"."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            study_id = self._open_study(study_uid, calling_ae, now)
            path = self._study_folder("incoming", study_id) / f"{_file_name(sop_uid)}.dcm"
            _write_private(path, data)
            self._db.execute("INSERT OR REPLACE INTO instances (study_id, sop_uid, modality, path, received) "
                             "VALUES (?, ?, ?, ?, ?)", (study_id, sop_uid, modality, str(path), now))
            self._db.execute("UPDATE studies SET received_last = ?, updated = ? WHERE id = ?", (now, now, study_id))
        return study_id

    def record_not_analysed(self, study_uid: str, sop_uid: str, modality: str, calling_ae: str, note: str) -> int:
        """Record an image that is not analysed (not CR or DX) without keeping it: its study
        is listed as not_analysed with `note`."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT id FROM studies WHERE study_uid = ? AND state = 'not_analysed' "
                                   "ORDER BY id DESC LIMIT 1", (study_uid,)).fetchone()
            if row is None:
                study_id = self._db.execute(
                    "INSERT INTO studies (study_uid, calling_ae, state, note, received_first, received_last, updated) "
                    "VALUES (?, ?, 'not_analysed', ?, ?, ?, ?)",
                    (study_uid, calling_ae, note, now, now, now)).lastrowid
            else:
                study_id = row["id"]
                self._db.execute("UPDATE studies SET received_last = ?, updated = ? WHERE id = ?", (now, now, study_id))
            self._db.execute("INSERT OR REPLACE INTO instances (study_id, sop_uid, modality, path, received) "
                             "VALUES (?, ?, ?, NULL, ?)", (study_id, sop_uid, modality, now))
        return study_id

    def _open_study(self, study_uid: str, calling_ae: str, now: float) -> int:
        row = self._db.execute("SELECT id FROM studies WHERE study_uid = ? AND state = 'receiving' "
                               "ORDER BY id DESC LIMIT 1", (study_uid,)).fetchone()
        if row is not None:
            return int(row["id"])
        return int(self._db.execute(
            "INSERT INTO studies (study_uid, calling_ae, state, received_first, received_last, updated) "
            "VALUES (?, ?, 'receiving', ?, ?, ?)", (study_uid, calling_ae, now, now, now)).lastrowid)

    # --- analysing -----------------------------------------------------------------------

    def resume(self) -> None:
        """After a restart: a study caught mid-analysis is analysed again, and pending
        deliveries are tried at once."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("UPDATE studies SET state = 'receiving', updated = ? WHERE state = 'analysing'", (now,))
            self._db.execute("UPDATE deliveries SET next_attempt = ? WHERE state = 'pending'", (now,))

    def claim_closed_study(self, quiet_seconds: float) -> dict[str, Any] | None:
        """The oldest receiving study with no image for `quiet_seconds`, now marked analysing."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT * FROM studies WHERE state = 'receiving' AND received_last <= ? "
                                   "ORDER BY received_last LIMIT 1", (time.time() - quiet_seconds,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE studies SET state = 'analysing', updated = ? WHERE id = ?",
                             (time.time(), row["id"]))
            return dict(row)

    def instance_paths(self, study_id: int) -> list[Path]:
        with self._lock:
            rows = self._db.execute("SELECT path FROM instances WHERE study_id = ? AND path IS NOT NULL "
                                    "ORDER BY received", (study_id,)).fetchall()
        return [Path(r["path"]) for r in rows]

    def results_folder(self, study_id: int) -> Path:
        with self._lock:
            return self._study_folder("results", study_id)

    def queue_deliveries(self, study_id: int, condition: str, paths: Sequence[Path], note: str = "") -> None:
        """The study is analysed: its results wait for delivery (one transaction)."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM deliveries WHERE study_id = ?", (study_id,))
            for path in paths:
                self._db.execute("INSERT INTO deliveries (study_id, path, next_attempt) VALUES (?, ?, ?)",
                                 (study_id, str(path), now))
            self._db.execute("UPDATE studies SET state = 'delivering', condition = ?, note = ?, updated = ? "
                             "WHERE id = ?", (condition, note, now, study_id))

    def finish(self, study_id: int, state: str, note: str, *, condition: str | None = None,
               drop_files: bool) -> None:
        """End a study as not_analysed or failed, with the reason; drop its files or keep them."""
        assert state in ("not_analysed", "failed"), state
        with self._lock, self._db:
            self._db.execute("UPDATE studies SET state = ?, note = ?, condition = ?, updated = ? WHERE id = ?",
                             (state, note, condition, time.time(), study_id))
        if drop_files:
            self._drop_files(study_id)

    # --- delivering ----------------------------------------------------------------------

    def due_deliveries(self) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, grouped by study (one association each)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM deliveries WHERE state = 'pending' AND next_attempt <= ? "
                                    "ORDER BY study_id, id", (time.time(),)).fetchall()
        return [Delivery(r["id"], r["study_id"], Path(r["path"]), r["attempts"]) for r in rows]

    def delivered(self, delivery: Delivery) -> bool:
        """Mark one delivery done; when it was its study's last, the study is delivered and
        its files are deleted. Returns whether the study is complete."""
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE deliveries SET state = 'delivered', delivered = ?, attempts = attempts + 1, "
                             "last_error = '' WHERE id = ?", (now, delivery.id))
            left = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE study_id = ? AND state = 'pending'",
                                    (delivery.study_id,)).fetchone()[0]
            if not left:
                self._db.execute("UPDATE studies SET state = 'delivered', updated = ? WHERE id = ?",
                                 (now, delivery.study_id))
        if not left:
            self._drop_files(delivery.study_id)
        return not left

    def retry_later(self, delivery: Delivery, error: str, delay: float) -> None:
        with self._lock, self._db:
            self._db.execute("UPDATE deliveries SET attempts = attempts + 1, next_attempt = ?, last_error = ? "
                             "WHERE id = ?", (time.time() + delay, error[:500], delivery.id))

    # --- status --------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every study, newest first, with its instance and delivery counts."""
        with self._lock:
            rows = self._db.execute("""
                SELECT s.*,
                  (SELECT COUNT(*) FROM instances i WHERE i.study_id = s.id) AS instances,
                  (SELECT GROUP_CONCAT(DISTINCT i.modality) FROM instances i WHERE i.study_id = s.id) AS modalities,
                  (SELECT COUNT(*) FROM deliveries d WHERE d.study_id = s.id) AS results,
                  (SELECT COUNT(*) FROM deliveries d WHERE d.study_id = s.id AND d.state = 'delivered') AS delivered,
                  (SELECT MAX(d.attempts) FROM deliveries d WHERE d.study_id = s.id) AS attempts,
                  (SELECT MIN(d.next_attempt) FROM deliveries d WHERE d.study_id = s.id AND d.state = 'pending')
                    AS next_attempt,
                  (SELECT d.last_error FROM deliveries d WHERE d.study_id = s.id AND d.last_error != ''
                    ORDER BY d.id LIMIT 1) AS last_error
                FROM studies s ORDER BY s.id DESC""").fetchall()
        return [dict(r) for r in rows]

    # --- files ---------------------------------------------------------------------------

    def _study_folder(self, kind: str, study_id: int) -> Path:
        folder = self.spool / kind / str(int(study_id))
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def _drop_files(self, study_id: int) -> None:
        for kind in ("incoming", "results"):
            shutil.rmtree(self.spool / kind / str(int(study_id)), ignore_errors=True)
        with self._lock, self._db:
            self._db.execute("UPDATE instances SET path = NULL WHERE study_id = ?", (study_id,))


def _file_name(sop_uid: str) -> str:
    """A SOP Instance UID as a file name; anything that is not a UID is hashed (a sender's
    value never becomes a path)."""
    if _UID.match(sop_uid):
        return sop_uid
    import hashlib

    return "x" + hashlib.sha256(sop_uid.encode("utf-8", "replace")).hexdigest()[:40]


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` (mode 0600) through a temporary file, synced, then renamed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
