"""Plots of benchmark results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plural.fewshot import curve_value


def plot_few_shot_curves(record: dict, out_dir: str | Path) -> list[Path]:
    """One PNG per dataset: unseen-user accuracy against k, one line per model (mean over seeds,
    shaded +- sd where there are several), written to ``out_dir/curves_<dataset>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds, body in record["datasets"].items():
        runs = body["runs"]
        key = "unseen_item_disjoint" if runs[0]["split_mode"] == "items" else "unseen_pair_protocol"
        protocol = "item-disjoint support and query" if key == "unseen_item_disjoint" else "pair protocol"
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for model in runs[0]["models"]:
            ks = [row["k"] for row in runs[0]["models"][model][key]["curve"]]
            acc = np.array([[curve_value(r["models"][model][key], k) for k in ks] for r in runs]) * 100
            mean = np.nanmean(acc, axis=0)
            xs = np.arange(len(ks))
            ax.plot(xs, mean, marker="o", label=model)
            if len(runs) > 1:
                sd = np.nanstd(acc, axis=0, ddof=1)
                ax.fill_between(xs, mean - sd, mean + sd, alpha=0.15)
            ax.set_xticks(xs, [str(k) for k in ks])
        ax.set_xlabel("support comparisons from the new user (k)")
        ax.set_ylabel("query accuracy, % (macro over users)")
        ax.set_title(f"{ds}: unseen users, {protocol} ({len(runs)} seed(s))")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = out_dir / f"curves_{ds}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths

