"""A decode budget for the native DICOM decoders that can run for seconds on a damaged stream.

CharLS (JPEG-LS, through pyjpegls) spends 4-6 s on some corrupt 64 x 64 streams before it
reports them, and OpenJPEG (JPEG 2000) was seen taking 51 s; native code cannot be
interrupted from Python, and it may not release the GIL. So those decodes run in a helper
process (one per xray_ai process, started on first use, about half a second), which is
killed when it takes longer than the budget: `DECODE_BUDGET_SECONDS` (2 s) per
`LARGE_FRAME_PIXELS` (4.2 million pixels) of the frame, so a valid large image keeps the
time it needs and a damaged small one is refused within about 2 s. The helper returns
exactly what `decoder.as_array` returns in process, so valid files decode identically; a
decoder that crashes the helper (a segmentation fault) is an ImageLoadError too, instead
of the end of the app.

The protocol is private: 8-byte length + pickle, both ways, over the helper's stdin and
stdout (the helper is our own child, so unpickling its answers is safe).
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["decode_with_budget", "budget_for", "shutdown", "DECODE_BUDGET_SECONDS"]

DECODE_BUDGET_SECONDS = 2.0
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the xray_ai package
_lock = threading.Lock()
_helper: subprocess.Popen | None = None


class _Timeout(Exception):
    pass


def budget_for(pixels: int) -> float:
    """Seconds a frame of `pixels` pixels may take to decode."""
    from xray_ai.images import common

    return DECODE_BUDGET_SECONDS * max(1.0, pixels / common.LARGE_FRAME_PIXELS)


def decode_with_budget(data: bytes, force: bool, tsyntax: str, seconds: float) -> tuple[Any, dict]:
    """(array, decoded info) of the file's first frame, as pydicom's decoder gives them,
    decoded in the helper within `seconds`.

    Raises:
        TimeoutError: the decoder took longer (the helper is killed; the next call starts a
            new one).
        RuntimeError: the decoder failed (its message) or the helper died.
    """
    global _helper
    with _lock:
        helper = _running_helper()
        try:
            _send(helper.stdin, (data, force, tsyntax))
            kind, *payload = _receive(helper.stdout, deadline=time.monotonic() + seconds)
        except _Timeout:
            _kill()
            raise TimeoutError(f"decoding took longer than {seconds:.1f} s") from None
        except (OSError, EOFError, pickle.UnpicklingError, struct.error) as exc:
            code = _kill()
            raise RuntimeError(f"the decoder crashed (helper process exit status {code}; {type(exc).__name__})") from None
    if kind == "ok":
        return payload[0], payload[1]
    raise RuntimeError(payload[0])


def shutdown() -> None:
    """Stop the helper (tests; it also ends with this process)."""
    with _lock:
        _kill()


def _running_helper() -> subprocess.Popen:
    global _helper
    if _helper is None or _helper.poll() is not None:
        code = f"import sys; sys.path.insert(0, {_ROOT!r}); from xray_ai.images.budget import _serve; _serve()"
        _helper = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, close_fds=True)
    return _helper


def _kill() -> int | None:
    global _helper
    helper, _helper = _helper, None
    if helper is None:
        return None
    try:
        helper.kill()
        return helper.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        for pipe in (helper.stdin, helper.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def _send(stream: Any, obj: Any) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(blob)) + blob)
    stream.flush()


def _read_exact(stream: Any, n: int, deadline: float | None) -> bytes:
    fd = stream.fileno()
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise _Timeout()
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("helper closed its output")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _receive(stream: Any, deadline: float | None = None) -> Any:
    size = struct.unpack("<Q", _read_exact(stream, 8, deadline))[0]
    return pickle.loads(_read_exact(stream, size, deadline))


def _serve() -> None:  # pragma: no cover - runs in the helper process
    """The helper's loop: read (file bytes, force, transfer syntax), answer ('ok', array,
    info) or ('error', message)."""
    import io
    import warnings

    import pydicom
    from pydicom.pixels import get_decoder

    warnings.simplefilter("ignore")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            data, force, tsyntax = _receive(stdin)
        except (EOFError, OSError):
            return
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=force)
            ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(tsyntax)
            arr, info = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=0)
            answer: tuple = ("ok", arr, {"photometric_interpretation": info.get("photometric_interpretation")})
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which refuses the file
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                return
            answer = ("error", " ".join(str(exc).split())[:500] or type(exc).__name__)
        _send(stdout, answer)
