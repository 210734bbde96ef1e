#!/usr/bin/env bash
# Boot the small real-guest VM (see shared/REAL-VM.md and prepare.sh) with a
# vhost-user virtio-vsock device and run SCRIPT inside it.
#
#   run-guest.sh [--arch x86_64|arm64] RUNDIR SCRIPT
#
# The guest is x86_64 (the default, or $VSOCKENC_VM_ARCH) or arm64, emulated
# by QEMU either way (TCG). An x86_64 guest runs the machine's own root file
# system; an arm64 guest the arm64 root prepare.sh unpacked (its path is in
# $CACHE/vm-arm64.env as ROOT=): give it arm64 programs only.
#
# RUNDIR (created if missing, absolute path without whitespace) is shared with
# the guest read-write over 9p and appears inside the guest at the same path
# (also in $VSOCKENC_RUN_SHARE); the guest's working directory is RUNDIR. The
# rest of the guest's root filesystem is visible read-only: for x86_64 the
# machine's own, at the same paths, so the guest runs the machine's own
# gst-launch-1.0, plugins and build output.
# /tmp, /run and /dev/shm are private tmpfs in the guest.
#
# The guest has CID 4. A guest connect() to CID 2 port P arrives on the machine
# as a connection to the Unix socket RUNDIR/vm.vsock_P (listen there before
# starting the guest). CID 1 (vsock_loopback) works inside the guest.
#
# Files written in RUNDIR: guest.sh (copy of SCRIPT), guest.log (the script's
# stdout+stderr), guest.status (its exit status), console.log (serial console),
# vhost.log (vhost-device-vsock), vm.vsock / vhost.socket (sockets).
#
# Exit status: the guest script's exit status; 124 if the VM timed out; 125 for
# an infrastructure failure (no status written by the guest).
#
# Environment: VSOCKENC_VM_TIMEOUT (seconds, default 600), VSOCKENC_VM_MEM (MiB,
# default 1024), VSOCKENC_VM_SMP (default 2), VSOCKENC_VM_CPU (QEMU -cpu model,
# default qemu64 for x86_64: faster than "max" under TCG here; cortex-a72 for
# arm64: "max" emulates pointer authentication, slow under TCG),
# VSOCKENC_VM_ARCH, VSOCKENC_CACHE (see prepare.sh),
# VSOCKENC_VM_IVSHMEM (a file, e.g. /dev/shm/NAME, whose size is a power of two:
# the guest gets an ivshmem-plain device backed by it, as shared memory with the
# machine), VSOCKENC_VM_NET=user (a virtio-net device on QEMU user networking:
# the guest reaches the machine's 127.0.0.1 as 10.0.2.2 once it has configured
# eth0, e.g. modprobe virtio_net; ip addr add 10.0.2.15/24 dev eth0),
# VSOCKENC_VM_ICOUNT=SHIFT (-icount shift=SHIFT,sleep=on: the guest's clock
# advances 2^SHIFT ns per emulated instruction while it runs, so its CPU times
# count instructions and do not move with the machine's load; one TCG thread
# for all vCPUs, slower: use with VSOCKENC_VM_SMP=1 for per-process CPU).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "run-guest.sh: $*" >&2; }
die() {
  echo "run-guest.sh: ERROR: $*" >&2
  exit 125
}

ARCH="${VSOCKENC_VM_ARCH:-x86_64}"
if [ "${1:-}" = --arch ]; then
  [ $# -ge 2 ] || die "--arch needs a value"
  ARCH=$2
  shift 2
fi
[ $# -eq 2 ] || die "usage: run-guest.sh [--arch x86_64|arm64] RUNDIR SCRIPT"
mkdir -p "$1"
RUNDIR="$(cd "$1" && pwd -P)"
SCRIPT="$2"
[ -r "$SCRIPT" ] || die "cannot read $SCRIPT"
case "$RUNDIR" in *[[:space:]]*) die "RUNDIR must not contain whitespace: $RUNDIR" ;; esac
[ "$RUNDIR" != / ] || die "RUNDIR must not be /"

TIMEOUT="${VSOCKENC_VM_TIMEOUT:-600}"
MEM="${VSOCKENC_VM_MEM:-1024}"
SMP="${VSOCKENC_VM_SMP:-2}"

env_out="$("$here/prepare.sh" --arch "$ARCH")" || die "prepare.sh failed"
ROOT="" KERNEL="" INITRD="" VHOST_DEVICE_VSOCK="" QEMU=""
while IFS='=' read -r k v; do
  case "$k" in ARCH | ROOT | KERNEL | INITRD | VHOST_DEVICE_VSOCK | QEMU) printf -v "$k" '%s' "$v" ;; esac
done <<<"$env_out"
if [ -z "$ROOT" ] || [ -z "$KERNEL" ] || [ -z "$INITRD" ] || [ -z "$VHOST_DEVICE_VSOCK" ] || [ -z "$QEMU" ]; then
  die "prepare.sh did not report ROOT/KERNEL/INITRD/VHOST_DEVICE_VSOCK/QEMU"
fi
# What differs between the two emulated machines.
case $ARCH in
x86_64) machine=q35 CPU="${VSOCKENC_VM_CPU:-qemu64}" console=ttyS0 ;;
arm64) machine=virt CPU="${VSOCKENC_VM_CPU:-cortex-a72}" console=ttyAMA0 ;;
*) die "prepare.sh reported an unknown ARCH=$ARCH" ;;
esac

if [ "$(cd "$(dirname "$SCRIPT")" && pwd -P)/$(basename "$SCRIPT")" != "$RUNDIR/guest.sh" ]; then
  cp "$SCRIPT" "$RUNDIR/guest.sh"
fi
rm -f "$RUNDIR/guest.status" "$RUNDIR/guest.log" "$RUNDIR/console.log" \
  "$RUNDIR/vhost.log" "$RUNDIR/vm.vsock" "$RUNDIR/vhost.socket"

vhost_pid=""
qemu_pid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  local p
  for p in $qemu_pid $vhost_pid; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in $qemu_pid $vhost_pid; do
    for _ in $(seq 50); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -f "$RUNDIR/vm.vsock" "$RUNDIR/vhost.socket"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_ms=$(($(date +%s%N) / 1000000))
"$VHOST_DEVICE_VSOCK" --vm "guest-cid=4,uds-path=$RUNDIR/vm.vsock,socket=$RUNDIR/vhost.socket" \
  </dev/null >"$RUNDIR/vhost.log" 2>&1 &
vhost_pid=$!
for _ in $(seq 100); do
  [ -S "$RUNDIR/vhost.socket" ] && break
  kill -0 "$vhost_pid" 2>/dev/null || die "vhost-device-vsock exited: $(cat "$RUNDIR/vhost.log")"
  sleep 0.1
done
[ -S "$RUNDIR/vhost.socket" ] || die "vhost-device-vsock did not create $RUNDIR/vhost.socket"

extra=()
if [ -n "${VSOCKENC_VM_IVSHMEM:-}" ]; then
  [ -f "$VSOCKENC_VM_IVSHMEM" ] || die "VSOCKENC_VM_IVSHMEM=$VSOCKENC_VM_IVSHMEM is not a file"
  size=$(stat -c %s "$VSOCKENC_VM_IVSHMEM")
  extra+=(-object "memory-backend-file,id=ivs,mem-path=$VSOCKENC_VM_IVSHMEM,size=$size,share=on"
    -device ivshmem-plain,memdev=ivs)
fi
if [ -n "${VSOCKENC_VM_ICOUNT:-}" ]; then
  case "$VSOCKENC_VM_ICOUNT" in *[!0-9]*) die "VSOCKENC_VM_ICOUNT=$VSOCKENC_VM_ICOUNT: a shift (0-10)" ;; esac
  extra+=(-icount "shift=$VSOCKENC_VM_ICOUNT,sleep=on")
fi
case "${VSOCKENC_VM_NET:-}" in
"") ;;
user) extra+=(-netdev user,id=net0 -device virtio-net-pci,netdev=net0) ;;
*) die "VSOCKENC_VM_NET=$VSOCKENC_VM_NET: only 'user' is known" ;;
esac

# Plain TCG: KVM guests hung on this kind of machine (REAL-VM.md).
timeout --kill-after=10 "$TIMEOUT" "$QEMU" \
  -nodefaults -display none -no-reboot \
  -machine "$machine,memory-backend=mem" -accel tcg -cpu "$CPU" -smp "$SMP" -m "${MEM}M" \
  -object "memory-backend-memfd,id=mem,size=${MEM}M,share=on" \
  -chardev "socket,id=char0,path=$RUNDIR/vhost.socket" \
  -device vhost-user-vsock-pci,chardev=char0 \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append "console=$console quiet panic=-1 mitigations=off vsockenc.run=$RUNDIR" \
  -serial "file:$RUNDIR/console.log" \
  -virtfs "local,path=$ROOT,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
  -virtfs "local,path=$RUNDIR,mount_tag=run,security_model=none,multidevs=remap" \
  "${extra[@]}" \
  </dev/null >"$RUNDIR/qemu.log" 2>&1 &
qemu_pid=$!
set +e
wait "$qemu_pid"
qemu_status=$?
set -e
qemu_pid=""
elapsed_ms=$(($(date +%s%N) / 1000000 - start_ms))
elapsed="$((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000)))"

if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
  log "VM timed out after ${TIMEOUT}s; console tail:"
  tail -n 20 "$RUNDIR/console.log" >&2 || true
  exit 124
fi
if [ ! -s "$RUNDIR/guest.status" ]; then
  log "guest wrote no status (qemu exit $qemu_status); qemu.log / console tail:"
  tail -n 20 "$RUNDIR/qemu.log" >&2 || true
  tail -n 40 "$RUNDIR/console.log" >&2 || true
  exit 125
fi
status="$(tr -dc '0-9' <"$RUNDIR/guest.status")"
log "guest script exited $status after ${elapsed}s (boot+run+poweroff)"
exit "${status:-125}"
