#!/usr/bin/env bash
# The GPU measurements in one go, run from the repository root on a machine with a GPU: about 5 minutes on an
# H100/H200, with the machine's python3 and its torch (no install). Writes the JSON lines to
# $OUT/gpu_check.jsonl and all output to $OUT/gpu_check.log where $OUT is set (the device tool's), else to /tmp.
# PYTHON (default python3) is found from the repository root.
#   1. correctness: scalerec train on the GPU in bf16 and fp16 (and, last, the tests that touch precision and devices);
#   2. the bare step at batch 2^20 on ML-20M's shape, plain PyTorch vs scalerec, fp32 / bf16 / fp16;
#   3. the full epoch vs the bare step at 2^20 in bf16 and fp16, with peak GPU memory;
#   4. the largest batch that fits (find-batch), in bf16.
# SMOKE=1 runs the same steps on tiny data on the CPU (tests/test_benchmarks.py), so that it works when a GPU comes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=$(realpath -s "$(command -v "${PYTHON:-python3}")")  # absolute: the benchmarks run from benchmarks/
LOG=${OUT:-/tmp}/gpu_check.jsonl
: >"$LOG"
exec > >(tee "${OUT:-/tmp}/gpu_check.log") 2>&1  # all of it comes back, not only the tool's last 12,000 characters
step() { echo "== ${SECONDS}s: $*"; }
if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu SHAPE=tiny BATCH=1024 SAMPLES=2048 REPEATS=1 BARE=(--bare-samples 8192) EPOCH_PRECISIONS=(bf16)
  USERS=300 ITEMS=200 TESTS=()
else
  DEVICE=cuda SHAPE=ml-20m BATCH=1048576 SAMPLES=20971520 REPEATS=3 BARE=() EPOCH_PRECISIONS=(bf16 fp16)
  USERS=138493 ITEMS=26744 TESTS=(tests/test_precision.py tests/test_model.py tests/test_train.py tests/test_find_batch.py)
  nvidia-smi -L
fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
data=(--dataset synthetic --synthetic-users "$USERS" --synthetic-items "$ITEMS" --synthetic-interactions 20
  --data-dir "${TMPDIR:-/tmp}/scalerec-gpu-check")
for precision in bf16 fp16; do
  step "train, $precision"
  "$PY" -m scalerec train "${data[@]}" --device "$DEVICE" --precision "$precision" --epochs 1 \
    --batch-size 4096 --output "${TMPDIR:-/tmp}/scalerec-gpu-check/train-$precision-$$"
done
step "bare step, fp32 bf16 fp16"
(cd benchmarks && "$PY" step_speed.py --device "$DEVICE" --shapes "$SHAPE" --batch-sizes "$BATCH" \
  --samples "$SAMPLES" --repeats "$REPEATS" --precisions fp32 bf16 fp16) | tee -a "$LOG"
for precision in "${EPOCH_PRECISIONS[@]}"; do
  step "full epoch vs bare step, $precision"
  (cd benchmarks && "$PY" train_throughput.py --device "$DEVICE" --shape "$SHAPE" --batch-sizes "$BATCH" \
    --epochs 2 --precision "$precision" --data-dir "${TMPDIR:-/tmp}/scalerec-gpu-check" "${BARE[@]}") | tee -a "$LOG"
done
step "find-batch, bf16"
"$PY" -m scalerec find-batch "${data[@]}" --device "$DEVICE" --precision bf16
if [ ${#TESTS[@]} -gt 0 ]; then  # last: a failing test must not cost the measurements
  step "tests"
  "$PY" -m pytest -q "${TESTS[@]}" || echo "TESTS FAILED (exit $?)"
fi
step "done; JSON lines in $LOG, the whole output in ${OUT:-/tmp}/gpu_check.log"
