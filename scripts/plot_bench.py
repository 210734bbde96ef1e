#!/usr/bin/env python3
"""Plots vsockenc throughput against simulated host latency, one line per
max-in-flight, one panel per pixel format, from the benchmark's JSON.

usage: plot_bench.py bench-results.json out.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src) as f:
        res = json.load(f)
    rows = res.get("vsockenc_throughput") or []
    if not rows:
        sys.exit("plot_bench.py: no vsockenc_throughput rows in " + src)
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
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
