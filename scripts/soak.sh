#!/usr/bin/env bash
# Soak run of vsockenc against the real vsockenc-host, kept out of the default
# test suite: a live 640x360 stream for SECONDS (default 180), checking that
# the memory of both processes stays flat, no frame is lost and the host's
# response latency stays stable. Prints a per-5-s table and a summary.
#
#   scripts/soak.sh [SECONDS]          (or VSOCKENC_SOAK_SECS=SECONDS)
#
# Uses CARGO_TARGET_DIR if set, like any cargo command.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-${VSOCKENC_SOAK_SECS:-180}}"
case "$secs" in
    ''|*[!0-9]*) echo "soak.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;;
esac
export VSOCKENC_SOAK_SECS="$secs"

# The default nextest profile kills a test after 120 s; give the soak its own
# profile, bounded at the requested duration plus start-up and drain time.
cfg="$(mktemp --suffix=.toml)"
trap 'rm -f "$cfg"' EXIT
cat >"$cfg" <<TOML
[profile.soak]
slow-timeout = { period = "$((secs + 180))s", terminate-after = 1 }
TOML

# The test runs the daemon binary from the same target directory.
cargo build --locked -p vsockenc-host
cargo nextest run --locked -p gst-plugin-vsockenc --test system_soak \
    --run-ignored only --no-capture \
    --tool-config-file "vsockenc-soak:$cfg" --profile soak
