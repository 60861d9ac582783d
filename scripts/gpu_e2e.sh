#!/bin/bash
# gpu_e2e.sh: the GPU path end to end on a machine with an NVIDIA GPU, from the repository root:
# a one-node cluster on the machine's GPUs (configs/gpu.yaml, gpus: auto), the training example on
# a GPU slice (examples/training/job-gpu.yaml), then its checkpoint served by two process-backend
# replicas, each on a GPU slice (examples/serving/service-gpu.yaml), through the OpenAI gateway:
# one chat completion, one stream, 400 completions 8 at a time (codes and p50/p99 printed), which
# processes hold GPU memory, the metered usage and each replica's first log lines.
#   scripts/gpu_e2e.sh [TROUPE_BIN]     TROUPE_BIN: default build/cli/troupe
# PYTHON (default python3): the interpreter with a CUDA-enabled torch on the GPU machine;
# TROUPE_CONFIG (default configs/gpu.yaml): the cluster file.
# Exit status: 0 when the job succeeded, both replicas became ready and every request answered 200.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${1:-$ROOT/build/cli/troupe}
PY=${PYTHON:-python3}
CFG=${TROUPE_CONFIG:-$ROOT/configs/gpu.yaml}  # a config with simulated GPUs tries the script without one
OUTDIR=${OUT:-$(mktemp -d)}
work=$(mktemp -d)
trap '"$T" down -c "$CFG" >/dev/null 2>&1; rm -rf "$work"' EXIT
# The specs name `python3`: use $PYTHON instead, and the specs' own directories.
sed -e "s|\[python3,|[$PY,|" -e "s|working_dir: .|working_dir: $ROOT/examples/training|" \
  "$ROOT/examples/training/job-gpu.yaml" > "$work/job.yaml"
sed -e "s|\[python3,|[$PY,|" -e "s|working_dir: .|working_dir: $ROOT/examples/serving|" \
  "$ROOT/examples/serving/service-gpu.yaml" > "$work/service.yaml"
now() { date +%s%N; }
ms_since() { echo $(( ($(now) - $1) / 1000000 )); }

rm -rf /tmp/troupe-gpu
setsid "$T" up -c "$CFG" > "$OUTDIR/up.log" 2>&1 &
for _ in $(seq 1 100); do "$T" status -c "$CFG" 2>/dev/null | grep -q alive && break; sleep 0.2; done
"$T" status -c "$CFG" && "$T" slices -c "$CFG" || { echo "the cluster did not start: $OUTDIR/up.log"; exit 1; }
failed=0

echo "== the training example on a GPU slice"
t0=$(now)
timeout 400 "$T" job submit -c "$CFG" "$work/job.yaml" --wait 2>&1 | tail -4
echo "job: $(ms_since "$t0") ms from submit to its end"
"$T" job show -c "$CFG" gpu-char-lm | head -8
"$T" job show -c "$CFG" gpu-char-lm | grep -q succeeded || failed=1

echo "== its checkpoint served by 2 replicas, each on a GPU slice"
t0=$(now)
timeout 240 "$T" serve deploy -c "$CFG" "$work/service.yaml" --wait --wait-timeout 200 2>&1 | tail -3
echo "deploy: $(ms_since "$t0") ms until both replicas were ready"
"$T" serve show -c "$CFG" charlm | head -8
"$T" serve show -c "$CFG" charlm | grep -q "2 of 2 replicas ready" || failed=1
"$T" tenant create default -c "$CFG" >/dev/null 2>&1
KEY=$("$T" key create -c "$CFG" --tenant default 2>/dev/null | grep -o 'tk-[A-Za-z0-9-]*' | head -n 1)
URL=http://127.0.0.1:7480/v1
curl -s -m 60 "$URL/chat/completions" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"model":"charlm","messages":[{"role":"user","content":"This License"}],"max_tokens":40,"temperature":0}'
echo
curl -s -N -m 60 "$URL/completions" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"model":"charlm","prompt":"Permission is","max_tokens":8,"stream":true}' | head -4

echo "== 400 completions of 16 tokens, 8 at a time"
seq 1 400 | xargs -P 8 -I{} curl -s -o /dev/null -m 60 -w '%{http_code} %{time_total}\n' "$URL/completions" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"model":"charlm","prompt":"The","max_tokens":16}' > "$OUTDIR/load.txt"
awk '{c[$1]++} END {for (k in c) print "HTTP", k, c[k]}' "$OUTDIR/load.txt"
sort -n -k2 "$OUTDIR/load.txt" | awk '{a[NR]=$2} END {print "latency p50", a[int(NR*0.5)], "s, p99", a[int(NR*0.99)], "s"}'
[ "$(grep -c '^200 ' "$OUTDIR/load.txt")" -eq 400 ] || failed=1
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv 2>&1 | head -6
"$T" usage -c "$CFG" 2>&1 | head -4
for f in $(find /tmp/troupe-gpu -path '*serving*' -name '*.log'); do echo "-- $f"; head -2 "$f"; done
echo "== gpu_e2e: $([ $failed -eq 0 ] && echo passed || echo FAILED)"
exit $failed
