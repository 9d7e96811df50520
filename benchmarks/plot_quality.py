"""One picture and one table of every quality result in benchmarks/results/: test HR@10 and
NDCG@10 per dataset and model (all from the same evaluator), with the paper's DiffuRec numbers
as dashed lines where the paper reports them.

Reads `quality_*.json`: those of `bench_quality.py run` (per model:preset, the mean over seeds
with its standard error as an error bar; one panel per file) and the older `short` and
`converge` files (one seed, no error bar); writes `results/quality.png` and prints the table as
Markdown.

    .venv/bin/python benchmarks/plot_quality.py
"""

from __future__ import annotations

import json

from bench_quality import summarize
from common import PAPER_TEST, RESULTS


def quality_rows() -> list[dict]:
    """(dataset, model label, budget, test metrics at the model's own reverse steps) per result."""
    rows = []
    for path in sorted(RESULTS.glob("quality_*.json")):
        result = json.loads(path.read_text())
        if "runs" in result:  # bench_quality.py run: seeds summarized
            for key, entry in summarize(result["runs"]).items():
                se = entry["standard_error_over_seeds"]
                rows.append(
                    {
                        "dataset": f"{result['dataset']} ({path.stem.removeprefix('quality_')})",
                        "model": key.replace(":", " "),
                        "file": path.name,
                        "epochs": round(entry["epochs_run"], 1),
                        "stop": f"{entry['n']} seeds",
                        "train_minutes": round(entry["train_seconds"] / 60, 1),
                        "HR@10": entry["mean"]["HR@10"],
                        "NDCG@10": entry["mean"]["NDCG@10"],
                        "HR@10 SE": se["HR@10"] or 0.0,
                        "NDCG@10 SE": se["NDCG@10"] or 0.0,
                    }
                )
            continue
        if result.get("mode") == "short":
            dataset = result["data"]["dataset"]
            runs = result["models"]
        elif result.get("mode") == "converge":
            dataset, runs = result["dataset"], [result]
        else:
            continue
        for run in runs:
            metrics = next(iter(run["test"].values()))["metrics"]
            rows.append(
                {
                    "dataset": dataset,
                    "model": f"{run['model']} {run['preset']}",
                    "file": path.name,
                    "epochs": run["epochs_run"],
                    "stop": run["stop_reason"],
                    "train_minutes": round(run["train_seconds"] / 60, 1),
                    "HR@10": metrics["HR@10"],
                    "NDCG@10": metrics["NDCG@10"],
                }
            )
    order = {"popularity": 0, "sasrec": 1, "diffurec": 2}
    return sorted(rows, key=lambda r: (r["dataset"], order.get(r["model"].split()[0], 3), r["model"]))


def plot(rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        mine = [r for r in rows if r["dataset"] == dataset]
        xs = range(len(mine))
        for shift, metric in ((-0.2, "HR@10"), (0.2, "NDCG@10")):
            errors = [r.get(f"{metric} SE", 0.0) for r in mine]  # standard error over seeds
            ax.bar(
                [x + shift for x in xs],
                [r[metric] for r in mine],
                0.4,
                yerr=errors if any(errors) else None,
                capsize=3,
                label=metric,
            )
        for metric, color in (("HR@10", "C0"), ("NDCG@10", "C1")):
            if dataset in PAPER_TEST:
                ax.axhline(
                    PAPER_TEST[dataset][metric],
                    color=color,
                    linestyle="--",
                    linewidth=1,
                    label=f"paper DiffuRec {metric}",
                )
        ax.set_xticks(list(xs), [r["model"].replace(" ", "\n") for r in mine], fontsize=8)
        ax.set_xlim(-0.7, max(len(mine), 4) - 0.3)
        ax.set_title(dataset)
        ax.set_ylabel("test metric (%)")
    legend = {}  # one legend below the panels, so it never covers a bar
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=8)
    fig.suptitle("Test quality, full ranking, one evaluator")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    rows = quality_rows()
    plot(rows, RESULTS / "quality.png")
    print("| dataset | model | epochs | stop | train min | test HR@10 | test NDCG@10 | file |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['model']} | {r['epochs']} | {r['stop']} | {r['train_minutes']} | "
            f"{r['HR@10']:.2f} | {r['NDCG@10']:.2f} | {r['file']} |"
        )
    print(f"wrote {RESULTS / 'quality.png'}")


if __name__ == "__main__":
    main()
