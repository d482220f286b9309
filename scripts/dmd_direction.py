"""Which way does DMD push a testbed generator, before it has moved?

Builds a CPU preset's dmd-only run (generator = fake score = the shipped teacher), keeps
the generator frozen and, after 0, 5, 25 and 65 fake-score updates on its samples (the updates
of 0, 1, 5 and 13 generator steps), measures DMD's direction `x0_real - x0_fake` on fresh batches
at each scale of the schedule: its root mean square, its mean colour (R, G, B) and the share of
its energy that is a uniform colour shift (per-sample, per-channel mean squared over the mean
square; meaningless where the rms is ~0, i.e. real = fake). For comparison, the colour shift that
would take the generator's samples to the teacher's own 28-step samples is teacher mean -
generator mean (docs/results/emoji-fidelity.json). Real score at the preset's CFG and at 1.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/dmd_direction.py --out docs/results/emoji-dmd-direction.json
    OMP_NUM_THREADS=1 .venv/bin/python scripts/dmd_direction.py --config configs/testbed/swd-shapes-unet-cpu.yaml \
        --out docs/results/shapes-unet-dmd-direction.json
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from swd.config import load_config
from swd.train.distill import DistillConfig, prepare_run

RUN_DIR = "runs/dmd-direction"


def direction_stats(r, i: int, gen: torch.Generator, cfg_scale: float, batches: int) -> dict:
    """Mean colour and colour-shift share of x0_real - x0_fake on `batches` fresh batches at scale i."""
    means, shares, rms = [], [], []
    for _ in range(batches):
        batch = r.draw(i, gen)
        x0_real, x0_fake = r.objective.dmd_estimates(r.student_x0(batch), batch.cond, gen, guidance=cfg_scale)
        d = x0_real - x0_fake  # DMD moves x0_hat along this
        colour = d.mean(dim=(2, 3))  # (B, C)
        means.append(colour.mean(0))
        shares.append((colour.square().sum(1) / d.square().mean(dim=(2, 3)).sum(1)).mean())
        rms.append(d.square().mean().sqrt())
    return {"rms": round(torch.stack(rms).mean().item(), 5),
            "mean_rgb": [round(v, 4) for v in torch.stack(means).mean(0).tolist()],
            "colour_share": round(torch.stack(shares).mean().item(), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/testbed/swd-emoji-cpu.yaml")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as for swd distill (e.g. fake.lora_rank=16)")
    args = ap.parse_args()

    shutil.rmtree(RUN_DIR, ignore_errors=True)
    cfg = load_config(DistillConfig, args.config, ["objective=dmd-only", f"run_dir={RUN_DIR}", "train.eval_every=0", *args.overrides])
    r = prepare_run(cfg, False, None, None, None, None, None)
    gen = torch.Generator().manual_seed(0)
    rows, done = [], 0
    for updates in (0, 5, 25, 65):
        with torch.enable_grad():
            for p in r.fake.params:
                p.requires_grad_(True)
            while done < updates:  # the loop's fake-score update, scales in turn, generator frozen
                i = done // cfg.train.fake_updates % r.schedule.steps
                batch = r.draw(i, gen)
                with torch.no_grad():
                    x0_hat = r.student_x0(batch)
                loss, _ = r.objective.fake_loss(x0_hat, batch.target, batch.cond, gen)
                r.fake.step(loss)
                done += 1
            for p in r.fake.params:
                p.requires_grad_(False)
        with torch.no_grad():
            for i, (side, *_rest) in enumerate(r.schedule.scales):
                for cfg_scale in (cfg.losses.teacher_cfg, 1.0):
                    row = {"fake_updates": updates, "scale": side, "cfg": cfg_scale,
                           **direction_stats(r, i, gen, cfg_scale, args.batches)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": args.config, "overrides": args.overrides, "batch": cfg.train.batch_size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
