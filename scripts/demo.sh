#!/usr/bin/env bash
# The demo, from a fresh clone:
#
#   scripts/demo.sh
#
# Installs what is missing (scripts/setup.sh), builds the release plugin and
# daemon, starts `vsockenc-host` on a private Unix socket, encodes five
# seconds of a moving test pattern through the `vsockenc` element into an
# MP4 file (examples/encode_test_pattern.rs), decodes that file again to
# count its frames, and prints a summary: frames, wall time, fps, bytes per
# frame, the host's response latency and drops from the element's `stats`,
# and the encoder the daemon chose. It fails loudly when anything is missing
# or goes wrong.
#
# Environment:
#   DEMO_OUTPUT    where to write the MP4 (default: ./vsockenc-demo.mp4)
#   DEMO_FRAMES    frames to encode (default: 150, 5 s at 30 fps)
#   CARGO_TARGET_DIR   as for cargo
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

frames=${DEMO_FRAMES:-150}
output=${DEMO_OUTPUT:-$PWD/vsockenc-demo.mp4}
case $frames in '' | *[!0-9]* | 0) echo "demo.sh: DEMO_FRAMES must be a positive number" >&2; exit 2 ;; esac

say() { echo "demo.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

scripts/setup.sh

say "building the release plugin, daemon and demo program (cargo build --release --locked)"
cargo build --release --locked
cargo build --release --locked --example encode_test_pattern

release="${CARGO_TARGET_DIR:-$PWD/target}/release"
plugin="$release/libgstvsockenc.so"
daemon="$release/vsockenc-host"
demo="$release/examples/encode_test_pattern"

# ---- is everything there? -----------------------------------------------------
not_there=()
[ -f "$plugin" ] || not_there+=("the plugin library $plugin was not built")
[ -x "$daemon" ] || not_there+=("the host daemon $daemon was not built")
[ -x "$demo" ] || not_there+=("the demo program $demo was not built")
if [ -f "$plugin" ] && ! GST_PLUGIN_PATH="$release" gst-inspect-1.0 vsockenc >/dev/null 2>&1; then
    not_there+=("the vsockenc element is not built yet (gst-inspect-1.0 vsockenc does not find it in $plugin)")
fi
if [ -x "$daemon" ] && ! "$daemon" --help >/dev/null 2>&1; then
    not_there+=("the host daemon is not implemented yet ($daemon --help fails)")
fi
for element in videotestsrc h264parse mp4mux qtdemux avdec_h264; do
    gst-inspect-1.0 "$element" >/dev/null 2>&1 ||
        not_there+=("the GStreamer element $element is missing (scripts/setup.sh should have installed it)")
done
if [ "${#not_there[@]}" -gt 0 ]; then
    say "cannot run the demo:"
    for what in "${not_there[@]}"; do say "  - $what"; done
    exit 1
fi

# ---- run ------------------------------------------------------------------------
tmp=$(mktemp -d -t vsockenc-demo.XXXXXX)
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

socket="$tmp/vsockenc.sock"
host_log="$tmp/vsockenc-host.log"
"$daemon" --listen "unix:$socket" 2>"$host_log" &
daemon_pid=$!

# Wait (bounded) until the daemon says it listens.
for _ in $(seq 100); do
    grep -q "listening on" "$host_log" && break
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q "listening on" "$host_log"; then
    cat "$host_log" >&2
    die "vsockenc-host did not start listening on unix:$socket (its log is above)"
fi
encoder=$(grep -o 'encoder: [^ ,()]*' "$host_log" | head -n1 | cut -d' ' -f2)

say "encoding $frames frames of 640x360 through vsockenc into $output"
rm -f "$output"
demo_log="$tmp/encode_test_pattern.log"
start=$(date +%s.%N)
if ! timeout 300 "$demo" --socket "$socket" --output "$output" --frames "$frames" \
    --width 640 --height 360 >"$demo_log" 2>&1; then
    cat "$demo_log" >&2
    say "vsockenc-host log:"
    cat "$host_log" >&2
    die "the encoding pipeline failed (its output is above)"
fi
end=$(date +%s.%N)

[ -s "$output" ] || die "the pipeline ended but $output is empty"

# Decode the file again: the frame count comes from what actually plays.
decoded=$(timeout 120 gst-launch-1.0 -v filesrc location="$output" ! qtdemux ! h264parse \
    ! avdec_h264 ! fakesink silent=false 2>&1 | grep -c 'last-message = chain' || true)
[ "$decoded" -gt 0 ] || die "$output does not decode to any frame"

bytes=$(stat -c %s "$output")
awk -v n="$decoded" -v want="$frames" -v s="$start" -v e="$end" -v b="$bytes" \
    -v enc="${encoder:-unknown}" -v out="$output" 'BEGIN {
    t = e - s
    printf "\nvsockenc demo summary\n"
    printf "  frames      %d decoded from the file (%d sent)\n", n, want
    printf "  wall time   %.2f s\n", t
    printf "  throughput  %.1f fps\n", n / t
    printf "  size        %d bytes, %.0f bytes per frame\n", b, b / n
    printf "  encoder     %s (chosen by vsockenc-host)\n", enc
    printf "  output      %s\n", out
}'
echo
echo "what the vsockenc element reported (examples/encode_test_pattern, from its stats):"
sed 's/^/  /' "$demo_log"
if [ "$decoded" -ne "$frames" ]; then
    say "vsockenc-host log:"
    cat "$host_log" >&2
    die "only $decoded of $frames frames arrived in the file"
fi
