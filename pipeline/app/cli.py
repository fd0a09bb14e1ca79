"""The `ddss` command. Each subcommand lives in pipeline/app/commands/<module>.py and defines
NAME, HELP, EXAMPLE, add_arguments(parser) and run(args) -> int.

Bad input (pipeline.errors.UserError), a sampler that diverges (SamplerDiverged), a Ray cluster
that refuses the auth token (AuthenticationError) and running out of memory (MemoryError) print
one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from pipeline.errors import UserError

DISTRIBUTION = "ddss-pipeline"  # pyproject.toml's project name

# Subcommand modules, in the order `ddss --help` lists them.
COMMANDS = [
    "demo",
    "train_teacher",
    "import_teacher",
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


# Commands that build models named by a config (a shared run directory's too): they take
# --allow-module PKG, which adds PKG to DDSS_ALLOW_MODULES (pipeline.models.build).
MODEL_COMMANDS = ("train-teacher", "import-teacher", "search", "distill", "evaluate", "sample", "submit")


class _AllowModule(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from pipeline.models.build import allow_modules

        try:
            allow_modules([values])
        except UserError as e:
            parser.error(str(e))
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])


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


def _auth_errors() -> tuple:
    """Ray's AuthenticationError, if Ray was imported (a command that reached a cluster has)."""
    exc = sys.modules.get("ray.exceptions")
    return (exc.AuthenticationError,) if exc is not None and hasattr(exc, "AuthenticationError") else ()


def _load_commands():
    mods = []
    for name in COMMANDS:
        if importlib.util.find_spec(f"pipeline.app.commands.{name}") is not None:
            mods.append(importlib.import_module(f"pipeline.app.commands.{name}"))
    return mods


def version() -> str:
    """The installed ddss-pipeline's version (its metadata), "unknown" when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (ddss-pipeline is not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddss",
        description="Few-step sampling for pretrained diffusion models: DDSS search, guided "
        "distillation and accelerated samplers, as Ray jobs (local Ray by default).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ddss {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_commands():
        p = sub.add_parser(
            mod.NAME, help=mod.HELP, description=textwrap.fill(mod.HELP, 88), epilog=f"example:\n  {mod.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        if mod.NAME in MODEL_COMMANDS:
            p.add_argument("--allow-module", action=_AllowModule, metavar="PKG",
                           help="build models (config model.import_path) from package PKG too, besides pipeline's: "
                                "only for code you trust (repeatable; also DDSS_ALLOW_MODULES=PKG,PKG)")
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
        auth = _auth_errors()
        if isinstance(e, auth):  # a missing or wrong Ray auth token
            first = (getattr(e, "message", "") or type(e).__name__).strip().splitlines()[0]
            e = UserError(f"the Ray cluster refused the request: {first} (give the cluster's token in RAY_AUTH_TOKEN "
                          "or in the file named by RAY_AUTH_TOKEN_PATH)")
        elif isinstance(e, MemoryError):  # a size no bound caught: its numbers in one line, no traceback
            e = UserError(f"out of memory: {e or 'MemoryError'}; ask for fewer samples, steps or a smaller batch")
        elif not isinstance(e, (UserError, *_sampler_errors())):
            raise
        print(f"ddss {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddss {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
