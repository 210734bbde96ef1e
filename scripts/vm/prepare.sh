#!/usr/bin/env bash
# Prepare everything needed to boot the small real-guest VM used by the
# real-guest system tests (see shared/REAL-VM.md), for one guest
# architecture:
#
#   prepare.sh [--arch x86_64|arm64]      (default: $VSOCKENC_VM_ARCH or x86_64)
#
#   - Debian packages: scripts/setup.sh group `vm` (x86_64: QEMU, the
#     machine's own kernel, busybox) or `vm-arm64` (qemu-system-aarch64,
#     debootstrap)
#   - vhost-device-vsock (cargo install, binary cached)
#   - the root file system the guest runs: x86_64 guests share the machine's
#     own `/`; arm64 guests get an arm64 Debian root of their own, unpacked
#     from Debian's arm64 packages (ARM64_ROOT_PACKAGES: kernel, busybox,
#     GStreamer and its development files, which scripts/cross.sh links the
#     arm64 plugin against), cached by package list
#   - an initramfs (busybox + virtio/9p/vsock modules of the guest kernel)
#     whose /init mounts that root read-only over 9p, chroots into it and runs
#     a per-run guest script (see run-guest.sh), cached by kernel version +
#     script hash.
#
# Idempotent and fast when everything is cached. On success it prints shell
# assignments (ARCH=, ROOT=, KERNEL=, INITRD=, VHOST_DEVICE_VSOCK=, QEMU=) on
# stdout and writes the same to $CACHE/vm-ARCH.env; progress goes to stderr.
#
# Environment:
#   VSOCKENC_CACHE        cache directory (default: $HOME/.cache/vsockenc)
#   VSOCKENC_VM_ARCH      guest architecture when --arch is not given
#   VSOCKENC_VM_KERNEL    x86_64: kernel version to use (default: newest in
#                         /boot that has matching /lib/modules)
#   VSOCKENC_VM_NO_INSTALL=1  never install, fail if something is missing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VSOCKENC_CACHE:-${HOME:-/root}/.cache/vsockenc}"
VHOST_VSOCK_VERSION="0.3.0"
# Order matters: each module only depends on the ones before it. Modules the
# kernel has built in (arm64: virtio, virtio_ring) are skipped.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  netfs fscache 9pnet 9pnet_virtio 9p
  vsock vmw_vsock_virtio_transport_common vsock_loopback vmw_vsock_virtio_transport)
# What an arm64 guest's root holds, besides Debian's minimal base: the
# kernel (and its modules), busybox for the initramfs, gst-launch-1.0 and the
# plugins the guest pipelines use (videotestsrc: plugins-base; filesink:
# core), the development files the arm64 plugin is linked against.
ARM64_ROOT_PACKAGES=(linux-image-arm64 busybox-static libc6-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev)
# Bump when the way the root is built changes (the cache key).
ARM64_ROOT_FORMAT=1

log() { echo "prepare.sh: $*" >&2; }
die() {
  echo "prepare.sh: ERROR: $*" >&2
  exit 1
}

ARCH="${VSOCKENC_VM_ARCH:-x86_64}"
while [ $# -gt 0 ]; do
  case $1 in
  --arch)
    [ $# -ge 2 ] || die "--arch needs a value"
    ARCH=$2
    shift 2
    ;;
  *) die "unknown argument '$1' (usage: prepare.sh [--arch x86_64|arm64])" ;;
  esac
done
case $ARCH in
x86_64 | amd64) ARCH=x86_64 group=vm ;;
arm64 | aarch64) ARCH=arm64 group=vm-arm64 ;;
*) die "unknown guest architecture '$ARCH' (x86_64 or arm64)" ;;
esac

mkdir -p "$CACHE/bin"
# Serialise concurrent runs (several tests may call us at once).
exec 9>"$CACHE/prepare.lock"
flock -w 1800 9 || die "timed out waiting for $CACHE/prepare.lock"

# ---- Debian packages (the groups live in scripts/setup.sh) --------------------
if [ "${VSOCKENC_VM_NO_INSTALL:-0}" = 1 ]; then
  VSOCKENC_SETUP_NO_INSTALL=1 timeout 1500 "$here/../setup.sh" "$group" >&2 ||
    die "Debian packages of the '$group' group are missing (scripts/setup.sh $group)"
else
  timeout 1500 "$here/../setup.sh" "$group" >&2 || die "scripts/setup.sh $group failed"
fi
command -v cpio >/dev/null || die "cpio not found"

# ---- vhost-device-vsock ----------------------------------------------------
VHOST_DEVICE_VSOCK="$CACHE/bin/vhost-device-vsock"
if [ ! -x "$VHOST_DEVICE_VSOCK" ]; then
  if command -v vhost-device-vsock >/dev/null; then
    cp "$(command -v vhost-device-vsock)" "$VHOST_DEVICE_VSOCK.tmp"
  else
    [ "${VSOCKENC_VM_NO_INSTALL:-0}" != 1 ] || die "vhost-device-vsock missing (cargo install vhost-device-vsock --locked)"
    command -v cargo >/dev/null || die "cargo not found: needed to install vhost-device-vsock"
    log "building vhost-device-vsock $VHOST_VSOCK_VERSION from crates.io (takes a few minutes)"
    tmp="$(mktemp -d "$CACHE/vhost-build.XXXXXX")"
    # Own target dir and install root, removed afterwards.
    if ! CARGO_TARGET_DIR="$tmp/target" timeout 2400 cargo install --locked --quiet \
      --version "$VHOST_VSOCK_VERSION" --root "$tmp/root" vhost-device-vsock >&2; then
      rm -rf "$tmp"
      die "cargo install vhost-device-vsock failed"
    fi
    cp "$tmp/root/bin/vhost-device-vsock" "$VHOST_DEVICE_VSOCK.tmp"
    rm -rf "$tmp"
  fi
  mv -f "$VHOST_DEVICE_VSOCK.tmp" "$VHOST_DEVICE_VSOCK"
fi

# ---- root file system and kernel ---------------------------------------------
# Unpacks Debian's arm64 packages into a root of their own: debootstrap
# resolves and downloads them (its --foreign first stage runs nothing of the
# foreign architecture), every downloaded package is then unpacked in place.
# Maintainer scripts never run, which the guest does not need: it only runs
# programs from a read-only root.
build_arm64_root() {
  local dest=$1 mirror work
  mirror=$(sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  mirror=${mirror:-http://deb.debian.org/debian}
  log "building the arm64 guest root from $mirror (debootstrap; about 2 minutes)"
  work="$(mktemp -d "$CACHE/arm64-root.XXXXXX")"
  local include
  include=$(IFS=,; echo "${ARM64_ROOT_PACKAGES[*]}")
  if ! timeout 1500 debootstrap --foreign --arch=arm64 --variant=minbase --include="$include" \
    bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    rm -rf "$work"
    die "debootstrap of the arm64 root failed (its log is above)"
  fi
  local deb
  for deb in "$work/root/var/cache/apt/archives/"*.deb; do
    # --keep-directory-symlink: /lib, /bin ... are merged-/usr symlinks.
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$work/root" ||
      { rm -rf "$work"; die "unpacking $deb failed"; }
  done
  rm -f "$work/root/var/cache/apt/archives/"*.deb
  mv "$work/root" "$dest"
  rm -rf "$work"
}

if [ "$ARCH" = arm64 ]; then
  QEMU="$(command -v qemu-system-aarch64 || true)"
  [ -n "$QEMU" ] || die "qemu-system-aarch64 not found after installing qemu-system-arm"
  key="$({
    echo "$ARM64_ROOT_FORMAT ${ARM64_ROOT_PACKAGES[*]}"
  } | sha256sum | cut -c1-12)"
  ROOT="$CACHE/arm64-root-$key"
  if [ ! -x "$ROOT/usr/bin/gst-launch-1.0" ]; then
    rm -rf "$ROOT"
    build_arm64_root "$ROOT"
    # Keep only this root: each is about 1 GB.
    for old in "$CACHE"/arm64-root-*; do
      [ "$old" = "$ROOT" ] || rm -rf "$old"
    done
  fi
  # shellcheck disable=SC2012 # kernel file names are plain
  KVER="$(ls -1 "$ROOT"/boot/vmlinuz-* 2>/dev/null | sed 's|.*/vmlinuz-||' | sort -V -r | head -n1)"
  [ -n "$KVER" ] || die "no kernel in $ROOT/boot (linux-image-arm64)"
  KERNEL="$ROOT/boot/vmlinuz-$KVER"
  MODDIR="$ROOT/lib/modules/$KVER"
  BUSYBOX="$ROOT/bin/busybox"
else
  QEMU="$(command -v qemu-system-x86_64 || true)"
  [ -n "$QEMU" ] || die "qemu-system-x86_64 not found after installing qemu-system-x86"
  ROOT=/
  KVER="${VSOCKENC_VM_KERNEL:-}"
  if [ -z "$KVER" ]; then
    # shellcheck disable=SC2012 # kernel file names are plain
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V -r); do
      if [ -d "/lib/modules/$k/kernel" ]; then
        KVER="$k"
        break
      fi
    done
  fi
  [ -n "$KVER" ] || die "no /boot/vmlinuz-* with matching /lib/modules (linux-image-amd64)"
  KERNEL="/boot/vmlinuz-$KVER"
  MODDIR="/lib/modules/$KVER"
  BUSYBOX=/bin/busybox
fi
[ -r "$KERNEL" ] || die "$KERNEL not readable"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (busybox-static)"

# ---- initramfs -------------------------------------------------------------
# Key: this script (it holds /init and the module list) and the exact kernel
# and busybox files, so a rebuilt package of the same version is noticed.
self_hash="$({
  cat "${BASH_SOURCE[0]}"
  stat -L -c '%n %s %Y' "$KERNEL" "$MODDIR/modules.order" "$BUSYBOX"
} | sha256sum | cut -c1-16)"
INITRD="$CACHE/initramfs-$KVER-$self_hash.cpio.gz"
if [ ! -s "$INITRD" ]; then
  log "building initramfs for kernel $KVER"
  work="$(mktemp -d "$CACHE/initramfs.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  root="$work/root"
  mkdir -p "$root"/{bin,dev,proc,sys,mnt,mods,tmp}
  cp "$BUSYBOX" "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  modlist=""
  for m in "${MODULES[@]}"; do
    # Module file names may use '-' or '_' interchangeably.
    pat="${m//[-_]/[-_]}"
    f="$(find "$MODDIR/kernel" -regextype posix-extended \
      -regex ".*/${pat}\.ko(\.xz|\.zst|\.gz)?" -print -quit)"
    if [ -z "$f" ]; then
      if grep -qE "/${pat}\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then
        log "module $m is built into $KVER"
        continue
      fi
      die "kernel module $m not found for $KVER"
    fi
    case "$f" in
    *.ko.xz) xz -dc "$f" >"$root/mods/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$root/mods/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$root/mods/$m.ko" ;;
    *) cp "$f" "$root/mods/$m.ko" ;;
    esac
    modlist="$modlist $m"
  done
  cat >"$root/init" <<EOF
#!/bin/sh
# vsockenc real-guest init (generated by scripts/vm/prepare.sh)
MODULES="$modlist"
EOF
  cat >>"$root/init" <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $MODULES; do
  insmod /mods/$m.ko || echo "vsockenc-init: insmod $m failed"
done
fail() {
  echo "vsockenc-init: $*"
  echo "VSOCKENC-GUEST-DONE status=255"
  poweroff -f
  sleep 60
}
RUN=""
for a in $(cat /proc/cmdline); do
  case "$a" in vsockenc.run=*) RUN="${a#vsockenc.run=}" ;; esac
done
[ -n "$RUN" ] || fail "no vsockenc.run= on the kernel command line"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /mnt || fail "cannot mount hostroot"
mount -t proc proc /mnt/proc
mount -t sysfs sys /mnt/sys
mount -t devtmpfs dev /mnt/dev
mkdir -p /mnt/dev/pts /mnt/dev/shm 2>/dev/null
mount -t devpts devpts /mnt/dev/pts 2>/dev/null
mount -t tmpfs tmpfs /mnt/dev/shm
mount -t tmpfs tmpfs /mnt/tmp
mount -t tmpfs tmpfs /mnt/run
mount -t tmpfs tmpfs /mnt/var/tmp 2>/dev/null
# The per-run share appears at the same path as on the machine (the read-only
# host root shows that path; if a tmpfs above hides it, recreate it).
mkdir -p "/mnt$RUN" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=512000 run "/mnt$RUN" || fail "cannot mount run share at $RUN"
[ -r "/mnt$RUN/guest.sh" ] || fail "$RUN/guest.sh missing"
echo "VSOCKENC-GUEST-START uptime=$(cut -d" " -f1 /proc/uptime)"
chroot /mnt /usr/bin/env -i HOME=/tmp TMPDIR=/tmp USER=root LANG=C.UTF-8 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  VSOCKENC_RUN_SHARE="$RUN" \
  /bin/sh -c 'cd "$VSOCKENC_RUN_SHARE" && exec /bin/sh ./guest.sh' \
  </dev/null >"/mnt$RUN/guest.log" 2>&1
status=$?
echo "$status" >"/mnt$RUN/guest.status"
sync
echo "VSOCKENC-GUEST-DONE status=$status uptime=$(cut -d" " -f1 /proc/uptime)"
poweroff -f
sleep 60
EOF
  chmod +x "$root/init"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$INITRD.tmp"
  mv -f "$INITRD.tmp" "$INITRD"
  rm -rf "$work"
  trap - EXIT
  # Keep the few newest images only (other checkouts of the project, with
  # another version of this script, may be using theirs right now).
  # shellcheck disable=SC2012 # our own plain file names
  ls -1t "$CACHE"/initramfs-*.cpio.gz | tail -n +5 | xargs -r rm -f
fi

{
  echo "ARCH=$ARCH"
  echo "ROOT=$ROOT"
  echo "KERNEL=$KERNEL"
  echo "INITRD=$INITRD"
  echo "VHOST_DEVICE_VSOCK=$VHOST_DEVICE_VSOCK"
  echo "QEMU=$QEMU"
} | tee "$CACHE/vm-$ARCH.env"
