#!/usr/bin/env bash
# GPU latency rows of docs/RESULTS.md, for a session that has a GPU: random-weight real-size
# SD3.5-L, SD3.5-M and FLUX-dev at 1024 px (latent 128), batch 1, bf16, transformer only:
# teacher vs full-resolution few-step vs SwD, eager and compiled in the same run (compiled =
# torch.compile, one static graph per scale, mode="reduce-overhead", i.e. CUDA graphs captured by
# torch; compile seconds reported apart), plus the shipped testbed student at batch 1 and 64.
# From the repo root, with swd installed: bash scripts/gpu_latency.sh OUT_DIR
# (SWD="python -m swd.cli" to run without the console script.)
#
# SWD_LATENCY_SMOKE=1 runs the same commands on the CPU with tiny random configs, a two-scale
# schedule and one repeat: tests/eval/test_gpu_latency_script.py does this in CI, so the script
# cannot rot; only a GPU is needed to produce the real rows.
set -euo pipefail
out=${1:?usage: scripts/gpu_latency.sh OUT_DIR}
mkdir -p "$out"
SWD=${SWD:-swd}

if [ "${SWD_LATENCY_SMOKE:-0}" = 1 ]; then
    archs="tiny-sd3 tiny-flux"
    printf 'name: smoke-2\nscales: [8, 16]\nsigmas: [1.0, 0.7371]\n' > "$out/smoke-schedule.yaml"
    arch_schedules() { echo "$out/smoke-schedule.yaml"; }
    common="--device cpu --dtype fp32 --warmup 0 --repeats 1"
    teacher="--teacher-steps 2"
    testbed="--schedules $out/smoke-schedule.yaml --batch 1 --modes eager"  # a UNet compiles for minutes on a CPU
    echo "cpu smoke run (SWD_LATENCY_SMOKE=1)" > "$out/gpu.txt"
else
    archs="sd35-large sd35-medium flux-dev"
    arch_schedules() { [ "$1" = sd35-medium ] && echo sd35-medium-6,sd35-medium-4 || echo ""; }
    common="--device cuda --dtype bf16 --warmup 3 --repeats 10"
    teacher="--teacher-steps 28"
    testbed="--batch 1,64 --modes eager,compiled"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt"
fi

for arch in $archs; do
    schedules=$(arch_schedules "$arch")
    $SWD bench latency --arch "$arch" ${schedules:+--schedules $schedules} $common $teacher \
        --batch 1 --modes eager,compiled --json > "$out/latency-$arch.json"
done
$SWD bench latency --model swd/weights/shapes-unet-student $common --teacher-steps 0 $testbed \
    --json > "$out/latency-testbed.json"
echo "wrote $out/latency-*.json"
