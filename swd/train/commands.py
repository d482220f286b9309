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
    register_distill(subparsers)


def _cmd_distill(args) -> int:
    from swd.train.distill import DistillConfig, objective_weights, resolve_config, train_distill, training_schedule

    cfg = load_config(DistillConfig, args.config, args.set)
    if args.dry_run:
        from swd.train.memory import dry_run_report

        weights = objective_weights(cfg)
        resolved = resolve_config(cfg)
        schedule = training_schedule(resolved)
        print(dump_config(resolved), end="")
        print(f"# losses on: {', '.join(k for k, w in weights.items() if w > 0)}; "
              f"schedule {schedule.name}: scales {[list(s) for s in schedule.scales]}, sigmas "
              f"{[round(s, 4) for s in schedule.sigmas]}")
        report = dry_run_report(cfg)  # real-size archs: parameter counts and memory, on the meta device
        if report is not None:
            print(report[0])
        elif resolved.losses.feature_block is None:
            print("# feature block: the middle of the teacher (depth // 2), known once its weights load")
        return 0
    train_distill(cfg, resume=args.resume)
    return 0


def register_distill(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distill a scale-wise few-step student (SwD) from a teacher")
    p.add_argument("--config", required=True, help="YAML recipe, e.g. configs/testbed/swd-emoji.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set objective=mmd-only (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config (real archs: parameter counts, per-GPU memory estimate) and exit")
    p.set_defaults(func=_cmd_distill)
