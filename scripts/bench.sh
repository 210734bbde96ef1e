#!/usr/bin/env bash
# One command for the vsockenc benchmark: builds the element example and the
# vsockenc-host daemon in release mode, runs every section, writes
# docs/bench-results.json and the plots docs/bench-throughput.png and
# docs/bench-guest-cpu.png. Section 7 (side) runs the C element from
# ../shared/baseline (or VSOCKENC_BASELINE) next to vsockenc.
#
#   scripts/bench.sh                 # full run (about 10 minutes on 2 cores)
#   scripts/bench.sh --quick         # smoke test; results go to the target dir, not docs/
#   scripts/bench.sh --sections transport,element
#
# Extra arguments go to the benchmark (see `--help`). scripts/setup.sh bench
# installs what it needs (matplotlib for the plots) when run as root; when it
# cannot, it says what to install and the benchmark does not start.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

out=docs
for a in "$@"; do
    if [ "$a" = "--quick" ] || [ "$a" = "--sections" ]; then
        out="$CARGO_TARGET_DIR/bench-partial"
    fi
done
out="${BENCH_OUT:-$out}"
mkdir -p "$out"

# The plots need matplotlib (the `bench` group); everything else is the
# base set up.
scripts/setup.sh bench
cargo build --release --locked -p vsockenc-host
cargo build --release --locked -p gst-plugin-vsockenc --example bench

BENCH_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || true)" \
    "$CARGO_TARGET_DIR/release/examples/bench" \
    --host-bin "$CARGO_TARGET_DIR/release/vsockenc-host" \
    --json "$out/bench-results.json" "$@" | tee "$CARGO_TARGET_DIR/bench-output.txt"

py=""
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import matplotlib' 2>/dev/null; then
        py="$p"
        break
    fi
done
if [ -n "$py" ]; then
    "$py" scripts/plot_bench.py "$out/bench-results.json" "$out/bench-throughput.png" \
        "$out/bench-guest-cpu.png"
else
    echo "bench.sh: matplotlib not found (apt-get install python3-matplotlib); plot skipped" >&2
fi
echo "bench.sh: results in $out/bench-results.json, table in $CARGO_TARGET_DIR/bench-output.txt"
