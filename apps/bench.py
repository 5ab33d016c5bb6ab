"""The benchmark: every model, one protocol (``PROTOCOL.md``), a JSON record and a Markdown table.

For each dataset and seed: users split 80/20 into seen and unseen; seen users' comparisons split
into train / validation / test (item-disjoint for rating-derived data, by comparison for natively
pairwise data); each model is fitted on the seen users' training comparisons, scored on their test
comparisons, and on unseen users' few-shot episodes (item-disjoint support and query, k = 0 .. 50),
with the random-split episodes reported beside them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import resource
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

import numpy as np

from plural.query.personalize import build_user_store, personalize_fn, supports_retrieval
from plural.data.container import PreferenceData
from plural.data.splits import DEFAULT_SHOTS, ComparisonSplit, make_episodes, split_comparisons, split_users
from plural.evaluation.metrics import evaluate
from plural.evaluation.fewshot import curve_value, few_shot_curve
from plural.core.model import available_models, make_model

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchConfig:
    """What one benchmark run covers."""

    models: Sequence[str] = tuple(available_models(ordered=True))
    """Model names; by default every installed model (``plural.available_models(ordered=True)``: the
    zoo's ``listing_order``, baselines first)."""
    seeds: Sequence[int] = (0,)
    """One full run per seed."""
    ks: Sequence[int] = DEFAULT_SHOTS
    """Support sizes of the few-shot curve."""
    n_draws: int = 3
    """Support draws per unseen user."""
    max_unseen_users: int | None = 300
    """Cap on unseen users scored (sampled with the seed), to bound run time; None for all."""
    max_epochs: int = 20
    """Upper bound on training epochs (early stopping on validation log-loss)."""
    batch_size: int = 512
    """Training batch size."""
    random_split: bool = True
    """Also report the random (non item-disjoint) episodes, labelled as such."""
    model_options: dict = dataclasses.field(default_factory=dict)
    """Per-model config overrides, ``{"low_rank": {"n_components": 8}}``."""
    retrieval: bool = True
    """Also score latent-user models adapted through the user store (``plural.query.personalize.personalize``),
    reported as ``<model>+store``."""
    jobs: int = 1
    """Worker processes; each runs one (dataset, seed) at a time with ``cpu_count // jobs`` torch
    threads. The models of one run are small, so processes scale better than threads."""

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs!r}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")


SYNTHETIC = ("synthetic_mixture", "synthetic_noisy", "synthetic_length")


def bench_synthetic(name: str, quick: bool = False, random_state: int = 0):
    """The generator output (``plural.data.synthetic.SyntheticData``, with true user types) behind
    one of the bench's synthetic sets (``SYNTHETIC``)."""
    from plural.data import synthetic

    if name in ("synthetic_mixture", "synthetic_noisy"):
        size = dict(n_users=60, n_items=200, dim=16, comparisons_per_user=60) if quick else \
            dict(n_users=400, n_items=2000, dim=384, comparisons_per_user=300)
        # scale 40 at 384-d puts the oracle near 83% and one shared reward near 72% (see make_mixture)
        scale = 12.0 if quick else 40.0
        return synthetic.make_mixture(n_types=4, scale=scale, flip_rate=0.2 if name == "synthetic_noisy" else 0.0,
                                      random_state=random_state, **size)
    if name == "synthetic_length":
        return synthetic.make_length_preference(n_users=60 if quick else 300, random_state=random_state)
    raise ValueError(f"unknown synthetic set {name!r}; known: {', '.join(SYNTHETIC)}")


def load_bench_dataset(name: str, quick: bool = False, random_state: int = 0,
                       read_options: dict | None = None) -> PreferenceData:
    """A dataset for the benchmark, with item features: a bundled one, a synthetic one
    (``synthetic_mixture``: 4 types, 400 users, 2000 items, 384-d; ``synthetic_noisy``: the same with
    20% of labels flipped; ``synthetic_length``: UKPConvArg1 arguments, a minority prefers the shorter),
    or a path to a user's file, read by ``plural.data.converters.from_file`` with ``read_options``
    (``kind`` and the converter's column options). ``quick`` shrinks the synthetic sets for tests."""
    from plural.data import synthetic
    from plural.data.encoders import ensure_features
    from plural.training.runs import load_dataset

    if name in SYNTHETIC:
        syn = bench_synthetic(name, quick=quick, random_state=random_state)
        data = syn.data
        data.meta.update(oracle_accuracy=syn.oracle_accuracy(), majority_type_accuracy=syn.majority_type_accuracy(),
                         true_flip_rate=float(syn.flipped.mean()), type_oracle=synthetic.type_oracle(syn))
        data.name = name
        return ensure_features(data)  # the length set's arguments are text: encode them
    from plural.data.bundled import DATASETS

    data = load_dataset(name) if name in DATASETS else load_dataset(name, **(read_options or {}))
    return ensure_features(data)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB), read for free; tracing
    allocations instead would slow every training step."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    import pytorch_lightning
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "pytorch_lightning": pytorch_lightning.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def bench_users(data: PreferenceData, seed: int, max_unseen_users: int | None
                ) -> tuple[np.ndarray, np.ndarray, ComparisonSplit, np.ndarray]:
    """``(seen, unseen, split, scored)`` of one bench seed: users split 80/20, the seen users'
    comparisons split by ``data.meta["split_mode"]`` (items by default), and the unseen users scored
    (at most ``max_unseen_users``, sampled with the seed). Scripts that score "the bench's episodes"
    start here."""
    seen, unseen = split_users(data, 0.2, random_state=seed)
    split = split_comparisons(data, seen, mode=data.meta.get("split_mode", "items"), random_state=seed)
    rng = np.random.default_rng(seed)
    scored = unseen if max_unseen_users is None or len(unseen) <= max_unseen_users \
        else np.sort(rng.choice(unseen, max_unseen_users, replace=False))
    return seen, unseen, split, scored


def run_dataset(data: PreferenceData, config: BenchConfig, seed: int, show_progress: bool = False) -> dict:
    """Every model of ``config`` on ``data`` for one seed."""
    mode = data.meta.get("split_mode", "items")
    seen, unseen, split, scored = bench_users(data, seed, config.max_unseen_users)
    episodes = {mode: make_episodes(data, scored, mode=mode, n_draws=config.n_draws, random_state=seed)}
    if config.random_split and mode != "comparisons":
        episodes["comparisons"] = make_episodes(data, scored, mode="comparisons", n_draws=config.n_draws,
                                                random_state=seed)
    out = {"seed": seed, "split_mode": mode, "n_seen_users": int(len(seen)), "n_unseen_users": int(len(unseen)),
           "n_unseen_scored": int(len(scored)), "n_train": int(len(split.train)), "n_test": int(len(split.test)),
           "n_episodes": {m: len(e) for m, e in episodes.items()}, "models": {}}
    if "type_oracle" in data.meta:  # the ceiling at each k: true type rewards, type inferred from support
        from plural.data.synthetic import few_shot_oracle

        out["few_shot_oracle"] = few_shot_oracle(data, episodes[mode], config.ks, data.meta["type_oracle"])
    for name in config.models:
        model = make_model(name, **config.model_options.get(name, {}))
        model.fit(data, train_rows=split.train, val_rows=split.val, max_epochs=config.max_epochs,
                  batch_size=config.batch_size, random_state=seed, show_progress=show_progress)
        entry = {"seen_test": evaluate(model, data, split.test), "fit": model.fit_report_,
                 "peak_rss_mb_so_far": _peak_rss_mb()}
        for m, eps in episodes.items():
            key = "unseen_item_disjoint" if m == "items" else (
                "unseen_random" if mode == "items" else "unseen_pair_protocol")
            entry[key] = few_shot_curve(model, data, eps, config.ks)
        out["models"][name] = entry
        if config.retrieval and mode == "items" and supports_retrieval(model):
            store = build_user_store(model)
            out["models"][f"{name}+store"] = {
                "seen_test": entry["seen_test"], "fit": entry["fit"],
                "unseen_item_disjoint": few_shot_curve(model, data, episodes["items"], config.ks,
                                                       adapt_fn=personalize_fn(store))}
        entry.update({k: float(v) for k, v in model.diagnostics().items()})
        first = next(k for k in entry if k.startswith("unseen_"))
        logger.info("%s seed %d %s: seen test %.3f; unseen %s", data.name, seed, name,
                    entry["seen_test"]["accuracy"],
                    {row["k"]: round(row["accuracy"], 3) for row in entry[first]["curve"]})
    return out


def run_benchmark(datasets: dict[str, PreferenceData], config: BenchConfig, out_dir: str | Path | None = None,
                  show_progress: bool = False) -> dict:
    """Run every dataset x seed x model; write ``results.json`` and ``results.md`` to ``out_dir``.

    With ``config.jobs > 1`` the (dataset, seed) runs go to that many worker processes, largest
    dataset first. Each finished run is also written to ``out_dir/partial/<dataset>-seed<s>.json`` as
    soon as it ends, so a crash or an interrupt loses only the runs in flight."""
    start = time.perf_counter()
    record = {"commit": _git_commit(), "versions": _versions(), "config": dataclasses.asdict(config),
              "datasets": {}}
    out_dir = None if out_dir is None else Path(out_dir)
    units = sorted(((name, seed) for name in datasets for seed in config.seeds),
                   key=lambda u: -datasets[u[0]].n_comparisons)
    runs: dict[tuple[str, int], dict] = {}

    def finished(unit: tuple[str, int], result: dict) -> None:
        runs[unit] = result
        if out_dir is not None:
            partial = out_dir / "partial"
            partial.mkdir(parents=True, exist_ok=True)
            _write_atomic(partial / f"{unit[0]}-seed{unit[1]}.json", json.dumps(result, indent=2, default=float))
        logger.info("bench: %s seed %d done after %.0fs", unit[0], unit[1], time.perf_counter() - start)

    jobs = min(config.jobs, len(units))
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(run_dataset, datasets[name], config, seed, False): (name, seed)
                       for name, seed in units}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    else:
        for name, seed in units:
            finished((name, seed), run_dataset(datasets[name], config, seed, show_progress))
    for name, data in datasets.items():
        record["datasets"][name] = {"data": repr(data), "meta": {k: v for k, v in data.meta.items()
                                                                 if isinstance(v, (int, float, str))},
                                    "runs": [runs[(name, s)] for s in config.seeds]}
    record["seconds"] = time.perf_counter() - start
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(out_dir / "results.json", json.dumps(record, indent=2, default=float))
        _write_atomic(out_dir / "results.md", markdown_table(record))
        from apps.plots import plot_few_shot_curves

        record["plots"] = [str(p) for p in plot_few_shot_curves(record, out_dir)]
    return record


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"


def markdown_table(record: dict, ks: Sequence[int] | None = None) -> str:
    """One table per dataset: seen-user test accuracy, unseen-user accuracy at k=0, and for each k>0
    the accuracy with, in brackets, the gain over k=0 paired on the same users and draws (mean over
    seeds; ± the sd over seeds, of the accuracy and of the gain, where there are several). Accuracies at different k cover different
    users (those whose support reaches k); the paired gain is the comparable figure."""
    ks = ks or record["config"]["ks"]
    lines = []
    for ds, body in record["datasets"].items():
        runs = body["runs"]
        protocol = "item-disjoint" if runs[0]["split_mode"] == "items" else "pair protocol"
        key = "unseen_item_disjoint" if runs[0]["split_mode"] == "items" else "unseen_pair_protocol"
        lines += [f"### {ds} (unseen users, {protocol}; accuracy % (paired gain over k=0), {len(runs)} seed(s))", "",
                  "| model | seen test | " + " | ".join(f"k={k}" for k in ks) + " | train s | adapt ms (k=10, median) |",
                  "|---|---|" + "---|" * len(ks) + "---|---|"]
        for model in runs[0]["models"]:
            entries = [r["models"][model] for r in runs]
            cells = [_mean_sd([e["seen_test"]["accuracy"] for e in entries]),
                     *(_curve_cell([e[key] for e in entries], k) for k in ks),
                     f"{np.mean([e['fit']['seconds'] for e in entries]):.0f}"]
            lat = [curve_value(e[key], 10, "adapt_ms_median") for e in entries]
            cells.append(f"{np.nanmean(lat):.2f}" if not all(np.isnan(lat)) else "-")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        if all("few_shot_oracle" in r for r in runs):
            by_k = [{row["k"]: row["accuracy"] for row in r["few_shot_oracle"]} for r in runs]
            cells = [_mean_sd([b.get(k, float("nan")) for b in by_k]) for k in ks]
            lines.append("| *few-shot oracle: true type rewards, type inferred from the k labels* | - | "
                         + " | ".join(cells) + " | - | - |")
        if "unseen_random" in runs[0]["models"][next(iter(runs[0]["models"]))]:
            lines += ["", "Random split (support and query may share items; overstates personalization):", "",
                      "| model | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
            for model in runs[0]["models"]:
                if "unseen_random" not in runs[0]["models"][model]:
                    continue
                entries = [r["models"][model]["unseen_random"] for r in runs]
                lines.append(f"| {model} | " + " | ".join(_curve_cell(entries, k) for k in ks) + " |")
        lines.append("")
    return "\n".join(lines)


def _curve_cell(results: list[dict], k: int) -> str:
    acc = _mean_sd([curve_value(r, k) for r in results])
    if k == 0 or acc == "-":
        return acc
    gain = [g for g in (curve_value(r, k, "gain_vs_k0") for r in results) if g == g]
    if not gain:
        return acc
    if len(gain) == 1:
        return f"{acc} ({100 * gain[0]:+.1f})"
    return f"{acc} ({100 * np.mean(gain):+.1f} ± {100 * np.std(gain, ddof=1):.1f})"
