#!/usr/bin/env bash
# The GPU measurements in one go, run from the repository root on a machine with a GPU: about 5 minutes on an
# H100/H200, with the machine's python3 and its torch (no install). Writes the JSON lines to
# $OUT/gpu_check.jsonl and all output to $OUT/gpu_check.log where $OUT is set, else to /tmp.
# PYTHON (default python3) is found from the repository root.
#   1. correctness: scalerec train on the GPU in bf16 and fp16 (fp16 with LAMB: loss scaling on the device);
#   2. the bare step at batch 2^20 on ML-20M's shape, plain PyTorch vs scalerec, fp32 / bf16 / fp16;
#   3. the full epoch vs the bare step at 2^20 in bf16 and fp16, with peak GPU memory;
#   4. the largest batch that fits (find-batch), in bf16;
#   5. the tests that need a GPU (tests/test_gpu.py: resuming across devices, every precision and optimizer, ...).
# A step that fails is said and the next one runs, so that every figure that can be measured is; the script then
# exits 1, naming the failed steps. SMOKE=1 runs the same steps on tiny data on the CPU (tests/test_benchmarks.py).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=$(realpath -s "$(command -v "${PYTHON:-python3}")")  # absolute: the benchmarks run from benchmarks/
LOG=${OUT:-/tmp}/gpu_check.jsonl
DATA_DIR=${TMPDIR:-/tmp}/scalerec-gpu-check  # one synthetic dataset for every step
: >"$LOG"
exec > >(tee "${OUT:-/tmp}/gpu_check.log") 2>&1  # all of it comes back, not only the tool's last 12,000 characters
failed=()
attempt() {  # attempt NAME COMMAND...: run it, and on failure say so and go on
  local name=$1
  shift
  echo "== ${SECONDS}s: $name"
  "$@" || { echo "== FAILED (exit $?): $name"; failed+=("$name"); }
}
if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu SHAPE=tiny BATCH=1024 SAMPLES=2048 REPEATS=1 BARE=(--bare-samples 8192) EPOCH_PRECISIONS=(bf16)
  USERS=300 ITEMS=200 TESTS=()
else
  DEVICE=cuda SHAPE=ml-20m BATCH=1048576 SAMPLES=20971520 REPEATS=3 BARE=() EPOCH_PRECISIONS=(bf16 fp16)
  USERS=138493 ITEMS=26744
  TESTS=(tests/test_gpu.py)  # the others run on the CPU wherever they run (tests/conftest.py)
  nvidia-smi -L
fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
data=(--dataset synthetic --synthetic-users "$USERS" --synthetic-items "$ITEMS" --synthetic-interactions 20
  --data-dir "$DATA_DIR")
train() {  # train PRECISION OPTIMIZER
  "$PY" -m scalerec train "${data[@]}" --device "$DEVICE" --precision "$1" --optimizer "$2" --epochs 1 \
    --batch-size 4096 --output "$DATA_DIR/train-$1-$2-$$"
}
attempt "train, bf16, adam" train bf16 adam
attempt "train, fp16, lamb" train fp16 lamb
bare_step() {
  (cd benchmarks && "$PY" step_speed.py --device "$DEVICE" --shapes "$SHAPE" --batch-sizes "$BATCH" \
    --samples "$SAMPLES" --repeats "$REPEATS" --precisions fp32 bf16 fp16 --data-dir "$DATA_DIR") | tee -a "$LOG"
}
attempt "bare step, fp32 bf16 fp16" bare_step
epoch_vs_step() {
  (cd benchmarks && "$PY" train_throughput.py --device "$DEVICE" --shape "$SHAPE" --batch-sizes "$BATCH" \
    --epochs 2 --precision "$1" --data-dir "$DATA_DIR" "${BARE[@]}") | tee -a "$LOG"
}
for precision in "${EPOCH_PRECISIONS[@]}"; do
  attempt "full epoch vs bare step, $precision" epoch_vs_step "$precision"
done
attempt "find-batch, bf16" "$PY" -m scalerec find-batch "${data[@]}" --device "$DEVICE" --precision bf16
if [ ${#TESTS[@]} -gt 0 ]; then  # last: the measurements come first
  attempt "tests" "$PY" -m pytest -q "${TESTS[@]}"
fi
echo "== ${SECONDS}s: done; JSON lines in $LOG, the whole output in ${OUT:-/tmp}/gpu_check.log"
if [ ${#failed[@]} -gt 0 ]; then
  printf '== failed: %s\n' "${failed[@]}"
  exit 1
fi
