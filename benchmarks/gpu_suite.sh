#!/usr/bin/env bash
# The GPU checks of the performance issue in one command (run from the repository root):
#   1. the benchmark report on CUDA (benchmarks/results/cuda.md and cuda.json);
#   2. the wall time of a full omniglot-5w1s robust suite for protonet: training, the
#      suite's attack grid (FGSM + PGD-20 x query/support/both at 16/255) on its 600
#      episodes, the eps sweep, the AutoAttack ensemble on the first 200 episodes and
#      the shift grid (19 corruptions x 5 severities + label noise), each timed.
#
#   MRBENCH_DATA=../shared/data benchmarks/gpu_suite.sh [OUT_DIR]
#
# Knobs (environment): DEVICE (default cuda), STEPS (protonet training steps, 2000),
# EPISODES (suite episodes, 600), ENSEMBLE_EPISODES (200), BENCH=0 to skip step 1.
# A smoke run on the CPU: DEVICE=cpu STEPS=2 EPISODES=2 ENSEMBLE_EPISODES=1 BENCH=0.
# Every command resumes when re-run with the same OUT_DIR.
set -euo pipefail
OUT=${1:-runs/gpu-suite}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-2000}
EPISODES=${EPISODES:-600}
ENSEMBLE_EPISODES=${ENSEMBLE_EPISODES:-200}
mkdir -p "$OUT"
TIMES="$OUT/times.tsv"
printf 'stage\tseconds\texit\n' > "$TIMES"

timed() {  # timed NAME COMMAND...: run, record the wall seconds and the exit status
  local name=$1 start rc=0
  shift
  start=$EPOCHREALTIME
  "$@" || rc=$?
  awk -v n="$name" -v a="$start" -v b="$EPOCHREALTIME" -v rc="$rc" 'BEGIN { printf "%s\t%.1f\t%d\n", n, b - a, rc }' >> "$TIMES"
  return $rc
}

if [ "${BENCH:-1}" != 0 ]; then
  timed benchmarks python -m benchmarks.run --device "$DEVICE"
fi
CKPT="$OUT/protonet.pt"
EVAL=(mrbench evaluate protonet --suite omniglot-5w1s --checkpoint "$CKPT" --device "$DEVICE" --quiet)
timed train mrbench train protonet --suite omniglot-5w1s --steps "$STEPS" --device "$DEVICE" --out "$CKPT" --quiet
timed attacks "${EVAL[@]}" --episodes "$EPISODES" --attacks suite --out "$OUT/attacks.json"
timed eps-sweep "${EVAL[@]}" --episodes "$EPISODES" --attacks pgd-linf --eps 2/255,4/255,8/255,16/255 \
  --target query --no-sanity --out "$OUT/sweep.json"
timed autoattack "${EVAL[@]}" --episodes "$ENSEMBLE_EPISODES" --attacks autoattack --eps 16/255 --target query \
  --no-sanity --out "$OUT/autoattack.json"
timed shifts "${EVAL[@]}" --episodes "$EPISODES" --shift suite --out "$OUT/shifts.json"
mrbench results "$OUT/attacks.json" "$OUT/sweep.json" "$OUT/autoattack.json" --out "$OUT/robust-table.md"
cat "$TIMES"
