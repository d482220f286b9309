"""Distillation fidelity on the shapes UNet testbed (issue 11, part 3).

For each sampler: FD against the teacher's own 28-step CFG samples of the same prompts and seed
(what distillation preserves, apart from what the teacher never learned), and the exact shapes
accuracy on held-out and on held-in (training) captions. Writes one JSON and prints a table.

    OMP_NUM_THREADS=1 python scripts/shapes_unet_fidelity.py --out docs/results/shapes-unet/fidelity.json \
        swd-4=runs/swd-shapes-unet-cpu/student dmd2-full-4=runs/dmd2full-shapes-unet-cpu/student
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from swd.eval.evaluate import at_sample_size, balanced_order, evaluator_for, load_prompts, sample_images
from swd.eval.evaluator import extract
from swd.eval.metrics import frechet_distance, shapes_accuracy
from swd.schedules import ScaleSchedule
from swd.train.validation import load_model_folder

TEACHER = "swd/weights/shapes-unet-teacher"
SW4 = "configs/schedules/testbed32-4.yaml"
FULL4 = "configs/schedules/testbed32-full-4.yaml"


def held_in(n: int):
    """N training captions, categories in turn, with their scenes for the exact scorer."""
    from swd.data.shapes import load_shapes

    train, samples = load_shapes(split="train", progress=False)
    order = balanced_order([s.category for s in samples])
    rows = [order[i % len(order)] for i in range(n)]
    return [train.captions[i] for i in rows], [samples[i] for i in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("students", nargs="*", help="label=student folder (its schedule.yaml is used)")
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--teacher", default=TEACHER, help="teacher folder (default: the shipped one)")
    args = parser.parse_args()

    prompts = load_prompts("shapes", args.n)
    heldin_captions, heldin_samples = held_in(args.n)
    evaluator = evaluator_for(prompts)
    teacher, _ = load_model_folder(args.teacher, "--teacher")
    runs = {"teacher-28-cfg": (teacher, None), "undistilled-full-4": (teacher, ScaleSchedule.load(FULL4)),
            "undistilled-swd-4": (teacher, ScaleSchedule.load(SW4))}
    for item in args.students:
        label, folder = item.split("=", 1)
        runs[label] = (load_model_folder(folder, "--model")[0], ScaleSchedule.load(Path(folder) / "schedule.yaml"))

    def features(images):
        return extract(evaluator, at_sample_size(images, images.shape[-1], prompts.real_images.shape[-1]))

    # Rerunning with more students reuses the teacher's rows and features of an earlier run.
    out = Path(args.out)
    cache = out.with_suffix(".teacher-features.safetensors")
    results, reference = {}, None
    if out.is_file() and cache.is_file():
        from safetensors.torch import load_file

        earlier = json.loads(out.read_text())
        if earlier["n"] == args.n and earlier["seed"] == args.seed:
            results = {k: v for k, v in earlier["runs"].items() if k not in dict(s.split("=", 1) for s in args.students)}
            reference = load_file(cache)["features"]
    for label, (model, schedule) in runs.items():
        if label in results:
            continue
        began = time.perf_counter()
        row = {}
        for split, captions, samples in (("heldout", prompts.captions, prompts.samples),
                                         ("heldin", heldin_captions, heldin_samples)):
            images, _ = sample_images(model, captions, schedule, seed=args.seed, batch_size=40, progress=False,
                                      caption_pool=captions)
            row[f"shapes_{split}"] = shapes_accuracy(images, samples)["accuracy"]
            if split == "heldout":
                f = features(images)
                reference = f if reference is None else reference  # the teacher's, computed first
                row["fd_vs_teacher"] = frechet_distance(reference, f)
        if label == "teacher-28-cfg":
            from safetensors.torch import save_file

            out.parent.mkdir(parents=True, exist_ok=True)
            save_file({"features": reference.contiguous()}, cache)
        row["minutes"] = round((time.perf_counter() - began) / 60, 2)
        results[label] = row
        print(label, json.dumps(row), flush=True)
    payload = {"n": args.n, "seed": args.seed, "teacher": args.teacher, "runs": results,
               "command": "scripts/shapes_unet_fidelity.py " + " ".join(args.students)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print("| sampler | FD vs teacher samples | shapes acc. held-out | shapes acc. held-in |")
    print("|---|---|---|---|")
    for label, row in results.items():
        print(f"| {label} | {row['fd_vs_teacher']:.2f} | {row['shapes_heldout']:.3f} | {row['shapes_heldin']:.3f} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
