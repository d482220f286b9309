"""The `swd` command. Each command group lives beside the code it drives and registers itself.

A user mistake (SwdError) prints one line and exits with status 2; no traceback. So do other
failures a user can cause (I/O errors, corrupt files, too little memory: `expected_failure`);
any other exception is a bug: its traceback is shown, with a line asking to report it (status 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

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
    "swd.app",
]


def _cmd_schedules(args) -> int:
    from swd.schedules import CHECKPOINTS, PRESETS

    rows = []
    for name, sched in PRESETS.items():
        rows.append({
            **sched.to_dict(),
            "steps": sched.steps,
            "relative_cost": round(sched.relative_cost(patch_size=2), 4),
            "checkpoint": CHECKPOINTS.get(name),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<20} {'steps':>5}  {'scales (latent side)':<26} {'sigmas':<44} {'cost':>5}  checkpoint")
    for r in rows:
        # An image scale prints as its side (or hxw); a video scale as framesxhxw.
        scales = ", ".join(str(s[0]) if len(s) == 2 and s[0] == s[1] else "x".join(map(str, s)) for s in r["scales"])
        sigmas = ", ".join(f"{s:.4f}" for s in r["sigmas"])
        checkpoint = r["checkpoint"] or "-"
        print(f"{r['name']:<20} {r['steps']:>5}  {scales:<26} {sigmas:<44} {r['relative_cost']:>5.2f}  {checkpoint}")
    print("cost: image tokens of all steps over one full-resolution step's (patch 2; video: 1x2x2).")
    print("checkpoint: the authors' published student (Hub id) the preset samples (sdxl-4: sigma = DDPM timestep / 1000).")
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


def expected_failure(err: BaseException) -> str | None:
    """One line for a failure a user can cause (I/O, a corrupt or undecodable file, too little
    memory); None for anything else, which is a bug and keeps its traceback."""
    from swd.train.validation import is_out_of_memory

    if is_out_of_memory(err):
        detail = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err).__name__
        return f"out of memory ({detail}); ask for fewer images or a smaller batch"
    if isinstance(err, OSError):
        text = str(err).strip()
        reason = err.strerror or (text.splitlines()[0] if text else type(err).__name__)
        return f"{err.filename}: {reason}" if err.filename is not None else reason
    if isinstance(err, UnicodeDecodeError):
        return f"an input file is not UTF-8 text ({err.reason} at byte {err.start})"
    if isinstance(err, json.JSONDecodeError):
        return f"an input file is not valid JSON ({err.msg} at line {err.lineno})"
    safetensors_error = getattr(sys.modules.get("safetensors"), "SafetensorError", None)
    if safetensors_error is not None and isinstance(err, safetensors_error):
        return f"a .safetensors file is corrupt or truncated ({err})"
    yaml_error = getattr(sys.modules.get("yaml"), "YAMLError", None)
    if yaml_error is not None and isinstance(err, yaml_error):
        return f"an input file is not valid YAML ({str(err).splitlines()[0] if str(err) else 'parse error'})"
    return None


if __name__ == "__main__":
    sys.exit(main())
