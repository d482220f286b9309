"""`swd train-teacher`, `swd distill`, `swd export`: run a YAML recipe, or export a teacher checkpoint."""

from __future__ import annotations

from swd.config import dump_config, load_config
from swd.train.validation import check_distill_config, check_model_folder, check_output_folder, check_teacher_config


def _cmd_train_teacher(args) -> int:
    from swd.train.teacher import TeacherConfig, train_teacher

    cfg = load_config(TeacherConfig, args.config, args.set)
    # Checked here, before any folder or file is made; a dry run skips the checkpoint-vs-resume check.
    check_teacher_config(cfg, resume=None if args.dry_run else args.resume)
    if args.dry_run:
        print(dump_config(cfg), end="")
        return 0
    train_teacher(cfg, resume=args.resume)
    return 0


def add_run_arguments(p, example_config: str, example_override: str, dry_run_help: str) -> None:
    """The arguments every training command takes: recipe, resume, overrides, dry run."""
    p.add_argument("--config", required=True, help=f"YAML recipe, e.g. {example_config}")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field, e.g. --set {example_override} (repeatable)")
    p.add_argument("--dry-run", action="store_true", help=dry_run_help)


def register(subparsers) -> None:
    p = subparsers.add_parser("train-teacher", help="pretrain a small testbed teacher (rectified flow)")
    add_run_arguments(p, "configs/testbed/teacher-emoji.yaml", "train.steps=100",
                      "print the resolved config and exit")
    p.set_defaults(func=_cmd_train_teacher)
    register_distill(subparsers)
    register_export(subparsers)


def _cmd_distill(args) -> int:
    from swd.objectives import objective_class
    from swd.train.distill import DistillConfig, resolve_config, train_distill, training_schedule

    cfg = load_config(DistillConfig, args.config, args.set)
    check_distill_config(cfg, resume=None if args.dry_run else args.resume)
    if args.dry_run:
        from swd.train.memory import dry_run_report

        weights = objective_class(cfg.objective).loss_weights(cfg.losses)
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
    _check_teacher_folder(cfg)
    evaluation = None
    if cfg.train.eval_every > 0:
        from swd.eval.evaluate import training_evaluation

        evaluation = training_evaluation(cfg)
    train_distill(cfg, resume=args.resume, evaluation=evaluation)
    return 0


def _check_teacher_folder(cfg) -> None:
    """The teacher folder (or a pipeline's transformer/; either may be a Hub id) holds safetensors of
    the arch's class."""
    from swd.errors import SwdError
    from swd.models.configs import transformer_class
    from swd.train.distill import arch_spec

    if not cfg.teacher:
        raise SwdError("teacher: set it to the teacher's diffusers model folder (or a pipeline folder)")
    from swd.hub import model_folder

    spec = arch_spec(cfg)
    folder = model_folder(cfg.teacher, "teacher", sub="transformer")  # a local path or a Hub id
    if not (folder / "config.json").is_file() and (folder / "transformer").is_dir():
        folder = folder / "transformer"
    if spec is None:  # the testbed: an MMDiT or a UNet teacher, in pixel space
        check_model_folder(folder, "teacher")
    else:
        check_model_folder(folder, "teacher", transformer_class(spec.family).__name__, in_channels=None)


def register_distill(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distill a scale-wise few-step student (SwD) from a teacher")
    add_run_arguments(p, "configs/testbed/swd-emoji.yaml", "objective=mmd-only",
                      "print the resolved config (real archs: parameter counts, per-GPU memory estimate) and exit")
    p.set_defaults(func=_cmd_distill)


def _cmd_export(args) -> int:
    """Write one module of a training checkpoint as a diffusers model folder (<=15 MB shards)."""
    from pathlib import Path

    from swd.config import from_dict
    from swd.errors import SwdError
    from swd.models.testbed import build_testbed_model
    from swd.train.checkpoint import latest_checkpoint, load_module, verify_checkpoint
    from swd.train.teacher import TeacherConfig
    from swd.train.validation import read_json

    # diffusers' save_pretrained only logs (and writes nothing) when the target is a file.
    check_output_folder(args.out, "--out")
    path = Path(args.checkpoint)
    from_run = (path / "checkpoints").is_dir()
    if from_run:  # its newest checkpoint whose files match meta.json
        path = latest_checkpoint(path / "checkpoints") or path
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise SwdError(f"--checkpoint: {args.checkpoint} is neither a checkpoint folder nor a run folder with checkpoints")
    meta = read_json(meta_file, "--checkpoint")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or "step" not in meta:
        raise SwdError(f"--checkpoint: {meta_file} lacks the step and config of a training checkpoint")
    if "objective" in meta["config"]:
        raise SwdError(f"--checkpoint: {path} is a distillation checkpoint; its run folder's student/ is the "
                       f"exported model (export takes teacher checkpoints)")
    weights = path / f"{args.weights}.safetensors"
    if not weights.is_file():
        raise SwdError(f"--weights: {path} has no {args.weights!r} module")
    torn = None if from_run else verify_checkpoint(path)  # a checkpoint named directly: as resume would
    if torn is not None:
        raise SwdError(f"--checkpoint: {path} does not match its meta.json ({torn}); "
                       f"it was torn or edited after it was written")
    cfg = from_dict(TeacherConfig, meta["config"])
    model = build_testbed_model(cfg.model)  # MMDiT or UNet, by model.arch
    load_module(path, args.weights, model)  # the same one-line faults as a resume
    model.save_pretrained(args.out, max_shard_size="15MB", safe_serialization=True)
    print(f"{args.weights} weights of {path.name} (step {meta['step']}) written to {args.out}")
    return 0


def register_export(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a teacher checkpoint's model or EMA weights as a diffusers folder")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (its latest checkpoint)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="which copy to export")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export)
