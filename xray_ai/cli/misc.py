"""The utility commands: `hash-password` (for the app's registry page) and `phantoms`.

Neither needs a model, so neither imports tensorflow; the phantoms generator is numpy and
OpenCV only, cheap enough to import while the parser is built.
"""

from __future__ import annotations

import argparse
import sys

from xray_ai.cli.common import EXIT_OK, BadInput, add_registry_arg

__all__ = ["add_hash_password_parser", "add_phantoms_parser", "cmd_hash_password", "cmd_phantoms"]


def add_hash_password_parser(sub: argparse._SubParsersAction) -> None:
    hp = sub.add_parser("hash-password", help="hash an administrator password for the app's registry page")
    hp.add_argument("--stdin", action="store_true", help="read the password from standard input (no prompt)")


def add_phantoms_parser(sub: argparse._SubParsersAction) -> None:
    ph = sub.add_parser("phantoms", help="write synthetic radiograph phantoms with lesion masks")
    add_registry_arg(ph)
    from xray_ai import phantoms  # numpy/OpenCV only: cheap to import

    phantoms.add_cli_arguments(ph)


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from xray_ai.auth import ENV_VAR, hash_password

    if args.stdin or not sys.stdin.isatty():  # piped in (or no terminal to prompt on): one line
        line = sys.stdin.readline()
        if not line:
            raise BadInput("no password given: standard input is empty (pipe one line in, e.g. "
                           "`printf '%s\\n' \"$PASSWORD\" | python -m xray_ai hash-password --stdin`)")
        password = line.rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("Administrator password: ")
            again = getpass.getpass("Again: ")
        except EOFError:
            raise BadInput("no password given (end of input at the prompt)") from None
        if again != password:
            raise BadInput("the two passwords differ")
    if not password.strip():
        raise BadInput("the password must not be empty")
    print(hash_password(password))
    print(f"Set {ENV_VAR} to this value, in single quotes in a shell (export {ENV_VAR}='pbkdf2_sha256$...': "
          "unquoted, the shell eats its $ signs), or admin_password_hash in .streamlit/secrets.toml.", file=sys.stderr)
    return EXIT_OK


def cmd_phantoms(args: argparse.Namespace) -> int:
    from xray_ai import phantoms

    return phantoms.run_cli(args)
