"""Emoji testbed: fidelity of the students to their teacher, and what the teacher has learned.

Held-out (`--n`, seed 0, the prompts `swd distill`'s trace uses): for the teacher (28 Euler steps +
CFG 4.5), its undistilled 4-step samplers and each student given as label=folder, FD against the
real held-out images and against the teacher's own samples of the same prompts and seed (in the
shipped evaluator's features), and the samples' mean colour (R, G, B in [-1, 1]).

Held-in (`--heldin N`, issue 11's emoji-teacher target): N training captions, one image of each
(distinct captions, a fixed shuffle); each sampler draws one image per caption and the evaluator
retrieves its caption among the N (image -> text, top-1 and top-5). The real training images of
the same captions give the ceiling; a teacher a person can name should reach a good part of it.
Real images are brought to the teacher's sample size first (32 px for the UNet), as in `swd eval`.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/emoji_fidelity.py --out docs/results/emoji-fidelity.json \
        swd-4=swd/weights/emoji-student dmd-only-cool=runs/emoji-dmd-probe/gen-lr-1e-5-cool/student
    OMP_NUM_THREADS=1 .venv/bin/python scripts/emoji_fidelity.py --teacher runs/teacher-emoji-unet-cpu/teacher \
        --heldin 128 --out docs/results/emoji-unet/fidelity.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from swd.eval.evaluate import at_sample_size, encode_pooled_rows, evaluator_for, load_prompts, sample_images
from swd.eval.evaluator import extract, retrieval
from swd.eval.metrics import frechet_distance
from swd.schedules import ScaleSchedule, resolve_schedule
from swd.train.validation import load_model_folder

TEACHER = "swd/weights/emoji-teacher"
# The undistilled samplers of a teacher, by its sample size (64 px MMDiT, 32 px UNet).
UNDISTILLED = {64: {"undistilled-swd-4": "testbed-4"},
               32: {"undistilled-full-4": "configs/schedules/testbed32-full-4.yaml",
                    "undistilled-swd-4": "configs/schedules/testbed32-4.yaml"}}


def schedule_of(name: str) -> ScaleSchedule:
    return ScaleSchedule.load(name) if name.endswith(".yaml") else resolve_schedule(name)


def held_in(n: int) -> tuple[list[str], torch.Tensor]:
    """N distinct training captions (a fixed shuffle) and one real image of each."""
    from swd.data.emoji import load_emoji

    train = load_emoji(split="train")
    first: dict[str, int] = {}
    for i, caption in enumerate(train.captions):
        first.setdefault(caption, i)
    keys = sorted(first)
    pick = np.random.default_rng(0).permutation(len(keys))[:n]
    rows = [first[keys[i]] for i in pick]
    return [keys[i] for i in pick], train.select(None).tensors()[rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("students", nargs="*", help="label=student folder (its schedule.yaml is used)")
    parser.add_argument("--teacher", default=TEACHER, help="teacher folder (default: the shipped emoji teacher)")
    parser.add_argument("--n", type=int, default=128, help="held-out prompts")
    parser.add_argument("--heldin", type=int, default=0, help="held-in captions for the retrieval check (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    prompts = load_prompts("emoji-heldout", args.n)
    evaluator = evaluator_for(prompts)
    teacher, _ = load_model_folder(args.teacher, "--teacher")
    size = prompts.real_images.shape[-1]
    teacher_size = int(teacher.config.sample_size)  # pixels: both testbed families are in pixel space
    runs = {"teacher-28-cfg": (teacher, None)}
    runs.update({label: (teacher, schedule_of(s)) for label, s in UNDISTILLED.get(teacher_size, UNDISTILLED[64]).items()})
    for item in args.students:
        label, folder = item.split("=", 1)
        runs[label] = (load_model_folder(folder, "--model")[0], ScaleSchedule.load(Path(folder) / "schedule.yaml"))

    # A 32 px teacher is scored against real images carrying the same loss of detail (at_sample_size).
    real = extract(evaluator, at_sample_size(prompts.real_images, teacher_size, size))
    if args.heldin:
        heldin_captions, heldin_real = held_in(args.heldin)
        pooled = encode_pooled_rows(heldin_captions, evaluator.cfg.text_max_length)
        text = evaluator.text_embed(pooled.to(evaluator.device)).float().cpu()

        def retrieve(images):
            # Samples are at the teacher's size already; the real images are area-downscaled to it.
            emb = extract(evaluator, at_sample_size(images, teacher_size, size), what="embed")
            return {k: round(v, 4) for k, v in retrieval(emb, text, heldin_captions).items() if k.startswith("i2t")}

        ceiling = retrieve(heldin_real)
        print("real held-in images", json.dumps(ceiling), flush=True)
    results, reference = {}, None
    for label, (model, schedule) in runs.items():
        began = time.perf_counter()
        images, _ = sample_images(model, prompts.captions, schedule, seed=args.seed, batch_size=32, progress=False,
                                  caption_pool=prompts.real_captions)
        f = extract(evaluator, at_sample_size(images, images.shape[-1], size))
        reference = f if reference is None else reference  # the teacher's, computed first
        row = {"fd_vs_real": frechet_distance(real, f), "fd_vs_teacher": frechet_distance(reference, f),
               "mean_rgb": [round(v, 4) for v in images.float().mean(dim=(0, 2, 3)).tolist()]}
        if args.heldin:
            images, _ = sample_images(model, heldin_captions, schedule, seed=args.seed, batch_size=32, progress=False)
            row["heldin"] = retrieve(images)
            row["heldin_top5_vs_real"] = round(row["heldin"]["i2t_top5"] / max(ceiling["i2t_top5"], 1e-9), 3)
        row["minutes"] = round((time.perf_counter() - began) / 60, 2)
        results[label] = row
        print(label, json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"n": args.n, "seed": args.seed, "teacher": args.teacher, "runs": results,
               "command": "scripts/emoji_fidelity.py " + " ".join(args.students)}
    if args.heldin:
        payload["heldin"] = {"n": args.heldin, "real": ceiling}
    out.write_text(json.dumps(payload, indent=2))
    print("| sampler | FD vs real | FD vs teacher samples | mean RGB | held-in top-5 (real = 1) |")
    print("|---|---|---|---|---|")
    for label, row in results.items():
        ratio = row.get("heldin_top5_vs_real", "")
        print(f"| {label} | {row['fd_vs_real']:.2f} | {row['fd_vs_teacher']:.2f} | {row['mean_rgb']} | {ratio} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
