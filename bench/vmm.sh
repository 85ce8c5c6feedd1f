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
# Usage: bench/vmm.sh [RUNS]    (median of RUNS boots per guest, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86" >&2; exit 2; }

cargo build --release -q -p kiln
kiln=$PWD/target/x86_64-unknown-linux-gnu/release/kiln
cargo build -q --profile runtime-dev -p kiln-runtime --features dev-hooks
export KILN_RUNTIME=$PWD/target/x86_64-unknown-linux-gnu/runtime-dev/kiln-runtime
# Inside the workspace, so `cargo:` payloads build from this source tree.
mkdir -p target
work=$(mktemp -d "$PWD/target/bench-vmm.XXXXXX")
trap 'rm -rf "$work"' EXIT

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
  local log="$work/$1.$2.log"
  echo "bench/vmm.sh: $1, run $2 of $runs" >&2
  if ! timeout 300 "$kiln" run "$work/$1" >"$log" 2>&1 ||
    ! grep -aq "state=exited code=${3:-0}" "$log" ||
    ! grep -aq 'kiln-runtime: stats ' "$log"; then
    echo "$1 run $2 did not end well; its console:" >&2
    cat "$log" >&2
    exit 1
  fi
  grep -ao 'kiln-runtime: stats .*' "$log" >>"$work/$1.stats"
}

rows=()
for guest in hello linux-1 linux-2 linux-hp; do
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

printf '\nkiln VMM on QEMU TCG (nested KVM), %s cores, median of %s runs\n\n' "$(nproc)" "$runs"
printf '| %-8s | %9s | %13s | %10s | %9s | %13s |\n' guest "setup ms" "1st output ms" "exit ms" "VM exits" "VMM RSS KiB"
printf '|----------|-----------|---------------|------------|-----------|---------------|\n'
printf '%s\n' "${rows[@]}"

# The sandbox's cost, with and without filters interleaved run by run.
sb_rows=()
for guest in hello linux-1 flood; do
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

printf '\nThe sandbox: the same runtime with its seccomp filters (on) and without (off), median of %s runs each\n\n' "$runs"
printf '| %-8s | %13s | %13s | %14s | %14s | %9s | %9s | %11s |\n' guest "setup ms on" "setup ms off" "exit ms on" "exit ms off" "exit cost" "VM exits" "us per exit"
printf '|----------|---------------|---------------|----------------|----------------|-----------|-----------|-------------|\n'
printf '%s\n' "${sb_rows[@]}"
