#!/usr/bin/env bash
# GPU latency rows of docs/RESULTS.md that no session could measure yet (no GPU was lent):
# random-weight real-size SD3.5-L / SD3.5-M / FLUX-dev at 1024 px (latent 128), batch 1, bf16,
# transformer only, teacher vs full-resolution few-step vs SwD, with one CUDA graph per latent
# size and eagerly in the same run (the eager ratio is launch-bound, TESTBED.md), plus the
# testbed students. The eager runs skip the teacher (--teacher-steps 0): they are there for the
# SwD / full-resolution ratio only. Not run yet (no GPU so far); from the repo root, with `swd`
# on PATH: bash scripts/gpu_latency.sh OUT_DIR
set -euo pipefail
out=${1:?usage: scripts/gpu_latency.sh OUT_DIR}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt"
B="swd bench latency --dtype bf16 --batch 1 --warmup 3 --repeats 10 --json"
for arch in sd35-large sd35-medium flux-dev; do
    schedules=$([ "$arch" = sd35-medium ] && echo sd35-medium-6,sd35-large-4 || echo "")
    $B --arch "$arch" ${schedules:+--schedules $schedules} --graphs > "$out/latency-$arch-graphs.json"
    $B --arch "$arch" ${schedules:+--schedules $schedules} --no-graphs --teacher-steps 0 > "$out/latency-$arch-eager.json"
done
$B --model swd/weights/emoji-student --schedules testbed-4,testbed-6 --graphs > "$out/latency-testbed-graphs.json"
