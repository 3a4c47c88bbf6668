"""What every command module of the CLI shares: the exit statuses, `BadInput`, `--registry`.

Kept apart from `xray_ai.cli.entry` so that the command modules can raise `BadInput` without
importing the module that imports them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "BadInput", "add_registry_arg"]

# README, "Command line": 0 success, 1 internal error, 2 bad input.
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """A user error: reported in one line, exit status 2."""


def add_registry_arg(parser: argparse.ArgumentParser) -> None:
    """`--registry PATH`, which every command takes (None: the default registry)."""
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="registry file (default: $XRAY_AI_REGISTRY, else model_registry.json at the repository root)",
    )
