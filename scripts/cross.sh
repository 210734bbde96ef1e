#!/usr/bin/env bash
# Runs cargo for another target than this machine's: an arm64 Linux guest's
# plugin, or the macOS host daemon.
#
#   scripts/cross.sh COMMAND TARGET [CARGO ARGS...]
#   scripts/cross.sh build aarch64-unknown-linux-gnu -p gst-plugin-vsockenc --lib
#   scripts/cross.sh check aarch64-apple-darwin -p vsockenc-host
#
# rustup cannot download another target's standard library here, so this
# uses Debian's rustc and cargo 1.96 (rustc-web, cargo-web) and builds the
# standard library from Debian's rust-web-src (-Zbuild-std, which needs
# RUSTC_BOOTSTRAP=1 on a stable compiler). rustup's toolchain, first on
# PATH, is neither used nor changed.
#
# The output goes to $CARGO_TARGET_DIR/cross/TARGET/ (default
# ./target/cross/TARGET/), apart from the native build so the two compilers
# never share build scripts.
#
# Linux arm64 also links: against the arm64 root that
# `scripts/vm/prepare.sh --arch arm64` unpacks (its GStreamer libraries and
# pkg-config files, its C library), with Debian's aarch64-linux-gnu-gcc. The root's path is
# taken from VSOCKENC_ARM64_ROOT or from that script's output. macOS targets
# can only be type-checked (`check`): there is no Apple linker or SDK here.
#
# Installs what is missing with `scripts/setup.sh cross` (as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
    echo "cross.sh: ERROR: $*" >&2
    exit 1
}

[ $# -ge 2 ] || die "usage: scripts/cross.sh COMMAND TARGET [CARGO ARGS...]"
command=$1
target=$2
shift 2

scripts/setup.sh cross >&2

export RUSTC=/usr/bin/rustc
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/cross"
# Warnings are the native clippy run's business; this is about building.
unset RUSTFLAGS
[ -x "$RUSTC" ] && [ -x /usr/bin/cargo ] || die "Debian's rustc/cargo are missing (scripts/setup.sh cross)"

case $target in
    aarch64-unknown-linux-gnu)
        root=${VSOCKENC_ARM64_ROOT:-}
        if [ -z "$root" ]; then
            root=$(scripts/vm/prepare.sh --arch arm64 | sed -n 's/^ROOT=//p')
        fi
        [ -d "$root/usr/lib/aarch64-linux-gnu/pkgconfig" ] ||
            die "no arm64 root with GStreamer's pkg-config files at '$root' (scripts/vm/prepare.sh --arch arm64)"
        libdirs="$root/usr/lib/aarch64-linux-gnu"
        export PKG_CONFIG_ALLOW_CROSS=1
        export PKG_CONFIG_SYSROOT_DIR="$root"
        export PKG_CONFIG_LIBDIR="$root/usr/lib/aarch64-linux-gnu/pkgconfig:$root/usr/share/pkgconfig"
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        # Everything the plugin links with (C library, GStreamer, GLib) comes
        # from the root the guest runs, so what is linked is what runs.
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=--sysroot=$root -C link-arg=-Wl,-rpath-link,$libdirs"
        ;;
    *-apple-darwin)
        [ "$command" = check ] || [ "$command" = clippy ] ||
            die "$target can only be type-checked here (no Apple linker or SDK): use 'check'"
        # Nothing is linked, so no library has to be found.
        export PKG_CONFIG_ALLOW_CROSS=1
        # Code that only macOS compiles gets no native clippy run: its
        # warnings (dead code behind a cfg, unused imports) fail here.
        flags_var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
        export "$flags_var=-D warnings"
        ;;
esac

exec /usr/bin/cargo "$command" -Zbuild-std=std,panic_abort --target "$target" --locked "$@"
