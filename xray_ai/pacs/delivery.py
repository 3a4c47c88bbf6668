"""Sending results to the destination: C-STORE (pynetdicom SCU), and when to try again.

One association per study carries all its pending results. A destination that refuses the
association, cannot be reached, or answers a C-STORE with a failure status leaves the
object pending; it is tried again after a delay that doubles from `initial` up to `maximum`
seconds (`backoff`), for as long as it takes: results are never dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["Destination", "parse_destination", "backoff", "send_files", "SendOutcome"]

log = logging.getLogger(__name__)
_AE_TITLE = re.compile(r"^[ -\[\]-~]{1,16}$")  # printable ASCII without backslash, at most 16
# C-STORE statuses that mean "stored" (PS3.4 B.2.3): success and the warnings.
_STORED = {0x0000, 0xB000, 0xB007, 0xB006}


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """'AET@HOST:PORT' -> Destination. Raises ValueError quoting the text."""
    match = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})", text.strip())
    if not match:
        raise ValueError(f"--forward {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@pacs.example.org:4242")
    aet, host, port = match["aet"].strip(), match["host"].strip("[]"), int(match["port"])
    if not _AE_TITLE.match(aet):
        raise ValueError(f"--forward {text!r}: AE title {aet!r} must be 1-16 printable ASCII characters, no backslash")
    if not 0 < port < 65536:
        raise ValueError(f"--forward {text!r}: port {port} is outside 1..65535")
    return Destination(aet, host, port)


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the `attempts`-th failed try (1, 2, ...): initial * 2^(n-1), capped."""
    return min(maximum, initial * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one file: stored, or the error that leaves it pending."""

    path: Path
    stored: bool
    error: str = ""


def send_files(paths: Sequence[Path], destination: Destination, calling_ae: str, *, timeout: float = 30.0,
               on_stored: Callable[[Path], None] | None = None) -> list[SendOutcome]:
    """C-STORE `paths` to `destination` on one association; an outcome per file.

    `on_stored` is called as each file is confirmed, so that a crash after it loses nothing
    and repeats nothing more than the one file in flight."""
    from pynetdicom import AE

    datasets = []
    outcomes: list[SendOutcome] = []
    for path in paths:
        try:
            datasets.append((path, dcmread(path)))
        except Exception as exc:  # noqa: BLE001 - a damaged result file is reported, not fatal
            outcomes.append(SendOutcome(path, False, f"cannot read {path.name}: {exc}"))
    if not datasets:
        return outcomes
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        # pynetdicom reports a refused or timed-out connection as an aborted association
        why = "rejected the association" if assoc.is_rejected else "could not be reached (no association)"
        return outcomes + [SendOutcome(p, False, f"{destination} {why}") for p, _ in datasets]
    try:
        for path, ds in datasets:
            if not assoc.is_established:
                outcomes.append(SendOutcome(path, False, f"{destination} closed the association"))
                continue
            try:
                status = assoc.send_c_store(ds)
            except Exception as exc:  # noqa: BLE001 - a network error mid-association
                outcomes.append(SendOutcome(path, False, f"C-STORE of {path.name} failed: {exc}"))
                continue
            code = int(status.Status) if status and "Status" in status else None
            if code in _STORED:
                outcomes.append(SendOutcome(path, True))
                if on_stored is not None:
                    on_stored(path)
            else:
                said = "no answer (timeout or aborted)" if code is None else f"status 0x{code:04X}"
                outcomes.append(SendOutcome(path, False, f"{destination} did not store {path.name}: {said}"))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes
