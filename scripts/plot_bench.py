#!/usr/bin/env python3
"""Plots from the benchmark's JSON:

- vsockenc throughput against simulated host latency, one line per
  max-in-flight, one panel per pixel format (section 2), to OUT;
- guest CPU per frame of vsockenc, the C element and the minimal writer,
  one group of bars per size, format and transport (section 7), to CPU_OUT.

Either is skipped (with a note) when its section is not in the JSON.

usage: plot_bench.py bench-results.json OUT.png [CPU_OUT.png]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def guest_cpu(res, dst):
    side = res.get("side_by_side") or {}
    rows = side.get("rows") or []
    if not rows:
        print("plot_bench.py: no side_by_side rows: guest CPU plot skipped")
        return
    kinds = [("vsockenc", "vsockenc", "tab:green"),
             ("c_element", "C gstvsockenc", "tab:red"),
             ("writer", "minimal writer (one copy into the socket)", "tab:gray")]
    labels = [f"{r['size']}\n{r['format']} {r['transport']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(rows)), 4.8))
    width = 0.27
    for i, (key, label, color) in enumerate(kinds):
        vals = [(r.get(key) or {}).get("cpu_ms_per_frame") or 0 for r in rows]
        xs = [x + (i - 1) * width for x in range(len(rows))]
        ax.bar(xs, vals, width, label=label, color=color)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("guest CPU per frame (ms, user + system)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    m = res.get("machine", {})
    ax.set_title(
        f"guest CPU per frame against an instant host; median of {side.get('reps', '?')} "
        f"interleaved runs; {m.get('nproc', '?')} cores, {m.get('cpu_model', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"plot_bench.py: wrote {dst}")


def main(src, dst, cpu_dst=None):
    with open(src) as f:
        res = json.load(f)
    if cpu_dst:
        guest_cpu(res, cpu_dst)
    rows = res.get("vsockenc_throughput") or []
    if not rows:
        print("plot_bench.py: no vsockenc_throughput rows: throughput plot skipped")
        return
    limits = {
        r["format"]: r["fps"]
        for r in res.get("transport_limit", [])
        if r["socket"] == "unix"
    }
    formats = sorted({r["format"] for r in rows})
    fig, axes = plt.subplots(1, len(formats), figsize=(6 * len(formats), 4.6), squeeze=False)
    colors = {1: "tab:red", 2: "tab:orange", 4: "tab:green"}
    for ax, fmt in zip(axes[0], formats):
        mine = [r for r in rows if r["format"] == fmt]
        lats = sorted({r["host_latency_ms"] for r in mine})
        for n in sorted({r["max_in_flight"] for r in mine}):
            pts = sorted(
                (r["host_latency_ms"], r["fps"]) for r in mine if r["max_in_flight"] == n
            )
            c = colors.get(n)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c,
                    label=f"max-in-flight {n}" + (" (C element's design)" if n == 1 else ""))
            ideal = [
                (r["host_latency_ms"], r["ideal_fps"])
                for r in sorted(mine, key=lambda r: r["host_latency_ms"])
                if r["max_in_flight"] == n and r.get("ideal_fps")
            ]
            if ideal:
                ax.plot([p[0] for p in ideal], [p[1] for p in ideal], ":", color=c, alpha=0.7)
        if fmt in limits:
            ax.axhline(limits[fmt], color="black", ls="--", lw=1,
                       label=f"unix transport limit {limits[fmt]:.0f} fps")
        ax.set_yscale("log")
        ax.set_xticks(lats)
        ax.set_xlabel("simulated host latency (ms)")
        ax.set_ylabel("frames per second (log)")
        ax.set_title(f"vsockenc, 1080p {fmt}, Unix socket")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = res.get("machine", {})
    fig.suptitle(
        "throughput vs host latency (dotted: ideal min(limit, N / latency)); "
        f"{m.get('nproc', '?')} cores, {m.get('cpu_model', '')}, {m.get('gstreamer', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"plot_bench.py: wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
