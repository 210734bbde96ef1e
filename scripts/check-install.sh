#!/usr/bin/env bash
# Check the meson install of vsockenc end to end (issue 7, "Done when"):
#
#   meson setup (prefix /usr, libdir lib/<multiarch>) + meson compile +
#   meson install --destdir TREE, then in TREE:
#   - exactly the plugin, the daemon and the service files at the paths
#     docs/install.md documents, and nothing else;
#   - gst-inspect-1.0 loads the `vsockenc` element from TREE's plugin
#     (GST_PLUGIN_SYSTEM_PATH pointed at it, private registry, clean env);
#   - TREE/usr/bin/vsockenc-host --help runs;
#   - systemd-analyze verify reports nothing for the installed unit, the
#     sysusers.d snippet parses, the launchd plist parses (plistlib) and is
#     valid against the plist DTD (xmllint);
#   - as root with mount namespaces: a real `meson install` (no DESTDIR) into
#     a throw-away overlay of /usr, and `gst-inspect-1.0 vsockenc` with no
#     GST_* variable at all finds the plugin in GStreamer's default path;
#   - with --service (root only): boot systemd as PID 1 of private
#     namespaces on overlays of /usr, /etc and /var holding the tree, write
#     docs/install.md's /etc/default/vsockenc-host example, run its
#     `systemd-sysusers`, `systemctl daemon-reload`, `systemctl enable --now`
#     and `systemctl restart` on the installed unit (a test drop-in only drops
#     its default dependencies on sysinit.target and adds a probe), check
#     from inside its sandbox which devices and files it can use, encode
#     30 frames through it with the installed element, and select that
#     guest's lines in the journal by the daemon's fields (VSOCKENC_CONN).
#
# Usage: scripts/check-install.sh [--clone] [--buildtype=release|debug]
#                                 [--builddir=DIR] [--service] [--keep]
#   --clone      check a fresh `git clone` of this repository's HEAD (only
#                committed files), not the working tree
#   --buildtype  meson buildtype (default release, what users get; debug
#                reuses a debug CARGO_TARGET_DIR and is much faster)
#   --builddir   meson build directory to (re)use (default: a temporary one)
#   --service    also run the installed unit under systemd (see above)
#   --keep       keep the temporary directory (printed at the end)
# Environment: CARGO_TARGET_DIR, when set, is passed to meson as
# -Dcargo_target_dir so cargo reuses it; otherwise cargo builds inside the
# meson build directory.
#
# As root, missing tools (meson, ninja, systemd, gstreamer1.0-tools, ...) are
# installed with apt-get.  Exits non-zero with a "FAIL:" line on any failure.

set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
clone=0 buildtype=release builddir= keep=0 service=0
for arg in "$@"; do
    case $arg in
        --clone) clone=1 ;;
        --buildtype=*) buildtype=${arg#*=} ;;
        --builddir=*) builddir=${arg#*=} ;;
        --keep) keep=1 ;;
        --service) service=1 ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "check-install: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
case $buildtype in release|debug|debugoptimized|minsize|plain) ;;
    *) echo "check-install: bad --buildtype $buildtype" >&2; exit 2 ;;
esac

t_start=$(date +%s)
tmp=$(mktemp -d /tmp/vsockenc-check-install.XXXXXX)
logs=$tmp/logs
mkdir -p "$logs"
cleanup() {
    local rc=$?
    if [ "$keep" = 1 ]; then
        echo "check-install: kept $tmp"
    elif [ $rc -ne 0 ]; then
        # Keep the logs (and the service check's output) for the failure
        # message; drop the build, which may hold a whole cargo target dir.
        [ ! -d "$tmp/svc/out" ] || cp -a "$tmp/svc/out" "$logs/service-out" 2>/dev/null || true
        find "$tmp" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} + 2>/dev/null || true
        echo "check-install: logs kept in $logs" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

fail() {
    echo "check-install: FAIL: $*" >&2
    exit 1
}
note() { echo "check-install: $*"; }

# run NAME CMD... : run a step with its output in $logs/NAME.log; on failure
# show the end of the log and fail.
run() {
    local name=$1 t0 rc=0
    shift
    t0=$(date +%s)
    "$@" >"$logs/$name.log" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        echo "---- last lines of $name output ----" >&2
        tail -n 40 "$logs/$name.log" >&2
        echo "----" >&2
        fail "$name exited with status $rc: $*"
    fi
    note "ok: $name ($(($(date +%s) - t0)) s)"
}

# ---- tools ------------------------------------------------------------------

# A cargo test runs this with cargo's directory possibly not on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -n "${CARGO:-}" ]; then
    PATH=$(dirname "$CARGO"):$PATH
fi
command -v cargo >/dev/null 2>&1 || fail "cargo not found on PATH (install Rust with rustup)"

declare -A pkg_of=(
    [meson]=meson [ninja]=ninja-build [systemd-analyze]=systemd
    [systemd-sysusers]=systemd [gst-inspect-1.0]=gstreamer1.0-tools
    [dpkg-architecture]=dpkg-dev [xmllint]=libxml2-utils [python3]=python3
    [pkg-config]=pkg-config [git]=git [nm]=binutils
)
tools=(meson ninja systemd-analyze systemd-sysusers gst-inspect-1.0 dpkg-architecture xmllint python3 pkg-config nm)
[ "$clone" = 1 ] && tools+=(git)
missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_of[$tool]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        note "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt_install() { apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}"; }
        apt_install >"$logs/apt-get.log" 2>&1 ||
            { apt-get -o DPkg::Lock::Timeout=300 update && apt_install; } >>"$logs/apt-get.log" 2>&1 ||
            { tail -n 20 "$logs/apt-get.log" >&2; fail "apt-get install ${missing[*]} failed"; }
    else
        fail "missing tools; install the packages: ${missing[*]}"
    fi
fi
meson_version=$(meson --version)
case $meson_version in 0.*) fail "meson $meson_version is too old (need >= 1.0)" ;; esac

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir=lib/$multiarch
prefix=/usr

# ---- source, setup, compile, install ------------------------------------------

if [ "$clone" = 1 ]; then
    run git-clone git clone --quiet "$src" "$tmp/src"
    src=$tmp/src
fi
[ -n "$builddir" ] || builddir=$tmp/build
destdir=$tmp/root

setup_args=(--prefix="$prefix" --libdir="$libdir" --buildtype="$buildtype")
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    setup_args+=(-Dcargo_target_dir="$(realpath -m "$CARGO_TARGET_DIR")")
else
    setup_args+=(-Dcargo_target_dir=)
fi
if [ -f "$builddir/meson-private/coredata.dat" ]; then
    run meson-setup meson setup --reconfigure "${setup_args[@]}" "$builddir" "$src"
else
    run meson-setup meson setup "${setup_args[@]}" "$builddir" "$src"
fi
run meson-compile meson compile -C "$builddir"
run meson-install meson install -C "$builddir" --destdir "$destdir"

# ---- installed files at the documented paths ---------------------------------

# The same rule as meson.build: systemd.pc's directories when its prefix is ours.
unitdir=$prefix/lib/systemd/system
sysusersdir=$prefix/lib/sysusers.d
if pkg-config --exists systemd && [ "$(pkg-config --variable=prefix systemd)" = "$prefix" ]; then
    unitdir=$(pkg-config --variable=systemdsystemunitdir systemd)
    sysusersdir=$(pkg-config --variable=sysusersdir systemd)
fi
plugin=$prefix/$libdir/gstreamer-1.0/libgstvsockenc.so
daemon=$prefix/bin/vsockenc-host
unit=$unitdir/vsockenc-host.service
sysusers=$sysusersdir/vsockenc-host.conf
plist=$prefix/share/vsockenc/launchd/org.vsockenc.host.plist

expected=$(printf '%s\n' "$plugin" "$daemon" "$unit" "$sysusers" "$plist" | sort)
installed=$(cd "$destdir" && find . ! -type d | sed 's|^\.||' | sort)
if [ "$installed" != "$expected" ]; then
    echo "expected:" >&2; echo "$expected" >&2
    echo "installed:" >&2; echo "$installed" >&2
    fail "meson install --destdir did not produce exactly the documented files"
fi
[ -x "$destdir$daemon" ] || fail "$daemon is not executable"
grep -q 'gst_plugin_vsockenc_get_desc' <(LC_ALL=C nm -D --defined-only "$destdir$plugin" 2>/dev/null || true) ||
    fail "$plugin does not export gst_plugin_vsockenc_get_desc (not a GStreamer plugin?)"
if grep -n '@[A-Za-z_]*@' "$destdir$unit" "$destdir$plist"; then
    fail "unsubstituted @...@ placeholders in the installed service files"
fi
grep -qx "ExecStart=$daemon \$VSOCKENC_HOST_ARGS" "$destdir$unit" ||
    fail "$unit does not start $daemon"
note "ok: installed files: $(echo $expected)"

# ---- the plugin loads from the tree -------------------------------------------

# A clean environment: no GST_PLUGIN_PATH or similar from the caller, a
# private registry, only the tree's plugin directory.
inspect_env=(env -i PATH="$PATH" HOME="$tmp" LC_ALL=C.UTF-8
    GST_PLUGIN_SYSTEM_PATH="$destdir$prefix/$libdir/gstreamer-1.0"
    GST_REGISTRY="$tmp/registry.bin")
run gst-inspect-plugin timeout 60 "${inspect_env[@]}" gst-inspect-1.0 "$destdir$plugin"
rc=0
timeout 60 "${inspect_env[@]}" gst-inspect-1.0 vsockenc >"$logs/gst-inspect.log" 2>&1 || rc=$?
if [ $rc -ne 0 ] || ! grep -q '^Factory Details:' "$logs/gst-inspect.log"; then
    cat "$logs/gst-inspect.log" >&2
    fail "gst-inspect-1.0 vsockenc: no element \`vsockenc\` from the installed plugin (status $rc)"
fi
grep -Eq "^  Filename +$destdir$plugin\$" "$logs/gst-inspect.log" ||
    fail "gst-inspect-1.0 vsockenc did not load the plugin from $destdir$plugin"
note "ok: gst-inspect-1.0 vsockenc loads $destdir$plugin"

# ---- the daemon runs from the tree --------------------------------------------

run vsockenc-host-help timeout 30 env -i PATH="$PATH" HOME="$tmp" "$destdir$daemon" --help
grep -q -- '--listen' "$logs/vsockenc-host-help.log" ||
    fail "vsockenc-host --help does not mention --listen"

# ---- service files -------------------------------------------------------------

# systemd-analyze verify checks that ExecStart's binary exists, so it must see
# the installed /usr/bin/vsockenc-host: as root, overlay the tree's /usr on
# the real /usr in a private mount namespace (nothing leaks out).  Otherwise
# verify a copy whose ExecStart points into the tree.  Warnings do not change
# its exit status, so any output at all is a failure.
verify_ns() {
    # shellcheck disable=SC2016
    unshare --mount --propagation private sh -ec '
        mount -t overlay overlay -o "lowerdir=$1/usr:/usr" /usr
        systemd-analyze verify "$1$2"
        score=$(systemd-analyze security --offline=yes --threshold=30 "$1$2")
        printf "%s\n" "$score" | tail -n 1
    ' verify "$destdir" "$unit"
}
if [ "$(id -u)" = 0 ] && unshare --mount true 2>/dev/null; then
    verify_how="installed unit, /usr/bin/vsockenc-host from the tree overlaid on /usr"
    run systemd-analyze verify_ns
    grep -v '^→ Overall exposure level' "$logs/systemd-analyze.log" >&2 &&
        fail "systemd-analyze verify reported problems in $unit"
    note "   $(grep '^→ Overall exposure level' "$logs/systemd-analyze.log")"
else
    verify_how="copy of the installed unit with ExecStart pointing into the tree"
    mkdir -p "$tmp/verify"
    sed "s|^ExecStart=$daemon |ExecStart=$destdir$daemon |" "$destdir$unit" >"$tmp/verify/vsockenc-host.service"
    run systemd-analyze systemd-analyze verify "$tmp/verify/vsockenc-host.service"
    [ -s "$logs/systemd-analyze.log" ] && { cat "$logs/systemd-analyze.log" >&2; fail "systemd-analyze verify reported problems in $unit"; }
fi
note "   systemd-analyze verify: $verify_how"

mkdir -p "$tmp/sysusers-root"
run systemd-sysusers systemd-sysusers --dry-run --root="$tmp/sysusers-root" - <"$destdir$sysusers"
grep -q "Creating user 'vsockenc'" "$logs/systemd-sysusers.log" ||
    fail "$sysusers does not create the user vsockenc"

# plutil -lint does not exist on Linux: parse the plist with Python's
# plistlib (the format launchd reads), check the keys launchd needs, and
# validate the XML against the plist DTD with xmllint.
cat >"$tmp/plist.dtd" <<'EOF'
<!ENTITY % plistObject "(array | data | date | dict | real | integer | string | true | false)">
<!ELEMENT plist %plistObject;>
<!ATTLIST plist version CDATA "1.0">
<!ELEMENT array (%plistObject;)*>
<!ELEMENT dict (key, %plistObject;)*>
<!ELEMENT key (#PCDATA)>
<!ELEMENT string (#PCDATA)>
<!ELEMENT data (#PCDATA)>
<!ELEMENT date (#PCDATA)>
<!ELEMENT true EMPTY>
<!ELEMENT false EMPTY>
<!ELEMENT real (#PCDATA)>
<!ELEMENT integer (#PCDATA)>
EOF
# A catalog maps the plist's DOCTYPE public id to that DTD (no network).
cat >"$tmp/catalog.xml" <<EOF
<?xml version="1.0"?>
<catalog xmlns="urn:oasis:names:tc:entity:xmlns:xml:catalog">
  <public publicId="-//Apple//DTD PLIST 1.0//EN" uri="file://$tmp/plist.dtd"/>
</catalog>
EOF
run plist-xmllint env XML_CATALOG_FILES="$tmp/catalog.xml" xmllint --noout --nonet --valid "$destdir$plist"
[ -s "$logs/plist-xmllint.log" ] && { cat "$logs/plist-xmllint.log" >&2; fail "xmllint reported problems in $plist"; }
# shellcheck disable=SC2016
run plist-plistlib python3 -c '
import plistlib, sys
path, daemon = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    p = plistlib.load(f)
assert p["Label"] == "org.vsockenc.host", p.get("Label")
args = p["ProgramArguments"]
assert args[0] == daemon, args
assert all(isinstance(a, str) for a in args), args
assert "tcp:127.0.0.1:15937" in args and any(a.startswith("unix:/") for a in args), args
assert isinstance(p["KeepAlive"], (bool, dict)), p["KeepAlive"]
assert p["StandardErrorPath"].startswith("/"), p["StandardErrorPath"]
print("plist ok:", " ".join(args))
' "$destdir$plist" "$daemon"

# ---- a real install into GStreamer's default path -------------------------------

# Only as root with mount namespaces and a merged /usr (so every installed
# file lands under /usr): install into a throw-away overlay of /usr and ask
# for the element with no GST_* variable at all.  XDG_CACHE_HOME keeps the
# registry this creates away from the machine's.
system_check="not run (needs root, mount namespaces and a merged /usr)"
if [ "$(id -u)" = 0 ] && unshare --mount true 2>/dev/null && [ "$(readlink /lib)" = usr/lib ]; then
    mkdir -p "$tmp/overlay/upper" "$tmp/overlay/work" "$tmp/xdg-cache"
    # shellcheck disable=SC2016
    run system-install unshare --mount --propagation private sh -ec '
        mount -t overlay overlay -o "lowerdir=/usr,upperdir=$1/overlay/upper,workdir=$1/overlay/work" /usr
        meson install -C "$2" --no-rebuild
        env -i PATH="$PATH" HOME="$1" XDG_CACHE_HOME="$1/xdg-cache" timeout 60 gst-inspect-1.0 vsockenc
    ' system-install "$tmp" "$builddir"
    # GStreamer may report the plugin through the /lib -> usr/lib symlink.
    found=$(sed -n 's/^  Filename  *//p' "$logs/system-install.log")
    grep -q '^Factory Details:' "$logs/system-install.log" &&
        [ -n "$found" ] && [ "$(readlink -m "$found")" = "$(readlink -m "$plugin")" ] ||
        fail "after meson install into /usr, gst-inspect-1.0 vsockenc did not find $plugin (found: ${found:-nothing}; see $logs/system-install.log)"
    system_check="passed ($found)"
fi
note "   meson install into the real prefix + gst-inspect-1.0 without GST_* variables: $system_check"

# ---- the unit running under systemd (--service) -------------------------------

service_check="not run (pass --service)"
if [ "$service" = 1 ]; then
    [ "$(id -u)" = 0 ] || fail "--service needs root"
    [ "$(readlink /lib)" = usr/lib ] || fail "--service needs a merged /usr (/lib -> usr/lib)"
    cgroot=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
    [ -n "$cgroot" ] || fail "--service needs a cgroup2 hierarchy"
    svc=$tmp/svc
    mkdir -p "$svc/out" "$svc/usr-up/lib" "$svc/usr-wk" "$svc/etc-up/systemd/system/vsockenc-host.service.d" \
        "$svc/etc-up/default" "$svc/etc-wk" "$svc/var-up" "$svc/var-wk"
    chmod 755 "$svc"
    # The tree: everything under usr/, and lib/ (systemd.pc's /lib/systemd/system on Debian 12).
    cp -a "$destdir/usr/." "$svc/usr-up/"
    [ ! -d "$destdir/lib" ] || cp -a "$destdir/lib/." "$svc/usr-up/lib/"
    # Only these test files are added; the unit itself is the installed one.
    cat >"$svc/etc-up/systemd/system/vsockenc-host.service.d/check-install.conf" <<'EOF'
# check-install.sh only: start without sysinit.target/basic.target inside the
# throw-away container, and probe the sandbox from inside after start.
[Unit]
DefaultDependencies=no
[Service]
ExecStartPost=/bin/sh /run/vsockenc-check/probe.sh
EOF
    # The override example of docs/install.md, verbatim (no vsock listener:
    # vsock is not network-namespaced, and port 5000 may be in use here).
    doc_args='--listen unix:/run/vsockenc-host/vm1.vsock_5000 --socket-mode 0660 --encoder x264enc'
    echo "VSOCKENC_HOST_ARGS=\"$doc_args\"" >"$svc/etc-up/default/vsockenc-host"
    cat >"$svc/etc-up/systemd/system/vsockenc-check.service" <<'EOF'
[Unit]
DefaultDependencies=no
Wants=systemd-journald.socket
After=systemd-journald.socket
[Service]
Type=oneshot
ExecStart=/bin/sh /run/vsockenc-check/check.sh
EOF
    cat >"$svc/etc-up/systemd/system/vsockenc-check.target" <<'EOF'
[Unit]
DefaultDependencies=no
Requires=vsockenc-check.service
After=vsockenc-check.service
EOF
    # Runs as ExecStartPost=, i.e. as the service user inside its sandbox and
    # cgroup.  Always succeeds; check.sh judges the lines.
    cat >"$svc/probe.sh" <<'EOF'
exec >/run/vsockenc-host/probe.txt 2>&1
echo "id: $(id -un) groups: $(id -Gn)"
try() { if (eval "$2") >/dev/null 2>&1; then echo "$1: allowed"; else echo "$1: denied"; fi; }
try "open /dev/vsock" 'exec 3<>/dev/vsock'
try "open /dev/fuse" 'exec 3<>/dev/fuse'
try "write /usr" 'touch /usr/vsockenc-probe'
try "write /etc" 'touch /etc/vsockenc-probe'
try "read /root" 'ls /root'
try "write /tmp" 'touch /tmp/vsockenc-probe'
try "write cache" 'touch /var/cache/vsockenc-host/probe'
try "write /var/probe-1777" 'touch /var/probe-1777/vsockenc-probe'
try "write /run/lock" 'touch /run/lock/vsockenc-probe'
try "write /run/vsockenc-host" 'touch /run/vsockenc-host/probe'
try "socket AF_VSOCK" '/usr/bin/python3 -c "import socket; socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)"'
try "socket AF_INET" '/usr/bin/python3 -c "import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM)"'
exit 0
EOF
    # Runs as root, unconfined, once the daemon has started.
    cat >"$svc/check.sh" <<'EOF'
out=/run/vsockenc-check/out
exec >"$out/check.log" 2>&1
export HOME=$out XDG_CACHE_HOME=$out/cache
sock=/run/vsockenc-host/vm1.vsock_5000
# The commands of docs/install.md, as written.
{ systemd-sysusers && systemctl daemon-reload && systemctl enable --now vsockenc-host.service; echo "status $?"; } >"$out/enable.txt" 2>&1
for i in $(seq 120); do [ -S $sock ] && [ -s /run/vsockenc-host/probe.txt ] && break; sleep 0.5; done
timeout 60 systemctl restart vsockenc-host >>"$out/enable.txt" 2>&1
echo "restart status $?" >>"$out/enable.txt"
for i in $(seq 120); do [ -S $sock ] && [ -s /run/vsockenc-host/probe.txt ] && break; sleep 0.5; done
systemctl is-enabled vsockenc-host.service >>"$out/enable.txt" 2>&1
systemctl show vsockenc-host -p ActiveState -p SubState -p NRestarts -p User >"$out/show.txt"
pid=$(systemctl show -P MainPID vsockenc-host)
grep -E '^(Uid|Groups|CapEff|NoNewPrivs|Seccomp):' "/proc/$pid/status" >"$out/status.txt"
cp /run/vsockenc-host/probe.txt "$out/" || true
stat -c '%A %U %G %n' /run/vsockenc-host $sock >"$out/run.txt"
timeout 120 gst-launch-1.0 -q videotestsrc num-buffers=30 ! video/x-raw,width=128,height=96,framerate=30/1 ! \
    vsockenc socket-path=$sock ! h264parse ! video/x-h264,stream-format=byte-stream ! \
    filesink location="$out/out.h264"
echo "$?" >"$out/gst-launch.status"
timeout 60 systemctl stop vsockenc-host
systemctl show vsockenc-host -p ActiveState -p Result >"$out/stopped.txt"
[ -e /run/vsockenc-host ] && echo present >"$out/rundir-after-stop.txt"
timeout 20 journalctl -b --no-pager -o short-monotonic >"$out/journal.txt"
timeout 20 journalctl -u vsockenc-host >"$out/journal-unit.txt" 2>&1
# The daemon's own journal fields (docs/install.md): the guest above was
# connection #1, a local process of root's.
timeout 20 journalctl -u vsockenc-host VSOCKENC_CONN=1 VSOCKENC_UID=0 >"$out/journal-conn1.txt" 2>&1
timeout 20 journalctl -u vsockenc-host -o json >"$out/journal-unit.json" 2>&1
touch "$out/done"
EOF
    cat >"$svc/boot.sh" <<'EOF'
# PID 1 of a new PID namespace: join the test cgroup, make it the root of a
# new cgroup namespace, then set up the container and exec systemd.
set -e
svc=$1
echo 0 >"$2/cgroup.procs"
exec unshare --cgroup sh -ec '
svc=$0
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$svc/usr-up,workdir=$svc/usr-wk" /usr
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$svc/etc-up,workdir=$svc/etc-wk" /etc
mount -t overlay overlay -o "lowerdir=/var,upperdir=$svc/var-up,workdir=$svc/var-wk" /var
mount -t proc proc /proc
vsock=$(stat -c "%t %T" /dev/vsock 2>/dev/null || true)
mount -t tmpfs -o mode=755 tmpfs /run
mkdir /run/vsockenc-check
mkdir -m 1777 /run/lock /var/probe-1777
mount --bind "$svc" /run/vsockenc-check
mount -t tmpfs -o mode=1777 tmpfs /tmp
umount -R -l /sys/fs/cgroup
mount -o remount,bind,ro /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=755 tmpfs /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0
mknod -m 666 /dev/fuse c 10 229
if [ -n "$vsock" ]; then set -- $vsock; mknod -m 666 /dev/vsock c $((0x$1)) $((0x$2)); fi
mkdir /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
hostname vsockenc-check
exec env -i container=vsockenc-check-install PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --unit=vsockenc-check.target
' "$svc"
EOF
    cg=$cgroot/vsockenc-check-install.$$
    mkdir "$cg"
    t0=$(date +%s)
    unshare --pid --fork --kill-child --mount --uts --ipc --propagation private \
        sh "$svc/boot.sh" "$svc" "$cg" >"$logs/service-boot.log" 2>&1 &
    boot_pid=$!
    for _ in $(seq 360); do
        [ -e "$svc/out/done" ] && sleep 0.5 && break
        kill -0 "$boot_pid" 2>/dev/null || break
        sleep 0.5
    done
    # Killing unshare kills the namespace's PID 1 (--kill-child) and with it
    # every process of the container.
    # unshare ignores SIGTERM while it waits for its child: SIGKILL it.
    kill -KILL "$boot_pid" 2>/dev/null || true
    wait "$boot_pid" 2>/dev/null || true
    for _ in $(seq 20); do
        find "$cg" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
        rmdir "$cg" 2>/dev/null && break
        sleep 0.5
    done
    [ -e "$svc/out/done" ] || { tail -n 30 "$logs/service-boot.log" "$svc/out/check.log" 2>/dev/null >&2
        fail "--service: the container did not finish its check (see $logs/service-boot.log)"; }
    o=$svc/out
    svc_fail() { echo "---- journal ----" >&2; tail -n 30 "$o/journal.txt" >&2; fail "--service: $*"; }
    grep -qx 'ActiveState=active' "$o/show.txt" && grep -qx 'SubState=running' "$o/show.txt" &&
        grep -qx 'NRestarts=0' "$o/show.txt" || svc_fail "vsockenc-host.service was not running: $(tr '\n' ' ' <"$o/show.txt")"
    uid=$(awk '/^Uid:/ {print $2}' "$o/status.txt")
    [ "$uid" != 0 ] && grep -qx 'NoNewPrivs:	1' "$o/status.txt" && grep -qx 'Seccomp:	2' "$o/status.txt" &&
        grep -qx 'CapEff:	0000000000000000' "$o/status.txt" || svc_fail "daemon process not confined: $(tr '\n' ' ' <"$o/status.txt")"
    grep -q '^id: vsockenc groups: vsockenc.*render' "$o/probe.txt" && grep -q 'groups: .*video' "$o/probe.txt" ||
        svc_fail "daemon not running as vsockenc with groups render and video: $(head -n 1 "$o/probe.txt")"
    # /dev/fuse is 0666: only DevicePolicy=closed refuses it.  /var/probe-1777
    # is 1777: only ProtectSystem=strict makes it read-only.  (/run/lock is
    # probed but not judged: in this container set-up /run stays writable in
    # the sandbox, unlike on a booted host.)
    want_probe="open /dev/fuse: denied|write /usr: denied|write /etc: denied|read /root: denied|write /tmp: allowed|write cache: allowed|write /var/probe-1777: denied|write /run/vsockenc-host: allowed|socket AF_VSOCK: allowed|socket AF_INET: allowed"
    [ ! -e /dev/vsock ] || want_probe="$want_probe|open /dev/vsock: allowed"
    IFS='|' read -r -a want_lines <<<"$want_probe"
    for line in "${want_lines[@]}"; do
        grep -qx "$line" "$o/probe.txt" || svc_fail "sandbox probe: expected \"$line\"; got: $(tr '\n' ';' <"$o/probe.txt")"
    done
    grep -q '^drwxr-x--- vsockenc vsockenc /run/vsockenc-host$' "$o/run.txt" ||
        svc_fail "RuntimeDirectory not vsockenc:vsockenc 0750: $(head -n 1 "$o/run.txt")"
    grep -qx 'status 0' "$o/enable.txt" && grep -qx 'restart status 0' "$o/enable.txt" && grep -qx enabled "$o/enable.txt" ||
        svc_fail "systemd-sysusers / daemon-reload / enable --now / restart: $(tr '\n' ' ' <"$o/enable.txt")"
    grep -q '^srw-rw---- vsockenc vsockenc /run/vsockenc-host/vm1.vsock_5000$' "$o/run.txt" ||
        svc_fail "the socket from /etc/default/vsockenc-host is not vsockenc:vsockenc 0660: $(tail -n 1 "$o/run.txt")"
    grep -q 'listening on unix:/run/vsockenc-host/vm1.vsock_5000' "$o/journal-unit.txt" &&
        grep -q 'encoder: x264enc' "$o/journal-unit.txt" ||
        svc_fail "journalctl -u vsockenc-host lacks 'encoder: x264enc' / 'listening on unix:/run/vsockenc-host/vm1.vsock_5000'"
    grep -q 'unix:/run/vsockenc-host/vm1.vsock_5000#1: connected' "$o/journal-conn1.txt" &&
        grep -q 'unix:/run/vsockenc-host/vm1.vsock_5000#1: disconnected;' "$o/journal-conn1.txt" &&
        ! grep -q 'listening on' "$o/journal-conn1.txt" ||
        svc_fail "journalctl -u vsockenc-host VSOCKENC_CONN=1 VSOCKENC_UID=0 does not select guest #1's lines: $(head -n 5 "$o/journal-conn1.txt")"
    grep -q '"VSOCKENC_CLIENT":"unix:/run/vsockenc-host/vm1.vsock_5000#1"' "$o/journal-unit.json" &&
        grep -q '"SYSLOG_IDENTIFIER":"vsockenc-host"' "$o/journal-unit.json" ||
        svc_fail "the journal entries lack the daemon's fields (VSOCKENC_CLIENT, SYSLOG_IDENTIFIER)"
    [ "$(cat "$o/gst-launch.status")" = 0 ] && [ -s "$o/out.h264" ] ||
        svc_fail "encoding 30 frames through the service failed (gst-launch status $(cat "$o/gst-launch.status"))"
    grep -qx 'Result=success' "$o/stopped.txt" || svc_fail "systemctl stop: $(tr '\n' ' ' <"$o/stopped.txt")"
    [ ! -e "$o/rundir-after-stop.txt" ] || svc_fail "/run/vsockenc-host still exists after stop"
    service_check="passed in $(($(date +%s) - t0)) s (user vsockenc uid $uid, $(stat -c %s "$o/out.h264") bytes of H.264 for 30 frames)"
fi
note "   vsockenc-host.service under systemd: $service_check"

note "PASS ($(($(date +%s) - t_start)) s, buildtype $buildtype, cargo target dir ${CARGO_TARGET_DIR:-inside the build dir})"
