"""Plots what each system adds to direct's p99 latency, by request rate, one panel
per workload, from a results file of `bench/run`. Streams are drawn by their time
to first byte, on which their targets are judged: a whole stream's 190-250 ms p99
moves between runs by more than any proxy adds.

Usage: plot.py RESULTS.json OUT.svg (run by bench/run with bench/.venv-plot's Python)
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYSTEMS = [
    ("nginx", "nginx", "tab:gray", "s"),
    ("tollgate-relay", "tollgate relay", "tab:blue", "o"),
    ("tollgate-governed", "tollgate governed", "tab:green", "D"),
    ("litellm", "LiteLLM", "tab:red", "^"),
]


def main(results: str, out: str) -> None:
    report = json.load(open(results))
    summary = report["summary"]
    workloads = list(summary)
    columns = 4
    rows = (len(workloads) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False, sharex="col")
    def rates_of(workload: str) -> list[int]:
        # The rates direct, always measured, was run at on this workload.
        return sorted(int(r) for r in summary[workload]["direct"]["rate"])

    # A column shares its x axis, so its ticks are every rate of its workloads.
    ticks = [sorted({r for w in workloads[c::columns] for r in rates_of(w)}) for c in range(columns)]
    for i, workload in enumerate(workloads):
        ax = axes[i // columns][i % columns]
        w = summary[workload]
        stream = "-sse-" in workload
        rates = rates_of(workload)
        key_added = "added_ttfb_p99_us" if stream else "added_latency_p99_us"
        for row, (key, label, color, marker) in enumerate(SYSTEMS):
            if key not in w:
                continue
            xs, ys, sat = [], [], []
            for rate in rates:
                cell = w[key]["rate"].get(str(rate))
                if not cell:
                    continue
                if cell["saturated"]:
                    sat.append(rate)
                    continue
                added = cell.get(key_added)
                if added is not None:
                    # A log scale: what is at or under direct is drawn at 10 µs.
                    xs.append(rate)
                    ys.append(max(added, 10) / 1000)
            ax.plot(xs, ys, color=color, marker=marker, label=label)
            if sat:
                # One row of marks per system near the top, so that none hides another.
                ax.scatter(sat, [5000 / 2.2**row] * len(sat), color=color, marker="x", s=50)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.01, 10000)
        ax.set_xticks(ticks[i % columns], [f"{r:,}" for r in ticks[i % columns]])
        ax.minorticks_off()
        ax.set_title(f"{workload} (first byte)" if stream else workload, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        if i % columns == 0:
            ax.set_ylabel("added p99 (ms)")
        if i // columns == rows - 1:
            ax.set_xlabel("requests/s (open loop)")
    for j in range(len(workloads), rows * columns):
        axes[j // columns][j % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(
        "Latency added to direct at p99, by rate (x near the top: could not keep that rate; "
        "10 µs or less, or under direct's own p99, drawn at 0.01 ms)",
        y=0.99, fontsize=11,
    )
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.95), ncol=len(SYSTEMS), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    fig.savefig(out, metadata={"Date": None})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
