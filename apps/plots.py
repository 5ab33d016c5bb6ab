"""Plots of benchmark results (matplotlib, headless; the ``plots`` extra)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from plural.evaluation.fewshot import curve_value


CHANCE_K0 = 55.0
"""Models whose k=0 accuracy (%) is below this start from a coin flip (no population reward); their
gain over k=0 is left out of the gain panel, where it would flatten every other curve."""


PLOTS_EXTRA = "pip install 'plural[plots]'"


def _pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend, or an ImportError naming the extra."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(f"plots need matplotlib, which plural installs with its `plots` extra: "
                          f"{PLOTS_EXTRA}") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plots_available() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot_few_shot_curves(record: dict, out_dir: str | Path) -> list[Path]:
    """One PNG per dataset, ``out_dir/curves_<dataset>.png``: unseen-user query accuracy against k
    (left; each k covers the users whose support reaches it) and the gain over k=0 paired on the same
    users and draws (right); one line per model, mean over seeds, shaded +- sd where there are several."""
    plt = _pyplot()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds, body in record["datasets"].items():
        runs = body["runs"]
        key = "unseen_item_disjoint" if runs[0]["split_mode"] == "items" else "unseen_pair_protocol"
        protocol = "item-disjoint support and query" if key == "unseen_item_disjoint" else "pair protocol"
        fig, (ax, gx) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
        chance_models: list[str] = []
        for model in runs[0]["models"]:
            ax_k0 = None
            ks = [row["k"] for row in runs[0]["models"][model][key]["curve"]]
            xs = np.arange(len(ks))
            color = None
            for axis, field in ((ax, "accuracy"), (gx, "gain_vs_k0")):
                vals = np.array([[curve_value(r["models"][model][key], k, field) for k in ks] for r in runs]) * 100
                mean = np.nanmean(vals, axis=0)
                if field == "gain_vs_k0" and ks and ks[0] == 0 and ax_k0 is not None and ax_k0 < CHANCE_K0:
                    chance_models.append(model)  # its "gain" is from a coin flip: it would flatten the rest
                    continue
                line, = axis.plot(xs, mean, marker="o", label=model, color=color)
                color = line.get_color()
                if field == "accuracy":
                    ax_k0 = mean[0] if ks and ks[0] == 0 else None
                if len(runs) > 1:
                    sd = np.nanstd(vals, axis=0, ddof=1)
                    axis.fill_between(xs, mean - sd, mean + sd, alpha=0.15, color=color)
                axis.set_xticks(xs, [str(k) for k in ks])
        ax.set_xlabel("support comparisons from the new user (k)")
        ax.set_ylabel("query accuracy, % (macro over users reaching k)")
        ax.set_title(f"{ds}: unseen users, {protocol}")
        gx.axhline(0, color="grey", lw=0.8)
        gx.set_xlabel("support comparisons from the new user (k)")
        gx.set_ylabel("gain over k=0, points (paired on the same users and draws)")
        gx.set_title(f"personalization gain ({len(runs)} seed(s))"
                     + (f"\nnot shown, starting from chance at k=0: {', '.join(chance_models)}" if chance_models else ""),
                     fontsize=10)
        for axis in (ax, gx):
            axis.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = out_dir / f"curves_{re.sub(r'[^A-Za-z0-9_.-]+', '_', ds)}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths

