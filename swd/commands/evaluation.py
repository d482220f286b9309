"""`swd eval ...`: train the project's evaluator and score a testbed model's samples.

    swd eval train-evaluator [--data emoji|shapes] [--steps N] [--out DIR]
    swd eval run --model DIR [--schedule model|PRESET|FILE|teacher] --prompts emoji-heldout|shapes --n N
                 [--seed S] [--out DIR] [--teacher-steps 28 --guidance 4.5]

`register(subparsers)` adds the `eval` group; each parser sets `func(args) -> int`.
"""

from __future__ import annotations

import json
import shlex
import sys

from swd.errors import SwdError
from swd.train.validation import (
    arg_finite,
    arg_int_at_least,
    arg_seed,
    check_device,
    check_fits_memory,
    check_input_file,
    check_model_folder,
    check_output_folder,
    read_json,
)


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="train the evaluator network; sample and score a testbed model",
                               description="`swd eval --model M ...` is short for `swd eval run --model M ...`.")
    sub = ev.add_subparsers(dest="eval_command", metavar="{train-evaluator,run}")
    sub.required = True

    tr = sub.add_parser("train-evaluator", help="train the image/text evaluator on a testbed training split")
    tr.add_argument("--data", default="emoji", choices=("emoji", "shapes"))
    tr.add_argument("--steps", type=arg_int_at_least(1), default=None, help="optimizer steps (default 750)")
    tr.add_argument("--batch-size", type=arg_int_at_least(1), default=None, help="images per step (default 128)")
    tr.add_argument("--lr", type=arg_finite(0.0, lo_open=True), default=None,
                    help="peak AdamW learning rate (default 2e-3)")
    tr.add_argument("--seed", type=arg_seed, default=0)
    tr.add_argument("--threads", type=arg_int_at_least(0), default=2, help="torch CPU threads (0: leave torch's default)")
    tr.add_argument("--out", default=None, help="output folder (default: the shipped swd/eval/weights/evaluator-DATA)")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=_cmd_train_evaluator)

    run = sub.add_parser("run", help="sample a model on held-out prompts and write metrics.json + a grid")
    run.add_argument("--model", required=True, help="a testbed model folder (save_pretrained; may hold schedule.yaml)")
    run.add_argument("--schedule", default="model",
                     help="'model' (the folder's schedule.yaml, default), a preset, a schedule file, or 'teacher'")
    run.add_argument("--prompts", default="emoji-heldout", choices=("emoji-heldout", "shapes"))
    run.add_argument("--n", type=int, default=64, help="images to sample")
    run.add_argument("--seed", type=arg_seed, default=0)
    run.add_argument("--batch-size", type=arg_int_at_least(1), default=32)
    run.add_argument("--teacher-steps", type=arg_int_at_least(1), default=28, help="Euler steps with --schedule teacher")
    run.add_argument("--guidance", type=arg_finite(0.0), default=4.5, help="CFG scale with --schedule teacher")
    run.add_argument("--text-tokens", type=arg_int_at_least(2), default=None,
                     help="MiniLM tokens the model was trained with (default: its run's config.yaml, else 16)")
    run.add_argument("--device", default="auto")
    run.add_argument("--threads", type=arg_int_at_least(0), default=2, help="torch CPU threads (0: leave torch's default)")
    run.add_argument("--evaluator", default=None, help="evaluator folder (default: the shipped one)")
    run.add_argument("--data-path", default=None, help="dataset file (default: the cache's)")
    run.add_argument("--out", default=None, help="folder for metrics.json and samples.png")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=_cmd_run)


def _set_threads(n: int) -> None:
    import torch

    if n < 0:
        raise SwdError(f"--threads: must be >= 0, got {n}")
    if n:
        torch.set_num_threads(n)


def _cmd_train_evaluator(args) -> int:
    from swd.eval.evaluator import TrainSettings, train_evaluator

    if args.out is not None:
        check_output_folder(args.out, "--out")
    _set_threads(args.threads)
    settings = TrainSettings(data=args.data, seed=args.seed, threads=args.threads)
    for field in ("steps", "batch_size", "lr"):
        if getattr(args, field) is not None:
            setattr(settings, field, getattr(args, field))
    command = "swd " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["eval"] else ""
    _, record = train_evaluator(settings, out=args.out, progress=not args.no_progress, command=command)
    print(json.dumps({k: record[k] for k in ("params", "train_seconds", "metrics")}, indent=2))
    return 0


def _cmd_run(args) -> int:
    from swd.eval.evaluate import evaluate_model
    from swd.eval.evaluator import load_evaluator

    # Everything a user gives is checked before the model loads and sampling starts.
    if args.n < 1:
        raise SwdError(f"--n: must be a positive number of images, got {args.n}")
    check_device(args.device, "--device")
    check_model_folder(args.model, "--model", what="saved model folder")
    if args.out is not None:
        check_output_folder(args.out, "--out")
    if args.data_path is not None:
        check_input_file(args.data_path, "--data-path")
    # The run keeps every sample in memory (float32, 64 px) for scoring.
    check_fits_memory(args.n * 3 * 64 * 64 * 4 * 4, "--n", f"{args.n} images kept for scoring")
    _set_threads(args.threads)
    if args.evaluator:
        _check_evaluator_folder(args.evaluator)
    evaluator = load_evaluator(args.evaluator) if args.evaluator else None
    result = evaluate_model(
        args.model, schedule=args.schedule, prompts=args.prompts, n=args.n, seed=args.seed,
        batch_size=args.batch_size, teacher_steps=args.teacher_steps, guidance=args.guidance,
        text_tokens=args.text_tokens, device=args.device, evaluator=evaluator, out=args.out,
        data_path=args.data_path, progress=not args.no_progress,
    )
    m = result["metrics"]
    keys = ("fd", "precision", "recall", "text_alignment", "text_alignment_real", "lap_swd")
    summary = {k: (round(m[k], 4) if isinstance(m.get(k), float) else m.get(k)) for k in keys}
    if "shapes" in m:
        summary["shapes_accuracy"] = round(m["shapes"]["accuracy"], 4)
    summary["sampling_seconds_per_image"] = round(result["sampling_seconds_per_image"], 4)
    summary["gflops_per_image"] = round(result["flops_per_image"] / 1e9, 3)
    print(json.dumps(summary))
    if args.out:
        print(f"wrote {args.out}/metrics.json and {args.out}/samples.png")
    return 0


def _check_evaluator_folder(folder: str) -> None:
    """load_evaluator reads config.json with no word of which file failed; read it here first."""
    from pathlib import Path

    config = Path(folder) / "config.json"
    if Path(folder).is_dir() and config.is_file():
        read_json(config, "--evaluator")
