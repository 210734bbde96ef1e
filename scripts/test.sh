#!/usr/bin/env bash
# The whole test suite, the way CI runs it (.ci/run calls this and nothing
# else):
#
#   scripts/test.sh
#
# 1. scripts/setup.sh test: installs what is missing (as root; with
#    cargo-nextest) or says what is.
# 2. cargo fmt --check, cargo clippy -D warnings, cargo build, all --locked;
#    the daemon type-checked for macOS (scripts/cross.sh).
# 3. cargo nextest run --workspace: every test of every crate (protocol,
#    element, host daemon, system tests, real-guest tests). New test files
#    are picked up without touching this script.
# 4. Extra suites with their own scripts (see "extra suites" below), and the
#    preparation the real-guest tests need (the guests, the arm64 plugin).
#
# Every step runs even when an earlier one failed, so one run shows every
# problem; the script exits non-zero if any step failed and lists them.
# Uses CARGO_TARGET_DIR when set, like any cargo command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# One target directory for cargo and for the scripts that call cargo (the
# meson check reuses the debug build through it).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

failed=()

# Runs one step, announcing it and remembering a failure.
step() {
    local name=$1
    shift
    echo
    echo "==> $name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "==> $name: ok ($((SECONDS - start)) s)"
    else
        local rc=$?
        echo "==> $name: FAILED (exit $rc after $((SECONDS - start)) s)"
        failed+=("$name")
    fi
}

# Setup failing means the tools are missing: nothing else can run.
if ! scripts/setup.sh test; then
    echo "test.sh: setup failed (see above); not running the tests" >&2
    exit 1
fi

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
step build cargo build --workspace --locked

# The daemon and the protocol crate for macOS hosts (Apple Silicon and
# Intel), type-checked with Debian's rustc and -Zbuild-std (scripts/cross.sh;
# no Apple linker here, so nothing is linked or run). Cold, the standard
# library is built for both targets: about 4-5 minutes on 2 cores; warm,
# seconds.
macos_check() {
    local target
    for target in aarch64-apple-darwin x86_64-apple-darwin; do
        scripts/cross.sh check "$target" -p vsockenc-host -p vsockenc-protocol || return 1
    done
}
step macos-check macos_check

# The fuzz crate is outside the workspace (cargo fuzz builds it alone); its
# code is compiled by the protocol tests, but its lock file must follow the
# protocol crate's dependencies or `cargo fuzz` breaks unnoticed. A failure
# here is fixed by `cargo update -p vsockenc-protocol --manifest-path
# protocol/fuzz/Cargo.toml`.
fuzz_lockfile_is_current() {
    cargo metadata --locked --format-version 1 --manifest-path protocol/fuzz/Cargo.toml >/dev/null
}
step fuzz-lockfile fuzz_lockfile_is_current

# ---- extra suites: preparation that tests depend on --------------------------
# Each runs only if its script exists and is executable. The real-guest
# tests call scripts/vm/prepare.sh themselves; running it here first keeps a
# cold-cache install (Debian packages, vhost-device-vsock, initramfs) out of
# the tests' own time limit.
if [ -x scripts/vm/prepare.sh ]; then
    step vm-prepare scripts/vm/prepare.sh
    # The arm64 guest (its own Debian root) and the plugin cross-built for it,
    # which the real_guest_arm64 test runs; cold, about 5 minutes together.
    step vm-prepare-arm64 scripts/vm/prepare.sh --arch arm64
    step cross-build-arm64 scripts/cross.sh build aarch64-unknown-linux-gnu -p gst-plugin-vsockenc --lib
fi
# ---- end of preparation ------------------------------------------------------

# nextest prints the test counts ("N tests run: N passed, ...") at the end;
# its output is kept to repeat the counts as this script's last line.
nextest_log=$(mktemp -t vsockenc-nextest.XXXXXX)
trap 'rm -f "$nextest_log"' EXIT
run_tests() {
    cargo nextest run --workspace --locked 2>&1 | tee "$nextest_log"
    return "${PIPESTATUS[0]}"
}
step tests run_tests

# ---- extra suites: checks with their own scripts ------------------------------
# Each runs only if its script exists and is executable; the lead enables or
# adds them here.
if [ -x scripts/check-install.sh ]; then
    # The meson build and install (debug: reuses the cargo build above).
    step meson-install scripts/check-install.sh --buildtype=debug
fi
# ---- end of extra suites --------------------------------------------------------

# The test counts again, as the last line, in the plain "N passed, N failed"
# form (nextest's own summary is further up when extra suites ran after it).
test_counts() {
    local summary run passed skipped
    summary=$(grep -E '^ *Summary \[' "$nextest_log" | tail -n1) || return 0
    run=$(sed -nE 's/.* ([0-9]+) tests? run:.*/\1/p' <<<"$summary")
    passed=$(sed -nE 's/.*run: ([0-9]+) passed.*/\1/p' <<<"$summary")
    skipped=$(sed -nE 's/.* ([0-9]+) skipped.*/\1/p' <<<"$summary")
    [ -n "$run" ] && [ -n "$passed" ] || return 0
    echo "tests: $passed passed, $((run - passed)) failed, ${skipped:-0} skipped"
}

echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}"
    test_counts
    exit 1
fi
echo "test.sh: all steps passed"
test_counts
