#!/usr/bin/env bash
# Checks that train.py resumes bit for bit, on this machine only (CPU, gloo over loopback):
#   1. two ranks, 60 steps, troupe checkpoints every 20 steps into attempt-0;
#   2. two ranks, 40 steps into a fresh attempt-0, step-40 committed (moved) as troupe does, then
#      resumed from it to step 60: the final weights equal run 1's;
#   3. --checkpoint-file (no troupe): 30 steps, then on to 60 with the same file: the final
#      weights equal those of a straight 60-step single-process run.
# Prints PASS/FAIL per check; exits 1 if any fails. Every process is bounded by `timeout 300`.
set -euo pipefail

PY=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TRAIN="$HERE/train.py"
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/troupe-check-resume.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
FAILED=0

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILED=1; }

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# run_two LOGPREFIX ENV... -- ARGS...: rank 0 and rank 1 of one job; logs LOGPREFIX.rank-<r>.
run_two() {
  local log=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local port; port=$(free_port)
  local pids=() r rc=0
  for r in 0 1; do
    env -u TROUPE_RESUME_DIR -u TROUPE_RESUME_STEP "${envs[@]}" RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 GROUP_RANK=0 \
      MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" \
      timeout 300 "$PY" "$TRAIN" "$@" >"$log.rank-$r" 2>&1 &
    pids+=($!)
  done
  for r in 0 1; do
    wait "${pids[$r]}" || { rc=$?; echo "rank $r exited $rc; its log:"; tail -n 20 "$log.rank-$r"; }
  done
  return $rc
}

# run_one LOG ENV... -- ARGS...: a single process (no WORLD_SIZE).
run_one() {
  local log=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  local rc=0
  env -u WORLD_SIZE -u RANK -u LOCAL_RANK -u TROUPE_CHECKPOINT_DIR -u TROUPE_RESUME_DIR -u TROUPE_RESUME_STEP \
    "${envs[@]}" timeout 300 "$PY" "$TRAIN" "$@" >"$log" 2>&1 || rc=$?
  if [[ $rc != 0 ]]; then echo "exited $rc; its log:"; tail -n 20 "$log"; fi
  return $rc
}

sha_of() { sed -n 's/^final-weights-sha256 //p' "$1"; }

# --- 1. two ranks straight to 60 -------------------------------------------------------------
C1="$ROOT/run1"
mkdir -p "$C1"
t0=$(date +%s.%N)
if run_two "$C1/log" TROUPE_CHECKPOINT_DIR="$C1/attempt-0" -- --steps 60 --checkpoint-every 20; then
  t1=$(date +%s.%N)
  SHA1=$(sha_of "$C1/log.rank-0")
  markers=$(cd "$C1/attempt-0" && find step-* \( -name 'rank-*.done' -o -name state.pt \) 2>/dev/null | LC_ALL=C sort | tr '\n' ' ') || markers=''
  want="step-20/rank-0.done step-20/rank-0/state.pt step-20/rank-1.done step-20/rank-1/state.pt step-40/rank-0.done step-40/rank-0/state.pt step-40/rank-1.done step-40/rank-1/state.pt step-60/rank-0.done step-60/rank-0/state.pt step-60/rank-1.done step-60/rank-1/state.pt "
  if [[ -n $SHA1 && $markers == "$want" ]] && grep -qx 'step 60' "$C1/log.rank-1"; then
    pass "1. two ranks, 60 steps: sha256 $SHA1, checkpoints at 20/40/60 for both ranks ($(echo "$t1 - $t0" | bc) s)"
  else
    fail "1. two ranks, 60 steps: sha256 '${SHA1}', checkpoint files: $markers"
  fi
else
  SHA1=""
  fail "1. two ranks, 60 steps: a rank failed"
fi

# --- 2. two ranks to 40, commit step-40, resume to 60 ----------------------------------------
C2="$ROOT/run2"
mkdir -p "$C2"
if run_two "$C2/log-a" TROUPE_CHECKPOINT_DIR="$C2/attempt-0" -- --steps 40 --checkpoint-every 20 \
  && [[ -f $C2/attempt-0/step-40/rank-0.done && -f $C2/attempt-0/step-40/rank-1.done ]] \
  && mv "$C2/attempt-0/step-40" "$C2/step-40" \
  && run_two "$C2/log-b" TROUPE_CHECKPOINT_DIR="$C2/attempt-1" TROUPE_RESUME_DIR="$C2/step-40" \
       TROUPE_RESUME_STEP=40 TROUPE_ATTEMPT=1 TORCHELASTIC_RESTART_COUNT=1 -- --steps 60 --checkpoint-every 20; then
  SHA2=$(sha_of "$C2/log-b.rank-0")
  if grep -qx 'resumed from step 40' "$C2/log-b.rank-0" && grep -qx 'resumed from step 40' "$C2/log-b.rank-1" \
    && ! grep -q '^step \(1\|2\|3\)\?[0-9] ' "$C2/log-b.rank-0" && [[ -n $SHA2 && $SHA2 == "$SHA1" ]]; then
    pass "2. resume from committed step-40 to 60: sha256 equals run 1's"
  else
    fail "2. resume from committed step-40 to 60: sha256 '${SHA2}' vs run 1 '${SHA1}'"
  fi
else
  fail "2. resume from committed step-40 to 60: a run failed or step-40 was not complete"
fi

# --- 3. --checkpoint-file: 30 steps, then on to 60 -------------------------------------------
C3="$ROOT/run3"
mkdir -p "$C3"
if run_one "$C3/straight" -- --steps 60 --checkpoint-every 20 \
  && run_one "$C3/first" -- --steps 30 --checkpoint-every 20 --checkpoint-file "$C3/ckpt.pt" \
  && run_one "$C3/second" -- --steps 60 --checkpoint-every 20 --checkpoint-file "$C3/ckpt.pt"; then
  SHA3=$(sha_of "$C3/straight")
  SHA3B=$(sha_of "$C3/second")
  if grep -qx 'resumed from step 30' "$C3/second" && [[ -n $SHA3 && $SHA3 == "$SHA3B" ]]; then
    pass "3. --checkpoint-file 30 then 60: sha256 equals the straight run's ($SHA3)"
  else
    fail "3. --checkpoint-file 30 then 60: sha256 '${SHA3B}' vs straight '${SHA3}'"
  fi
else
  fail "3. --checkpoint-file 30 then 60: a run failed"
fi

exit $FAILED
