#!/usr/bin/env bash
# Benchmark: `kiln build` (kernel already cached) against the two baselines
# named in the foundation issue, on the same content:
#   1. `find | cpio -o -H newc | zstd -T0` over kiln's own staged tree;
#   2. Debian's mkinitramfs for the same kernel with the same modules.
# Prints a table of wall time, initramfs size and the ratio of each time to
# the pipeline's, every row measured in the same run. Needs root
# (mkinitramfs reads /lib/modules/<release>; a temporary link is made and
# removed).
#
# Rows: kiln assembling the archive (its archive cache cleared), an
# unchanged rebuild, a rebuild whose only change is one payload (/init, the
# runtime, given as KILN_RUNTIME: a copy that differs in its last byte at
# every run), and with BASELINE_KILN=<path of another kiln binary> the same
# three for that binary (e.g. the previous release), interleaved with
# kiln's own runs.
#
# Usage: [BASELINE_KILN=PATH] bench/build.sh [IMAGE.toml] [RUNS]
#        (default: bench/hello-initramfs.toml, 5 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-bench/hello-initramfs.toml}
runs=${2:-5}
tests/setup >/dev/null

cargo build --release -q -p kiln
kiln=target/x86_64-unknown-linux-gnu/release/kiln
work=$(mktemp -d)
cleanup() {
  [[ -n ${linked:-} ]] && rm -f "/lib/modules/$release"
  [[ -n ${linked_config:-} ]] && rm -f "/boot/config-$release"
  rm -rf "$work"
}
trap cleanup EXIT

# Warm up: download/unpack the kernel and build the runtime once.
$kiln build "$image" -o "$work/out" --json >"$work/manifest.json" 2>/dev/null
release=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kernel"]["release"])' "$work/manifest.json")
cache=${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
initramfs=$(ls "$work/out"/initramfs.cpio.*)

# Builds whose archive is new leave it in the cache: removed at exit.
touch "$work/started"
cleanup_archives() { find "$cache/initramfs" -type f -newer "$work/started" -delete 2>/dev/null || true; }
trap 'cleanup_archives; cleanup' EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
time_runs() { # label, command...
  local t0 t1
  for _ in $(seq "$runs"); do
    t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
  done | median
}

# kiln's tree, for the pipeline; its /init, as a payload to change.
mkdir "$work/tree"
(cd "$work/tree" && zstd -dc "$initramfs" | cpio -idm --quiet 2>/dev/null)
cp "$work/tree/init" "$work/runtime"
touch -d '1 hour ago' "$work/runtime"

# kiln, assembling the initramfs each time (its archive cache cleared).
full() { rm -rf "$cache/initramfs"; "$1" build "$image" -o "$work/out" --json; }
# kiln, unchanged rebuild (archive cache hit).
warm() { "$1" build "$image" -o "$work/out" --json; }
# kiln, one payload changed: /init differs in its last byte at every run.
changed() {
  printf '%s' "$RANDOM" >>"$work/runtime"
  KILN_RUNTIME="$work/runtime" "$1" build "$image" -o "$work/out" --json
}
kiln_size=$(stat -c %s "$initramfs")
# Baseline 1: the classic pipeline over the same tree.
pipeline() { (cd "$work/tree" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | zstd -T0 -q -f -o "$work/pipeline.cpio.zst"); }

# Every method once per round, rounds interleaved, so that the load of
# the (shared) machine weighs on all of them alike; medians per method.
methods=(pipeline "full $kiln" "warm $kiln" "changed $kiln")
if [[ -n ${BASELINE_KILN:-} ]]; then
  warm "$BASELINE_KILN" >/dev/null 2>&1
  methods+=("full $BASELINE_KILN" "warm $BASELINE_KILN" "changed $BASELINE_KILN")
fi
declare -A times
for _ in $(seq "$runs"); do
  for m in "${methods[@]}"; do
    t0=$(now); $m >/dev/null 2>&1; t1=$(now)
    times[$m]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') "
  done
done
med() { tr ' ' '\n' <<<"${times[$1]}" | grep . | median; }
pipe_t=$(med pipeline)
kiln_full_t=$(med "full $kiln")
kiln_warm_t=$(med "warm $kiln")
kiln_changed_t=$(med "changed $kiln")
if [[ -n ${BASELINE_KILN:-} ]]; then
  base_full_t=$(med "full $BASELINE_KILN")
  base_warm_t=$(med "warm $BASELINE_KILN")
  base_changed_t=$(med "changed $BASELINE_KILN")
fi
pipe_size=$(stat -c %s "$work/pipeline.cpio.zst")

# Baseline 2: mkinitramfs with the same modules (MODULES=list).
mods_src=$(ls -d "$cache"/kernels/*/root/lib/modules/"$release" | head -n1)
mods=$(python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1]))["modules"]))' "$work/manifest.json")
mkdir -p "$work/mkroot/lib/modules" "$work/conf/scripts" "$work/conf/hooks" "$work/conf/conf.d"
cp -a "$mods_src" "$work/mkroot/lib/modules/"
depmod -b "$work/mkroot" "$release"
if [[ ! -e /lib/modules/$release ]]; then
  mkdir -p /lib/modules
  ln -s "$work/mkroot/lib/modules/$release" "/lib/modules/$release"
  linked=1
fi
# mkinitramfs reads the kernel config to check the compression.
if [[ ! -e /boot/config-$release ]]; then
  mkdir -p /boot
  ln -s "$(dirname "$(dirname "$(dirname "$mods_src")")")/boot/config-$release" "/boot/config-$release"
  linked_config=1
fi
printf 'MODULES=list\nBUSYBOX=auto\nCOMPRESS=zstd\nRESUME=none\n' >"$work/conf/initramfs.conf"
echo "$mods" >"$work/conf/modules"
mkinit() { mkinitramfs -d "$work/conf" -o "$work/mkinitramfs.img" "$release"; }
mkinit >/dev/null 2>"$work/mkinit.err" || { echo "mkinitramfs failed:" >&2; cat "$work/mkinit.err" >&2; exit 1; }
mk_t=$(time_runs mkinit)
mk_size=$(stat -c %s "$work/mkinitramfs.img")

printf '\n%s (%s), median of %s runs, kernel %s\n\n' "$(basename "$image")" "$(nproc) cores" "$runs" "$release"
printf '| %-44s | %9s | %12s | %10s |\n' "method" "time (s)" "size (bytes)" "× pipeline"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..11})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..12})"
row() { # label, time, size
  printf '| %-44s | %9.3f | %12d | %10.2f |\n' "$1" "$2" "$3" "$(awk -v a="$2" -v b="$pipe_t" 'BEGIN { print a / b }')"
}
row "kiln build (archive assembled)" "$kiln_full_t" "$kiln_size"
row "kiln build (unchanged rebuild)" "$kiln_warm_t" "$kiln_size"
row "kiln build (one payload changed)" "$kiln_changed_t" "$kiln_size"
if [[ -n ${BASELINE_KILN:-} ]]; then
  row "baseline kiln (archive assembled)" "$base_full_t" "$kiln_size"
  row "baseline kiln (unchanged rebuild)" "$base_warm_t" "$kiln_size"
  row "baseline kiln (one payload changed)" "$base_changed_t" "$kiln_size"
fi
row "find | cpio -o -H newc | zstd -T0" "$pipe_t" "$pipe_size"
row "mkinitramfs (MODULES=list, zstd)" "$mk_t" "$mk_size"
