"""How far do weight changes of the size AdamW takes in a few DMD steps move the emoji teacher's
undistilled 4-step samples, when their direction carries no information?

AdamW's first updates are close to lr * sign(gradient) for every weight whatever the gradient's
signal-to-noise ratio, so k steps move each weight by about lr * k (a direction held by momentum)
or lr * sqrt(k) (a direction that changes every step). This script adds exactly such changes with
random signs to the shipped emoji teacher and scores its 4-step scale-wise samples with the same
held-out evaluation as `swd distill`'s trace (128 prompts, seed 0), so the FD can be read beside
the DMD traces in docs/RESULTS.md.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/emoji_weight_noise.py --out docs/results/emoji-weight-noise.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from swd.eval.evaluate import TrainingEvaluation
from swd.schedules import resolve_schedule
from swd.train.validation import load_model_folder

# (label, per-weight change): the lr and step count each mimics.
CHANGES = [
    ("none", 0.0),
    ("lr 1e-5 x sqrt(52) steps", 1e-5 * math.sqrt(52)),
    ("lr 5e-5 x sqrt(13) steps", 5e-5 * math.sqrt(13)),
    ("lr 1e-5 x 52 steps", 1e-5 * 52),
    ("lr 5e-5 x 13 steps", 5e-5 * 13),
    ("lr 5e-5 x 26 steps", 5e-5 * 26),
]


def with_random_signs(model: torch.nn.Module, size: float, seed: int) -> torch.nn.Module:
    """A copy of `model` with every weight moved by +size or -size (signs from `seed`)."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(size * torch.sign(torch.randn(p.shape, generator=g)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="swd/weights/emoji-teacher")
    ap.add_argument("--schedule", default="testbed-4")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    teacher, _ = load_model_folder(args.teacher)
    teacher.eval()
    evaluate = TrainingEvaluation("emoji-heldout", args.n, seed=0)
    schedule = resolve_schedule(args.schedule)
    rows = []
    for label, size in CHANGES:
        for seed in ([0] if size == 0 else args.seeds):
            t = time.time()
            metrics = evaluate(with_random_signs(teacher, size, seed), schedule, "cpu", "fp32")
            rows.append({"change": label, "per_weight": size, "sign_seed": seed, "fd": metrics["fd"],
                         "text_align": metrics.get("text_align"), "seconds": round(time.time() - t, 1)})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"teacher": args.teacher, "schedule": args.schedule, "n": args.n,
                                    "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
