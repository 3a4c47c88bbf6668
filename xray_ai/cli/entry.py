"""`python -m xray_ai ...`: the parser, the command table and the exit statuses.

Each command group lives in its own module (`predict`, `registry`, `models`, `misc`); this
one assembles their parsers in the order `--help` lists them and turns what a command
raises into an exit status (README, "Command line"): 0 success; 2 bad input (unreadable,
unsupported or oversized image, unknown condition or model id, invalid registry), with one
stderr line naming the file and the reason and no traceback; 1 internal error (set
XRAY_AI_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Sequence

from xray_ai.cli.batch import add_predict_batch_parser, cmd_predict_batch
from xray_ai.cli.common import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, BadInput
from xray_ai.cli.misc import add_hash_password_parser, add_phantoms_parser, cmd_hash_password, cmd_phantoms
from xray_ai.cli.models import (
    add_export_onnx_parser,
    add_training_parsers,
    cmd_evaluate,
    cmd_explain_eval,
    cmd_export_onnx,
    cmd_fit_input_check,
    cmd_train,
)
from xray_ai.cli.pacs import add_dicom_node_parser, cmd_dicom_node
from xray_ai.cli.predict import add_predict_parser, cmd_predict
from xray_ai.cli.registry import add_registry_parser, cmd_registry

__all__ = ["main", "build_parser", "BadInput", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xray_ai",
        description="Decision support for radiographs: never a diagnosis; a clinician decides.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what loads and how long it takes, and let TensorFlow's own log lines through "
                             "(also XRAY_AI_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_predict_parser(sub)
    add_predict_batch_parser(sub)
    add_export_onnx_parser(sub)
    add_registry_parser(sub)
    add_training_parsers(sub)
    add_hash_password_parser(sub)
    add_phantoms_parser(sub)
    add_dicom_node_parser(sub)
    return parser


# Looked up at call time, so a test can swap a command in (tests/test_cli.py does).
_COMMANDS = {
    "predict": cmd_predict,
    "predict-batch": cmd_predict_batch,
    "registry": cmd_registry,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "explain-eval": cmd_explain_eval,
    "fit-input-check": cmd_fit_input_check,
    "export-onnx": cmd_export_onnx,
    "hash-password": cmd_hash_password,
    "phantoms": cmd_phantoms,
    "dicom-node": cmd_dicom_node,
}


def _quiet_libraries(verbose: bool) -> None:
    """Our warnings on stderr; TensorFlow's and absl's start-up lines (oneDNN, CPU features,
    "All log messages before absl::InitializeLog()") only when asked for. Set before
    TensorFlow is imported, which only a command that needs it does."""
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        level = os.environ.get("XRAY_AI_LOG", "INFO")
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ logs: errors only
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        level = os.environ.get("XRAY_AI_LOG", "WARNING")
        for name in ("tensorflow", "absl", "tf2onnx", "h5py"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the command, and return its exit status."""
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose or bool(os.environ.get("XRAY_AI_DEBUG")))
    try:
        return _COMMANDS[args.command](args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours
        # Python would complain again when it flushes stdout at exit; point it at devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    except Exception as exc:  # the CLI's last line of defence: one line, exit 1
        if os.environ.get("XRAY_AI_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (set XRAY_AI_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_INTERNAL
