"""The `ddss` command. Each subcommand lives in pipeline/app/commands/<module>.py and defines
NAME, HELP, EXAMPLE, add_arguments(parser) and run(args) -> int.

Bad input (pipeline.errors.UserError) and a sampler that diverges (SamplerDiverged) print one
line and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

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


EXAMPLES = """examples:
  ddss demo --quick                                   the whole pipeline on digits, tiny budgets
  ddss train-teacher --run-dir runs/teacher-digits    train the digits teacher
  ddss search --teacher runs/teacher-digits --steps 5 --run-dir runs/ddss-k5
  ddss evaluate --teacher runs/teacher-digits --sampler ggdm:runs/ddss-k5/sampler --steps 5
  ddss sample --teacher runs/teacher-digits --sampler ddim --steps 10 --out ddim10.npz

`ddss COMMAND --help` shows each command's options and an example."""


MAX_MESSAGE = 500  # characters of an error line (library messages can quote whole specs)


def _one_line(e: BaseException) -> str:
    """The error as one line, at most MAX_MESSAGE characters."""
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _sampler_errors() -> tuple:
    """SamplerDiverged, if its module was imported (a command that raised it has imported it;
    the others need not import JAX for this)."""
    core = sys.modules.get("pipeline.samplers.registry")
    return (core.SamplerDiverged,) if core is not None else ()


def _load_commands():
    mods = []
    for name in COMMANDS:
        if importlib.util.find_spec(f"pipeline.app.commands.{name}") is not None:
            mods.append(importlib.import_module(f"pipeline.app.commands.{name}"))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddss",
        description="Few-step sampling for pretrained diffusion models: DDSS search, guided "
        "distillation and accelerated samplers, as Ray jobs (local Ray by default).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(
            mod.NAME, help=mod.HELP, description=textwrap.fill(mod.HELP, 88), epilog=f"example:\n  {mod.EXAMPLE}",
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
    except Exception as e:
        if not isinstance(e, (UserError, *_sampler_errors())):
            raise
        print(f"ddss {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddss {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
