"""The DICOM node (`python -m xray_ai dicom-node`) against real, independent components.

Orthanc (Debian's `orthanc`) is the PACS that receives the results, DCMTK's `storescu` and
`echoscu` are the modality; both are started by these tests on free loopback ports and
nothing is mocked. The node runs as its own process on the shipped registry and models, as a
site runs it, with a short quiet period (1 s) and back-off (0.5 s doubling to 2 s).

Stated times: results of one RG3 CR reach Orthanc within LATENCY_LIMIT seconds of
storescu's start, with the model already loaded (`--preload`); the measured time is printed.
Fault tests: Orthanc stopped while a study arrives (it is retried, and delivered once
Orthanc is back), the node killed with undelivered results (the restarted node delivers
them), a CT and a study no rule matches (logged, nothing forwarded). The rules, queue and
back-off are also tested on their own, without a network.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import REPO
from orthanc_server import ORTHANC_BINARY, Orthanc, free_port
from xray_ai.pacs.delivery import backoff, parse_destination
from xray_ai.pacs.queue import Queue
from xray_ai.pacs.rules import DEFAULT_RULES, RulesError, load_rules, pick_condition

LATENCY_LIMIT = 30.0  # seconds from storescu's start to three result series in Orthanc (warm model)
NODE_AET = "XRAYAI"
RULES = {"rules": [
    {"calling_ae": "CHESTROOM", "condition": "fracture"},  # any image sent from CHESTROOM
    {"body_part": ["EXTREMITY", "LOWER LEG"], "condition": "fracture"},
]}


def data_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available (pip install pydicom-data)")
    return Path(path)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def new_study(tmp_path: Path, name: str = "RG3_UNCR.dcm", **changes) -> tuple[Path, str]:
    """A copy of a pydicom-data image as a new study (new Study/Series/SOP Instance UIDs)."""
    ds = pydicom.dcmread(data_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / f"{ds.StudyInstanceUID}.dcm"
    ds.save_as(path)
    return path, ds.StudyInstanceUID


def storescu(node, path: Path, calling: str = "STORESCU") -> None:
    done = subprocess.run(["storescu", "-aet", calling, "-aec", NODE_AET, "127.0.0.1", str(node.port), str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def study_rows(node) -> dict[str, dict]:
    queue = Queue(node.spool)
    try:
        return {row["study_uid"]: row for row in queue.status()}
    finally:
        queue.close()


def result_series(orthanc: Orthanc, study_uid: str) -> list[dict]:
    try:
        return orthanc.study_series(study_uid)
    except OSError:  # Orthanc stopped by the test
        return []


class Node:
    """`python -m xray_ai dicom-node` as a process, logging to a file."""

    def __init__(self, root: Path, destination: str):
        self.root, self.destination = root, destination
        self.port = free_port()
        self.spool = root / "spool"
        self.rules = root / "rules.json"
        self.rules.write_text(json.dumps(RULES))
        self.log = root / "node.log"
        self.process: subprocess.Popen | None = None

    def start(self, *, preload: bool) -> None:
        command = [sys.executable, "-m", "xray_ai", "dicom-node", "--ae-title", NODE_AET, "--port", str(self.port),
                   "--bind", "127.0.0.1", "--forward", self.destination, "--rules", str(self.rules),
                   "--spool", str(self.spool), "--quiet-seconds", "1", "--retry-initial", "0.5", "--retry-max", "2",
                   "--registry", str(REPO / "model_registry.json")]
        env = {k: v for k, v in os.environ.items() if k != "XRAY_AI_LOG"}
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command + (["--preload"] if preload else []), cwd=REPO, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.echo, 120, "the node to answer C-ECHO", interval=0.3)
        if preload:
            wait_for(lambda: "model for fracture loaded" in self.text(), 240, "the node to load its model", 0.3)

    def echo(self, called: str = NODE_AET) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the node exited ({self.process.returncode}): {self.text()[-3000:]}")
        done = subprocess.run(["echoscu", "-aec", called, "127.0.0.1", str(self.port)], capture_output=True,
                              timeout=30)
        return done.returncode == 0

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            return self.process.wait(60)
        return self.process.returncode if self.process else 0


needs_tools = pytest.mark.skipif(
    not (Path(ORTHANC_BINARY).exists() and shutil.which("storescu") and shutil.which("echoscu")),
    reason="needs Debian's orthanc and dcmtk (bash .ci/install-browser.sh installs them)")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(orthanc, tmp_path_factory):
    running = Node(tmp_path_factory.mktemp("node"), f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}")
    running.start(preload=True)
    yield running
    running.stop()


# --- the whole path, against Orthanc -----------------------------------------------------


@needs_tools
def test_c_echo_answers_its_own_ae_title_only(node):
    assert node.echo()
    assert not node.echo("SOMEONEELSE")


@needs_tools
def test_rg3_results_reach_orthanc_in_the_same_study(node, orthanc, capsys):
    rg3 = data_file("RG3_UNCR.dcm")
    source = pydicom.dcmread(rg3, stop_before_pixels=True)
    started = time.monotonic()
    storescu(node, rg3)
    series = wait_for(lambda: len(s := result_series(orthanc, source.StudyInstanceUID)) >= 3 and s,
                      LATENCY_LIMIT, "three result series in Orthanc", interval=0.05)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\n[dicom-node] storescu -> SC, PDF and SR visible in Orthanc: {elapsed:.2f} s")
    time.sleep(0.5)
    series = result_series(orthanc, source.StudyInstanceUID)
    assert sorted(s["MainDicomTags"]["Modality"] for s in series) == ["DOC", "OT", "SR"]
    assert all("fracture-efficientnetlite0-fast" in s["MainDicomTags"]["SeriesDescription"] for s in series)
    assert source.SeriesInstanceUID not in {s["MainDicomTags"]["SeriesInstanceUID"] for s in series}
    for entry in series:
        (instance,) = entry["Instances"]
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance)))
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        if ds.Modality == "OT":
            assert ds.BurnedInAnnotation == "YES" and ds.Columns == source.Columns
        if ds.Modality == "SR":
            refs = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    for i in ds.ContentSequence[-1].ContentSequence[0].ContentSequence if i.ValueType == "IMAGE"}
            assert refs == {source.SOPInstanceUID}
    row = wait_for(lambda: study_rows(node).get(source.StudyInstanceUID, {}).get("state") == "delivered"
                   and study_rows(node)[source.StudyInstanceUID], 10, "the queue to mark the study delivered")
    assert row["condition"] == "fracture" and row["delivered"] == row["results"] == 3
    assert not any((node.spool / "incoming").iterdir()) and not any((node.spool / "results").iterdir())


@needs_tools
def test_a_study_sent_while_orthanc_is_down_arrives_once_it_is_back(node, orthanc, tmp_path):
    path, study_uid = new_study(tmp_path)
    orthanc.stop()
    try:
        storescu(node, path)
        row = wait_for(lambda: (r := study_rows(node).get(study_uid)) and r["state"] == "delivering"
                       and (r["attempts"] or 0) >= 2 and r, 60, "two failed delivery attempts")
        assert row["delivered"] == 0 and "could not be reached" in row["last_error"]
        assert len(list((node.spool / "incoming").rglob("*.dcm"))) == 1, "the received image stays in the spool"
        status = subprocess.run([sys.executable, "-m", "xray_ai", "dicom-node", "--status", "--spool",
                                 str(node.spool)], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert status.returncode == 0 and study_uid in status.stdout and "delivering" in status.stdout
        assert "results delivered 0/3" in status.stdout
    finally:
        orthanc.start()
    wait_for(lambda: len(result_series(orthanc, study_uid)) == 3, 30, "the results after Orthanc came back")
    wait_for(lambda: study_rows(node)[study_uid]["state"] == "delivered", 10, "the study marked delivered")
    assert not list((node.spool / "incoming").rglob("*.dcm"))


@needs_tools
def test_a_ct_is_not_analysed_nor_forwarded_and_is_logged(node, orthanc):
    ct = data_file("CT_small.dcm")
    study_uid = pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID
    storescu(node, ct)
    row = wait_for(lambda: study_rows(node).get(study_uid), 10, "the CT in the queue")
    assert row["state"] == "not_analysed" and "modality CT is not a projection radiograph" in row["note"]
    assert f"study {study_uid}" in node.text() and "not assessable: modality CT" in node.text()
    time.sleep(3)  # three quiet periods: anything to forward would be on its way
    assert orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}) == []
    assert not list((node.spool / "incoming").rglob("*.dcm"))


@needs_tools
def test_rules_route_by_body_part_and_calling_ae_title(node, orthanc, tmp_path):
    chest, chest_uid = new_study(tmp_path, "RG1_UNCR.dcm")  # BodyPartExamined CHEST: no rule
    storescu(node, chest)
    row = wait_for(lambda: (r := study_rows(node).get(chest_uid)) and r["state"] != "receiving" and r, 20,
                   "the chest study to close")
    assert row["state"] == "not_analysed" and "no rule matches (BodyPartExamined CHEST" in row["note"]
    assert "calling AE STORESCU" in row["note"] and f"study {chest_uid}: no rule matches" in node.text()
    again, again_uid = new_study(tmp_path, "RG1_UNCR.dcm")
    storescu(node, again, calling="CHESTROOM")  # the calling-AE rule reads it for fracture
    wait_for(lambda: len(result_series(orthanc, again_uid)) == 3, 60, "results of the CHESTROOM study")
    assert study_rows(node)[again_uid]["condition"] == "fracture"
    assert orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": chest_uid}}) == []


@needs_tools
def test_a_restarted_node_delivers_what_it_had_not(node, orthanc, tmp_path):
    """Runs last in the module: it kills the node's process and starts a new one on the same spool."""
    path, study_uid = new_study(tmp_path)
    orthanc.stop()
    try:
        storescu(node, path)
        wait_for(lambda: (r := study_rows(node).get(study_uid)) and (r["attempts"] or 0) >= 1, 60,
                 "a failed delivery attempt")
        node.kill()  # no clean shutdown: whatever is committed must be enough
    finally:
        orthanc.start()
    time.sleep(1)
    assert result_series(orthanc, study_uid) == []
    node.start(preload=False)
    wait_for(lambda: len(result_series(orthanc, study_uid)) == 3, 60, "the results after the node's restart")
    assert node.stop() == 0  # SIGTERM: a clean stop
    assert "stopped" in node.text()


# --- the parts on their own --------------------------------------------------------------


def test_default_rules_route_the_usual_body_parts():
    def route(body_part, view="AP", ae="ANY"):
        rule = pick_condition(DEFAULT_RULES, [(body_part, view)], ae)
        return rule.condition if rule else None

    assert route("CHEST", "PA") == "pneumonia" and route("KNEE") == "arthritis" and route("PELVIS") == "osteoporosis"
    assert route("WRIST") == route("Upper Extremity") == "msk_abnormality"
    assert route("EXTREMITY") == route("lower leg") == route("ANKLE") == "fracture"  # RG3 is EXTREMITY
    assert route("SKULL") is None and route(None) is None


def test_a_rule_needs_every_criterion_it_names(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"body_part": "KNEE", "view_position": ["PA"], "condition": "arthritis"},
                                          {"calling_ae": "WARD7", "condition": "fracture"}]}))
    rules = load_rules(path)
    assert pick_condition(rules, [("KNEE", "AP")], "X") is None
    assert pick_condition(rules, [("KNEE", "AP"), ("knee", "pa")], "X").condition == "arthritis"
    assert pick_condition(rules, [("SKULL", None)], "ward7").condition == "fracture"


@pytest.mark.parametrize("content, message", [
    ("{", "not a readable JSON rules file"),
    ('{"rules": []}', 'non-empty list "rules"'),
    ('{"rules": [{"body_part": "KNEE"}]}', 'rule 1: "condition" must be'),
    ('{"rules": [{"condition": "arthritis", "bodypart": "KNEE"}]}', "rule 1: unknown key(s) bodypart"),
    ('{"rules": [{"condition": "arthritis", "body_part": []}]}', '"body_part" must be a string'),
])
def test_a_bad_rules_file_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "bad_rules.json"
    path.write_text(content)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_destination_and_backoff():
    assert str(parse_destination("ORTHANC@pacs.example.org:4242")) == "ORTHANC@pacs.example.org:4242"
    assert parse_destination("A@[::1]:104").host == "::1"
    for bad in ("ORTHANC@host", "host:4242", "WAYTOOLONGAETITLE1@h:1", "A@h:70000"):
        with pytest.raises(ValueError, match="--forward"):
            parse_destination(bad)
    assert [backoff(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_the_queue_survives_a_restart_and_keeps_its_files_private(tmp_path):
    spool = tmp_path / "spool"
    queue = Queue(spool)
    study = queue.store_instance("1.2.3", "1.2.3.4", "CR", "MOD", b"DICM-bytes")
    queue.store_instance("1.2.3", "1.2.3.5", "CR", "MOD", b"more")
    assert queue.claim_closed_study(quiet_seconds=60) is None  # still receiving
    claimed = queue.claim_closed_study(quiet_seconds=0)
    assert claimed["id"] == study and claimed["state"] == "receiving"
    queue.close()  # a crash mid-analysis
    queue = Queue(spool)
    queue.resume()
    assert queue.claim_closed_study(quiet_seconds=0)["id"] == study, "analysed again after a restart"
    paths = queue.instance_paths(study)
    assert [p.read_bytes() for p in paths] == [b"DICM-bytes", b"more"]
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700 and stat.S_IMODE(paths[0].stat().st_mode) == 0o600
    result = queue.results_folder(study) / "r.dcm"
    result.write_bytes(b"result")
    queue.queue_deliveries(study, "fracture", [result])
    (due,) = queue.due_deliveries()
    queue.retry_later(due, "down", 60)
    assert queue.due_deliveries() == []
    queue.close()
    queue = Queue(spool)
    queue.resume()  # a restart tries pending deliveries at once
    (due,) = queue.due_deliveries()
    assert queue.delivered(due) and not paths[0].exists() and not result.exists()
    (row,) = queue.status()
    assert row["state"] == "delivered" and row["instances"] == 2 and row["delivered"] == 1
    queue.close()


def test_dicom_node_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    from xray_ai.cli import main

    assert main(["dicom-node", "--spool", str(tmp_path)]) == 2
    assert "needs --ae-title, --port, --forward" in capsys.readouterr().err
    assert main(["dicom-node", "--ae-title", "X", "--port", "1", "--forward", "nohost", "--spool", str(tmp_path)]) == 2
    assert "expected AET@HOST:PORT" in capsys.readouterr().err
    rules = tmp_path / "unknown_condition.json"
    rules.write_text('{"rules": [{"body_part": "KNEE", "condition": "gout"}]}')
    code = main(["dicom-node", "--ae-title", "X", "--port", str(free_port()), "--forward", "A@127.0.0.1:1",
                 "--rules", str(rules), "--spool", str(tmp_path), "--registry", str(REPO / "model_registry.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(rules) in err[0] and "'gout'" in err[0]
    assert main(["dicom-node", "--status", "--spool", str(tmp_path / "none")]) == 0
    assert "empty" in capsys.readouterr().out
