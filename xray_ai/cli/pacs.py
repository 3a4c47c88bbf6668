"""`dicom-node`: the DICOM Storage SCP whose results go back into the study (README, "Connecting to PACS").

    python -m xray_ai dicom-node --ae-title XRAYAI --port 11112 --forward ORTHANC@pacs:4242 [--rules FILE]
    python -m xray_ai dicom-node --status [--json] [--spool DIR]

Everything heavier than argparse is imported inside the functions (the parser is built for
every command and must not load tensorflow).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import signal
import threading
from pathlib import Path

from xray_ai.cli.common import EXIT_OK, BadInput, add_registry_arg

__all__ = ["add_dicom_node_parser", "cmd_dicom_node", "default_spool", "format_status"]


def default_spool() -> Path:
    """$XRAY_AI_SPOOL, else $XDG_STATE_HOME/xray_ai/dicom-node (~/.local/state/...)."""
    if os.environ.get("XRAY_AI_SPOOL"):
        return Path(os.environ["XRAY_AI_SPOOL"])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "xray_ai" / "dicom-node"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def add_dicom_node_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dicom-node", help="DICOM Storage SCP: analyse CR/DX studies, C-STORE the results back")
    p.add_argument("--ae-title", help="the node's AE title (what senders call it), e.g. XRAYAI")
    p.add_argument("--port", type=int, help="the port to listen on, e.g. 11112")
    p.add_argument("--bind", default="0.0.0.0", help="the address to listen on (default 0.0.0.0: every interface)")
    p.add_argument("--forward", metavar="AET@HOST:PORT", help="where the results are C-STOREd (the PACS)")
    p.add_argument("--rules", type=Path, help="JSON routing rules (default: the built-in body-part rules)")
    p.add_argument("--spool", type=Path, default=None,
                   help="private folder of the queue and the received files (default: $XRAY_AI_SPOOL, else "
                   "~/.local/state/xray_ai/dicom-node)")
    p.add_argument("--quiet-seconds", type=_seconds, default=10.0,
                   help="a study closes this long after its last image (default 10)")
    p.add_argument("--retry-initial", type=_seconds, default=5.0,
                   help="first delay before a failed delivery is tried again, doubling (default 5)")
    p.add_argument("--retry-max", type=_seconds, default=300.0, help="longest delay between tries (default 300)")
    p.add_argument("--preload", action="store_true", help="load the models the rules name before the first study")
    p.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default=None,
                   help="as for predict (default auto, or $XRAY_AI_BACKEND)")
    p.add_argument("--status", action="store_true", help="list the queue (studies, deliveries) and exit")
    p.add_argument("--json", action="store_true", help="with --status: one JSON object")
    add_registry_arg(p)


def cmd_dicom_node(args: argparse.Namespace) -> int:
    spool = args.spool or default_spool()
    if args.status:
        return _print_status(spool, args.json)
    from xray_ai.pacs.delivery import parse_destination
    from xray_ai.pacs.rules import DEFAULT_RULES, RulesError, check_conditions, load_rules

    missing = [flag for flag, value in (("--ae-title", args.ae_title), ("--port", args.port),
                                        ("--forward", args.forward)) if value is None]
    if missing:
        raise BadInput(f"dicom-node needs {', '.join(missing)} (or --status to list the queue)")
    if not 0 < args.port < 65536:
        raise BadInput(f"--port {args.port}: outside 1..65535")
    if not 0 < len(args.ae_title.strip()) <= 16 or "\\" in args.ae_title or not args.ae_title.isascii():
        raise BadInput(f"--ae-title {args.ae_title!r}: 1-16 ASCII characters, no backslash")
    try:
        destination = parse_destination(args.forward)
        rules = load_rules(args.rules) if args.rules else DEFAULT_RULES
    except (ValueError, RulesError) as exc:
        raise BadInput(str(exc)) from None
    manager = _manager(args)
    try:
        check_conditions(rules, manager.registry.conditions, str(args.rules or "the default rules"))
    except RulesError as exc:
        raise BadInput(str(exc)) from None
    except ValueError as exc:  # RegistryError: an invalid registry
        raise BadInput(str(exc)) from None
    if not os.environ.get("XRAY_AI_LOG"):  # the node says what it receives and sends
        logging.getLogger("xray_ai.pacs").setLevel(logging.INFO)
    from xray_ai.pacs.node import DicomNode

    node = DicomNode(ae_title=args.ae_title.strip(), port=args.port, host=args.bind, destination=destination,
                     spool=spool, rules=rules, manager=manager, quiet_seconds=args.quiet_seconds,
                     retry_initial=args.retry_initial, retry_max=max(args.retry_max, args.retry_initial),
                     preload=sorted({r.condition for r in rules}) if args.preload else ())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
    except OSError as exc:  # the port is taken, or not ours to bind
        raise BadInput(f"--port {args.port}: cannot listen on {args.bind}:{args.port} ({exc.strerror or exc})") from None
    try:
        node.wait(stop)
    finally:
        node.stop()
    return EXIT_OK


def _manager(args: argparse.Namespace):
    from xray_ai.serving.manager import ModelManager

    try:
        return ModelManager(args.registry, backend=args.backend)
    except ValueError as exc:  # a bad $XRAY_AI_BACKEND
        raise BadInput(str(exc)) from None


def _print_status(spool: Path, as_json: bool) -> int:
    from xray_ai.pacs.queue import Queue

    if not (spool / "queue.sqlite").is_file():
        rows: list = []
    else:
        queue = Queue(spool)
        try:
            rows = queue.status()
        finally:
            queue.close()
    if as_json:
        print(json.dumps({"spool": str(spool), "studies": rows}, indent=2))
    else:
        print(format_status(rows, spool))
    return EXIT_OK


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return _dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def format_status(rows: list[dict], spool: Path) -> str:
    """The queue as text: one block per study, newest first."""
    if not rows:
        return f"queue at {spool}: empty"
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    lines = [f"queue at {spool}: {len(rows)} studies (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"]
    for row in rows:
        lines.append(f"#{row['id']} {row['state']:<12} study {row['study_uid']}  from {row['calling_ae'] or '-'}  "
                     f"{row['instances']} image(s) {row['modalities'] or ''}  last received {_when(row['received_last'])}")
        if row["condition"]:
            lines.append(f"    condition {row['condition']}")
        if row["results"]:
            lines.append(f"    results delivered {row['delivered']}/{row['results']}, attempts {row['attempts'] or 0}"
                         + (f", next try {_when(row['next_attempt'])}" if row["next_attempt"] else ""))
        if row["last_error"] and row["state"] == "delivering":
            lines.append(f"    last error: {row['last_error']}")
        if row["note"]:
            lines.append(f"    {row['note']}")
    return "\n".join(lines)
