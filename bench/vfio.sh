#!/bin/sh
# Time to attach edu and DMA-map guest RAM as the guest grows, measured by
# the VMM itself (KILN_VMM_STATS=1) inside the emulated target, for each
# VFIO path: the legacy container on Debian's 6.1 kernel (the baseline),
# and the legacy container and iommufd on Ubuntu's 6.8 kernel (the one with
# iommufd), so both paths are compared on the same kernel.
# Usage: bench/vfio.sh [SIZES...]   (default: 128M 512M 1G 2G)
set -eu
cd "$(dirname "$0")/.."
sizes=${*:-128M 512M 1G 2G}
# Inside the workspace, so `cargo:` sources and the keyring path resolve.
mkdir -p target
work=$(mktemp -d "$PWD/target/vfio-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cargo build -q -p kiln
kiln=target/x86_64-unknown-linux-gnu/debug/kiln
keyring=$PWD/images/keys/ubuntu-archive-keyring.gpg
cmdline="console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt KILN_VMM_STATS=1"

# kernel_section NAME: the image's [kernel] table for host kernel NAME.
kernel_section() {
    case $1 in
    debian-6.1) cat <<EOT
[kernel]
source = "debian:linux-image-cloud-amd64"
cmdline = "$cmdline"
EOT
    ;;
    ubuntu-6.8) cat <<EOT
[kernel]
source = "debian:linux-image-virtual"
cmdline = "$cmdline"
[kernel.apt]
sources = ["deb http://archive.ubuntu.com/ubuntu noble-updates main"]
keyring = "$keyring"
EOT
    ;;
    esac
}

printf '%-8s %-11s %-8s %10s %10s %12s %10s\n' guest kernel backend attach_ms open_ms dma_map_ms dma_mib
for size in $sizes; do
    for run in debian-6.1:legacy ubuntu-6.8:legacy ubuntu-6.8:iommufd; do
        kernel=${run%%:*}
        backend=${run#*:}
        cat > "$work/vm.toml" <<EOT
name = "edu"
memory = "$size"
[boot]
kernel = "cargo:kiln-hello"
cmdline = "hello.edu=required"
[[pci]]
device = "1234:11e8"
[vfio]
backend = "$backend"
EOT
        {
            printf 'name = "vfio-bench"\nvms = ["vm.toml"]\n'
            kernel_section "$kernel"
            cat <<EOT
[target]
memory = "4G"
devices = ["edu,dma_mask=0xffffffffffffffff"]
EOT
        } > "$work/image.toml"
        "$kiln" build "$work/image.toml" -o "$work/out" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
        line=$(timeout 600 "$kiln" run "$work/out" 2>&1 | tr -d '\r' | grep 'stats vfio' || true)
        get() { echo "$line" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
        printf '%-8s %-11s %-8s %10s %10s %12s %10s\n' "$size" "$kernel" "$(get backend)" \
            "$(get attach_ms)" "$(get open_ms)" "$(get dma_map_ms)" "$(get dma_mib)"
    done
done
