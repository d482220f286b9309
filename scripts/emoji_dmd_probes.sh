#!/usr/bin/env bash
# Probes of the emoji DMD collapse (issue 10): short dmd-only runs from the shipped emoji teacher,
# held-out FD (128 prompts) every 13 steps, one thread each. Usage: bash scripts/emoji_dmd_probes.sh NAME...
set -euo pipefail
PY=${PY:-.venv/bin/python}
# The probes start from the preset's generator as it was when they ran (all weights, lr 5e-5); the
# preset has trained only the embedders at 1e-5 since 2026-12-03 (the embedders-only probes below).
base=(--config configs/testbed/swd-emoji-cpu.yaml --set objective=dmd-only --set train.max_minutes=0
      --set train.eval_every=13 --set train.eval_n=128 --set generator.lr=5.0e-5 --set "generator.frozen=[]")
# The fix (now the preset's generator): only the text / time embedders train, at lr 1e-5.
embedders_only=(--set "generator.frozen=['^(?!time_text_embed|context_embedder)']" --set generator.lr=1.0e-5)
for name in "$@"; do
  case $name in
    gen-lr-1e-5) extra=(--set generator.lr=1.0e-5) ;;
    antithetic) extra=(--set losses.dmd_antithetic=true) ;;
    no-gan) extra=(--set losses.gan_weight=0 --set losses.disc_weight=0) ;;
    gen-lr-1e-5-cool) extra=(--set generator.lr=1.0e-5 --set generator.decay_steps=${STEPS:-52}) ;;
    fake-lora16) extra=(--set fake.lora_rank=16) ;;
    fake-lora16-lr2e-3) extra=(--set fake.lora_rank=16 --set fake.lr=2.0e-3) ;;
    gen-lora16) extra=(--set generator.lora_rank=16 --set generator.lr=2.0e-4) ;;
    gen-lora16-lr5e-5) extra=(--set generator.lora_rank=16) ;;
    gen-no-ff) extra=(--set "generator.frozen=['\.ff\.', '\.ff_context\.']") ;;
    gen-no-ff-lr-1e-5) extra=(--set "generator.frozen=['\.ff\.', '\.ff_context\.']" --set generator.lr=1.0e-5) ;;
    gen-embedders-only) extra=("${embedders_only[@]}") ;;
    dmd2-full-embedders-only) extra=(--set objective=dmd2-full --set schedule=testbed-full-4 "${embedders_only[@]}") ;;
    swd-embedders-only) extra=(--set objective=swd "${embedders_only[@]}") ;;
    *) echo "unknown probe $name" >&2; exit 2 ;;
  esac
  OMP_NUM_THREADS=1 $PY -m swd.cli distill "${base[@]}" --set train.steps=${STEPS:-52} \
    --set run_dir=runs/emoji-dmd-probe/$name "${extra[@]}"
done
