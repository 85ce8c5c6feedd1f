#!/bin/sh
# Builds kiln from this source tree and installs it:
#
#   PREFIX/bin/kiln
#   PREFIX/lib/kiln/kiln-runtime      the static runtime every image boots as /init
#   PREFIX/lib/kiln/kiln-hello        the hello unikernel (a freestanding ELF)
#   PREFIX/share/kiln/images/hello.toml, configs/hello.toml
#                                     the built-in default appliance (`kiln build`)
#   PREFIX/share/bash-completion/..., zsh, fish completions and man pages,
#                                     when this kiln can generate them
#
# kiln finds lib/ and share/ relative to its own executable, so the tree can
# be moved as a whole. The binaries are built with the workspace's config
# (.cargo/config.toml: static, for x86_64-unknown-linux-gnu), which
# `cargo install` would ignore. docs/install.md says why kiln is installed
# this way.
#
# Usage: ./install.sh [--prefix DIR]
#   default PREFIX: /usr/local as root, else ~/.local
set -eu

root=$(cd "$(dirname "$0")" && pwd -P)
if [ "$(id -u)" = 0 ]; then
    prefix=/usr/local
else
    prefix="$HOME/.local"
fi

while [ $# -gt 0 ]; do
    case "$1" in
    --prefix)
        [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
        prefix=$2
        shift 2
        ;;
    --prefix=*)
        prefix=${1#--prefix=}
        shift
        ;;
    -h | --help)
        sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "install.sh: unknown argument $1; usage: ./install.sh [--prefix DIR]" >&2
        exit 2
        ;;
    esac
done
case "$prefix" in
/*) ;;
*) prefix="$(pwd -P)/$prefix" ;;
esac

cargo=${CARGO:-cargo}
if ! command -v "$cargo" >/dev/null 2>&1; then
    echo "install.sh: cargo not found; install a Rust toolchain (https://rustup.rs, or apt install cargo) and run again" >&2
    exit 1
fi

# The same path remapping kiln applies when it builds a payload itself
# (builder/src/payload.rs, remap_config), so the installed runtime and hello
# are byte for byte the ones an in-tree `kiln build` makes, and cargo reuses
# one build for both.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
remap="target.x86_64-unknown-linux-gnu.rustflags=['--remap-path-prefix=$cargo_home=/cargo', '--remap-path-prefix=$root=/kiln']"

# Prints the path of the executable cargo built for package $1 from its
# JSON messages on stdin.
executable_of() {
    sed -n 's/.*"reason":"compiler-artifact".*"name":"'"$1"'".*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}

echo "install.sh: building kiln, kiln-runtime and kiln-hello (release)" >&2
kiln=$(cd "$root" && "$cargo" build --locked --release -p kiln --message-format json-render-diagnostics | executable_of kiln)
runtime=$(cd "$root" && "$cargo" build --locked --profile runtime -p kiln-runtime --config "$remap" --message-format json-render-diagnostics | executable_of kiln-runtime)
hello=$(cd "$root/images/hello" && "$cargo" build --locked --profile guest -p kiln-hello --config "$remap" --message-format json-render-diagnostics | executable_of kiln-hello)
for f in "$kiln" "$runtime" "$hello"; do
    if [ -z "$f" ] || [ ! -f "$f" ]; then
        echo "install.sh: cargo built no executable (see its messages above)" >&2
        exit 1
    fi
done

echo "install.sh: installing into $prefix" >&2
install -d "$prefix/bin" "$prefix/lib/kiln" "$prefix/share/kiln/images" "$prefix/share/kiln/configs"
install -m 0755 "$runtime" "$prefix/lib/kiln/kiln-runtime"
install -m 0755 "$hello" "$prefix/lib/kiln/kiln-hello"
install -m 0644 "$root/images/hello.toml" "$prefix/share/kiln/images/hello.toml"
install -m 0644 "$root/configs/hello.toml" "$prefix/share/kiln/configs/hello.toml"
# kiln last: a kiln on PATH always has its runtime and payloads beside it.
install -m 0755 "$kiln" "$prefix/bin/kiln"

# Shell completions and man pages, from the binary itself (`kiln
# completions SHELL`, `kiln man DIR`), each when this kiln has the command.
bin="$prefix/bin/kiln"
if "$bin" completions bash >/dev/null 2>&1; then
    install -d "$prefix/share/bash-completion/completions" "$prefix/share/zsh/site-functions" \
        "$prefix/share/fish/vendor_completions.d"
    "$bin" completions bash >"$prefix/share/bash-completion/completions/kiln"
    "$bin" completions zsh >"$prefix/share/zsh/site-functions/_kiln"
    "$bin" completions fish >"$prefix/share/fish/vendor_completions.d/kiln.fish"
fi
if "$bin" man --help >/dev/null 2>&1; then
    install -d "$prefix/share/man/man1"
    "$bin" man "$prefix/share/man/man1"
fi

echo "install.sh: installed $bin" >&2
case ":$PATH:" in
*":$prefix/bin:"*) ;;
*)
    echo "install.sh: $prefix/bin is not on PATH; add it (e.g. to ~/.profile): export PATH=\"$prefix/bin:\$PATH\"" >&2
    ;;
esac
