#!/usr/bin/env bash
# Prepare everything needed to boot the small real-guest VM used by the
# real-guest system tests (see shared/REAL-VM.md):
#   - Debian packages: qemu-system-x86, linux-image-amd64, busybox-static, cpio
#   - vhost-device-vsock (cargo install, binary cached)
#   - an initramfs (busybox + virtio/9p/vsock modules) whose /init mounts the
#     machine's root read-only over 9p, chroots into it and runs a per-run
#     guest script (see run-guest.sh), cached by kernel version + script hash.
#
# Idempotent and fast when everything is cached. On success it prints shell
# assignments (KERNEL=..., INITRD=..., VHOST_DEVICE_VSOCK=..., QEMU=...) on
# stdout and writes the same to $CACHE/vm.env; progress goes to stderr.
#
# Environment:
#   VSOCKENC_CACHE        cache directory (default: $HOME/.cache/vsockenc)
#   VSOCKENC_VM_KERNEL    kernel version to use (default: newest in /boot
#                         that has matching /lib/modules)
#   VSOCKENC_VM_NO_INSTALL=1  never install, fail if something is missing
set -euo pipefail

CACHE="${VSOCKENC_CACHE:-${HOME:-/root}/.cache/vsockenc}"
VHOST_VSOCK_VERSION="0.3.0"
APT_PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static cpio)
# Order matters: each module only depends on the ones before it.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  netfs fscache 9pnet 9pnet_virtio 9p
  vsock vmw_vsock_virtio_transport_common vsock_loopback vmw_vsock_virtio_transport)

log() { echo "prepare.sh: $*" >&2; }
die() {
  echo "prepare.sh: ERROR: $*" >&2
  exit 1
}

mkdir -p "$CACHE/bin"
# Serialise concurrent runs (several tests may call us at once).
exec 9>"$CACHE/prepare.lock"
flock -w 1800 9 || die "timed out waiting for $CACHE/prepare.lock"

can_install() { [ "${VSOCKENC_VM_NO_INSTALL:-0}" != 1 ] && [ "$(id -u)" = 0 ]; }

# ---- Debian packages -------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  can_install || die "missing Debian packages: ${missing[*]} (run as root: apt-get install ${missing[*]})"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 900 apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || log "apt-get update failed; trying install anyway"
  timeout 1500 apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
fi
QEMU="$(command -v qemu-system-x86_64 || true)"
[ -n "$QEMU" ] || die "qemu-system-x86_64 not found after installing qemu-system-x86"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (busybox-static)"
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

# ---- kernel ----------------------------------------------------------------
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
[ -r "$KERNEL" ] || die "$KERNEL not readable"

# ---- initramfs -------------------------------------------------------------
# Key: this script (it holds /init and the module list) and the exact kernel
# and busybox files, so a rebuilt package of the same version is noticed.
self_hash="$({
  cat "${BASH_SOURCE[0]}"
  stat -L -c '%n %s %Y' "$KERNEL" "/lib/modules/$KVER/modules.dep" "$BUSYBOX"
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
    f="$(find "/lib/modules/$KVER/kernel" -regextype posix-extended \
      -regex ".*/${pat}\.ko(\.xz|\.zst|\.gz)?" -print -quit)"
    if [ -z "$f" ]; then
      if grep -qE "/${pat}\.ko\$" "/lib/modules/$KVER/modules.builtin" 2>/dev/null; then
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
  echo "KERNEL=$KERNEL"
  echo "INITRD=$INITRD"
  echo "VHOST_DEVICE_VSOCK=$VHOST_DEVICE_VSOCK"
  echo "QEMU=$QEMU"
} | tee "$CACHE/vm.env"
