"""Training throughput through the project's own trainers, variants timed in alternation.

    OMP_NUM_THREADS=1 python scripts/train_throughput.py teacher --variants eager,compiled --repeats 2
    OMP_NUM_THREADS=1 python scripts/train_throughput.py distill --repeats 2

`teacher` runs `swd.train.teacher.train_teacher` on the shipped CPU recipe
(configs/testbed/teacher-shapes-unet-cpu.yaml) for a few steps per variant and reports images per
second; `distill` runs `swd.train.distill.train_distill` on the shipped shapes UNet preset
(configs/testbed/swd-shapes-unet-cpu.yaml) with the SwD objective on its scale-wise schedule and
the full-resolution DMD2 objective (`dmd2-full`, 4 x 32 px), and reports seconds per generator
step. Time is read from the trainers' own log.jsonl (`minutes` at each step), from the end of
the first full round-robin cycle over the scales (warm-up and compilation excluded) to the last
step, so every scale is counted equally. Variants run in turn within each repeat (A, B, A, B),
so load from other processes on a shared machine falls on all of them alike; the 1-minute load
average is recorded with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEACHER_RECIPE = REPO / "configs/testbed/teacher-shapes-unet-cpu.yaml"
DISTILL_RECIPE = REPO / "configs/testbed/swd-shapes-unet-cpu.yaml"
FULL_SCHEDULE = REPO / "configs/schedules/testbed32-full-4.yaml"

# Teacher variants: config overrides of the shipped recipe.
TEACHER_VARIANTS = {
    "eager": [],
    "compiled": ["train.compile=true"],
}
# Distillation variants: the objective on its own schedule.
DISTILL_VARIANTS = {
    "swd": ["objective=swd"],
    "dmd2-full": ["objective=dmd2-full", f"schedule={FULL_SCHEDULE}"],
}
QUIET = ["train.sample_every=1000000", "train.checkpoint_every=1000000", "train.log_every=1"]


def load_average() -> float:
    return os.getloadavg()[0]


def log_minutes(run_dir: Path) -> dict[int, float]:
    minutes = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "minutes" in record:
            minutes[record["step"]] = record["minutes"]
    return minutes


def timed_window(minutes: dict[int, float], first: int, last: int) -> float:
    """Seconds from the end of step `first` to the end of step `last`."""
    return (minutes[last] - minutes[first]) * 60.0


def run_teacher(overrides: list[str], steps: int, cycle: int, work: Path) -> dict:
    from swd.config import load_config
    from swd.train.teacher import TeacherConfig, train_teacher

    run_dir = work / f"teacher-{time.time_ns()}"
    cfg = load_config(TeacherConfig, TEACHER_RECIPE, [
        f"run_dir={run_dir}", f"train.steps={cycle + steps}", "train.max_minutes=0",
        "sample.num_prompts=1", "sample.steps=1", *QUIET, *overrides])
    load = load_average()
    train_teacher(cfg)
    seconds = timed_window(log_minutes(run_dir), cycle, cycle + steps)
    images = steps * cfg.train.batch_size
    return {"images_per_second": images / seconds, "seconds": seconds, "steps": steps, "load_1min": load}


def run_distill(overrides: list[str], steps: int, cycle: int, work: Path) -> dict:
    from swd.config import load_config
    from swd.train.distill import DistillConfig, train_distill

    run_dir = work / f"distill-{time.time_ns()}"
    cfg = load_config(DistillConfig, DISTILL_RECIPE, [
        f"run_dir={run_dir}", f"teacher={REPO / 'swd/weights/shapes-unet-teacher'}", f"train.steps={cycle + steps}",
        "train.eval_every=0", *QUIET, *overrides])
    load = load_average()
    train_distill(cfg)
    seconds = timed_window(log_minutes(run_dir), cycle, cycle + steps)
    return {"seconds_per_step": seconds / steps, "seconds": seconds, "steps": steps, "load_1min": load}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("teacher", "distill"))
    p.add_argument("--variants", default=None, help="comma-separated (teacher: eager,compiled; distill: swd,dmd2-full)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run (a multiple of the 4 scales)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    table = TEACHER_VARIANTS if args.what == "teacher" else DISTILL_VARIANTS
    names = args.variants.split(",") if args.variants else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {', '.join(table)}")
    run = run_teacher if args.what == "teacher" else run_distill
    import torch

    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name in names:
                results[name].append(run(table[name], args.steps, 4, Path(tmp)))
                print(name, results[name][-1], flush=True)
    key = "images_per_second" if args.what == "teacher" else "seconds_per_step"
    summary = {n: statistics.median(r[key] for r in results[n]) for n in names}
    base = names[0]
    report = {"what": args.what, "metric": key, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": results, "median": summary,
              "ratio_to_first": {n: summary[n] / summary[base] for n in names},
              # Interleaved pairs: run i of each variant against run i of the first.
              "paired_ratios": {n: [a[key] / b[key] for a, b in zip(results[n], results[base])] for n in names}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
