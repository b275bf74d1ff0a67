"""``ptycho-fast`` command line: ``ptycho-fast <command> [options]``.

Each command lives in its own module, registered in :data:`COMMANDS` by module path;
a command module provides

* ``CLI_HELP`` (one line for the command list) and optionally ``CLI_DESCRIPTION``;
* ``add_cli_arguments(parser)`` to declare its options (each with help and default);
* ``cli_main(args) -> int`` to run it.

User errors (a bad file, a missing key, a bad option: :class:`ptycho_fast.data.UserError`,
argparse errors, ``OSError`` such as unreadable/unwritable paths or a full disk) are reported as one line
``ptycho-fast: error: ...`` on stderr with exit code 2 and no traceback. Anything else is
a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .runtime import package_version

__all__ = ["COMMANDS", "main", "build_parser", "EXIT_USER_ERROR"]

PROG = "ptycho-fast"
EXIT_USER_ERROR = 2

#: command name -> module implementing it (a new command: add its module here)
COMMANDS: dict[str, str] = {
    "simulate": "ptycho_fast.simulate",
    "train": "ptycho_fast.train",
    "infer": "ptycho_fast.infer",
    "refine": "ptycho_fast.refine_cli",
    "evaluate": "ptycho_fast.evaluate",
    "compare": "ptycho_fast.compare",
    "info": "ptycho_fast.info",
    "convert": "ptycho_fast.convert",
}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``ptycho-fast: error: ...`` (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Fast physics-informed ptychographic reconstruction.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.CLI_HELP,
                           description=getattr(module, "CLI_DESCRIPTION", module.CLI_HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_cli_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``ptycho-fast`` and ``python -m ptycho_fast``). Returns the exit code."""
    from .data.dataset import UserError
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args._module.cli_main(args) or 0)
    except _UsageError as exc:
        return _fail(str(exc))
    except UserError as exc:
        return _fail(str(exc))
    except OSError as exc:  # unreadable/unwritable paths, a full disk: not a bug in the code
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
