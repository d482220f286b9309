"""`swd sample` and `swd demo`: a testbed model's images to a PNG grid; teacher beside student.

Thin handlers: arguments are checked here, the work is `swd.demo`'s (load_with_schedule,
encode_prompts, generate).
"""

from __future__ import annotations

import time

import torch

from swd.demo import DEMO_PAIRS, DEMO_PROMPTS, encode_prompts, generate, load_with_schedule
from swd.errors import SwdError
from swd.train.validation import check_fits_memory, check_float, check_int, check_output_file, check_seed

# Small forwards pay for intra-op threading more than they gain (docs/RESULTS.md, "CPU latency"):
# runs of at most SMALL_BATCH images default to SMALL_BATCH_THREADS thread(s); --threads overrides.
SMALL_BATCH = 1
SMALL_BATCH_THREADS = 1


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample a testbed model (teacher or student) to a PNG grid")
    p.add_argument("--model", required=True, help="saved testbed model folder")
    p.add_argument("--prompt", action="append", required=True, help="text prompt (repeatable)")
    p.add_argument("--schedule", default=None,
                   help="'teacher' (28-step Euler + CFG), a preset, or a schedule file; default: the folder's schedule.yaml, else teacher")
    p.add_argument("--n", type=int, default=4, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=4.5, help="CFG scale of the teacher sampler")
    p.add_argument("--steps", type=int, default=28, help="teacher sampler steps")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile, one static graph per scale (compiled by a first run, timed apart)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch threads (default: {SMALL_BATCH_THREADS} for up to {SMALL_BATCH} images, else torch's)")
    p.set_defaults(func=_cmd_sample)

    d = subparsers.add_parser("demo", help="teacher (28 steps + CFG), the teacher undistilled and the SwD student, "
                                           "on the same prompts and seeds")
    d.add_argument("--pair", choices=[*DEMO_PAIRS, "all"], default=None,
                   help="shipped pair(s) to draw (default: all, one grid each: shapes to --out, emoji to "
                        "--out with -emoji before the suffix); not with --teacher/--student")
    d.add_argument("--teacher", default=None, help="a teacher folder of your own (with --student)")
    d.add_argument("--student", default=None, help="a distilled student folder (with schedule.yaml)")
    d.add_argument("--prompt", action="append", default=None,
                   help="prompt (repeatable); default: the pair's own (8 held-out shapes captions, 8 held-in "
                        "emoji captions)")
    d.add_argument("--n", type=int, default=8, help="prompts to use (at most the number given)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--guidance", type=float, default=4.5)
    d.add_argument("--out", default="demo.png")
    d.add_argument("--threads", type=int, default=None,
                   help=f"torch threads (default: {SMALL_BATCH_THREADS} for up to {SMALL_BATCH} prompts, else torch's)")
    d.set_defaults(func=_cmd_demo)


def _cmd_sample(args) -> int:
    from swd.images import save_grid

    # Checked in the command, not by argparse types, so that main() returns 2 in-process.
    check_int(args.n, "--n", 1)
    check_int(args.steps, "--steps", 1)
    check_seed(args.seed, "--seed")
    check_float(args.guidance, "--guidance", 0.0)  # argparse's float takes nan and inf
    check_output_file(args.out, "--out")
    model, saved = load_with_schedule(args.model)
    _check_grid_memory(len(args.prompt) * args.n, model.config.sample_size, "--n")
    schedule = args.schedule or ("saved" if saved is not None else "teacher")
    cond, uncond = encode_prompts([p for p in args.prompt for _ in range(args.n)])
    set_threads(args.threads, cond.batch_size)
    adapter, compile_note = None, ""
    if args.compile:
        from swd.models import adapter_for
        from swd.models.compiled import CompiledAdapter, compile_seconds_by_size

        # A first run compiles one graph per scale at this batch size; it is timed apart.
        adapter = CompiledAdapter(adapter_for(model), "cpu")
        generate(model, schedule, cond, uncond, args.seed, args.guidance, args.steps, saved, adapter=adapter)
        per_size = ", ".join(f"{k}: {v:.1f}" for k, v in compile_seconds_by_size(adapter).items())
        compile_note = f" (compiled first: {adapter.total_compile_seconds():.1f} s; {per_size})"
    start = time.perf_counter()
    images = generate(model, schedule, cond, uncond, args.seed, args.guidance, args.steps, saved, adapter=adapter)
    seconds = time.perf_counter() - start
    save_grid(images, args.out, ncol=args.n, labels=[p for p in args.prompt for _ in range(args.n)])
    print(f"{len(images)} images with schedule {schedule} in {seconds:.2f} s on {torch.get_num_threads()} "
          f"thread(s){compile_note} -> {args.out}")
    return 0


def set_threads(threads: int | None, batch: int) -> None:
    """torch's intra-op threads: as given, else SMALL_BATCH_THREADS for small batches (see the constant)."""
    if threads is not None:
        check_int(threads, "--threads", 1)
        torch.set_num_threads(threads)
    elif batch <= SMALL_BATCH:
        torch.set_num_threads(min(torch.get_num_threads(), SMALL_BATCH_THREADS))


def _cmd_demo(args) -> int:
    check_seed(args.seed, "--seed")
    check_float(args.guidance, "--guidance", 0.0)
    check_output_file(args.out, "--out")
    jobs = _demo_jobs(args)
    for *_, pool, _out in jobs:  # every grid's input is checked before the first is drawn
        if not 1 <= args.n <= len(pool):
            raise SwdError(f"--n: must be between 1 and {len(pool)} (the prompts given), got {args.n}")
    for name, teacher, student, pool, out in jobs:
        if name:
            print(f"[{name}]")
        _demo_pair(teacher, student, list(pool[: args.n]), out, args)
    return 0


def _demo_jobs(args) -> list[tuple[str, str, str, list[str], str]]:
    """(name, teacher, student, prompts, out) per grid: a pair of the user's, or the shipped pair(s)."""
    from pathlib import Path

    if args.teacher is not None or args.student is not None:
        if args.pair is not None:
            raise SwdError("--pair: draws the shipped pairs; leave it out when giving --teacher/--student")
        if args.teacher is None or args.student is None:
            raise SwdError("--teacher/--student: give both (or neither, for the shipped pairs)")
        return [("", args.teacher, args.student, args.prompt or DEMO_PROMPTS, args.out)]
    names = list(DEMO_PAIRS) if args.pair in (None, "all") else [args.pair]
    out = Path(args.out)
    jobs = []
    for name in names:
        teacher, student, prompts = DEMO_PAIRS[name]
        # The first pair keeps --out itself; the others add their name before the suffix.
        path = out if name == names[0] else out.with_name(f"{out.stem}-{name}{out.suffix}")
        jobs.append((name if len(names) > 1 else "", str(teacher), str(student), args.prompt or prompts, str(path)))
    return jobs


def _demo_pair(teacher_path: str, student_path: str, prompts: list[str], out: str, args) -> None:
    from swd.images import save_grid

    teacher, _ = load_with_schedule(teacher_path, "--teacher")
    student, schedule = load_with_schedule(student_path, "--student")
    if schedule is None:
        raise SwdError(f"--student: {student_path} has no schedule.yaml (a distilled student folder has one)")
    cond, uncond = encode_prompts(prompts)
    set_threads(args.threads, len(prompts))
    # One warm-up call each so the timings below measure sampling, not first-call set-up.
    generate(teacher, "teacher", _first(cond), _first(uncond), 0, teacher_steps=2)
    generate(teacher, "saved", _first(cond), uncond, 0, saved_schedule=schedule)
    generate(student, "saved", _first(cond), uncond, 0, saved_schedule=schedule)
    timings = {}
    start = time.perf_counter()
    teacher_images = generate(teacher, "teacher", cond, uncond, args.seed, args.guidance, 28)
    timings["teacher"] = time.perf_counter() - start
    # The teacher in the student's own scale-wise steps, undistilled: what distillation adds.
    start = time.perf_counter()
    plain_images = generate(teacher, "saved", cond, uncond, args.seed, saved_schedule=schedule)
    timings["undistilled"] = time.perf_counter() - start
    start = time.perf_counter()
    student_images = generate(student, "saved", cond, uncond, args.seed, saved_schedule=schedule)
    timings["student"] = time.perf_counter() - start
    grid = torch.cat([teacher_images, plain_images, student_images])
    scales = "->".join(str(s[0]) for s in schedule.scales)
    save_grid(grid, out, ncol=len(prompts), labels=prompts + [""] * (2 * len(prompts)),
              scale=max(2, 128 // grid.shape[-1]),  # 32 px images get 128 px cells, room for their captions
              row_titles=[f"teacher 28 steps CFG {args.guidance}", f"teacher, {schedule.steps} scale-wise steps, undistilled",
                          f"SwD student {schedule.steps} steps {scales} px"])
    from swd.eval.flops import model_sampling_flops

    n, size = len(prompts), teacher.config.sample_size
    tokens = cond.prompt_embeds.shape[1]
    gflops = {"teacher": model_sampling_flops(teacher, None, tokens, 28, args.guidance) / 1e9,
              "undistilled": model_sampling_flops(teacher, schedule, tokens) / 1e9,
              "student": model_sampling_flops(student, schedule, tokens) / 1e9}
    print(f"teacher (28 Euler steps, CFG {args.guidance}, {56 if args.guidance != 1 else 28} forwards at {size} px): "
          f"{timings['teacher']:.2f} s for {n} images ({timings['teacher'] / n * 1000:.0f} ms/image, "
          f"{gflops['teacher']:.2f} GFLOPs/image)")
    print(f"teacher undistilled in the student's {schedule.steps} steps ({scales} px): {timings['undistilled']:.2f} s "
          f"({gflops['undistilled']:.2f} GFLOPs/image)")
    print(f"SwD student ({schedule.steps} steps, {scales} px): {timings['student']:.2f} s for {n} images "
          f"({timings['student'] / n * 1000:.0f} ms/image, {gflops['student']:.2f} GFLOPs/image); "
          f"speed-up {timings['teacher'] / timings['student']:.1f}x")
    print(f"grid: {out} (rows: teacher, undistilled teacher in {schedule.steps} steps, SwD student)")


def _check_grid_memory(images: int, size: int, where: str) -> None:
    """All images are sampled in one batch and pasted into one grid: refuse sizes that cannot fit."""
    # float32 images, a few same-sized sampler buffers, and the 2x-upscaled RGB grid canvas
    per_image = 3 * size * size * 4 * 6 + 3 * (2 * size + 4) ** 2
    check_fits_memory(images * per_image, where, f"{images} images of {size} px in one grid")


def _first(cond):
    from swd.models import TextCondition

    return TextCondition(cond.prompt_embeds[:1], cond.pooled[:1])
