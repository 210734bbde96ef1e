#!/usr/bin/env bash
# Installs what building and testing vsockenc needs on Debian 12, and
# nothing when everything is already there (safe to run again and again).
#
#   scripts/setup.sh [GROUP...]
#   scripts/setup.sh --list        print "GROUP PACKAGE..." per group, install nothing
#
# The `base` group (build and run: Rust toolchain checks, GStreamer
# development files and plugins) is always set up. Other scripts name extra
# groups, e.g. `scripts/setup.sh vm`; the groups and their Debian packages
# are listed once, in PACKAGE_GROUPS below. The `test` group adds
# cargo-nextest (from crates.io: a few minutes to build), which only the test
# suite needs, so that the demo does not wait for it.
#
# Missing Debian packages are installed with apt-get when run as root
# (`apt-get update` once, then `apt-get install`). Otherwise the exact apt
# line is printed and the script exits non-zero: nothing is half-done
# silently.
#
# Environment:
#   VSOCKENC_SETUP_NO_INSTALL=1   only check; never install anything
set -euo pipefail

# ---- package groups: add a group here, in one place -------------------------
# tests/setup_packages.rs fails when a test, example or script names a
# GStreamer element whose package is not here (nor pulled in by these).
declare -A PACKAGE_GROUPS=(
    # gstreamer1.0-x: timeoverlay (tests/system_extensions.rs);
    # gstreamer1.0-pipewire: pipewiresrc (examples/desktop_capture.rs on a desktop);
    # gstreamer1.0-nice: nicesrc, webrtcbin's ICE (tests/system_webrtc.rs).
    [base]="pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
            gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
            gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
            gstreamer1.0-x gstreamer1.0-pipewire gstreamer1.0-nice
            python3 python3-prometheus-client"
    # (python3-prometheus-client: the daemon's metrics test parses a scrape
    # with the Prometheus project's own OpenMetrics parser.)
    # Booting a real guest under QEMU (scripts/vm/, the real-guest tests;
    # the ivshmem tests bring up the guest's user networking with modprobe
    # and ip from the machine's root).
    [vm]="qemu-system-x86 linux-image-amd64 busybox-static cpio kmod iproute2"
    # An arm64 guest (scripts/vm/prepare.sh --arch arm64): the emulator, and
    # debootstrap for the guest's own arm64 root (kernel, busybox, GStreamer).
    [vm-arm64]="qemu-system-arm debootstrap cpio"
    # Rust for other targets (scripts/cross.sh): Debian's rustc/cargo 1.96 and
    # the standard library's source for -Zbuild-std (rustup's prebuilt std for
    # other targets cannot be downloaded here), the arm64 cross linker.
    [cross]="rustc-web cargo-web rust-web-src gcc-aarch64-linux-gnu"
    # The meson build and install check (meson.build, scripts/check-install.sh).
    [meson]="meson ninja-build"
    # A fresh Debian 12 root for scripts/pristine-check.sh.
    [pristine]="debootstrap"
    # The test suite (scripts/test.sh): no Debian package, but cargo-nextest.
    [test]=""
    # The benchmark's plots (scripts/bench.sh, scripts/plot_bench.py).
    [bench]="python3-matplotlib"
)
# Oldest Rust the workspace builds with (Cargo.toml rust-version).
MIN_RUST="1.92"

say() { echo "setup.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

usage() {
    echo "usage: scripts/setup.sh [GROUP...]   (groups: ${!PACKAGE_GROUPS[*]})" >&2
    exit 2
}

groups=(base)
for arg in "$@"; do
    case $arg in
        -h | --help) usage ;;
        --list)
            # For tests/setup_packages.rs, which checks that every GStreamer
            # element the project names comes from one of these packages.
            for g in "${!PACKAGE_GROUPS[@]}"; do
                # shellcheck disable=SC2086 # word splitting of the list is intended
                echo "$g" ${PACKAGE_GROUPS[$g]}
            done
            exit 0
            ;;
        *)
            [ -n "${PACKAGE_GROUPS[$arg]+x}" ] ||
                die "unknown group '$arg' (known: ${!PACKAGE_GROUPS[*]})"
            groups+=("$arg")
            ;;
    esac
done

can_install() {
    [ "${VSOCKENC_SETUP_NO_INSTALL:-0}" != 1 ] && [ "$(id -u)" = 0 ]
}

# ---- Debian packages ----------------------------------------------------------
wanted=()
for g in "${groups[@]}"; do
    # shellcheck disable=SC2206 # word splitting of the list is intended
    wanted+=(${PACKAGE_GROUPS[$g]})
done

installed() {
    dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

if command -v dpkg-query >/dev/null; then
    missing=()
    for p in "${wanted[@]}"; do
        installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_line="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
        if ! can_install; then
            say "missing Debian packages: ${missing[*]}"
            say "install them as root with:"
            echo "    $apt_line"
            exit 1
        fi
        say "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 update -qq ||
            die "apt-get update failed (no network or a broken sources list?)"
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" ||
            die "apt-get install failed; try by hand: $apt_line"
        for p in "${missing[@]}"; do
            installed "$p" || die "$p is still not installed after apt-get install"
        done
    fi
else
    # Not Debian: we cannot name packages, but we can check what matters.
    say "no dpkg here: not a Debian system, checking GStreamer through pkg-config instead"
    say "(Debian names of what is needed: ${wanted[*]})"
    command -v pkg-config >/dev/null || die "pkg-config is missing"
fi

for pc in gstreamer-1.0 gstreamer-base-1.0 gstreamer-video-1.0; do
    pkg-config --exists "$pc" || die "pkg-config cannot find $pc (GStreamer development files)"
done
pkg-config --atleast-version=1.22 gstreamer-1.0 ||
    die "GStreamer $(pkg-config --modversion gstreamer-1.0) is too old: 1.22 or newer is needed"
command -v gst-inspect-1.0 >/dev/null || die "gst-inspect-1.0 is missing (gstreamer1.0-tools)"

# ---- Rust toolchain -------------------------------------------------------------
# Rust comes from rustup, not from Debian (Debian 12's cargo is too old).
command -v cargo >/dev/null ||
    die "cargo is missing: install Rust $MIN_RUST or newer with rustup (https://rustup.rs), then run this again"
rustc_version=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$MIN_RUST" "${rustc_version%%-*}" | sort -V | head -n1)" != "$MIN_RUST" ]; then
    die "rustc $rustc_version is older than $MIN_RUST: run 'rustup update stable'"
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "cargo $component is missing and there is no rustup to add it"
        [ "${VSOCKENC_SETUP_NO_INSTALL:-0}" != 1 ] || die "cargo $component is missing: rustup component add $component"
        say "adding the $component component"
        rustup component add "$component"
    fi
done

wants_nextest=0
for g in "${groups[@]}"; do [ "$g" != test ] || wants_nextest=1; done
if [ "$wants_nextest" = 1 ] && ! cargo nextest --version >/dev/null 2>&1; then
    [ "${VSOCKENC_SETUP_NO_INSTALL:-0}" != 1 ] ||
        die "cargo-nextest is missing: cargo install cargo-nextest --locked"
    say "installing cargo-nextest (cargo install cargo-nextest --locked; a few minutes)"
    cargo install cargo-nextest --locked
    cargo nextest --version >/dev/null 2>&1 ||
        die "cargo-nextest still does not run (is ~/.cargo/bin on PATH?)"
fi

nextest=""
[ "$wants_nextest" = 0 ] || nextest=", $(cargo nextest --version 2>/dev/null | head -n1)"
say "ready (${groups[*]}): GStreamer $(pkg-config --modversion gstreamer-1.0), rustc $rustc_version$nextest"
