"""The `swd` command. Each command group lives beside the code it drives and registers itself.

A user mistake (SwdError) prints one line and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from swd.errors import SwdError

# Modules exposing `register(subparsers)`; each parser sets `func(args) -> int`.
COMMAND_MODULES = [
    "swd.cli",  # schedules (below)
    "swd.eval.bench_commands",
    "swd.data.commands",
    "swd.train.commands",
    "swd.demo",
    "swd.eval.eval_commands",
    "swd.eval.report",
]


def _cmd_schedules(args) -> int:
    from swd.schedules import PRESETS

    rows = []
    for name, sched in PRESETS.items():
        rows.append({
            **sched.to_dict(),
            "steps": sched.steps,
            "relative_cost": round(sched.relative_cost(patch_size=2), 4),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<20} {'steps':>5}  {'scales (latent side)':<26} {'sigmas':<44} {'cost':>5}")
    for r in rows:
        scales = ", ".join(str(h) if h == w else f"{h}x{w}" for h, w in r["scales"])
        sigmas = ", ".join(f"{s:.4f}" for s in r["sigmas"])
        print(f"{r['name']:<20} {r['steps']:>5}  {scales:<26} {sigmas:<44} {r['relative_cost']:>5.2f}")
    print("cost: image tokens of all steps over one full-resolution step's (patch 2).")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("schedules", help="list the scale-schedule presets")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_schedules)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2, like SwdError
        self.exit(2, f"swd: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="swd", description="Scale-wise distillation of diffusion models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = sys.modules[__name__] if name == __name__ or name == "swd.cli" else importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("swd"):
                continue  # a command group not written yet
            raise
        module.register(sub)
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
        print(f"swd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("swd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
