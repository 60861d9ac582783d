#!/usr/bin/env bash
# gpu_check.sh: runs troupe's GPU checks on a GPU machine, each under a time limit, printing
# everything: gpu_test (GPU slices), nccl_communicator_test (NCCL communicator),
# nccl_actor_worker_test (actor workers over NCCL, 2 GPUs) and nccl_bench (full). Run from the
# repository root:
#   scripts/gpu_check.sh [BIN_DIR]        BIN_DIR: a build directory (default: build)
# Binaries are looked up as BIN_DIR/tests/<name>, BIN_DIR/bench/collectives/nccl_bench, then
# BIN_DIR/<name>. CUDA and NCCL come from LD_LIBRARY_PATH (e.g. a Python venv's
# nvidia/cuda_runtime/lib and nvidia/nccl/lib); NCCL_DEBUG=WARN is set unless given.
# Limits: 60 + 180 + 180 s, inside the device tool's 10-minute command limit.
# Exit status: the number of checks that failed (a timeout counts as a failure).
set -u
BIN_DIR="${1:-build}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
OUT_DIR="${OUT:-/tmp}"

find_bin() {  # name subdir
  for p in "$BIN_DIR/$2/$1" "$BIN_DIR/$1"; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}

failed=0
run() {  # limit_s label command...
  local limit="$1" label="$2"; shift 2
  echo "=== $label (limit ${limit}s): $* ==="
  local start=$(date +%s%N)
  timeout --signal=TERM --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "=== $label: exit $rc after $(( ($(date +%s%N) - start) / 1000000 )) ms$([ $rc -eq 124 ] && echo ' (TIMED OUT)') ==="
  [ $rc -ne 0 ] && failed=$((failed + 1))
  return 0
}

# Where libcudart.so.13 or libnccl.so.2 are not found, add the folders that hold them in Python's
# site-packages (nvidia-cuda-runtime and nvidia-nccl-cu13 wheels: no /usr/local/cuda there).
if bin=$(find_bin nccl_communicator_test tests) && ldd "$bin" | grep -q "not found"; then
  sites=$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
  for lib in libcudart.so.13 libnccl.so.2; do
    dir=$(find $sites -name "$lib" 2>/dev/null | head -1 | xargs -r dirname)
    [ -n "$dir" ] && export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
fi

echo "=== machine ==="
nvidia-smi -L 2>&1 || echo "nvidia-smi not found"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
for name in gpu_test nccl_communicator_test; do
  bin=$(find_bin "$name" tests) && ldd "$bin" | grep -E "cudart|nccl|not found"
done

if bin=$(find_bin gpu_test tests); then run 60 gpu_test "$bin"; else echo "gpu_test not found under $BIN_DIR"; failed=$((failed + 1)); fi
if bin=$(find_bin nccl_communicator_test tests); then
  run 180 nccl_communicator_test "$bin" --gtest_color=no
else
  echo "nccl_communicator_test not found under $BIN_DIR"; failed=$((failed + 1))
fi
# Actor workers' NCCL groups (actors/training/worker_communicators.h); needs 2 GPUs, skips below.
if bin=$(find_bin nccl_actor_worker_test tests); then
  run 120 nccl_actor_worker_test "$bin" --gtest_color=no
else
  echo "nccl_actor_worker_test not found under $BIN_DIR"; failed=$((failed + 1))
fi
if bin=$(find_bin nccl_bench bench/collectives); then
  run 180 nccl_bench "$bin" --json "$OUT_DIR/nccl_bench.json"
  [ -f "$OUT_DIR/nccl_bench.json" ] && cat "$OUT_DIR/nccl_bench.json"
else
  echo "nccl_bench not found under $BIN_DIR"; failed=$((failed + 1))
fi
echo "=== gpu_check: $failed check(s) failed ==="
exit "$failed"
