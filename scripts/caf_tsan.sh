#!/usr/bin/env bash
# Builds Debian's CAF (source package actor-framework, the version libcaf-dev is installed at)
# with ThreadSanitizer into DIR/prefix, for the TSan test pass (scripts/bootstrap.sh,
# docs/building.md). Debian's libcaf_core is not instrumented, so under TSan alone every message
# between two actors looks like a data race: the mailbox's synchronisation is inside the library.
#
# Usage: scripts/caf_tsan.sh DIR
# The source comes from Debian's archive (the machine's own apt sources, as deb-src, through a
# private apt state under DIR), checked by apt against the archive's signed index; nothing is
# kept in the tree. A prefix already built for the same version is reused.
set -euo pipefail

dir=${1:?usage: scripts/caf_tsan.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
jobs=${TROUPE_JOBS:-$(nproc)}
log() { printf '\033[1m[caf-tsan]\033[0m %s\n' "$*" >&2; }

version=$(dpkg-query -W -f='${source:Version}' libcaf-dev 2>/dev/null || true)
if [ -z "$version" ]; then
  log "libcaf-dev is not installed: install it first (scripts/bootstrap.sh does)"
  exit 1
fi
stamp="$dir/prefix/.troupe-caf-version"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ] && [ -f "$dir/prefix/lib/libcaf_core.so" ]; then
  log "CAF $version with ThreadSanitizer is built in $dir/prefix"
  exit 0
fi

# A private apt state with the machine's Debian sources as deb-src: the system's lists and
# sources are left as they are.
apt_dir="$dir/apt"
rm -rf "$apt_dir"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/src"
sources="$apt_dir/sources.list"
: >"$sources"
# deb822 (.sources) and one-line (.list) entries alike: every Debian URI and suite of type deb.
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  case "$f" in
  *.sources)
    awk 'BEGIN { RS=""; FS="\n" }
      { types=""; uris=""; suites=""; comps=""; signed=""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/) types=$i; if ($i ~ /^URIs:/) uris=$i; if ($i ~ /^Suites:/) suites=$i
          if ($i ~ /^Components:/) comps=$i; if ($i ~ /^Signed-By:/) signed=$i }
        if (types !~ /deb/ || uris !~ /debian/) next
        sub(/^URIs: */, "", uris); sub(/^Suites: */, "", suites); sub(/^Components: */, "", comps)
        sub(/^Signed-By: */, "", signed)
        opt = signed == "" ? "" : "[signed-by=" signed "] "
        n = split(uris, u, " "); m = split(suites, s, " ")
        for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print "deb-src " opt u[a] " " s[b] " " comps }' "$f" >>"$sources"
    ;;
  *)
    sed -n 's/^deb \(.*debian.*\)$/deb-src \1/p' "$f" >>"$sources"
    ;;
  esac
done
if [ ! -s "$sources" ]; then
  log "no Debian archive in /etc/apt/sources*: cannot fetch CAF's source"
  exit 1
fi
apt_opts=(-q -o "Dir::Etc::SourceList=$sources" -o Dir::Etc::SourceParts=/nonexistent
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
log "fetching the source of actor-framework $version from Debian"
apt-get "${apt_opts[@]}" update >"$apt_dir/update.log" 2>&1 || {
  tail -n 20 "$apt_dir/update.log" >&2
  log "apt-get update (deb-src) failed"
  exit 1
}
# Only the upstream tarball is needed (Debian's packaging is not used to build it). apt prints
# each file with its SHA256 from the signed index; the tarball is fetched and checked by apt.
uris=$(cd "$apt_dir/src" && apt-get "${apt_opts[@]}" source --print-uris "actor-framework=$version")
line=$(printf '%s\n' "$uris" | grep "\.orig\.tar\." | head -n 1)
if [ -z "$line" ]; then
  printf '%s\n' "$uris" >&2
  log "Debian's index lists no upstream tarball for actor-framework $version"
  exit 1
fi
uri=$(printf '%s' "$line" | awk '{ print $1 }' | tr -d "'")
file=$(printf '%s' "$line" | awk '{ print $2 }')
hash=$(printf '%s' "$line" | awk '{ print $4 }')
/usr/lib/apt/apt-helper "${apt_opts[@]}" download-file "$uri" "$apt_dir/src/$file" "$hash" >&2
rm -rf "$dir/src"
mkdir -p "$dir/src"
tar -xf "$apt_dir/src/$file" -C "$dir/src" --strip-components=1

# The libraries troupe links (core, io), nothing else; log level QUIET as Debian's.
# `-include limits` stands in for Debian's one patch to the source: its headers differ from the
# upstream tarball's only by an `#include <limits>` in caf/io/network/receive_buffer.hpp, which
# GCC 12 needs. troupe compiles against Debian's installed headers and links these libraries.
log "building CAF $version with ThreadSanitizer ($jobs jobs)"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
rm -rf "$dir/build" "$dir/prefix"
cmake -S "$dir/src" -B "$dir/build" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -include limits" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" \
  -DCAF_NO_EXAMPLES=yes -DCAF_NO_UNIT_TESTS=yes -DCAF_NO_OPENSSL=yes -DCAF_NO_TOOLS=yes \
  -DCAF_NO_PYTHON=yes -DCAF_NO_OPENCL=yes -DCAF_NO_SUMMARY=yes -DCAF_LOG_LEVEL=QUIET \
  -DCMAKE_INSTALL_PREFIX="$dir/prefix" >"$dir/configure.log" 2>&1 || {
  tail -n 30 "$dir/configure.log" >&2
  exit 1
}
cmake --build "$dir/build" -j "$jobs"
cmake --install "$dir/build" >/dev/null
# troupe uses Debian's headers with these libraries: the build options they record must agree.
if ! cmp -s "$dir/prefix/include/caf/detail/build_config.hpp" /usr/include/caf/detail/build_config.hpp; then
  diff "$dir/prefix/include/caf/detail/build_config.hpp" /usr/include/caf/detail/build_config.hpp >&2 || true
  log "the build's caf/detail/build_config.hpp differs from Debian's: the libraries would not match its headers"
  exit 1
fi
echo "$version" >"$stamp"
log "CAF $version with ThreadSanitizer is in $dir/prefix"
