#!/usr/bin/env bash
# The hostile-neighbour measurements of issue 13, full size, against a
# vsockenc-host binary (default: this checkout's release build). Each case
# runs the attack with a healthy guest alongside and prints the figures:
# refused and dropped frames, time to the newcomer's first frame, peak and
# idle RSS, how the daemon answered. Not part of the test suite (the
# bounded versions are host/tests/hostile.rs); takes about 5 minutes.
#
#   scripts/hostile.sh [CASE...]                    # this checkout
#   scripts/hostile.sh --host-bin OTHER [CASE...]   # another build, same commands
#   scripts/hostile.sh --daemon-arg --memory-budget=1G memory
#
# CASE: slowloris churn memory fds access keep (default: all of them).
# HOSTILE_CHURN=N sets the connections per churn thread (default 40000).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p vsockenc-host --bins --examples
exec "$CARGO_TARGET_DIR/release/examples/hostile" \
    --host-bin "$CARGO_TARGET_DIR/release/vsockenc-host" "$@"
