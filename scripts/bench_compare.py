#!/usr/bin/env python3
"""Before/after comparison of vsockenc builds, side by side with the C element.

Runs `bench --guest …` children (examples/bench/guest.rs) of several builds of
the benchmark (each statically linked with its own vsockenc), the C element and
the minimal writer, interleaved (the order rotates every repetition) against
one instant host stand-in, and prints the medians of guest CPU per frame,
wake-ups per frame and frames per second.

usage: bench_compare.py [--reps N] [--frames N] [--sizes 1920x1080,…]
                        [--formats NV12,BGRx] [--transports unix,tcp]
                        LABEL=BENCH_BINARY ...

The first binary also runs the peer, the C element (from ../shared/baseline or
VSOCKENC_BASELINE) and the writer. Build a binary of another commit with
`git worktree add /tmp/x COMMIT && cp -r examples/bench* /tmp/x/examples/ &&
cargo build --release --example bench` (the guest mode is what it needs).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile


def baseline_dir():
    if os.environ.get("VSOCKENC_BASELINE"):
        return os.environ["VSOCKENC_BASELINE"]
    d = os.path.dirname(os.path.abspath(__file__))
    while d != "/":
        cand = os.path.join(d, "shared", "baseline")
        if os.path.isfile(os.path.join(cand, "libgstvsockenc.so")):
            return cand
        d = os.path.dirname(d)
    return None


def run_guest(binary, kind, addr, fmt, size, frames, env_extra):
    env = dict(os.environ)
    env.pop("GST_PLUGIN_PATH", None)
    env.update(env_extra)
    out = subprocess.run(
        [binary, "--guest", kind, "--connect", addr, "--format", fmt, "--size", size,
         "--frames", str(frames), "--in-flight", "4", "--pace", "0"],
        capture_output=True, text=True, env=env, timeout=600)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("result "):
            kv = dict(p.split("=", 1) for p in line.split()[1:])
            if kv.get("error", "-") != "-":
                return None
            n = float(kv["frames"])
            return {
                "cpu_ms": float(kv["cpu"]) * 1000 / n,
                "wakeups": float(kv["wakeups"]) / n,
                "fps": float(kv["fps"]),
            }
    return None


def start_peer(binary, listen):
    p = subprocess.Popen([binary, "--peer", "--listen", listen],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line.startswith("ready "):
        sys.exit(f"bench_compare.py: the peer did not start: {line!r}")
    return p, line[len("ready "):]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--sizes", default="1920x1080")
    ap.add_argument("--formats", default="NV12,BGRx")
    ap.add_argument("--transports", default="unix")
    ap.add_argument("builds", nargs="+", metavar="LABEL=BINARY")
    a = ap.parse_args()
    builds = [b.split("=", 1) for b in a.builds]
    first = builds[0][1]
    base = baseline_dir()
    variants = [(label, binary, "vsockenc", {}) for label, binary in builds]
    if base:
        reg = os.path.join(tempfile.gettempdir(), f"bench-compare-c-{os.getpid()}.bin")
        variants.append(("C element", first, "c-element",
                         {"GST_PLUGIN_PATH": base, "GST_REGISTRY": reg}))
    else:
        print("bench_compare.py: no ../shared/baseline: no C element row", file=sys.stderr)
    variants.append(("writer", first, "writer", {}))
    work = tempfile.mkdtemp(prefix="bench-compare-")
    with open("/proc/loadavg") as f:
        print(f"load average at start: {' '.join(f.read().split()[:3])}")
    for transport in a.transports.split(","):
        listen = f"unix:{work}/peer.sock" if transport == "unix" else "tcp:127.0.0.1:0"
        peer, addr = start_peer(first, listen)
        try:
            for size in a.sizes.split(","):
                for fmt in a.formats.split(","):
                    res = {v[0]: [] for v in variants}
                    for rep in range(a.reps):
                        k = rep % len(variants)
                        for label, binary, kind, env in variants[k:] + variants[:k]:
                            r = run_guest(binary, kind, addr, fmt, size, a.frames, env)
                            if r:
                                res[label].append(r)
                    print(f"\n{size} {fmt} {transport} (median of {a.reps} interleaved runs)")
                    print(f"  {'':22} {'CPU ms/frame':>12} {'wake-ups/frame':>15} {'frames/s':>9}")
                    for label, *_ in variants:
                        rs = res[label]
                        if not rs:
                            print(f"  {label:22} (no successful run)")
                            continue
                        med = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                        print(f"  {label:22} {med['cpu_ms']:12.3f} {med['wakeups']:15.1f} "
                              f"{med['fps']:9.0f}   ({len(rs)} runs)")
        finally:
            peer.stdin.close()
            peer.wait(timeout=10)
    with open("/proc/loadavg") as f:
        print(f"\nload average at end: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
