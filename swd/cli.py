"""The `swd` command: the parser of `swd.commands` (one module per command group), run with one
line per user error.

A user mistake (SwdError) prints one line and exits with status 2; no traceback. So do other
failures a user can cause (I/O errors, corrupt files, too little memory: `expected_failure`);
any other exception is a bug: its traceback is shown, with a line asking to report it (status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from swd.commands import COMMAND_GROUPS
from swd.errors import SwdError, expected_failure


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2, like SwdError
        self.exit(2, f"swd: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swd", description="Scale-wise distillation of diffusion models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


# Commands whose default sub-command may be left out: `swd eval --model M` is `swd eval run --model M`.
DEFAULT_SUBCOMMANDS = {"eval": "run"}


def with_default_subcommand(argv: list[str]) -> list[str]:
    if len(argv) >= 2 and argv[0] in DEFAULT_SUBCOMMANDS and argv[1].startswith("-") and argv[1] not in ("-h", "--help"):
        return [argv[0], DEFAULT_SUBCOMMANDS[argv[0]], *argv[1:]]
    return argv


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(with_default_subcommand(list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args.func(args) or 0)
    except SwdError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        _close_progress_bars()
        print("swd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as err:
        message = expected_failure(err)
        if message is not None:
            return _fail(message)
        _close_progress_bars()
        traceback.print_exc()
        print("swd: internal error: this is a bug in swd; please report it with the command and the "
              "traceback above", file=sys.stderr)
        return 1


def _fail(message: str) -> int:
    _close_progress_bars()
    print(f"swd: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message held
    return 2


def _close_progress_bars() -> None:
    """Close live tqdm bars first: closed later, by the garbage collector, they print after the error."""
    tqdm_cls = getattr(sys.modules.get("tqdm.std"), "tqdm", None)
    for bar in list(getattr(tqdm_cls, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
