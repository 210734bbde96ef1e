#!/usr/bin/env bash
# Guest CPU per frame over real AF_VSOCK, vsockenc side by side with the C
# element it replaces, in one boot of the emulated (TCG) x86_64 guest.
#
#   measure-guest-cpu.sh [PROFILE_DIR] [REPS] [FRAMES_720p] [FRAMES_1080p]
#
# PROFILE_DIR holds the built vsockenc-host, libgstvsockenc.so and
# examples/pipeline_cpu (default: ${CARGO_TARGET_DIR:-<repo>/target}/release).
# Build first with `cargo build --release -p vsockenc-host -p gst-plugin-vsockenc
# --lib --bins --example pipeline_cpu`.
# The C element is $VSOCKENC_BASELINE (default: shared/baseline/
# libgstvsockenc.so beside the repository, or beside its worktree directory).
# It registers an element also named `vsockenc`, so each element gets its own
# plugin directory and its own registry file; no run ever sees both.
#
# Every run is `pipeline_cpu --warmup 1 SOURCE ! SINK` in the guest (the
# pipeline as gst-launch-1.0 would build it, run once to warm up and once
# measured, see examples/pipeline_cpu.rs), with
#   SOURCE = videotestsrc num-buffers=1 ! video/x-raw,format=F,width=W,height=H
#            ! imagefreeze num-buffers=N
# (one picture drawn, then the same buffer N times: the source costs little
# and the same for every row) and SINK one of
#   source      fakesink                              (subtracted below)
#   C           vsockenc cid=2 port=5000 ! fakesink   (the C element)
#   vs          vsockenc cid=2 port=5000 ! fakesink   (ours, default properties)
#   vs-legacy   ... extensions=false                  (ours, pure legacy HXFR)
#   vs-legacy-1 ... extensions=false max-in-flight=1  (the C element's window)
# The daemon on the machine (vsockenc-host, --encoder auto) serves all of
# them on one listener. With default properties our element negotiates compact
# frames, which send only the tiles that changed: on a frozen picture almost
# nothing crosses the socket, so the `vs` row is not the like-for-like one;
# `vs-legacy` sends every frame's pixels in full, as the C element does.
#
# Rows are interleaved (each repetition runs every row once, the starting row
# rotating) for NV12 and BGRx at 1280x720 and 1920x1080. Guest CPU is the
# user+sys time of the whole guest process (all threads, getrusage) from
# PLAYING to EOS of the measured run, divided by N: GStreamer's start, plugin
# loading and first-touch page faults (expensive over 9p under emulation, and
# noisy: 1-4 s per process here) stay outside. "net" subtracts the median of
# the `source` row for the same format and size. frames/s is N over the same
# PLAYING-to-EOS wall time.
# Medians over REPS (default 3) are printed as a Markdown table, with the
# ratio of each of our rows to the C row.
#
# The guest is emulated: absolute figures are many times those of a KVM guest
# and, under plain TCG, move with the machine's load (the guest's clock is the
# machine's, so a vCPU thread the machine preempts is charged to whatever the
# guest ran): single runs spread 2-4x here. Compare rows within one run. With
# VSOCKENC_VM_ICOUNT=0 VSOCKENC_VM_SMP=1 the guest's clock counts emulated
# instructions while it runs (see run-guest.sh), so CPU per frame is an
# instruction count that the machine's load does not move; frames/s is then
# in that clock and only comparable between rows of the same run.
#
# Environment: VSOCKENC_BASELINE, VSOCKENC_GUEST_CPU_FORMATS (default
# "NV12 BGRx"), VSOCKENC_GUEST_CPU_SIZES (default "1280x720 1920x1080"),
# VSOCKENC_GUEST_CPU_RAW=FILE (a copy of the raw per-run lines: row format
# width height frames rep exec_s wall_s user_s sys_s exit), KEEP=1 (keep the
# run directory), and run-guest.sh's VSOCKENC_VM_*.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
prof="${1:-$target/release}"
reps="${2:-3}"
n_720="${3:-90}"
n_1080="${4:-60}"
baseline="${VSOCKENC_BASELINE:-}"
if [ -z "$baseline" ]; then
  for baseline in "$repo/../shared/baseline/libgstvsockenc.so" \
    "$repo/../../shared/baseline/libgstvsockenc.so"; do
    [ ! -f "$baseline" ] || break
  done
fi
formats="${VSOCKENC_GUEST_CPU_FORMATS:-NV12 BGRx}"
sizes="${VSOCKENC_GUEST_CPU_SIZES:-1280x720 1920x1080}"
rows=(source C vs vs-legacy vs-legacy-1)

die() {
  echo "measure-guest-cpu.sh: $*" >&2
  exit 2
}
prof="$(cd "$prof" && pwd -P)" || die "no profile directory $1"
for f in vsockenc-host libgstvsockenc.so examples/pipeline_cpu; do
  [ -f "$prof/$f" ] || die "$prof/$f missing: build first (see the header)"
done
[ -f "$baseline" ] || die "the C element $baseline is missing (set VSOCKENC_BASELINE)"
baseline="$(cd "$(dirname "$baseline")" && pwd -P)/$(basename "$baseline")"
case "$reps" in '' | *[!0-9]* | 0) die "REPS must be a positive number" ;; esac

run="$(mktemp -d /tmp/vsockenc-guest-cpu.XXXXXX)"
daemon_pid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  [ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true
  [ -z "$daemon_pid" ] || wait "$daemon_pid" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "run dir kept: $run" >&2; else rm -rf "$run"; fi
}
trap cleanup EXIT

# One directory and one registry per element, built on the machine (a scan
# under emulation takes long); the guest only reads them.
mkdir -p "$run/plugins-rs" "$run/plugins-c"
cp "$prof/libgstvsockenc.so" "$run/plugins-rs/"
cp "$baseline" "$run/plugins-c/"
cp "$prof/examples/pipeline_cpu" "$run/"
for e in rs c; do
  GST_PLUGIN_PATH="$run/plugins-$e" GST_REGISTRY="$run/registry-$e.bin" \
    timeout 120 gst-inspect-1.0 vsockenc >"$run/inspect-$e.txt" ||
    die "gst-inspect-1.0 cannot load $run/plugins-$e"
done
grep -q max-in-flight "$run/inspect-rs.txt" || die "plugins-rs is not our element"
if grep -q max-in-flight "$run/inspect-c.txt"; then die "plugins-c is not the C element"; fi

timeout 7200 "$prof/vsockenc-host" --listen "unix:$run/vm.vsock_5000" --stats-interval 0 \
  </dev/null >"$run/host.out" 2>"$run/host.log" &
daemon_pid=$!
for _ in $(seq 300); do
  [ -S "$run/vm.vsock_5000" ] && break
  sleep 0.1
done
[ -S "$run/vm.vsock_5000" ] || {
  cat "$run/host.log" >&2
  die "daemon did not start"
}

# The guest script: one `measure` line per run, in the interleaved order.
{
  cat <<EOF
#!/bin/sh
export GST_REGISTRY_UPDATE=no
results=$run/results.txt
: >"\$results"
measure() { # row format width height frames rep
  row=\$1 f=\$2 w=\$3 h=\$4 n=\$5 rep=\$6
  src="videotestsrc num-buffers=1 ! video/x-raw,format=\$f,width=\$w,height=\$h,framerate=30/1 ! imagefreeze num-buffers=\$n"
  el=rs
  case \$row in
  source) sink="fakesink" ;;
  C) el=c sink="vsockenc cid=2 port=5000 ! fakesink" ;;
  vs) sink="vsockenc cid=2 port=5000 ! fakesink" ;;
  vs-legacy) sink="vsockenc cid=2 port=5000 extensions=false ! fakesink" ;;
  vs-legacy-1) sink="vsockenc cid=2 port=5000 extensions=false max-in-flight=1 ! fakesink" ;;
  esac
  log=$run/log-\$row-\$f-\${w}x\$h-\$rep.txt
  # shellcheck disable=SC2086 # the pipeline is split into words on purpose
  GST_PLUGIN_PATH=$run/plugins-\$el GST_REGISTRY=$run/registry-\$el.bin \\
    timeout -k 10 900 $run/pipeline_cpu --warmup 1 \$src ! \$sink >"\$log" 2>&1
  rc=\$?
  t=\$(sed -n 's/^PIPELINE_CPU user=\([0-9.]*\) sys=\([0-9.]*\) wall=\([0-9.]*\)\$/\3 \1 \2/p' "\$log")
  echo "\$row \$f \$w \$h \$n \$rep \${t:-NA NA NA} \$rc" | tee -a "\$results"
}
EOF
  nrows=${#rows[@]}
  for size in $sizes; do
    w=${size%x*} h=${size#*x}
    n=$n_720
    [ "$h" -le 720 ] || n=$n_1080
    for f in $formats; do
      for rep in $(seq "$reps"); do
        for i in $(seq 0 $((nrows - 1))); do
          echo "measure ${rows[$(((i + rep - 1) % nrows))]} $f $w $h $n $rep"
        done
      done
    done
  done
  echo "echo \"guest load: \$(cat /proc/loadavg)\""
} >"$run/guest.sh"

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "measure-guest-cpu.sh: ours from $prof, C element $baseline; machine load before: $load_before" >&2
start=$(date +%s)
set +e
VSOCKENC_VM_TIMEOUT="${VSOCKENC_VM_TIMEOUT:-5400}" "$here/run-guest.sh" "$run" "$run/guest.sh"
rc=$?
set -e
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "measure-guest-cpu.sh: guest run took $(($(date +%s) - start)) s (exit $rc); machine load after: $load_after" >&2
[ -s "$run/results.txt" ] || {
  tail -n 30 "$run/guest.log" >&2
  exit 1
}
grep -E 'encoder:|disconnected|ERROR|WARN' "$run/host.log" | head -n 20 >&2 || true
grep 'guest load' "$run/guest.log" || true

# Medians. A failed run (exit status not 0 or no "Execution ended") counts as
# missing and is reported, never folded into a median.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "NA"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
bad=$(awk '$10 != 0 || $7 == "NA"' "$run/results.txt")
[ -z "$bad" ] || {
  echo "measure-guest-cpu.sh: failed runs (row format w h n rep wall user sys exit):" >&2
  echo "$bad" >&2
  echo "(logs in $run; rerun with KEEP=1 to keep them)" >&2
}
good() { awk -v r="$1" -v f="$2" -v w="$3" -v h="$4" '$1 == r && $2 == f && $3 == w && $4 == h && $10 == 0 && $7 != "NA"' "$run/results.txt"; }
echo
echo "| format | size | row | guest CPU ms/frame | net of source | fps | runs | net CPU vs C | fps vs C |"
echo "|---|---|---|---|---|---|---|---|---|"
for size in $sizes; do
  w=${size%x*} h=${size#*x}
  for f in $formats; do
    declare -A cpu=() net=() fps=() cnt=()
    for r in "${rows[@]}"; do
      cnt[$r]=$(good "$r" "$f" "$w" "$h" | wc -l)
      cpu[$r]=$(good "$r" "$f" "$w" "$h" | awk '{ printf "%.3f\n", ($8 + $9) * 1000 / $5 }' | median)
      fps[$r]=$(good "$r" "$f" "$w" "$h" | awk '$7 > 0 { printf "%.3f\n", $5 / $7 }' | median)
    done
    for r in "${rows[@]}"; do
      net[$r]=$(awk -v a="${cpu[$r]}" -v b="${cpu[source]}" 'BEGIN { if (a == "NA" || b == "NA") print "NA"; else printf "%.2f", a - b }')
    done
    for r in "${rows[@]}"; do
      ratio_cpu="" ratio_fps=""
      case $r in vs*)
        ratio_cpu=$(awk -v a="${net[$r]}" -v b="${net[C]}" 'BEGIN { if (a == "NA" || b == "NA" || b <= 0) print "NA"; else printf "%.2fx", a / b }')
        ratio_fps=$(awk -v a="${fps[$r]}" -v b="${fps[C]}" 'BEGIN { if (a == "NA" || b == "NA" || b <= 0) print "NA"; else printf "%.2fx", a / b }')
        ;;
      esac
      net_cell="${net[$r]}"
      [ "$r" != source ] || net_cell="-"
      printf "| %s | %sx%s | %s | %s | %s | %s | %s | %s | %s |\n" "$f" "$w" "$h" "$r" \
        "${cpu[$r]}" "$net_cell" "${fps[$r]}" "${cnt[$r]}" "$ratio_cpu" "$ratio_fps"
    done
    unset cpu net fps cnt
  done
done
echo
clock="real time (TCG)"
[ -z "${VSOCKENC_VM_ICOUNT:-}" ] || clock="icount shift=$VSOCKENC_VM_ICOUNT (CPU counts emulated instructions)"
echo "machine load average before/after: $load_before / $load_after; $reps repetitions, ${n_720} frames at 720p, ${n_1080} at 1080p; guest: ${VSOCKENC_VM_SMP:-2} vCPUs, clock $clock"
[ -z "${VSOCKENC_GUEST_CPU_RAW:-}" ] || cp "$run/results.txt" "$VSOCKENC_GUEST_CPU_RAW"
exit "$rc"
