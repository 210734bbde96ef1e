#!/usr/bin/env bash
# Frames per second of vsockenc from a real (emulated, TCG) guest to
# vsockenc-host on the machine, with and without shared memory (an
# ivshmem-plain device), over QEMU user networking (TCP to 10.0.2.2, the
# path the system we replace uses on macOS) and over vhost-user-vsock.
#
#   measure-shm.sh [PROFILE_DIR] [FRAMES]
#
# PROFILE_DIR holds vsockenc-host and libgstvsockenc.so (default: the
# release build if there, else debug). FRAMES per run (default 60).
#
# For 1280x720 and 1920x1080 NV12 the guest runs
#   videotestsrc num-buffers=1 ! imagefreeze num-buffers=FRAMES ! vsockenc ... ! fakesink
# (one picture sent over and over: what the transport and the daemon cost,
# without the cost of drawing a pattern in the emulated guest; imagefreeze
# allocates its buffer from vsockenc's pool, so with shared memory nothing
# is copied) and, as a second row, a moving videotestsrc pattern (every
# frame new). It prints frames/s from gst-launch's "Execution ended after"
# (PLAYING to EOS). The socket rows use extensions=false: every frame's
# pixels cross the socket in full, as with the system we replace (compact
# frames would send a frozen picture as a few bytes).
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
frames="${2:-60}"
prof="$(cd "$prof" && pwd -P)"
for f in vsockenc-host libgstvsockenc.so; do
  [ -f "$prof/$f" ] || {
    echo "measure-shm.sh: $prof/$f missing: build the workspace first" >&2
    exit 2
  }
done

run="$(mktemp -d /tmp/vsockenc-shm.XXXXXX)"
region="/dev/shm/$(basename "$run")-ivshmem"
daemon_pid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  [ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true
  [ -z "$daemon_pid" ] || wait "$daemon_pid" 2>/dev/null || true
  rm -f "$region"
  if [ "${KEEP:-0}" = 1 ]; then echo "run dir kept: $run" >&2; else rm -rf "$run"; fi
}
trap cleanup EXIT

mkdir -p "$run/plugins"
cp "$prof/libgstvsockenc.so" "$run/plugins/"
GST_PLUGIN_PATH="$run/plugins" GST_REGISTRY="$run/registry.bin" \
  timeout 120 gst-inspect-1.0 vsockenc >/dev/null
# 128 MiB: room for the pool and copies of 1080p frames (see docs/deployment.md).
truncate -s 128M "$region"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

timeout 3600 "$prof/vsockenc-host" --listen "unix:$run/vm.vsock_5000" --listen "tcp:127.0.0.1:$port" \
  --ivshmem "unix:$run/vm.vsock_5000=$region" --ivshmem "tcp:127.0.0.1:$port=$region" \
  --stats-interval 0 </dev/null >"$run/host.out" 2>"$run/host.log" &
daemon_pid=$!
for _ in $(seq 300); do
  [ -S "$run/vm.vsock_5000" ] && break
  sleep 0.1
done
[ -S "$run/vm.vsock_5000" ] || {
  cat "$run/host.log" >&2
  exit 1
}

cat >"$run/guest.sh" <<EOF
#!/bin/sh
export GST_PLUGIN_PATH=$run/plugins GST_REGISTRY=$run/registry.bin GST_REGISTRY_UPDATE=no
modprobe virtio_net && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 &&
  ip route add default via 10.0.2.2 || echo "no network"
measure() { # label source width height element-props...
  label=\$1 src=\$2 w=\$3 h=\$4; shift 4
  case \$src in
  frozen) s="videotestsrc num-buffers=1 ! video/x-raw,format=NV12,width=\$w,height=\$h,framerate=60/1 ! imagefreeze num-buffers=$frames" ;;
  moving) s="videotestsrc num-buffers=$frames horizontal-speed=3 ! video/x-raw,format=NV12,width=\$w,height=\$h,framerate=60/1" ;;
  esac
  out=\$(timeout -k 10 900 gst-launch-1.0 \$s ! vsockenc response-timeout=30000 max-in-flight=4 "\$@" ! fakesink 2>&1)
  rc=\$?
  echo "\$out" > "$run/last-\$(echo "\$label" | tr -c "a-zA-Z0-9\\n" _)-\$src-\${w}x\${h}.log"
  echo "\$out" | sed -n 's/.*Execution ended after \([0-9]*\):\([0-9]*\):\([0-9.]*\).*/\1 \2 \3/p' |
    awk -v l="\$label" -v src=\$src -v n=$frames -v w=\$w -v h=\$h -v rc=\$rc \\
      '{ s = \$1 * 3600 + \$2 * 60 + \$3; printf "| %s | %s | %dx%d | %d | %.2f | %.1f |\\n", l, src, w, h, n, s, (s > 0 ? n / s : 0); ok = 1 }
       END { if (!ok) printf "| %s | %s | %dx%d | failed (exit %d) | | |\\n", l, src, w, h, rc }'
}
echo "| transport | source | size | frames | seconds | fps |"
echo "|---|---|---|---|---|---|"
for size in "1280 720" "1920 1080"; do
  for src in frozen moving; do
    measure "user-net TCP, ivshmem" \$src \$size tcp-host=10.0.2.2 tcp-port=$port
    measure "user-net TCP, socket" \$src \$size tcp-host=10.0.2.2 tcp-port=$port extensions=false
    measure "vhost-user-vsock, ivshmem" \$src \$size cid=2 port=5000
    measure "vhost-user-vsock, socket" \$src \$size cid=2 port=5000 extensions=false
  done
done
EOF

echo "measure-shm.sh: plugin and daemon from $prof; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
start=$(date +%s)
set +e
VSOCKENC_VM_IVSHMEM="$region" VSOCKENC_VM_NET=user VSOCKENC_VM_TIMEOUT="${VSOCKENC_VM_TIMEOUT:-3000}" \
  "$here/run-guest.sh" "$run" "$run/guest.sh"
rc=$?
set -e
cat "$run/guest.log"
echo "measure-shm.sh: guest run took $(($(date +%s) - start)) s (exit $rc); daemon:" >&2
grep -E 'encoder:|disconnected' "$run/host.log" | sed 's/^[^ ]* //' | cut -c1-220 >&2 || true
exit "$rc"
