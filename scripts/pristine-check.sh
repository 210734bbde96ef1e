#!/usr/bin/env bash
# Runs the README's two commands the way a new user does, on a new Debian 12
# machine that has only Rust (rustup) installed:
#
#   scripts/pristine-check.sh [COMMIT]      (default: HEAD)
#
# 1. debootstrap a minimal Debian 12 root from the archive this machine uses
#    (the URIs: line of /etc/apt/sources.list.d/debian.sources), with only
#    git, ca-certificates, build-essential and curl on top;
# 2. give it what every machine of this kind has and a new root lacks: the
#    machine's CA certificates (registries are reached through them), its
#    apt sources and apt settings, resolv.conf; /proc, /sys and /dev; the
#    machine's rustup toolchains, read-only (cargo installs into the root's
#    own ~/.cargo, so nothing is written back to the machine); the root is
#    made a mount point, as / is on a machine;
# 3. clone COMMIT of this repository into the root, and in a chroot run
#    `./scripts/demo.sh` and then `./scripts/test.sh`, as root, timing each;
# 4. print each command's duration, exit status and the tail of its output,
#    and exit non-zero if either failed.
#
# Needs root and debootstrap (`scripts/setup.sh pristine`). The logs and the
# summary stay in the output directory; the root is deleted afterwards
# unless PRISTINE_KEEP=1.
#
# Environment:
#   PRISTINE_DIR     where to build the root and keep the logs
#                    (default: /var/tmp/vsockenc-pristine.XXXXXX)
#   PRISTINE_KEEP=1  keep the root (for a look around: chroot DIR/root)
#   PRISTINE_TIMEOUT seconds each of the two commands may take (default 5400,
#                    CI's limit)
#   PRISTINE_TAIL    lines of each command's output to print (default 25)
#   PRISTINE_MIN_FREE_GB  refuse to start with less free space (default 25)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

say() { echo "pristine-check.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mount, chroot)"
commit=$(git rev-parse --verify "${1:-HEAD}^{commit}") || die "no such commit: ${1:-HEAD}"
timeout_s=${PRISTINE_TIMEOUT:-5400}
tail_n=${PRISTINE_TAIL:-25}

scripts/setup.sh pristine >&2

mirror=$(sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
[ -n "$mirror" ] || die "no URIs: line in /etc/apt/sources.list.d/debian.sources to take the Debian mirror from"
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
[ -x "$cargo_bin/cargo" ] && [ -d "$rustup_home/toolchains" ] ||
    die "no rustup toolchain at $rustup_home with proxies in $cargo_bin (the README assumes rustup)"

out=${PRISTINE_DIR:-$(mktemp -d /var/tmp/vsockenc-pristine.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$out/root
# The root, its debug, release and cross builds and the guests' files take
# about 20 GB; a full disk shows up as compile errors far into the run.
free_gb=$(df -P -B1G "$out" | awk 'NR == 2 { print $4 }')
[ "${free_gb:-0}" -ge "${PRISTINE_MIN_FREE_GB:-25}" ] ||
    die "only ${free_gb:-?} GB free under $out: the check needs about 20 GB (PRISTINE_MIN_FREE_GB, default 25)"
[ ! -e "$root" ] || die "$root exists already: give an empty PRISTINE_DIR"

mounted=()
cleanup() {
    # Processes a failed run left in the root would keep its mounts busy.
    local pids
    pids=$(for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"
    done || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -R "${mounted[i]}" 2>/dev/null || umount -lR "${mounted[i]}" 2>/dev/null || true
    done
    if [ "${PRISTINE_KEEP:-0}" = 1 ]; then
        say "kept the root: $root"
    elif [ -d "$root" ]; then
        # Only after every mount is gone: never delete through a bind mount.
        if findmnt -rn -o TARGET | grep -q "^$root"; then
            say "something is still mounted under $root: not deleting it"
        else
            rm -rf "$root"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bind() { # SRC DST [ro]
    mkdir -p "$2"
    mount --rbind "$1" "$2"
    mount --make-rslave "$2"
    mounted+=("$2")
    if [ "${3:-}" = ro ]; then
        mount -o remount,bind,ro "$2"
    fi
}

clock() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ---- 1. the root --------------------------------------------------------------
say "debootstrap bookworm from $mirror into $root"
t0=$(clock)
debootstrap --variant=minbase --include=git,ca-certificates,build-essential,curl \
    bookworm "$root" "$mirror" >"$out/debootstrap.log" 2>&1 ||
    die "debootstrap failed (tail of $out/debootstrap.log: $(tail -n 5 "$out/debootstrap.log"))"
t_debootstrap=$(secs "$t0" "$(clock)")

# ---- 2. what the machine gives every root -------------------------------------
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/hosts "$root/etc/hosts"
mkdir -p "$root/usr/local/share/ca-certificates"
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -f "$root/etc/apt/sources.list"
cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
for conf in /etc/apt/apt.conf.d/99*; do
    [ -e "$conf" ] && cp "$conf" "$root/etc/apt/apt.conf.d/"
done

# A machine's / is a mount point; a plain directory is not, and tests that
# set up mount namespaces (unshare --propagation) fail on that alone.
mount --bind "$root" "$root"
mount --make-private "$root"
mounted+=("$root")
mount -t proc proc "$root/proc"
mounted+=("$root/proc")
bind /sys "$root/sys"
bind /dev "$root/dev"
bind "$rustup_home" "$root/root/.rustup" ro
bind "$cargo_bin" "$root/opt/rustup-bin" ro

say "cloning $commit into the root"
git clone --quiet --no-checkout "$repo" "$root/root/vsockenc"
git -C "$root/root/vsockenc" -c advice.detachedHead=false checkout --quiet --detach "$commit"

# ---- 3. the README's commands ---------------------------------------------------
declare -A took status
for cmd in ./scripts/demo.sh ./scripts/test.sh; do
    name=$(basename "$cmd" .sh)
    say "running $cmd in the root (output: $out/$name.log)"
    t0=$(clock)
    set +e
    # A clean environment, as a login on the new machine has.
    timeout --kill-after=30 "$timeout_s" chroot "$root" /usr/bin/env -i \
        HOME=/root USER=root LANG=C.UTF-8 TERM=dumb \
        RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo \
        PATH=/root/.cargo/bin:/opt/rustup-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c 'cd /root/vsockenc && exec "$1"' bash "$cmd" \
        </dev/null >"$out/$name.log" 2>&1
    status[$name]=$?
    set -e
    took[$name]=$(secs "$t0" "$(clock)")
    say "$cmd: exit ${status[$name]} after $(mmss "${took[$name]}")"
done

# ---- 4. summary -----------------------------------------------------------------
{
    echo "pristine Debian 12 root, commit $commit ($(git log -1 --format=%s "$commit"))"
    echo "  debootstrap         $(mmss "$t_debootstrap")"
    for name in demo test; do
        printf '  %-19s %s, exit %s\n' "./scripts/$name.sh" "$(mmss "${took[$name]}")" "${status[$name]}"
    done
    for name in demo test; do
        echo
        echo "---- ./scripts/$name.sh: last $tail_n lines ($out/$name.log)"
        tail -n "$tail_n" "$out/$name.log"
    done
} | tee "$out/summary.txt"
[ "${status[demo]}" = 0 ] && [ "${status[test]}" = 0 ]
