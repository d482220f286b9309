"""Which of a student's weight changes make its samples worse? Revert one group at a time.

For a teacher and a distilled student of the same architecture (full fine-tune), groups of
parameters are taken by name (embedders, adaLN modulation, attention, feed-forward, output
layer for the MMDiT testbed; any parameter matched by no group goes to "other"). For each group:
the held-out FD of the teacher with only that group's change applied ("only"), and of the
student with that group reverted to the teacher ("without"), both sampled with the student's
schedule on the prompts and seed of `swd distill`'s in-training trace (128 held-out emoji
prompts, seed 0), so the numbers compare with the FD traces in docs/RESULTS.md.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/param_attribution.py runs/emoji-dmd-probe/gen-lr-1e-5-cool/student \
        --out docs/results/emoji-dmd-attribution.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from swd.eval.evaluate import at_sample_size, evaluator_for, load_prompts, sample_images
from swd.eval.evaluator import extract
from swd.eval.metrics import frechet_distance
from swd.schedules import ScaleSchedule
from swd.train.validation import load_model_folder

GROUPS = {  # first match wins
    "adaLN modulation": r"norm1\.linear|norm1_context\.linear|norm_out\.linear|norm\.linear",
    "embedders": r"^time_text_embed|^context_embedder|^pos_embed|^time_embedding|^conv_in|add_embedding",
    "attention": r"\.attn\d*\.|attentions\.",
    "feed-forward": r"\.ff\.|\.ff_context\.",
    "output layer": r"^proj_out|^conv_out|^conv_norm_out",
}


def group_of(name: str) -> str:
    return next((g for g, pattern in GROUPS.items() if re.search(pattern, name)), "other")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("student", help="student folder (full fine-tune; its schedule.yaml is used)")
    parser.add_argument("--teacher", default="swd/weights/emoji-teacher")
    parser.add_argument("--prompts", default="emoji-heldout")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    prompts = load_prompts(args.prompts, args.n)
    evaluator = evaluator_for(prompts)
    real = extract(evaluator, prompts.real_images)
    teacher, _ = load_model_folder(args.teacher, "--teacher")
    student, _ = load_model_folder(args.student, "student")
    schedule = ScaleSchedule.load(Path(args.student) / "schedule.yaml")
    base = {k: v.clone() for k, v in teacher.state_dict().items()}
    tuned = {k: v.clone() for k, v in student.state_dict().items()}
    names = [n for n, _ in teacher.named_parameters()]
    groups = {n: group_of(n) for n in names}

    def fd(weights: dict) -> float:
        teacher.load_state_dict(weights)
        images, _ = sample_images(teacher, prompts.captions, schedule, seed=args.seed, batch_size=32,
                                  progress=False, caption_pool=prompts.real_captions)
        return round(frechet_distance(real, extract(evaluator, at_sample_size(images, images.shape[-1],
                                                                              prompts.real_images.shape[-1]))), 2)

    rows = {"teacher (no change)": fd(base), "student (all changes)": fd(tuned)}
    print(json.dumps(rows), flush=True)
    for group in [*GROUPS, "other"]:
        members = [n for n in names if groups[n] == group]
        if not members:
            continue
        delta = torch.cat([(tuned[n] - base[n]).flatten() for n in members])
        norm = torch.cat([base[n].flatten() for n in members])
        row = {"parameters": int(delta.numel()), "relative_change": round((delta.norm() / norm.norm()).item(), 5),
               "only": fd({**base, **{n: tuned[n] for n in members}}),
               "without": fd({**tuned, **{n: base[n] for n in members}})}
        rows[group] = row
        print(group, json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"teacher": args.teacher, "student": args.student, "prompts": args.prompts,
                               "n": args.n, "seed": args.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
