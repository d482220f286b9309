#!/usr/bin/env bash
# The CPU testbed results of docs/RESULTS.md, as they were produced on the 2-core dev machine
# (2026-11-25). Each training step is bounded by train.max_minutes, so step counts depend on the
# machine's speed; the logs in runs/ record them. Run from the repo root with the venv active.
# The preset swd-emoji-cpu.yaml has changed since (fake score 2026-12-02, generator 2026-12-03, and
# 104 steps instead of 20 minutes): to repeat these rows add --set train.steps=100000
# --set train.max_minutes=20 --set train.fake_updates=2 --set fake.lr=5e-5 --set generator.lr=5.0e-5
# --set "generator.frozen=[]" to each distill line.
set -euo pipefail
export OMP_NUM_THREADS=1   # two jobs at a time, one core each

# 1. Teachers (45 + 12 minutes for emoji; the raw weights are shipped: the EMA was still
#    dominated by its random start after ~1.4k steps).
swd train-teacher --config configs/testbed/teacher-emoji-cpu.yaml
swd train-teacher --config configs/testbed/teacher-emoji-cpu.yaml --resume --set train.max_minutes=12
swd export --checkpoint runs/teacher-emoji-cpu --weights model --out swd/weights/emoji-teacher

# 2. Students, 20 minutes each, run side by side.
swd distill --config configs/testbed/swd-emoji-cpu.yaml &
swd distill --config configs/testbed/swd-emoji-cpu.yaml --set objective=mmd-only \
    --set run_dir=runs/mmd-emoji-cpu --set train.batch_size=64 &
wait

# 3. Evaluation on held-out emoji prompts (concepts never trained on), same seed for all.
N=${N:-300}
E="swd eval run --prompts emoji-heldout --n $N --seed 0 --threads 1 --no-progress"
$E --model swd/weights/emoji-teacher --schedule teacher --out docs/results/eval/1-teacher-28-cfg
$E --model swd/weights/emoji-teacher --schedule testbed-full-4 --out docs/results/eval/2-teacher-undistilled-full-4
$E --model swd/weights/emoji-teacher --schedule testbed-4 --out docs/results/eval/3-teacher-undistilled-swd-4
$E --model runs/mmd-emoji-cpu/student --out docs/results/eval/4-mmd-only-swd-4
$E --model runs/swd-emoji-cpu/student --out docs/results/eval/5-swd-dmd-mmd-gan-swd-4
swd report --evals docs/results/eval --out docs/RESULTS.md \
    --logs swd=runs/swd-emoji-cpu/log.jsonl mmd-only=runs/mmd-emoji-cpu/log.jsonl

# 4. Baselines added at the end of the session (same config, other objectives).
swd distill --config configs/testbed/swd-emoji-cpu.yaml --set objective=dmd2-full \
    --set run_dir=runs/dmd2full-emoji-cpu --set train.max_minutes=18
swd distill --config configs/testbed/swd-emoji-cpu.yaml --set objective=dmd-only \
    --set run_dir=runs/dmdonly-emoji-cpu --set train.steps=104 --set train.max_minutes=26
$E --model runs/dmd2full-emoji-cpu/student --out docs/results/eval/6-dmd2-full-res-4
$E --model runs/dmdonly-emoji-cpu/student --out docs/results/eval/7-dmd-only-swd-4
swd report --evals docs/results/eval --out docs/RESULTS.md --logs swd=runs/swd-emoji-cpu/log.jsonl \
    mmd-only=runs/mmd-emoji-cpu/log.jsonl dmd-only=runs/dmdonly-emoji-cpu/log.jsonl \
    dmd2-full=runs/dmd2full-emoji-cpu/log.jsonl

# 5. Shapes teacher, its score, and CPU latency.
swd train-teacher --config configs/testbed/teacher-shapes-cpu.yaml --set train.max_minutes=30
swd train-teacher --config configs/testbed/teacher-shapes-cpu.yaml --resume --set train.max_minutes=16
swd export --checkpoint runs/teacher-shapes-cpu --weights ema --out swd/weights/shapes-teacher
swd eval run --model swd/weights/shapes-teacher --schedule teacher --prompts shapes --n 96 --seed 0 \
    --threads 1 --out docs/results/eval-shapes/1-teacher-28-cfg
swd bench latency --model swd/weights/emoji-student --schedules testbed-4,testbed-6 --repeats 5 --warmup 1 --json
swd bench latency --model swd/weights/emoji-student --schedules testbed-4,testbed-6 --repeats 3 --warmup 1 --batch 16 --json

# 6. Second session (2026-11-25, later): students with FD traced while training
#    (train.eval_every=13 on 128 held-out prompts; evaluation does not change the training), all
#    at 104 generator steps. cpu-swd-4 repeats the recipe of runs/swd-emoji-cpu (same seed and
#    steps); its weights differ from that run's by at most 5.7e-4 (losses agree to ~1e-3): not
#    bit-identical across the two sessions, while within a session the unit tests show runs with
#    and without evaluation are.
# (the preset's fake-score settings of that session: 2 updates at 5e-5)
C="--config configs/testbed/swd-emoji-cpu.yaml --set train.steps=104 --set train.max_minutes=0 --set train.fake_updates=2 --set fake.lr=5e-5"
swd distill $C --set run_dir=runs/cpu-swd-4 &
swd distill $C --set run_dir=runs/cpu-dmdonly-4 --set objective=dmd-only &
wait
swd distill $C --set run_dir=runs/cpu-swd-6 --set schedule=testbed-6 &
swd distill $C --set run_dir=runs/cpu-dmd2full-4 --set objective=dmd2-full &
wait
# The SwD objective (DMD + MMD + GAN) at constant full resolution, and a shapes student.
swd distill $C --set run_dir=runs/cpu-swdobj-full-4 --set schedule=testbed-full-4 &
swd distill --config configs/testbed/swd-shapes-cpu.yaml --set run_dir=runs/cpu-swd-shapes-4 &
wait
swd distill $C --set run_dir=runs/cpu-mmdonly-4 --set objective=mmd-only   # MMD alone, same 104 steps
# Is DMD's collapse driven by the teacher's CFG in the real score? DMD-only at CFG 1 and 2.
swd distill $C --set run_dir=runs/cpu-dmdonly-cfg1-4 --set objective=dmd-only --set losses.teacher_cfg=1.0 &
swd distill $C --set run_dir=runs/cpu-dmdonly-cfg2-4 --set objective=dmd-only --set losses.teacher_cfg=2.0 &
wait

# 7. The table of docs/RESULTS.md (evals record transformer FLOPs per image since this session).
R=docs/results/eval
rm -rf $R && mkdir -p $R
$E --model swd/weights/emoji-teacher --schedule teacher --out $R/01-teacher-28-cfg
$E --model runs/cpu-dmd2full-4/student --out $R/02-dmd2-full-res-4
$E --model runs/cpu-swdobj-full-4/student --out $R/03-swd-objective-full-res-4
$E --model runs/cpu-swd-4/student --out $R/04-swd-4
$E --model runs/cpu-swd-6/student --out $R/05-swd-6
$E --model runs/cpu-mmdonly-4/student --out $R/06-mmd-only-4
$E --model swd/weights/emoji-student --out $R/07-mmd-only-4-shipped-234-steps
$E --model runs/cpu-dmdonly-4/student --out $R/08-dmd-only-4
$E --model swd/weights/emoji-teacher --schedule testbed-full-4 --out $R/09-undistilled-full-res-4
$E --model swd/weights/emoji-teacher --schedule testbed-4 --out $R/10-undistilled-swd-4
for run in cpu-swd-4 cpu-dmdonly-4 cpu-mmdonly-4 cpu-swd-6 cpu-dmd2full-4 cpu-swdobj-full-4 cpu-swd-shapes-4 \
        cpu-dmdonly-cfg1-4 cpu-dmdonly-cfg2-4; do
    cp runs/$run/log.jsonl docs/results/logs/$run.jsonl
done
swd report --evals $R --out docs/RESULTS.md --logs swd-4=runs/cpu-swd-4/log.jsonl \
    dmd-only-4=runs/cpu-dmdonly-4/log.jsonl mmd-only-4=runs/cpu-mmdonly-4/log.jsonl swd-6=runs/cpu-swd-6/log.jsonl \
    dmd2-full-res-4=runs/cpu-dmd2full-4/log.jsonl swd-objective-full-res-4=runs/cpu-swdobj-full-4/log.jsonl \
    dmd-only-cfg2-4=runs/cpu-dmdonly-cfg2-4/log.jsonl dmd-only-cfg1-4=runs/cpu-dmdonly-cfg1-4/log.jsonl
rm -rf docs/results/eval-shapes
S="swd eval run --prompts shapes --n 120 --seed 0 --threads 1 --no-progress"
$S --model swd/weights/shapes-teacher --schedule teacher --out docs/results/eval-shapes/1-teacher-28-cfg
$S --model swd/weights/shapes-teacher --schedule testbed-4 --out docs/results/eval-shapes/2-undistilled-swd-4
$S --model runs/cpu-swd-shapes-4/student --out docs/results/eval-shapes/3-swd-4
swd report --evals docs/results/eval-shapes --out docs/RESULTS.md --name shapes \
    --logs swd-shapes-4=runs/cpu-swd-shapes-4/log.jsonl
