"""The `ddss` command. Each subcommand lives in pipeline/commands/<module>.py and defines
NAME, HELP, EXAMPLE, add_arguments(parser) and run(args) -> int.

Bad input (pipeline.errors.UserError) prints one line and exits with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.errors import UserError

# Subcommand modules, in the order `ddss --help` lists them.
COMMANDS = [
    "demo",
    "train_teacher",
    "search",
    "distill",
    "evaluate",
    "sample",
    "submit",
    "jobs",
]


def _load_commands():
    mods = []
    for name in COMMANDS:
        if importlib.util.find_spec(f"pipeline.commands.{name}") is not None:
            mods.append(importlib.import_module(f"pipeline.commands.{name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddss",
        description="Few-step sampling for pretrained diffusion models: DDSS search, guided "
        "distillation and accelerated samplers, as Ray jobs (local Ray by default).",
        epilog="Example: ddss demo --quick     (each subcommand's --help shows an example)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(
            mod.NAME, help=mod.HELP, description=mod.HELP, epilog=f"Example: {mod.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"ddss {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddss {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
