"""`swd train-teacher`: pretrain a testbed teacher from a YAML recipe."""

from __future__ import annotations

from swd.config import dump_config, load_config


def _cmd_train_teacher(args) -> int:
    from swd.train.teacher import TeacherConfig, train_teacher

    cfg = load_config(TeacherConfig, args.config, args.set)
    if args.dry_run:
        print(dump_config(cfg), end="")
        return 0
    train_teacher(cfg, resume=args.resume)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train-teacher", help="pretrain a small testbed teacher (rectified flow)")
    p.add_argument("--config", required=True, help="YAML recipe, e.g. configs/testbed/teacher-emoji.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_cmd_train_teacher)
