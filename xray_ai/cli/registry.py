"""`registry list | validate | activate`: read, check and switch the registered models.

The registry and the model-file check are imported inside `cmd_registry`: the parser is
built for every command, `--help` included, and stays free of their imports.
"""

from __future__ import annotations

import argparse
import json

from xray_ai.cli.common import EXIT_OK, BadInput, add_registry_arg

__all__ = ["add_registry_parser", "cmd_registry"]


def add_registry_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("registry", help="list, validate or switch registered models")
    rsub = r.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    rl = rsub.add_parser("list", help="models and which is active")
    rl.add_argument("--json", action="store_true")
    add_registry_arg(rl)
    rv = rsub.add_parser("validate", help="check the registry and every model file's sha256")
    rv.add_argument("--strict", action="store_true", help="exit 2 when an active model's file fails its check")
    add_registry_arg(rv)
    ra = rsub.add_parser("activate", help="make MODEL_ID the active model of CONDITION")
    ra.add_argument("condition")
    ra.add_argument("model_id")
    ra.add_argument("--user", help="who makes the change (for the audit log; default: login name)")
    add_registry_arg(ra)


def cmd_registry(args: argparse.Namespace) -> int:
    from xray_ai.registry import RegistryError, edit_registry, load_registry
    from xray_ai.serving.verify import check_entry

    try:
        registry = load_registry(args.registry)
    except RegistryError as exc:
        raise BadInput(str(exc)) from None
    if args.registry_command == "list":
        active = set(registry.active_models.values())
        if args.json:
            print(json.dumps({"models": registry.to_dict()["models"], "active_models": dict(registry.active_models)}, indent=2))
            return EXIT_OK
        print(f"{'':2}{'model id':44} {'condition':16} {'arch':17} {'profile':9} {'version':10} threshold")
        for m in registry.models.values():
            mark = "* " if m.id in active else "  "
            print(f"{mark}{m.id:44} {m.condition:16} {m.architecture:17} {m.profile:9} {m.version:10} {m.threshold:.3f}")
            if m.is_ensemble:
                print(f"{'':4}mean of: {', '.join(m.members)}")
        print("* = active for its condition")
        return EXIT_OK
    if args.registry_command == "validate":
        failing_active = []
        for m in registry.models.values():
            problem = check_entry(m, registry)
            if problem and m.id in registry.active_models.values():
                failing_active.append(m.id)
            print(f"{m.id}: {'ok' if problem is None else problem + ' (placeholder would serve)'}")
        print(f"{registry.path}: schema valid; {len(registry.models)} models, {len(registry.active_models)} active")
        if args.strict and failing_active:
            raise BadInput(f"{registry.path}: active model(s) failing their file check: {', '.join(failing_active)}")
        return EXIT_OK
    if args.registry_command == "activate":
        try:  # read, switch and save under the registry's lock: concurrent activations serialise
            changes = edit_registry(registry.path, lambda current: current.with_active(args.condition, args.model_id),
                                    user=args.user, action="activate")
        except RegistryError as exc:
            message = str(exc)
            raise BadInput(message if message.startswith(str(registry.path)) else f"{registry.path}: {message}") from None
        print("\n".join(changes) if changes else f"{args.model_id} was already active for {args.condition}")
        return EXIT_OK
    raise AssertionError(args.registry_command)  # argparse lets only the three actions through
