#!/usr/bin/env bash
# Benchmark: the kiln VMM on the emulated target (QEMU TCG q35 with AMD-V,
# the VMM running under the appliance's nested KVM), one appliance per guest:
#   hello     the hello unikernel, PVH entry, 64 MiB
#   linux-1   the Debian cloud kernel (bzImage) + kiln-guest-init, 1 vCPU, 256 MiB
#   linux-2   the same with 2 vCPUs
#   linux-hp  linux-1 with its RAM on 2 MiB huge pages (`hugepages = true`,
#             reserved with `hugepages=128` on the appliance's command line)
# For each: the time from VMM start to the guest's first console byte and
# to its exit, the VM exits taken, and the VMM's resident memory beyond the
# guest's RAM, as the VMM reports them with KILN_VMM_STATS=1 (put on the
# appliance's kernel command line: the kernel hands it to PID 1 as an
# environment variable and every VMM process inherits it).
# The Linux guests boot with loglevel=1, so their first console byte is
# kiln-guest-init's first line: "first output" is VMM start to /init.
# Then the sandbox's cost: hello, linux-1 and flood (hello printing 10000
# bytes, one VM exit each) with the VMM's seccomp filters and without
# (KILN_VMM_SANDBOX=off), runs interleaved. Every appliance runs the
# runtime built with its dev-hooks feature (`--profile runtime-dev`: the
# shipped runtime's settings), the only build that honours that switch, so
# both halves run the same binary.
#
#
# Then the side-by-side table: kiln's VMM against QEMU's `microvm` machine on
# KVM, inside the same emulated target, in interleaved pairs (the harness is
# bench/vmmbench; the method is in docs/benchmarks.md).
#
# Usage: bench/vmm.sh [RUNS] [sandbox] [--pairs N] [--peer-only] [--before KILN-RUNTIME]
#                     [--deadline S] [--prefault]
#   RUNS        median of RUNS boots per guest for the first tables, default 3
#   sandbox     the sandbox comparison alone
#   --pairs N   pairs per setting for the side-by-side table, default 5
#               (issue #17 asks for 20; the recorded run used 10;
#               a pair is 6 boots, 7 with --before)
#   --peer-only only the side-by-side table
#   --before F  also time the static kiln-runtime F (an earlier build) in
#               every pair, for the "kiln today" ratios
#   --deadline S  a side-by-side boot still running after S seconds (default
#               180) is killed, recorded as failed and left out of the ratios
#   --prefault  instead of the side-by-side table, kiln with and without
#               prefaulted guest RAM (KILN_VMM_PREFAULT=1) in pairs: the
#               Linux guest and hello, each on THP and on hugetlbfs RAM
#               (a pair is 8 boots); implies --peer-only
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 only= pairs=5 peer_only= before= deadline=180 mode=
while [ $# -gt 0 ]; do
  case $1 in
  --pairs) pairs=$2; shift 2 ;;
  --deadline) deadline=$2; shift 2 ;;
  --prefault) mode=prefault; peer_only=1; shift ;;
  --peer-only) peer_only=1; shift ;;
  --before) before=$(realpath "$2"); shift 2 ;;
  sandbox) only=sandbox; shift ;;
  *) runs=$1; shift ;;
  esac
done
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86" >&2; exit 2; }

cargo build --release -q -p kiln
kiln=$PWD/target/x86_64-unknown-linux-gnu/release/kiln
cargo build -q --profile runtime-dev -p kiln-runtime --features dev-hooks
export KILN_RUNTIME=$PWD/target/x86_64-unknown-linux-gnu/runtime-dev/kiln-runtime
# Inside the workspace, so `cargo:` payloads build from this source tree.
mkdir -p target
work=$(mktemp -d "$PWD/target/bench-vmm.XXXXXX")
target_pid=
# The emulated target is stopped whatever ends this script.
trap '[ -z "$target_pid" ] || kill "$target_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

image() { # name, VM table, extra host command line
  cat >"$work/$1.toml" <<EOF
name = "$1"
[kernel]
source = "debian:linux-image-cloud-amd64"
cmdline = "console=ttyS0 panic=-1 quiet KILN_VMM_STATS=1${3:-}"
$2
EOF
}
image hello '[[vm]]
name = "hello"
memory = "64M"
[vm.boot]
kernel = "cargo:kiln-hello"
cmdline = "hello.exit=0"'
linux() { # vcpus, extra VM keys
  printf '[[vm]]\nname = "linux"\nvcpus = %s\nmemory = "256M"\n%s[vm.boot]\n%s\n%s\n%s\n' "$1" "${2:-}" \
    'kernel = "debian:linux-image-cloud-amd64"' \
    'initrd = { init = "cargo:kiln-guest-init" }' \
    'cmdline = "console=ttyS0 reboot=k panic=-1 quiet loglevel=1"'
}
image linux-1 "$(linux 1)"
image linux-2 "$(linux 2)"
image linux-hp "$(linux 1 'hugepages = true
')" " hugepages=128"
flood='[[vm]]
name = "flood"
memory = "64M"
[vm.boot]
kernel = "cargo:kiln-hello"
cmdline = "hostile=flood-lines hostile.bytes=10000"'
image flood "$flood"
for guest in hello linux-1 flood; do
  # The same guest on an appliance whose VMMs run without their filters.
  sed 's/KILN_VMM_STATS=1/KILN_VMM_STATS=1 KILN_VMM_SANDBOX=off/' "$work/$guest.toml" >"$work/$guest-nosb.toml"
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
stat_of() { # key, file of stats lines
  sed -n "s/.* $1=\([0-9]*\).*/\1/p" "$2" | median
}

boot() { # guest, run, expected exit code: one boot, its stats line kept
  local log="$work/$1.$2.log" want=${3:-0} rc=0 ok=0
  echo "bench/vmm.sh: $1, run $2 of $runs" >&2
  timeout 300 "$kiln" run "$work/$1" >"$log" 2>&1 || rc=$?
  # kiln run exits 1 when a VM failed, as the flood's exit code 6 is.
  [ "$want" = 0 ] || ok=1
  if [ "$rc" != "$ok" ] ||
    ! grep -aq "state=exited code=$want" "$log" ||
    ! grep -aq 'kiln-runtime: stats ' "$log"; then
    echo "$1 run $2 did not end well; its console:" >&2
    cat "$log" >&2
    exit 1
  fi
  grep -ao 'kiln-runtime: stats .*' "$log" >>"$work/$1.stats"
}

rows=()
main_guests="hello linux-1 linux-2 linux-hp"
if [ "$only" = sandbox ] || [ -n "$peer_only" ]; then main_guests=; fi
for guest in $main_guests; do
  "$kiln" build "$work/$guest.toml" -o "$work/$guest" --json >/dev/null
  : >"$work/$guest.stats"
  for i in $(seq "$runs"); do
    boot "$guest" "$i"
  done
  s="$work/$guest.stats"
  rows+=("$(printf '| %-8s | %9s | %13s | %10s | %9s | %13s |' "$guest" \
    "$(stat_of setup_ms "$s")" "$(stat_of first_output_ms "$s")" "$(stat_of total_ms "$s")" \
    "$(stat_of exits "$s")" "$(stat_of vmm_kib "$s")")")
done

if [ -n "$main_guests" ]; then
  printf '\nkiln VMM on QEMU TCG (nested KVM), %s cores, median of %s runs\n\n' "$(nproc)" "$runs"
  printf '| %-8s | %9s | %13s | %10s | %9s | %13s |\n' guest "setup ms" "1st output ms" "exit ms" "VM exits" "VMM RSS KiB"
  printf '|----------|-----------|---------------|------------|-----------|---------------|\n'
  printf '%s\n' "${rows[@]}"
fi

# The sandbox's cost, with and without filters interleaved run by run.
sb_rows=()
sb_guests="hello linux-1 flood"
[ -z "$peer_only" ] || sb_guests=
for guest in $sb_guests; do
  code=0
  [ "$guest" = flood ] && code=6
  for v in "$guest" "$guest-nosb"; do
    [ -d "$work/$v" ] || "$kiln" build "$work/$v.toml" -o "$work/$v" --json >/dev/null
    : >"$work/$v.stats"
  done
  for i in $(seq "$runs"); do
    boot "$guest" "sb$i" "$code"
    boot "$guest-nosb" "sb$i" "$code"
  done
  on=$(stat_of total_ms "$work/$guest.stats")
  off=$(stat_of total_ms "$work/$guest-nosb.stats")
  exits=$(stat_of exits "$work/$guest.stats")
  sb_rows+=("$(printf '| %-8s | %13s | %13s | %14s | %14s | %9s | %9s | %11s |' "$guest" \
    "$(stat_of setup_ms "$work/$guest.stats")" "$(stat_of setup_ms "$work/$guest-nosb.stats")" \
    "$on" "$off" "$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%+.1f%%", b ? 100 * (a - b) / b : 0 }')" \
    "$exits" "$(awk -v a="$on" -v b="$off" -v n="$exits" 'BEGIN { printf "%+.1f", n ? 1000 * (a - b) / n : 0 }')")")
done

if [ -n "$sb_guests" ]; then
  printf '\nThe sandbox: the same runtime with its seccomp filters (on) and without (off), median of %s runs each\n\n' "$runs"
  printf '| %-8s | %13s | %13s | %14s | %14s | %9s | %9s | %11s |\n' guest "setup ms on" "setup ms off" "exit ms on" "exit ms off" "exit cost" "VM exits" "us per exit"
  printf '|----------|---------------|---------------|----------------|----------------|-----------|-----------|-------------|\n'
  printf '%s\n' "${sb_rows[@]}"
  # Whole boots differ by more than the filters cost; what a filter adds to
  # each system call, measured in one process, bounds it instead.
  printf '\n'
  cargo build -q --release -p kiln-vmmbench --bin filter-cost
  cost=$("$PWD/target/x86_64-unknown-linux-gnu/release/filter-cost")
  printf '%s\n' "$cost"
  filter_ns=$(sed -n 's/^About \([-0-9]*\) ns per VM exit.*/\1/p' <<<"$cost")
  printf '\nWith %s ns per VM exit: hello %s us, linux-1 %s us, flood %s us of filter time per boot (VM exits above).\n' \
    "$filter_ns" \
    "$(awk -v n="$(stat_of exits "$work/hello.stats")" -v f="$filter_ns" 'BEGIN { printf "%.0f", n * f / 1000 }')" \
    "$(awk -v n="$(stat_of exits "$work/linux-1.stats")" -v f="$filter_ns" 'BEGIN { printf "%.0f", n * f / 1000 }')" \
    "$(awk -v n="$(stat_of exits "$work/flood.stats")" -v f="$filter_ns" 'BEGIN { printf "%.0f", n * f / 1000 }')"
fi

[ "$only" = sandbox ] && exit 0

# --- Side by side with QEMU microvm -------------------------------------
# One appliance holds the guests: `linux` (kiln's default command line for
# a debian: kernel), `linux-pvh` (the same with pvh = true: the vmlinux
# through PVH), `linux-plain` (fast_boot = false: the command line as
# written) and `hello`. Its initramfs gets a second archive appended with
# the harness (/bench/init, started by rdinit= instead of kiln's PID 1),
# QEMU with its shared libraries at the host's paths and microvm's
# firmware; kiln's VMM is the appliance's own /init.
guest_cmdline="console=ttyS0 reboot=k panic=-1 quiet loglevel=1"
peer_vm() { # name, extra boot keys
  printf '[[vm]]\nname = "%s"\nmemory = "128M"\nhugepages = true\n[vm.boot]\n%s\n%s\ncmdline = "%s"\n%s' "$1" \
    'kernel = "debian:linux-image-cloud-amd64"' 'initrd = { init = "cargo:kiln-guest-init" }' "$guest_cmdline" "${2:-}"
}
{
  printf 'name = "vmmbench"\n[kernel]\nsource = "debian:linux-image-cloud-amd64"\n'
  # Guest RAM of both VMMs on hugetlbfs: 64 pages each, one VM at a time.
  printf 'cmdline = "console=ttyS0 panic=-1 quiet hugepages=80"\n[target]\nmemory = "1024M"\n'
  peer_vm linux
  peer_vm linux-pvh 'pvh = true
'
  peer_vm linux-plain 'fast_boot = false
'
  printf '[[vm]]\nname = "hello"\nmemory = "64M"\n[vm.boot]\nkernel = "cargo:kiln-hello"\ncmdline = "hello.exit=0"\n'
} >"$work/peer.toml"
"$kiln" build "$work/peer.toml" -o "$work/peer" --json >/dev/null
cargo build --profile runtime -q -p kiln-vmmbench
overlay=$work/overlay
mkdir -p "$overlay/bench/qemu"
cp target/x86_64-unknown-linux-gnu/runtime/kiln-vmmbench "$overlay/bench/init"
qemu=$(command -v qemu-system-x86_64)
cp "$qemu" "$overlay/bench/qemu-system-x86_64"
ldd "$qemu" | grep -o '/[^ ]*' | while read -r lib; do
  mkdir -p "$overlay$(dirname "$lib")"
  cp -L "$lib" "$overlay$lib"
done
for rom in bios-microvm.bin linuxboot_dma.bin pvh.bin; do
  cp -L "/usr/share/qemu/$rom" "$overlay/bench/qemu/"
done
[ -z "$before" ] || cp "$before" "$overlay/bench/kiln-runtime.before"
bench=$work/peer-boot
mkdir -p "$bench"
cp "$work/peer/vmlinuz" "$work/peer/manifest.json" "$bench/"
# The kernel unpacks concatenated archives in order; the overlay adds files.
{
  cat "$work"/peer/initramfs.cpio.*
  (cd "$overlay" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | zstd -q -T0)
} >"$bench/initramfs.cpio.zst"
words="rdinit=/bench/init vmmbench.pairs=$pairs vmmbench.deadline=$deadline"
[ -z "$mode" ] || words="$words vmmbench.mode=$mode"
echo "$(cat "$work/peer/cmdline") $words" >"$bench/cmdline"
# Boots per pair: kiln and QEMU per command line (and --before on the
# plain one), kiln with pvh = true; then hello;
# or the prefault pair's 8. Each ends by its deadline plus the harness's
# 5 s grace (twice: after the kill and for the pipe), so the run as a whole
# ends by this bound unless the target itself hangs, which it then stops.
per_pair=6
[ -z "$before" ] || per_pair=7
[ "$mode" != prefault ] || per_pair=8
limit=$((600 + pairs * per_pair * (deadline + 10)))
echo "bench/vmm.sh: ${mode:-side by side with QEMU microvm}, $pairs pairs, ${deadline} s per boot, at most ${limit} s" >&2
echo "bench/vmm.sh: its console: $work/peer.log (kept as target/bench-vmm-peer.log)" >&2
# timeout's SIGTERM makes `kiln run` stop QEMU (it dies with kiln whatever
# kills it); -k is for a kiln that does not react.
timeout -k 30 "$limit" "$kiln" run "$bench" >"$work/peer.log" 2>&1 &
target_pid=$!
wait "$target_pid" || true
target_pid=
tr -d '\r' <"$work/peer.log" >"$work/peer.txt"
cp "$work/peer.txt" target/bench-vmm-peer.log # kept: every run's line
if ! grep -q '^vmmbench: results' "$work/peer.txt"; then
  echo "the side-by-side run did not finish; its console:" >&2
  cat "$work/peer.txt" >&2
  exit 1
fi
grep '^vmmbench: run ' "$work/peer.txt" >&2
if [ "$mode" = prefault ]; then
  printf '\nkiln with and without prefaulted guest RAM on QEMU TCG, %s pairs, medians\n\n' "$pairs"
else
  printf '\nkiln VMM and QEMU microvm (KVM) side by side on QEMU TCG, %s pairs, medians\n\n' "$pairs"
fi
sed -n '/^vmmbench: results/,/^vmmbench: done/{/^vmmbench/d;p}' "$work/peer.txt"
