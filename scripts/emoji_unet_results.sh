#!/usr/bin/env bash
# The emoji UNet rows of docs/RESULTS.md ("Emoji UNet"), as run on 2026-12-02/03 on the 2-core CPU
# machine (one thread per job, two or three jobs at a time). Teacher ~100 CPU minutes; each
# DMD-based student ~25-40 min; MMD-only a few minutes; evaluations 1-5 min each.
set -euo pipefail
export OMP_NUM_THREADS=1
C=configs/testbed/swd-emoji-unet-cpu.yaml
T=swd/weights/emoji-unet-teacher
D=docs/results/emoji-unet
E="swd eval run --prompts emoji-heldout --n 300 --seed 0 --threads 1 --no-progress"
S32=configs/schedules/testbed32-4.yaml
F32=configs/schedules/testbed32-full-4.yaml

# 1. Teacher (docs/TEACHER_RECIPES.md, "The emoji UNet teacher"): 4400 steps, resumed as needed.
swd train-teacher --config configs/testbed/teacher-emoji-unet-cpu.yaml --resume
swd export --checkpoint runs/teacher-emoji-unet-cpu/checkpoints/step_00004400 --weights ema --out $T

# 2. Students, 104 generator steps, batch 32, seed 0 (held-out FD on 128 prompts every 13 steps).
swd distill --config $C                                                           # swd
swd distill --config $C --set objective=dmd2-full --set schedule=$F32 --set run_dir=runs/dmd2full-emoji-unet-cpu
swd distill --config $C --set objective=mmd-only --set run_dir=runs/mmd-emoji-unet-cpu
swd distill --config $C --set objective=dmd-only --set run_dir=runs/dmd-emoji-unet-cpu

# 3. Scores on 300 held-out prompts (scored at the teacher's 32 px, real images area-downscaled).
$E --model $T --schedule teacher --out $D/1-teacher-28-cfg
$E --model $T --schedule $F32 --out $D/2-undistilled-full-4
$E --model $T --schedule $S32 --out $D/3-undistilled-swd-4
$E --model runs/dmd2full-emoji-unet-cpu/student --out $D/4-dmd2-full-4
$E --model runs/swd-emoji-unet-cpu/student --out $D/5-swd-4
$E --model runs/mmd-emoji-unet-cpu/student --out $D/6-mmd-only-4
$E --model runs/dmd-emoji-unet-cpu/student --out $D/7-dmd-only-4
# Held-out FD against real and against the teacher's own 28-step samples; held-in caption retrieval.
python scripts/emoji_fidelity.py --teacher $T --heldin 128 --out $D/fidelity.json \
  swd-4=runs/swd-emoji-unet-cpu/student dmd2-full-4=runs/dmd2full-emoji-unet-cpu/student \
  mmd-only-4=runs/mmd-emoji-unet-cpu/student dmd-only-4=runs/dmd-emoji-unet-cpu/student
for r in swd dmd2full mmd dmd; do cp runs/$r-emoji-unet-cpu/log.jsonl docs/results/logs/emoji-unet-$r.jsonl; done
swd report --evals $D --out docs/RESULTS.md --name emoji-unet --plots $D \
  --logs swd=docs/results/logs/emoji-unet-swd.jsonl dmd2-full=docs/results/logs/emoji-unet-dmd2full.jsonl \
  mmd-only=docs/results/logs/emoji-unet-mmd.jsonl dmd-only=docs/results/logs/emoji-unet-dmd.jsonl
swd demo --pair emoji --out $D/demo.png

# 4. Sixth session, at its end: 6 scale-wise steps (16 -> 32 px, the last scale repeated).
S6=configs/schedules/testbed32-6.yaml
swd distill --config $C --set schedule=$S6 --set run_dir=runs/swd6-emoji-unet-cpu
$E --model $T --schedule $S6 --out $D/8-undistilled-swd-6
$E --model runs/swd6-emoji-unet-cpu/student --out $D/9-swd-6
