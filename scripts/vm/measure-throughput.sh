#!/usr/bin/env bash
# Measure vsockenc throughput from a real (emulated, TCG) guest over
# virtio-vsock to vsockenc-host on the machine, at 320x240 and 1280x720.
#
#   measure-throughput.sh [PROFILE_DIR] [FRAMES_320x240] [FRAMES_1280x720]
#
# PROFILE_DIR holds the built vsockenc-host and libgstvsockenc.so (default:
# ${CARGO_TARGET_DIR:-<repo>/target}/release if built there, else .../debug).
# Build first, e.g. `cargo build --release -p vsockenc-host -p gst-plugin-vsockenc`.
#
# For each size the guest runs:
#   source:    videotestsrc ! fakesink   (what the emulated guest can produce)
#   vsockenc:  videotestsrc ! vsockenc cid=2 ! h264parse ! fakesink
#   frozen-vs: videotestsrc num-buffers=1 ! imagefreeze ! vsockenc ... (one
#              frame sent over and over: transport + daemon without the cost
#              of drawing the pattern in the emulated guest)
# and prints frames/s from gst-launch's "Execution ended after" (PLAYING to
# EOS: excludes loading GStreamer, includes connecting to the daemon).
# The guest is emulated (no KVM), so these numbers bound what the transport
# and daemon deliver from below; the machine's load matters a lot.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
if [ $# -ge 1 ] && [ -n "$1" ]; then
  prof="$1"
elif [ -x "$target/release/vsockenc-host" ] && [ -f "$target/release/libgstvsockenc.so" ]; then
  prof="$target/release"
else
  prof="$target/debug"
fi
n_small="${2:-150}"
n_large="${3:-60}"
prof="$(cd "$prof" && pwd -P)"
for f in vsockenc-host libgstvsockenc.so; do
  [ -f "$prof/$f" ] || {
    echo "measure-throughput.sh: $prof/$f missing: build the workspace first" >&2
    exit 2
  }
done

run="$(mktemp -d /tmp/vsockenc-measure.XXXXXX)"
daemon_pid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  [ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true
  [ -z "$daemon_pid" ] || wait "$daemon_pid" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "run dir kept: $run" >&2; else rm -rf "$run"; fi
}
trap cleanup EXIT

mkdir -p "$run/plugins"
cp "$prof/libgstvsockenc.so" "$run/plugins/"
GST_PLUGIN_PATH="$run/plugins" GST_REGISTRY="$run/registry.bin" \
  timeout 120 gst-inspect-1.0 vsockenc >/dev/null

timeout 1800 "$prof/vsockenc-host" --listen "unix:$run/vm.vsock_5000" --stats-interval 0 \
  </dev/null >"$run/host.out" 2>"$run/host.log" &
daemon_pid=$!
for _ in $(seq 300); do
  [ -S "$run/vm.vsock_5000" ] && break
  sleep 0.1
done
[ -S "$run/vm.vsock_5000" ] || {
  cat "$run/host.log" >&2
  echo "measure-throughput.sh: daemon did not start" >&2
  exit 1
}

cat >"$run/guest.sh" <<EOF
#!/bin/sh
export GST_PLUGIN_PATH=$run/plugins GST_REGISTRY=$run/registry.bin GST_REGISTRY_UPDATE=no
measure() { # label frames width height element-tail...
  label=\$1 n=\$2 w=\$3 h=\$4; shift 4
  case \$label in
  frozen*) src="videotestsrc num-buffers=1 ! video/x-raw,format=NV12,width=\$w,height=\$h,framerate=30/1 ! imagefreeze num-buffers=\$n" ;;
  *) src="videotestsrc num-buffers=\$n horizontal-speed=3 ! video/x-raw,format=NV12,width=\$w,height=\$h,framerate=30/1" ;;
  esac
  out=\$(timeout -k 10 900 gst-launch-1.0 \$src ! "\$@" 2>&1)
  rc=\$?
  echo "\$out" > $run/last-\$label-\${w}x\${h}.log
  echo "\$out" | sed -n 's/.*Execution ended after \([0-9]*\):\([0-9]*\):\([0-9.]*\).*/\1 \2 \3/p' |
    awk -v l="\$label" -v n=\$n -v w=\$w -v h=\$h -v rc=\$rc \\
      '{ s = \$1 * 3600 + \$2 * 60 + \$3; printf "%-9s %4dx%-4d %4d frames in %7.2f s = %6.2f fps (exit %d)\\n", l, w, h, n, s, (s > 0 ? n / s : 0), rc; ok = 1 }
       END { if (!ok) printf "%-9s %4dx%-4d failed (exit %d)\\n", l, w, h, rc }'
}
measure source 20 320 240 fakesink
measure source $n_small 320 240 fakesink
measure vsockenc $n_small 320 240 vsockenc cid=2 port=5000 ! h264parse ! fakesink
measure frozen-vs $n_small 320 240 vsockenc cid=2 port=5000 ! h264parse ! fakesink
measure source $n_large 1280 720 fakesink
measure vsockenc $n_large 1280 720 vsockenc cid=2 port=5000 ! h264parse ! fakesink
measure frozen-vs $n_large 1280 720 vsockenc cid=2 port=5000 ! h264parse ! fakesink
EOF

echo "measure-throughput.sh: plugin and daemon from $prof; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
start=$(date +%s)
set +e
VSOCKENC_VM_TIMEOUT="${VSOCKENC_VM_TIMEOUT:-1500}" "$here/run-guest.sh" "$run" "$run/guest.sh"
rc=$?
set -e
cat "$run/guest.log"
echo "measure-throughput.sh: guest run took $(($(date +%s) - start)) s (exit $rc); daemon log:" >&2
grep -E 'encoder:|disconnected' "$run/host.log" >&2 || true
exit "$rc"
