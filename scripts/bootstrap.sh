#!/usr/bin/env bash
# troupe set-up on Debian bookworm: installs the packages, builds, then runs the demo or
# every test. Usage: scripts/bootstrap.sh run|test|build [extra args for run]
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${TROUPE_BUILD_DIR:-$ROOT/build}
JOBS=${TROUPE_JOBS:-$(nproc)}
# ccache keys on paths relative to the checkout, so a fresh clone in another folder (as CI makes)
# reuses what an earlier build compiled; debug info then names relative paths.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT}
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}

# Everything troupe builds and tests with, as Debian bookworm packages.
PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache coreutils
  libcaf-dev libucx-dev ucx-utils libcapnp-dev capnproto liblmdb-dev prometheus-cpp-dev
  libyaml-cpp-dev libspdlog-dev libfmt-dev libssl-dev
  libcli11-dev nlohmann-json3-dev libboost-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libgloo-dev
  prometheus iproute2
  wrk
  clang libclang-rt-14-dev
  python3-torch
)

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "all ${#PACKAGES[@]} packages are installed"
    return
  fi
  log "installing ${#missing[@]} packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# build DIR [cmake args...]: configures and builds troupe in DIR.
build() {
  local dir=$1
  shift
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  if [ -f "$dir/CMakeCache.txt" ] && ! grep -q "CMAKE_GENERATOR:INTERNAL=${generator[1]:-Unix Makefiles}" "$dir/CMakeCache.txt"; then
    log "$dir uses another generator; starting it afresh"
    rm -rf "$dir"
  fi
  log "configuring in $dir"
  cmake -S "$ROOT" -B "$dir" "${generator[@]}" "$@" ${TROUPE_CMAKE_ARGS:-}
  log "building in $dir with $JOBS jobs"
  cmake --build "$dir" -j "$JOBS"
}

# The libFuzzer targets (tests/fuzz), each for TROUPE_FUZZ_SECONDS (default 12: six targets, 72 s) on its seed
# corpus: a short run that catches regressions. A crash, leak or sanitizer report fails the
# test command. Long runs: docs/fuzzing.md.
run_fuzz() {
  if [ "${TROUPE_SKIP_SANITIZERS:-0}" = "1" ] || [ "${TROUPE_SKIP_FUZZ:-0}" = "1" ]; then
    log "TROUPE_SKIP_SANITIZERS or TROUPE_SKIP_FUZZ is 1: skipping the fuzz targets"
    return
  fi
  local dir="$BUILD_DIR-fuzz"
  local seconds=${TROUPE_FUZZ_SECONDS:-12}
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  log "configuring the fuzz targets in $dir (clang, libFuzzer, ASan/UBSan)"
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTROUPE_FUZZ=ON -DTROUPE_BUILD_TESTS=OFF -DTROUPE_BUILD_BENCH=OFF -DTROUPE_WERROR=OFF
  cmake --build "$dir" -j "$JOBS" --target fuzz
  local target work
  for target in config_fuzz envelope_fuzz batch_fuzz codec_fuzz stored_record_fuzz openai_fuzz; do
    log "fuzzing $target for ${seconds}s"
    # New inputs go to a scratch directory; the checked-in corpus is only read. Stdin is
    # /dev/null: a generated config may name /dev/stdin as its token_file.
    work=$(mktemp -d)
    if ! UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:suppressions=$ROOT/tests/ubsan.supp \
      "$dir/tests/fuzz/$target" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="$dir/$target-" "$work" "$ROOT/tests/fuzz/corpus/$target" </dev/null >"$dir/$target.log" 2>&1; then
      tail -n 60 "$dir/$target.log" >&2
      rm -rf "$work"
      log "$target found a crash: the input is $dir/$target-crash-* (docs/fuzzing.md)"
      return 1
    fi
    rm -rf "$work"
    # The figures libFuzzer reports: executions, coverage (cov, ft), corpus size.
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::number_of_executed_units|^stat::peak_rss_mb' "$dir/$target.log" >&2 || true
  done
}

# The Node.js packages of the end-to-end tests (tests/node: the official OpenAI client), at the
# versions package-lock.json pins, from the npm registry; again only when the lock changed.
install_node_packages() {
  local dir="$ROOT/tests/node"
  # Node.js and npm: the machine's own if it has them (a nodejs build that bundles npm conflicts
  # with Debian's npm package), else Debian's.
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing Node.js and npm (Debian's nodejs, npm)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
  fi
  if [ -f "$dir/node_modules/.package-lock.json" ] && cmp -s "$dir/package-lock.json" "$dir/node_modules/.troupe-lock"; then
    log "the Node.js test packages are installed"
    return
  fi
  log "installing the Node.js test packages (npm ci in tests/node)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$dir/package-lock.json" "$dir/node_modules/.troupe-lock"
}

run_tests() {
  install_node_packages
  log "running every test"
  # Integration tests start real processes and time failure detection: run them one at a time.
  ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 600
  run_fuzz
  if [ "${TROUPE_SKIP_SANITIZERS:-0}" = "1" ]; then
    log "TROUPE_SKIP_SANITIZERS=1: skipping the ASan/UBSan pass"
    return
  fi
  # The same unit and integration tests (bad input from hostile peers included) under
  # AddressSanitizer and UndefinedBehaviorSanitizer; the benchmark is left out, and so are the
  # end-to-end tests with PyTorch (label e2e): they run once, in the release pass above.
  build "$BUILD_DIR-asan" -DCMAKE_BUILD_TYPE=Debug -DTROUPE_ASAN=ON -DTROUPE_BUILD_BENCH=OFF
  log "running the unit and integration tests under ASan/UBSan"
  # tests/ubsan.supp and tests/lsan.supp name the third-party reports they silence (CAF's headers,
  # a leak inside Gloo), and why.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  LSAN_OPTIONS=suppressions=$ROOT/tests/lsan.supp \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$ROOT/tests/ubsan.supp \
    ctest --test-dir "$BUILD_DIR-asan" --output-on-failure --timeout 600 -LE "bench|e2e"
  # And under ThreadSanitizer. UCX's memory-event hooks patch mmap/malloc, which TSan's
  # interceptors cannot share a process with; troupe does not use UCX memory events.
  # The tests labelled caf need a CAF built with TSan (Debian's libcaf_core is not
  # instrumented, so TSan would not see the synchronisation inside CAF's mailboxes):
  # scripts/caf_tsan.sh builds Debian's CAF source with it. Where that source cannot be
  # fetched, the pass runs without them and says so. End-to-end tests with PyTorch (label e2e)
  # run once, in the release pass.
  local caf_args=(-DTROUPE_CAF_TSAN=OFF -DTROUPE_CAF_ROOT=) exclude="bench|caf|e2e"
  if [ "${TROUPE_TSAN_CAF:-1}" = "1" ] && bash "$ROOT/scripts/caf_tsan.sh" "$BUILD_DIR-caf-tsan"; then
    caf_args=(-DTROUPE_CAF_TSAN=ON "-DTROUPE_CAF_ROOT=$BUILD_DIR-caf-tsan/prefix")
    exclude="bench|e2e"
  else
    log "WARNING: no CAF built with ThreadSanitizer: the tests labelled caf are left out of the TSan pass"
  fi
  # -U: the CAF libraries are looked up again whenever TROUPE_CAF_ROOT changes.
  build "$BUILD_DIR-tsan" -DCMAKE_BUILD_TYPE=Debug -DTROUPE_TSAN=ON -DTROUPE_BUILD_BENCH=OFF \
    -U 'TROUPE_CAF_*_LIB' "${caf_args[@]}"
  log "running the unit and integration tests under TSan (leaving out: $exclude)"
  # tests/tsan.supp names the third-party reports it silences (spdlog's registry), and why.
  UCX_MEM_EVENTS=no UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none \
  TSAN_OPTIONS=halt_on_error=1:suppressions=$ROOT/tests/tsan.supp \
    ctest --test-dir "$BUILD_DIR-tsan" --output-on-failure --timeout 900 -LE "$exclude"
}

# troupe's main job on the embedded default: the local cluster of configs/local.yaml (a head, two
# nodes with simulated GPUs, the OpenAI-compatible gateway), a sample deployment of the test
# model (examples/serving/service.yaml), a tenant and an API key; prints a working curl line,
# then stays in the foreground until Ctrl-C stops the cluster.
run_main_job() {
  local troupe="$BUILD_DIR/cli/troupe" config="$ROOT/configs/local.yaml"
  log "running troupe's main job: a local cluster from configs/local.yaml with a gateway (Ctrl-C stops it)"
  local data_dir
  data_dir=$(sed -n 's/^  data_dir: //p' "$config" | head -n 1)
  rm -f "$data_dir/gateway.url"
  "$troupe" up -c "$config" "$@" &
  local up=$!
  trap 'kill -TERM $up 2>/dev/null; wait $up; exit 0' INT TERM
  local i
  for i in $(seq 600); do
    [ -s "$data_dir/gateway.url" ] && break
    kill -0 "$up" 2>/dev/null || { log "troupe up exited before the gateway started"; exit 1; }
    sleep 0.1
  done
  [ -s "$data_dir/gateway.url" ] || { log "the gateway did not start within 60 s"; kill -TERM $up; exit 1; }
  local url
  url=$(cat "$data_dir/gateway.url")
  # A deployment, tenant and key of an earlier run are kept in the head's data: deploying or
  # creating again says they exist, which is fine.
  "$troupe" serve deploy -c "$config" "$ROOT/examples/serving/service.yaml" 2>&1 | grep -v "already exists" >&2 || true
  "$troupe" tenant create default -c "$config" 2>&1 | grep -v "already exists" >&2 || true
  local key
  key=$("$troupe" key create -c "$config" --tenant default 2>/dev/null | grep -o 'tk-[A-Za-z0-9-]*' | head -n 1)
  [ -n "$key" ] || { log "could not create an API key"; kill -TERM $up; exit 1; }
  for i in $(seq 300); do
    "$troupe" serve show echo -c "$config" --json 2>/dev/null | grep -q '"state": *"running"' && break
    sleep 0.1
  done
  log "the gateway serves the OpenAI API at $url; model 'echo' (the test model); your key: $key"
  log "try:"
  printf "curl -s %s/v1/chat/completions -H 'Authorization: Bearer %s' -H 'Content-Type: application/json' -d '{\"model\": \"echo\", \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}], \"max_tokens\": 8}'\n" "$url" "$key"
  log "then: $troupe usage -c $config   and   $troupe audit -c $config --verify"
  wait $up
}

command=${1:-}
shift || true
case "$command" in
  run)
    install_packages
    build "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    run_main_job "$@"
    ;;
  test)
    install_packages
    build "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    run_tests
    ;;
  build)
    install_packages
    build "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    ;;
  *)
    echo "usage: $0 run|test|build" >&2
    exit 2
    ;;
esac
