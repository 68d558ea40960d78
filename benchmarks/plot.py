"""Draw the throughput of every client in every workload from run.py's JSON results, as a PNG.

    python benchmarks/plot.py benchmarks/results/latest.json docs/benchmarks.png

Bars are the median notifications a second on a log scale, grouped by workload. A client
whose runs failed their count or order check gets no bar but a "failed" label. The steady
and idle workloads are left out because their rate is set by the sender or is zero.
"""

import argparse
import json
from typing import Any, Dict

import matplotlib

matplotlib.use("Agg")  # renders to a file without a display

import matplotlib.pyplot as plt  # noqa: E402

PLOTTED_MODES = ("count", "slow")


def plot(results: Dict[str, Any], output: str) -> None:
    """Write the grouped bar chart of ``results`` to ``output``."""
    workloads = {name: data for name, data in results["workloads"].items() if data["mode"] in PLOTTED_MODES}
    clients = []
    for data in workloads.values():
        clients += [client for client in data["clients"] if client not in clients]

    figure, axes = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / len(clients)
    for index, client in enumerate(clients):
        positions, rates = [], []
        for group, data in enumerate(workloads.values()):
            summary = data["clients"].get(client)
            if summary is None:
                continue
            position = group - 0.4 + width * (index + 0.5)
            if summary["ok"] and summary.get("rate_median"):
                positions.append(position)
                rates.append(summary["rate_median"])
            else:
                # x in data units, y as a fraction of the axes, so the label sits on the baseline.
                axes.text(position, 0.02, "failed", rotation=90, ha="center", va="bottom", fontsize=8,
                          color="red", transform=axes.get_xaxis_transform())
        bars = axes.bar(positions, rates, width, label=client)
        axes.bar_label(bars, labels=[f"{rate / 1000:,.0f}k" for rate in rates], fontsize=7, rotation=90, padding=2)

    axes.set_yscale("log")
    top = axes.get_ylim()[1]
    axes.set_ylim(top=top * 2.5)  # room for the rotated labels above the tallest bar
    axes.set_ylabel("notifications/s (median of runs, log scale)")
    axes.set_xticks(range(len(workloads)))
    axes.set_xticklabels([f"{name}\n{data['expected']:,} notifications" for name, data in workloads.items()])
    axes.legend(fontsize=8, ncol=2)
    machine = results["machine"]
    axes.set_title(
        f"hermes-lite and its peers: {machine['cores']} cores, PostgreSQL "
        f"{machine['versions']['postgresql'].split()[0]}, {results['date'][:10]}",
        fontsize=10,
    )
    axes.grid(axis="y", which="major", alpha=0.3)
    figure.tight_layout()
    figure.savefig(output, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw run.py's JSON results as a PNG bar chart.")
    parser.add_argument("results", help="the JSON file written by run.py --output")
    parser.add_argument("output", help="the PNG file to write")
    arguments = parser.parse_args()

    with open(arguments.results) as results_file:
        plot(json.load(results_file), arguments.output)


if __name__ == "__main__":
    main()
