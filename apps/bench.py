"""The benchmark runner: every model, one protocol (``docs/protocol.md``), a JSON record and a Markdown table.

For each dataset and seed the protocol's users and splits come from the library
(:func:`plural.evaluation.protocol.protocol_split`): users split 80/20 into seen and unseen; seen
users' comparisons split into train / validation / test (item-disjoint for rating-derived data, by
comparison for natively pairwise data); each model is fitted on the seen users' training
comparisons, scored on their test comparisons, and on unseen users' few-shot episodes
(item-disjoint support and query, k = 0 .. 50), with the random-split episodes reported beside them.

This module is the application around it: worker processes, progress reports (``progress=``
callbacks, fed from the workers through a queue), ``results.json`` (strict JSON: NaN is written as
null), ``results.md`` and the plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import resource
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from plural.core.model import available_models, make_model, model_class
from plural.data.container import PreferenceData
from plural.data.splits import DEFAULT_SHOTS, MODES, make_episodes
from plural.evaluation.fewshot import curve_value, few_shot_curve
from plural.evaluation.metrics import evaluate
from plural.evaluation.protocol import protocol_split
from plural.query.personalize import build_user_store, personalize_fn, supports_retrieval
from plural.training.selection import SELECTIONS

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
    max_epochs: int | None = None
    """Upper bound on training epochs (early stopping on validation log-loss); None: ``plural.fit``'s
    default, enough epochs for its ``min_steps`` optimizer steps and at least 30."""
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
    split_mode: str | None = None
    """``"items"`` or ``"comparisons"`` for every dataset; None: each dataset's own
    (``plural.evaluation.protocol.default_split_mode``)."""
    selection: str = "val_loss"
    """What training selects its number of epochs on (``plural.fit``'s ``selection``): ``"val_loss"``
    or ``"new_users"``."""

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs!r}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.split_mode is not None and self.split_mode not in MODES:
            raise ValueError(f"split_mode must be one of {MODES} or None, got {self.split_mode!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")

    def check_models(self) -> None:
        """Raise ``ValueError`` naming the available models if one of ``models`` is unknown; run
        before any data is loaded."""
        for name in self.models:
            model_class(name)


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


PROMPTS_SUFFIX = "+prompts"
"""Appended to a dataset name, asks :func:`load_bench_dataset` for prompt-aware items."""


def load_bench_dataset(name: str, quick: bool = False, random_state: int = 0,
                       read_options: dict | None = None) -> PreferenceData:
    """A dataset for the benchmark, with item features: a bundled one, a synthetic one
    (``synthetic_mixture``: 4 types, 400 users, 2000 items, 384-d; ``synthetic_noisy``: the same with
    20% of labels flipped; ``synthetic_length``: UKPConvArg1 arguments, a minority prefers the shorter),
    or a path to a user's file, read by ``plural.data.converters.from_file`` with ``read_options``
    (``kind`` and the converter's column options). ``quick`` shrinks the synthetic sets for tests.

    A name ending in :data:`PROMPTS_SUFFIX` (``ukpconvarg1+prompts``, ``rows.jsonl+prompts``) is the
    same data with prompt-aware items (``plural.data.prompts.with_prompts``: one item per prompt and
    response, the contexts' texts as prompts), named so."""
    from plural.data import synthetic
    from plural.data.encoders import ensure_features
    from plural.training.runs import load_dataset

    from plural.data.bundled import DATASETS

    def read(source: str) -> PreferenceData:  # read options apply to a file only
        return load_dataset(source) if source in DATASETS else load_dataset(source, **(read_options or {}))

    if name.endswith(PROMPTS_SUFFIX) and len(name) > len(PROMPTS_SUFFIX):
        from plural.data.prompts import with_prompts

        base = name[: -len(PROMPTS_SUFFIX)]
        if base in SYNTHETIC:
            raise ValueError(f"{base} has no prompts: {PROMPTS_SUFFIX} applies to data whose contexts have texts")
        data = read(base)
        aware = with_prompts(data)
        aware.name = f"{data.name}{PROMPTS_SUFFIX}"
        return aware

    if name in SYNTHETIC:
        syn = bench_synthetic(name, quick=quick, random_state=random_state)
        data = syn.data
        data.meta.update(oracle_accuracy=syn.oracle_accuracy(), majority_type_accuracy=syn.majority_type_accuracy(),
                         true_flip_rate=float(syn.flipped.mean()), type_oracle=synthetic.type_oracle(syn))
        data.name = name
        return ensure_features(data)  # the length set's arguments are text: encode them
    return ensure_features(read(name))


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


Progress = Callable[[dict], None]
"""Called with one event a step: ``{"event": "run_start" | "model_start" | "model_done" | "run_done",
"dataset", "seed", "model" (model events), "index" and "n_models" (model events), "seconds" (the
step's wall time, on ``*_done``), "seen_test_accuracy" (``model_done``)}``."""


def _report(progress: Progress | None, event: str, data: PreferenceData, seed: int, **fields) -> None:
    info = {"event": event, "dataset": data.name, "seed": seed, **fields}
    logger.debug("bench progress: %s", info)
    if progress is not None:
        progress(info)


def run_dataset(data: PreferenceData, config: BenchConfig, seed: int, show_progress: bool = False,
                progress: Progress | None = None) -> dict:
    """Every model of ``config`` on ``data`` for one seed; ``progress`` (if given) is called as each
    model starts and finishes (see :data:`Progress`)."""
    run_start = time.perf_counter()
    _report(progress, "run_start", data, seed, n_models=len(config.models))
    protocol = protocol_split(data, seed, mode=config.split_mode, max_unseen_users=config.max_unseen_users)
    mode, seen, unseen, split, scored = protocol.mode, protocol.seen, protocol.unseen, protocol.split, protocol.scored
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
    for index, name in enumerate(config.models):
        model_start = time.perf_counter()
        _report(progress, "model_start", data, seed, model=name, index=index, n_models=len(config.models))
        model = make_model(name, **config.model_options.get(name, {}))
        model.fit(data, train_rows=split.train, val_rows=split.val, max_epochs=config.max_epochs,
                  batch_size=config.batch_size, random_state=seed, show_progress=show_progress,
                  selection=config.selection)
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
        _report(progress, "model_done", data, seed, model=name, index=index, n_models=len(config.models),
                seconds=time.perf_counter() - model_start, seen_test_accuracy=float(entry["seen_test"]["accuracy"]))
    _report(progress, "run_done", data, seed, n_models=len(config.models), seconds=time.perf_counter() - run_start)
    return out


def run_benchmark(datasets: dict[str, PreferenceData], config: BenchConfig, out_dir: str | Path | None = None,
                  show_progress: bool = False, progress: Progress | None = None) -> dict:
    """Run every dataset x seed x model; write ``results.json``, ``results.md`` and the plots to ``out_dir``.

    With ``config.jobs > 1`` the (dataset, seed) runs go to that many worker processes, largest
    dataset first. Each finished run is also written to ``out_dir/partial/<dataset>-seed<s>.json`` as
    soon as it ends, so a crash or an interrupt loses only the runs in flight. ``progress`` is called
    in this process for every step of every run (:data:`Progress`), the workers' steps included.
    The JSON files are strict JSON: a NaN or infinity is written as null. Without matplotlib (the
    ``plots`` extra) the plots are skipped with a warning and ``record["plots_skipped"]`` says why."""
    config.check_models()
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
            _write_atomic(partial / f"{unit[0]}-seed{unit[1]}.json", to_json(result))
        logger.info("bench: %s seed %d done after %.0fs", unit[0], unit[1], time.perf_counter() - start)

    jobs = min(config.jobs, len(units))
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads can hang
        events = context.Queue()  # the workers' progress events, relayed to ``progress`` here
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                                 initargs=(threads, events)) as pool:
            futures = {pool.submit(_run_in_worker, datasets[name], config, seed): (name, seed)
                       for name, seed in units}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _relay(events, progress)
                for future in done:
                    finished(futures[future], future.result())
        _relay(events, progress)  # the workers have exited: whatever they sent is readable
        events.close()
    else:
        for name, seed in units:
            finished((name, seed), run_dataset(datasets[name], config, seed, show_progress, progress=progress))
    for name, data in datasets.items():
        record["datasets"][name] = {"data": repr(data), "meta": {k: v for k, v in data.meta.items()
                                                                 if isinstance(v, (int, float, str))},
                                    "runs": [runs[(name, s)] for s in config.seeds]}
    record["seconds"] = time.perf_counter() - start
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(out_dir / "results.json", to_json(record))
        _write_atomic(out_dir / "results.md", markdown_table(record))
        from apps.plots import plot_few_shot_curves

        try:
            record["plots"] = [str(p) for p in plot_few_shot_curves(record, out_dir)]
        except ImportError as err:  # matplotlib is the `plots` extra; the results are written already
            logger.warning("no plots: %s", err)
            record["plots"], record["plots_skipped"] = [], str(err)
    return record


_WORKER_EVENTS: Any = None  # in a worker process: the queue its progress events go to


def _init_worker(threads: int, events: Any = None) -> None:
    import torch

    global _WORKER_EVENTS
    _WORKER_EVENTS = events
    torch.set_num_threads(threads)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_in_worker(data: PreferenceData, config: BenchConfig, seed: int) -> dict:
    """``run_dataset`` in a worker process, its progress events sent back through the queue."""
    events = _WORKER_EVENTS
    return run_dataset(data, config, seed, False, progress=None if events is None else events.put)


def _relay(events: Any, progress: Progress | None) -> None:
    """Hand every event waiting in ``events`` to ``progress``, in the order the workers sent them."""
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(event)


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (numpy's included) replaced by None, in nested
    dicts, lists and tuples; everything else as it is."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    """What ``json.dumps`` writes for a value it has no rule for: an array as a list, any other
    number (numpy integers, float32) as a float, null where that is not finite."""
    if isinstance(value, np.ndarray):
        return _finite_or_none(value.tolist())
    number = float(value)
    return number if math.isfinite(number) else None


def to_json(record: dict) -> str:
    """``record`` as strict JSON (``allow_nan=False`` holds: NaN and infinities are null), indented
    as ``results.json`` is written. A record read back gives the same ``markdown_table``."""
    return json.dumps(_finite_or_none(record), indent=2, default=_json_default, allow_nan=False)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mean_sd(values: list[float | None]) -> str:
    values = [v for v in values if v is not None and v == v]  # None: NaN as results.json writes it
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
        scored = [m for m in runs[0]["models"]
                  if any("observation_accuracy" in row for row in runs[0]["models"][m][key]["curve"])]
        if scored:
            lines += ["", "Observations (votes, ratings) of the query's items on the predicted side of their "
                      "thresholds, % (the models that learn from them):", "",
                      "| model | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
            for model in scored:
                entries = [r["models"][model][key] for r in runs]
                lines.append(f"| {model} | " + " | ".join(
                    _mean_sd([curve_value(e, k, "observation_accuracy") for e in entries]) for k in ks) + " |")
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
    gain = [g for g in (curve_value(r, k, "gain_vs_k0") for r in results) if g is not None and g == g]
    if not gain:
        return acc
    if len(gain) == 1:
        return f"{acc} ({100 * gain[0]:+.1f})"
    return f"{acc} ({100 * np.mean(gain):+.1f} ± {100 * np.std(gain, ddof=1):.1f})"
