#!/bin/sh
# Time to attach edu and DMA-map guest RAM as the guest grows, measured by
# the VMM itself (KILN_VMM_STATS=1) inside the emulated target.
# Usage: bench/vfio.sh [SIZES...]   (default: 128M 512M 1G 2G)
set -eu
cd "$(dirname "$0")/.."
sizes=${*:-128M 512M 1G 2G}
# Inside the workspace, so `cargo:` sources resolve.
mkdir -p target
work=$(mktemp -d "$PWD/target/vfio-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cargo build -q -p kiln
kiln=target/x86_64-unknown-linux-gnu/debug/kiln
printf '%-8s %10s %10s %12s %10s\n' guest attach_ms open_ms dma_map_ms dma_mib
for size in $sizes; do
    cat > "$work/vm.toml" <<EOT
name = "edu"
memory = "$size"
[boot]
kernel = "cargo:kiln-hello"
cmdline = "hello.edu=required"
[[pci]]
device = "1234:11e8"
EOT
    cat > "$work/image.toml" <<EOT
name = "vfio-bench"
vms = ["vm.toml"]
[kernel]
source = "debian:linux-image-cloud-amd64"
cmdline = "console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt KILN_VMM_STATS=1"
[target]
memory = "4G"
devices = ["edu,dma_mask=0xffffffffffffffff"]
EOT
    "$kiln" build "$work/image.toml" -o "$work/out" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
    line=$(timeout 600 "$kiln" run "$work/out" 2>&1 | tr -d '\r' | grep 'stats vfio' || true)
    get() { echo "$line" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
    printf '%-8s %10s %10s %12s %10s\n' "$size" "$(get attach_ms)" "$(get open_ms)" "$(get dma_map_ms)" "$(get dma_mib)"
done
