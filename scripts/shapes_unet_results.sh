#!/usr/bin/env bash
# The shapes UNet rows of docs/RESULTS.md ("Shapes UNet"), as run on 2026-12-02 on the 2-core
# CPU machine (one thread per job, two or three jobs at a time). Teacher: ~75 min; each
# DMD-based student ~17-30 min, MMD-only ~2.5 min; evaluations ~1 min each, fidelity ~15 min.
set -euo pipefail
export OMP_NUM_THREADS=1
C=configs/testbed/swd-shapes-unet-cpu.yaml
D=docs/results/shapes-unet
E="swd eval run --prompts shapes --n 120 --seed 0 --threads 1 --no-progress"

# 1. Teacher: stopped by hand after the step-3300 checkpoint (73.0 min in log.jsonl).
swd train-teacher --config configs/testbed/teacher-shapes-unet-cpu.yaml
swd export --checkpoint runs/teacher-shapes-unet-cpu/checkpoints/step_00003300 --weights ema \
  --out swd/weights/shapes-unet-teacher

# 2. Students, 104 generator steps, batch 32, seed 0 (FD and shapes accuracy every 26 steps).
swd distill --config $C --set train.eval_n=120                                   # swd
swd distill --config $C --set objective=mmd-only --set run_dir=runs/mmd-shapes-unet-cpu
swd distill --config $C --set objective=dmd-only --set run_dir=runs/dmd-shapes-unet-cpu
swd distill --config $C --set objective=dmd2-full --set schedule=configs/schedules/testbed32-full-4.yaml \
  --set run_dir=runs/dmd2full-shapes-unet-cpu                                    # full-res DMD2 baseline

# 3. Scores (N = 120 balanced held-out captions).
T=swd/weights/shapes-unet-teacher
$E --model $T --schedule teacher --out $D/1-teacher-28-cfg
$E --model $T --schedule configs/schedules/testbed32-full-4.yaml --out $D/2-undistilled-full-4
$E --model $T --schedule configs/schedules/testbed32-4.yaml --out $D/3-undistilled-swd-4
$E --model runs/dmd2full-shapes-unet-cpu/student --out $D/4-dmd2-full-4
$E --model runs/swd-shapes-unet-cpu/student --out $D/5-swd-4
$E --model runs/mmd-shapes-unet-cpu/student --out $D/6-mmd-only-4
$E --model runs/dmd-shapes-unet-cpu/student --out $D/7-dmd-only-4
python scripts/shapes_unet_fidelity.py --out $D/fidelity.json swd-4=runs/swd-shapes-unet-cpu/student \
  mmd-only-4=runs/mmd-shapes-unet-cpu/student dmd-only-4=runs/dmd-shapes-unet-cpu/student \
  dmd2-full-4=runs/dmd2full-shapes-unet-cpu/student
swd report --evals $D --out docs/RESULTS.md --name shapes-unet --plots $D \
  --logs swd=runs/swd-shapes-unet-cpu/log.jsonl mmd-only=runs/mmd-shapes-unet-cpu/log.jsonl \
  dmd-only=runs/dmd-shapes-unet-cpu/log.jsonl dmd2-full=runs/dmd2full-shapes-unet-cpu/log.jsonl
swd demo --pair shapes --out $D/demo.png

# 4. Fourth session (2026-12-02): the continued teacher (init from the shipped one, see
# docs/TEACHER_RECIPES.md; lr cooled linearly from step 4200) and its SwD student with the
# generator's lr cooled to zero over the 104 steps. Rows of RESULTS "Shapes UNet, continued teacher".
T2=runs/teacher-shapes-unet-cont/export
D2=docs/results/shapes-unet-v2
swd train-teacher --config configs/testbed/teacher-shapes-unet-cpu.yaml --set init=swd/weights/shapes-unet-teacher \
  --set run_dir=runs/teacher-shapes-unet-cont --set train.max_minutes=110 --set train.checkpoint_every=300 \
  --set train.sample_every=1200 --set train.decay_start=4200 --set train.decay_steps=4200 --resume
swd export --checkpoint "$(ls -d runs/teacher-shapes-unet-cont/checkpoints/step_* | tail -1)" --weights ema --out $T2
swd distill --config $C --set teacher=$T2 --set generator.decay_steps=104 --set run_dir=runs/swd-shapes-unet-v2
$E --model $T2 --schedule teacher --out $D2/1-teacher-28-cfg
$E --model $T2 --schedule configs/schedules/testbed32-full-4.yaml --out $D2/2-undistilled-full-4
$E --model $T2 --schedule configs/schedules/testbed32-4.yaml --out $D2/3-undistilled-swd-4
$E --model runs/swd-shapes-unet-v2/student --out $D2/5-swd-4
swd report --evals $D2 --out docs/RESULTS.md --name shapes-unet-v2 --plots $D2 \
  --logs swd=runs/swd-shapes-unet-v2/log.jsonl
swd distill --config $C --set teacher=$T2 --set objective=mmd-only --set generator.decay_steps=104 --set run_dir=runs/mmd-shapes-unet-v2
swd distill --config $C --set teacher=$T2 --set objective=dmd-only --set generator.decay_steps=104 --set run_dir=runs/dmd-shapes-unet-v2
$E --model runs/mmd-shapes-unet-v2/student --out $D2/6-mmd-only-4
$E --model runs/dmd-shapes-unet-v2/student --out $D2/7-dmd-only-4

# 5. Fifth session (2026-12-02): the full-resolution DMD2 baseline from the shipped (continued) teacher.
swd distill --config $C --set objective=dmd2-full --set schedule=configs/schedules/testbed32-full-4.yaml \
  --set generator.decay_steps=104 --set run_dir=runs/dmd2full-shapes-unet-v2
$E --model runs/dmd2full-shapes-unet-v2/student --out $D2/4-dmd2-full-4
swd report --evals $D2 --out docs/RESULTS.md --name shapes-unet-v2 --plots $D2 \
  --logs swd=docs/results/logs/shapes-unet-v2-swd.jsonl mmd-only=docs/results/logs/shapes-unet-v2-mmd-only.jsonl \
  dmd-only=docs/results/logs/shapes-unet-v2-dmd-only.jsonl dmd2-full=docs/results/logs/shapes-unet-v2-dmd2-full.jsonl

# 6. Sixth session (2026-12-03): 6 scale-wise steps (16 -> 32 px, the last scale repeated).
S6=configs/schedules/testbed32-6.yaml
swd distill --config $C --set teacher=swd/weights/shapes-unet-teacher --set generator.decay_steps=104 \
  --set schedule=$S6 --set run_dir=runs/swd6-shapes-unet-v2
$E --model swd/weights/shapes-unet-teacher --schedule $S6 --out $D2/8-undistilled-swd-6
$E --model runs/swd6-shapes-unet-v2/student --out $D2/9-swd-6
