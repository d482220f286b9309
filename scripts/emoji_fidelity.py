"""Distillation fidelity on the emoji testbed: does a student move towards the teacher's own samples?

For the teacher (28 Euler steps + CFG 4.5), its undistilled 4-step scale-wise sampler and each
student given as label=folder: FD against the real held-out images and against the teacher's own
samples of the same prompts and seed (in the shipped evaluator's features), and the samples' mean
colour (R, G, B in [-1, 1]), on the held-out prompts `swd distill`'s trace uses (128, seed 0).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/emoji_fidelity.py --out docs/results/emoji-fidelity.json \
        swd-4=swd/weights/emoji-student dmd-only-cool=runs/emoji-dmd-probe/gen-lr-1e-5-cool/student
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from swd.eval.evaluate import at_sample_size, evaluator_for, load_prompts, sample_images
from swd.eval.evaluator import extract
from swd.eval.metrics import frechet_distance
from swd.schedules import ScaleSchedule, resolve_schedule
from swd.train.validation import load_model_folder

TEACHER = "swd/weights/emoji-teacher"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("students", nargs="*", help="label=student folder (its schedule.yaml is used)")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    prompts = load_prompts("emoji-heldout", args.n)
    evaluator = evaluator_for(prompts)
    teacher, _ = load_model_folder(TEACHER, "--teacher")
    runs = {"teacher-28-cfg": (teacher, None), "undistilled-swd-4": (teacher, resolve_schedule("testbed-4"))}
    for item in args.students:
        label, folder = item.split("=", 1)
        runs[label] = (load_model_folder(folder, "--model")[0], ScaleSchedule.load(Path(folder) / "schedule.yaml"))

    size = prompts.real_images.shape[-1]
    real = extract(evaluator, prompts.real_images)
    results, reference = {}, None
    for label, (model, schedule) in runs.items():
        began = time.perf_counter()
        images, _ = sample_images(model, prompts.captions, schedule, seed=args.seed, batch_size=32, progress=False,
                                  caption_pool=prompts.real_captions)
        f = extract(evaluator, at_sample_size(images, images.shape[-1], size))
        reference = f if reference is None else reference  # the teacher's, computed first
        results[label] = {"fd_vs_real": frechet_distance(real, f), "fd_vs_teacher": frechet_distance(reference, f),
                          "mean_rgb": [round(v, 4) for v in images.float().mean(dim=(0, 2, 3)).tolist()],
                          "minutes": round((time.perf_counter() - began) / 60, 2)}
        print(label, json.dumps(results[label]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "seed": args.seed, "teacher": TEACHER, "runs": results,
                               "command": "scripts/emoji_fidelity.py " + " ".join(args.students)}, indent=2))
    print("| sampler | FD vs real | FD vs teacher samples | mean RGB |")
    print("|---|---|---|---|")
    for label, row in results.items():
        print(f"| {label} | {row['fd_vs_real']:.2f} | {row['fd_vs_teacher']:.2f} | {row['mean_rgb']} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
