"""`swd bench ...`: measurements of sampling cost.

Each bench subcommand is one entry of `bench_subcommands()`: a name, a help line and a function
that adds its arguments to its parser and sets `func(args) -> int` (`latency` lives in
`swd.commands.latency`); `register` builds the `bench` group from that table.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from swd.commands import latency

TEACHER_STEPS_DEFAULT = 28
FLOPS_HELP = "transformer FLOPs of one sampling run: SwD schedule vs the same steps at full resolution vs the teacher"


def bench_subcommands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]]:
    """name -> (help line, configure(parser)), in the order `swd bench --help` lists them."""
    return {"flops": (FLOPS_HELP, _configure_flops), "latency": (latency.HELP, latency.configure)}


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="measure sampling cost (FLOPs, latency)")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")  # parser class follows `bench`
    sub.required = True
    for name, (help_line, configure) in bench_subcommands().items():
        configure(sub.add_parser(name, help=help_line, description=help_line))


def _cmd_flops(args) -> int:
    from swd.errors import SwdError
    from swd.eval.flops import check_schedule_fits, format_report, sampling_flops
    from swd.models.configs import get_arch
    from swd.schedules import resolve_schedule

    # Validate names before the (slow) diffusers import and model build.
    arch = get_arch(args.arch)
    schedule = args.schedule or arch.default_schedule
    if not schedule:
        raise SwdError(f"--schedule: arch {arch.name!r} has no default schedule; pass a preset name or a file")
    schedule = resolve_schedule(schedule)
    check_schedule_fits(arch, schedule)  # builds the meta model (cached for the count)
    print(f"swd: counting transformer FLOPs of {arch.name} on the meta device "
          f"({len(set(schedule.scales))} latent sizes)...", file=sys.stderr, flush=True)
    report = sampling_flops(arch, schedule, teacher_steps=args.teacher_steps, cfg=args.teacher_cfg,
                            progress=True)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0


def _configure_flops(p: argparse.ArgumentParser) -> None:
    from swd.models.configs import ARCHS
    from swd.train.validation import arg_int_at_least

    p.add_argument("--arch", required=True, metavar="ARCH",
                   help=f"model architecture, built on the meta device: {', '.join(ARCHS)}")
    p.add_argument("--schedule", default=None, metavar="NAME|PATH",
                   help="scale-schedule preset or YAML/JSON file (default: the arch's default schedule)")
    p.add_argument("--teacher-steps", type=arg_int_at_least(1), default=None, metavar="N",
                   help=f"teacher sampling steps (default: the arch's, {TEACHER_STEPS_DEFAULT} for SD3.5, 50 for Wan2.1)")
    p.add_argument("--teacher-cfg", action=argparse.BooleanOptionalAction, default=None,
                   help="count the teacher with CFG, 2 forwards per step (default: from the arch: "
                        "SD3.5 and Wan2.1 yes, FLUX-dev no, its guidance is embedded)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_flops)
