"""A real Orthanc (Debian's `orthanc` package) for the DICOM node's tests: started on free
loopback ports with a generated configuration and its own storage, queried by its REST API.

Not a mock: the same server a site runs as its PACS. `Orthanc.start()` waits until the REST
API answers; `stop()` ends the process (its storage stays, so a restart keeps what it holds).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["Orthanc", "free_port", "ORTHANC_BINARY"]

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """One Orthanc server in `root` (configuration, storage, index, log)."""

    def __init__(self, root: Path, ae_title: str = "ORTHANC"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.http_port, self.dicom_port = free_port(), free_port()
        self.log = self.root / "orthanc.log"
        self.config = self.root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "xray_ai-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "Plugins": [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StableAge": 1,
            "StorageCompression": False,
        }, indent=2))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([ORTHANC_BINARY, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, payload) -> object:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def study_series(self, study_uid: str) -> list[dict]:
        """Every series Orthanc holds in the study, with MainDicomTags and Instances."""
        return self.post("/tools/find", {"Level": "Series", "Expand": True,
                                         "Query": {"StudyInstanceUID": study_uid}})

    def instance_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")
