"""The DICOM node: a Storage SCP (and C-ECHO) whose results go back by C-STORE.

Three kinds of thread share one persistent queue (xray_ai.pacs.queue):

- pynetdicom's association threads receive images. A CR or DX image is spooled and
  acknowledged once it is on disk; an image of any other modality is acknowledged, logged
  as not assessable and not kept (its study is listed as not analysed).
- the analysis thread closes a study when no image of it has arrived for `quiet_seconds`,
  picks its condition by the rules, analyses it with the node's one ModelManager and queues
  its results (xray_ai.pacs.processing);
- the delivery thread C-STOREs pending results to the destination, one association per
  study, and retries what fails with a doubling delay (xray_ai.pacs.delivery).

The node accepts every storage SOP class pynetdicom knows in every transfer syntax (a
compressed image is spooled as it came) and answers only associations called with its own
AE title.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xray_ai.pacs.delivery import Destination, backoff, send_files
from xray_ai.pacs.processing import analyse_study
from xray_ai.pacs.queue import Queue
from xray_ai.pacs.rules import Rule

__all__ = ["DicomNode", "ANALYSED_MODALITIES"]

log = logging.getLogger(__name__)

ANALYSED_MODALITIES = ("CR", "DX")
_OUT_OF_RESOURCES = 0xA700  # C-STORE: the sender keeps the image and may send it again
_CANNOT_UNDERSTAND = 0xC000


class DicomNode:
    """A running node; `start()` serves in the background, `stop()` ends it.

    Args:
        ae_title: the node's AE title (what senders call, and what it calls itself).
        port: the port it listens on; `host` the address (default every interface).
        destination: where results are C-STOREd.
        spool: the private folder of the queue and the files.
        rules: the routing rules (xray_ai.pacs.rules).
        manager: the ModelManager every analysis shares.
        quiet_seconds: a study closes this long after its last image.
        retry_initial, retry_max: the delivery back-off, in seconds.
        preload: conditions whose models are loaded before the first study.
    """

    def __init__(self, *, ae_title: str, port: int, destination: Destination, spool: str | Path,
                 rules: Sequence[Rule], manager: Any, host: str = "0.0.0.0", quiet_seconds: float = 10.0,
                 retry_initial: float = 5.0, retry_max: float = 300.0, preload: Sequence[str] = (),
                 poll_seconds: float = 0.2):
        self.ae_title, self.host, self.port = ae_title, host, port
        self.destination = destination
        self.queue = Queue(spool)
        self.rules = tuple(rules)
        self.manager = manager
        self.quiet_seconds, self.retry_initial, self.retry_max = quiet_seconds, retry_initial, retry_max
        self.preload = tuple(preload)
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.queue.resume()
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        for name, target in (("analysis", self._analysis_loop), ("delivery", self._delivery_loop)):
            thread = threading.Thread(target=target, name=f"dicom-node-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("DICOM node %s listening on %s:%d; results to %s; spool %s", self.ae_title, self.host, self.port,
                 self.destination, self.queue.spool)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop receiving, let the current analysis or delivery finish, close the queue."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for thread in self._threads:
            thread.join(timeout)
        self.queue.close()
        log.info("DICOM node %s stopped", self.ae_title)

    def wait(self, stop: threading.Event) -> None:
        """Serve until `stop` is set (the CLI sets it on SIGTERM or Ctrl-C)."""
        while not stop.wait(0.5):
            if not all(t.is_alive() for t in self._threads):
                raise RuntimeError("a worker thread of the DICOM node died; see the log")

    # --- receiving -----------------------------------------------------------------------

    def _on_echo(self, event) -> int:
        log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return 0x0000

    def _on_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            modality = str(ds.get("Modality") or "").strip().upper()
            study_uid = str(ds.get("StudyInstanceUID") or "").strip()
            sop_uid = str(ds.get("SOPInstanceUID") or event.request.AffectedSOPInstanceUID or "").strip()
        except Exception as exc:  # noqa: BLE001 - a data set the sender sent damaged
            log.warning("C-STORE from %s refused: cannot decode the data set (%s)", calling, exc)
            return _CANNOT_UNDERSTAND
        if not study_uid or not sop_uid:
            log.warning("C-STORE from %s refused: no StudyInstanceUID or SOPInstanceUID", calling)
            return _CANNOT_UNDERSTAND
        if modality not in ANALYSED_MODALITIES:
            note = (f"not assessable: modality {modality or '(none)'} is not a projection radiograph "
                    f"(the node analyses {' and '.join(ANALYSED_MODALITIES)}); not analysed")
            log.warning("study %s, image %s from %s: %s", study_uid, sop_uid, calling, note)
            try:
                self.queue.record_not_analysed(study_uid, sop_uid, modality, calling, note)
            except Exception:  # noqa: BLE001 - only the listing is lost; the log has it
                log.exception("could not record study %s in the queue", study_uid)
            return 0x0000
        try:
            self.queue.store_instance(study_uid, sop_uid, modality, calling, event.encoded_dataset())
        except Exception:  # noqa: BLE001 - disk full, database locked...: the sender keeps it
            log.exception("study %s, image %s: could not spool it; the sender is told to try again",
                          study_uid, sop_uid)
            return _OUT_OF_RESOURCES
        log.info("study %s: received %s image %s from %s", study_uid, modality, sop_uid, calling)
        return 0x0000

    # --- analysing -----------------------------------------------------------------------

    def _analysis_loop(self) -> None:
        for condition in self.preload:
            if self._stop.is_set():
                return
            try:
                started = time.monotonic()
                loaded = self.manager.get(condition=condition)
                log.info("model for %s loaded: %s (%.1f s)", condition, loaded.entry.id, time.monotonic() - started)
            except Exception:  # noqa: BLE001 - the study will say it when it needs the model
                log.exception("could not preload the model for %s", condition)
        while not self._stop.is_set():
            study = self.queue.claim_closed_study(self.quiet_seconds)
            if study is None:
                self._stop.wait(self.poll_seconds)
                continue
            analyse_study(study, self.queue, self.rules, self.manager)

    # --- delivering ----------------------------------------------------------------------

    def _delivery_loop(self) -> None:
        while not self._stop.is_set():
            due = self.queue.due_deliveries()
            by_study = defaultdict(list)
            for delivery in due:
                by_study[delivery.study_id].append(delivery)
            for study_id, deliveries in by_study.items():
                if self._stop.is_set():
                    return
                self._deliver(study_id, deliveries)
            self._stop.wait(self.poll_seconds)

    def _deliver(self, study_id: int, deliveries) -> None:
        by_path = {d.path: d for d in deliveries}

        def stored(path: Path) -> None:
            if self.queue.delivered(by_path[path]):
                log.info("study %d: all results delivered to %s; its spooled files are deleted", study_id,
                         self.destination)

        try:
            outcomes = send_files(list(by_path), self.destination, self.ae_title, on_stored=stored)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the results stay pending
            errors = {path: f"{type(exc).__name__}: {exc}" for path in by_path}
        else:
            errors = {o.path: o.error for o in outcomes if not o.stored}
        for path, error in errors.items():
            delivery = by_path[path]
            delay = backoff(delivery.attempts + 1, self.retry_initial, self.retry_max)
            self.queue.retry_later(delivery, error, delay)
        if errors:
            first = next(iter(errors.values()))
            log.warning("study %d: %d result(s) not delivered (%s); next try in %.0f s", study_id, len(errors),
                        first, backoff(min(d.attempts for d in deliveries) + 1, self.retry_initial,
                                       self.retry_max))
