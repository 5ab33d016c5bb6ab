"""The ``plural`` command: train, evaluate and demo models on bundled or your own data.

An error the library raises for bad input (a ``ValueError``, ``OSError``, ``KeyError``,
``TypeError`` or ``ImportError``, ``CheckpointError`` and ``StoreError`` included) is printed by
:func:`main` as one line, ``error: <message>``, on stderr, and the command exits with status 1;
usage errors (a bad option) exit with 2, as click prints them. ``PLURAL_DEBUG=1`` re-raises instead,
with the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="plural: pluralistic and personalized preference models.")
console = Console()

SPLITS = ("items", "comparisons")
DEBUG_ENV = "PLURAL_DEBUG"
ERROR_EXIT = 1
"""Exit status of a command stopped by an error of the library (click's usage errors exit with 2)."""


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _results_table(title: str, results: dict) -> Table:
    table = Table(title=title)
    for col in ("users", "pairs", "users≥5", "accuracy", "log-loss", "ECE", "worst 10%"):
        table.add_column(col, justify="right" if col != "users" else "left")
    labels = {"seen_test": "seen, test", "unseen_k0": "unseen, k=0"}
    for key, r in results.items():
        table.add_row(labels.get(key, key), str(r["n"]), str(r.get("n_users", "")),
                      f"{100 * r['accuracy']:.1f}%", f"{r['log_loss']:.3f}", f"{r['ece']:.3f}",
                      f"{100 * r.get('worst_decile_user_accuracy', float('nan')):.1f}%")
    table.caption = ("accuracy on decisive pairs; worst 10%: mean accuracy of the worst decile of "
                     "users with at least 5 pairs")
    return table


KIND_HELP = ("how to read a file given in --data: pairs (one comparison a row), trl (prompt / chosen / "
             "rejected), ratings, rankings or votes")
COLUMN_HELP = ("for a file in --data: a converter option KEY=VALUE naming a column or setting a value, e.g. "
               "user=userId, item=movieId, rating=stars, item_table=items.csv, item_text=title (repeatable)")
SPLIT_HELP = ("how the seen users' comparisons are split: 'items' (item-disjoint) or 'comparisons' (random); "
              "default: the dataset's own (comparisons for natively pairwise data with few pairs per user, "
              "such as UKPConvArg1 and TRL files; items otherwise)")


@app.command()
def train(
    data: str = typer.Option(..., help="bundled dataset (ukpconvarg1, polis, movielens) or a file path"),
    model: str = typer.Option("bradley_terry", help="model name"),
    out: Path = typer.Option(..., help="run directory to write"),
    seed: int = typer.Option(0, help="random seed for splits, weights and shuffling"),
    max_epochs: int = typer.Option(None, help="upper bound on epochs (default: enough for 1,000 optimizer steps, "
                                              "at least 30; early stopping on validation log-loss)"),
    batch_size: int = typer.Option(256),
    split: str = typer.Option(None, help=SPLIT_HELP),
    kind: str = typer.Option(None, help=KIND_HELP + " (default: pairs)"),
    column: list[str] = typer.Option([], "--column", help=COLUMN_HELP),
    encoder: str = typer.Option(None, help="sentence-transformers model name or path for item texts "
                                "(default: the bundled MiniLM); the checkpoint records it"),
    max_length: int = typer.Option(None, help="tokens the text encoder reads at once (default: the model's own)"),
    long_texts: str = typer.Option("chunk", help="texts longer than --max-length: chunk (embed in windows and "
                                   "pool), truncate (with a warning) or error"),
    devices: str = typer.Option(None, help="Lightning devices, e.g. 2 or 0,1 (default: one device, the GPU if any)"),
    strategy: str = typer.Option(None, help="Lightning strategy, e.g. ddp (default: none, one device)"),
    precision: str = typer.Option(None, help="Lightning precision, e.g. 16-mixed"),
    prompts: bool = typer.Option(False, help="prompt-aware items: the reward sees each response with its prompt "
                                 "(the comparisons' context texts, e.g. a TRL file's prompt column)"),
    overwrite: bool = typer.Option(False, help="replace OUT even if it holds files that are not a plural run"),
) -> None:
    """Train MODEL on the seen users of DATA and save the run to OUT."""
    from plural.data.bundled import DATASETS

    _check_models([model], "--model")
    split = _check_split(split)
    read = _key_values(column)
    if data in DATASETS:
        if read or kind is not None:
            raise typer.BadParameter(f"{data!r} is a bundled dataset; --kind and --column say how to read a "
                                     f"file", param_hint="--kind/--column")
    else:
        read = dict(kind=kind or "pairs", **read)
    from plural.data.encoders import TextEncoder
    from plural.training.runs import train_run

    try:
        text_encoder = TextEncoder(encoder, max_length=max_length, long_texts=long_texts)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--max-length/--long-texts") from None
    _quiet_lightning()
    start = time.perf_counter()
    record = train_run(data, model, out, random_state=seed, max_epochs=max_epochs, batch_size=batch_size,
                       split_mode=split, encoder=text_encoder, devices=None if devices is None else _int_or_str(devices), strategy=strategy,
                       precision=precision, overwrite=overwrite, read_options=read, prompts=prompts)
    rep = record["fit_report"]
    console.print(f"[bold]trained[/] {model} on {data} ({record['split_mode']} split): {record['n_train']} "
                  f"comparisons from {record['n_seen_users']} users, {rep['epochs']} epochs in "
                  f"{rep['seconds']:.1f}s on {rep['device']}; saved to {out} "
                  f"({time.perf_counter() - start:.1f}s total)", highlight=False, soft_wrap=True)
    dropped, total = record["n_dropped_by_split"], record.get("n_comparisons") or 1
    if record["split_mode"] == "items" and dropped > 0.2 * total:
        console.print(f"note: the item-disjoint split left out {dropped} comparisons ({100 * dropped / total:.0f}%), "
                      f"whose two items fell in different parts of a user's items; --split comparisons keeps "
                      f"them, at the cost of test pairs over items the user judged in training", highlight=False,
                      soft_wrap=True)


@app.command("eval")
def eval_(run: Path = typer.Argument(..., help="run directory written by `plural train`")) -> None:
    """Evaluate a saved run on its held-out comparisons and print a table."""
    from plural.training.runs import evaluate_run

    _quiet_lightning()
    out = evaluate_run(run)
    rec = out["run"]
    console.print(_results_table(f"{rec['model']} on {rec['dataset']} ({rec['split_mode']} split, "
                                 f"seed {rec['random_state']})", out["results"]))


@app.command()
def serve(
    run: Path = typer.Argument(..., help="run directory written by `plural train`"),
    host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default)"),
    port: int = typer.Option(8000, help="TCP port"),
    state_dir: Path = typer.Option(None, help="the service's state (feedback log, snapshots); default RUN.serve"),
    snapshot_every: float = typer.Option(30.0, help="seconds between background snapshots of the user store"),
) -> None:
    """Serve a trained run over HTTP for recommender backends (writes need $PLURAL_API_TOKEN when set)."""
    try:
        from apps.server.cli import serve as run_server
    except ImportError as err:
        raise ImportError(f"plural serve needs the serve extra: pip install 'plural[serve]' ({err})") from None
    console.print(f"serving {run} on http://{host}:{port} (API under /v1, the page at /)")
    run_server(run, host=host, port=port, state_dir=state_dir, snapshot_every_s=snapshot_every)


def _with_option_defaults(command, **given):
    """Call a command function from Python: every parameter not in ``given`` takes its option's
    default (a bare call would pass typer's ``OptionInfo`` objects)."""
    import inspect

    for name, parameter in inspect.signature(command).parameters.items():
        if name not in given:
            default = parameter.default
            given[name] = default.default if isinstance(default, typer.models.OptionInfo) else default
    return command(**given)


@app.command()
def demo(
    data: str = typer.Option("ukpconvarg1", help="bundled dataset for the baseline"),
    personal_data: str = typer.Option("polis", help="bundled dataset for the latent-user model"),
    model: str = typer.Option("low_rank", help="latent-user model to personalize with"),
    out: Path = typer.Option(Path("runs/demo"), help="run directory"),
) -> None:
    """Train the Bradley-Terry baseline, then a latent-user model, and personalize it for users it
    never saw from 10 of their comparisons."""
    from plural.training.runs import personalization_run

    _check_models([model], "--model")
    console.rule(f"1. Bradley-Terry baseline on {data}")
    _with_option_defaults(train, data=data, model="bradley_terry", out=out / "bradley_terry", max_epochs=30)
    eval_(out / "bradley_terry")

    console.rule(f"2. {model} on {personal_data}: personalizing users it never saw")
    _quiet_lightning()
    res = personalization_run(personal_data, model, ks=(0, 10), max_epochs=8)
    rep = res["fit_report"]
    console.print(f"trained {model} on {rep['n_train']} comparisons in {rep['seconds']:.0f}s; "
                  f"seen-user test accuracy {100 * res['seen_test']['accuracy']:.1f}%")
    table = Table(title=f"unseen users of {personal_data}: query accuracy before and after 10 of their "
                        f"comparisons (item-disjoint)")
    for col in ("adaptation", "k", "users", "accuracy", "gain vs k=0 (95% CI)", "adapt ms (median)"):
        table.add_column(col, justify="right")
    curves = [("adapt", res["curve"])] + ([("personalize + store", res["curve_store"])] if "store" in res else [])
    for label, curve in curves:
        for row in curve["curve"]:
            ci = row.get("gain_ci95", [float("nan")] * 2)
            table.add_row(label, str(row["k"]), str(row["n_users"]), f"{100 * row['accuracy']:.1f}%",
                          f"{100 * row.get('gain_vs_k0', 0):+.1f} ({100 * ci[0]:+.1f}, {100 * ci[1]:+.1f})",
                          f"{row['adapt_ms_median']:.2f}")
    console.print(table)
    if "store" in res:
        _show_one_user(res)


def _show_one_user(res: dict) -> None:
    """Personalize one unseen user through the store; print neighbours and recommendations."""
    import torch

    from plural.query.personalize import personalize
    from plural.core.batch import comparison_batch
    from plural.query.recommend import ItemIndex

    model, data, store = res["model"], res["data"], res["store"]
    ep = max(res["episodes"], key=lambda e: len(e.support_pool))
    support = comparison_batch(data, ep.support(min(10, len(ep.support_pool))), model)
    state, neighbours = personalize(model, store, support, return_neighbors=True)
    user = data.user_ids[ep.user]
    plain = model.adapt(support)
    console.print(f"[bold]user {user}[/]: 10 comparisons; mean posterior sd of their user vector "
                  f"{float(torch.diagonal(plain.covariance).sqrt().mean()):.3f} (population prior "
                  f"{float(torch.diagonal(model.population_state().covariance).sqrt().mean()):.3f}; through "
                  f"the store {float(torch.diagonal(state.covariance).sqrt().mean()):.3f})")
    top = sorted(neighbours, key=lambda t: -t[1])[:5]
    if neighbours:
        console.print(f"stored users who best explain their comparisons (posterior weight over {len(neighbours)} "
                      f"stored users; the population prior holds {100 * (1 - sum(w for _, w in neighbours)):.1f}%): "
                      + ", ".join(f"{uid} ({100 * w:.2f}%)" for uid, w in top))
    else:  # personalize's check on the support preferred the population prior
        console.print("their own comparisons are predicted better under the population prior than under the "
                      "store's (personalize's check on the support): their state is plain adapt's")
    judged = {data.item_ids[i] for i in data.items_of(data.rows_by_user()[ep.user]).tolist()}
    group = user.split("/")[0] + "/" if "/" in user else ""  # Polis: the user's own conversation
    catalog = ItemIndex(model, data)
    candidates = [i for i in data.item_ids if i.startswith(group) and i not in judged]
    text = dict(zip(data.item_ids, data.item_text))
    console.print(f"top recommendations for them {('in ' + group[:-1]) if group else ''} among the "
                  f"{len(candidates)} items they have not judged (ItemIndex over {len(catalog)} items):")
    for item, score in catalog.rank(state, candidates)[:5]:
        console.print(f"  {score:+.2f}  {str(text[item])[:100]}")


@app.command()
def bench(
    data: str = typer.Option("ukpconvarg1,polis,movielens,synthetic_mixture,synthetic_noisy,synthetic_length",
                             help="comma-separated bundled or synthetic datasets, or file paths; NAME+prompts "
                                  "for prompt-aware items (the contexts' texts are the prompts)"),
    models: str = typer.Option(None, help="comma-separated model names (default: the whole zoo and baselines)"),
    seeds: str = typer.Option("0", help="comma-separated seeds"),
    out: Path = typer.Option(Path("runs/bench"), help="output directory (results.json, results.md, PNGs)"),
    max_unseen_users: int = typer.Option(300, help="unseen users scored per dataset and seed (0: all)"),
    max_epochs: int = typer.Option(None, help="upper bound on epochs (default: enough for 1,000 optimizer steps, "
                                              "at least 30; early stopping on validation log-loss)"),
    quick: bool = typer.Option(False, help="tiny synthetic data and few epochs (seconds)"),
    jobs: int = typer.Option(1, help="worker processes, one (dataset, seed) run each at a time"),
    kind: str = typer.Option("pairs", help=KIND_HELP),
    column: list[str] = typer.Option([], "--column", help=COLUMN_HELP),
    split: str = typer.Option(None, help=SPLIT_HELP + "; applies to every dataset"),
    selection: str = typer.Option("val_loss", help="what training selects its number of epochs on: val_loss "
                                                   "(training users' held-out comparisons) or new_users (the "
                                                   "few-shot error of users held out of a scout fit; about twice "
                                                   "the training time)"),
    set_: list[str] = typer.Option([], "--set", help="MODEL.FIELD=VALUE: a config field of one benched model "
                                                     "(e.g. low_rank.n_components=4, low_rank.use_observations=false); "
                                                     "repeatable"),
) -> None:
    """Run the evaluation protocol over datasets x models x seeds and write a table and plots.

    Prints a line as each (dataset, seed, model) step starts and ends, with the time since the start."""
    from apps.bench import BenchConfig, load_bench_dataset, markdown_table, run_benchmark
    from apps.plots import PLOTS_EXTRA, plots_available

    names = [d.strip() for d in data.split(",") if d.strip()]
    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    config = BenchConfig(seeds=seed_list, max_unseen_users=max_unseen_users or None,
                         max_epochs=3 if quick else max_epochs, jobs=jobs, split_mode=_check_split(split),
                         selection=_check_selection(selection))
    if models:
        config.models = tuple(m.strip() for m in models.split(",") if m.strip())
    _check_models(config.models, "--models")  # before any data is loaded
    config.model_options = _model_options(set_, config.models)
    read = dict(kind=kind, **_key_values(column))
    if not plots_available():
        console.print(f"note: matplotlib is not installed, so no plots ({PLOTS_EXTRA})", highlight=False)
    _quiet_lightning()
    start = time.perf_counter()
    with console.status("loading and encoding datasets (embeddings are cached)"):
        datasets = {}
        for n in names:  # keyed by the data's name: a file's stem, not its path
            loaded = load_bench_dataset(n, quick=quick, read_options=read)
            if loaded.name in datasets:
                raise typer.BadParameter(f"two datasets are named {loaded.name!r}", param_hint="--data")
            datasets[loaded.name] = loaded
    _say(start, f"loaded {len(datasets)} dataset(s); {len(datasets) * len(config.seeds)} run(s) of "
                f"{len(config.models)} model(s), {min(config.jobs, len(datasets) * len(config.seeds))} at a time")
    record = run_benchmark(datasets, config, out, show_progress=False, progress=_bench_progress(start))
    console.print(markdown_table(record))
    console.print(f"wrote {out}/results.json, results.md and {len(record.get('plots', []))} plot(s) "
                  f"in {time.perf_counter() - start:.0f}s", highlight=False)
    if record.get("plots_skipped"):
        console.print(f"no plots: {record['plots_skipped']}", highlight=False)


def _clock(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"


def _say(start: float, message: str) -> None:
    console.print(f"[{_clock(time.perf_counter() - start)}] {message}", highlight=False, markup=False,
                  soft_wrap=True)


def _bench_progress(start: float):
    """A ``progress`` callback for ``run_benchmark`` that prints one line a step."""

    def show(event: dict) -> None:
        where = f"{event['dataset']} seed {event['seed']}"
        kind = event["event"]
        if kind == "run_start":
            _say(start, f"{where}: started ({event['n_models']} models)")
        elif kind == "model_start":
            _say(start, f"{where}: {event['model']} ({event['index'] + 1}/{event['n_models']}) started")
        elif kind == "model_done":
            _say(start, f"{where}: {event['model']} ({event['index'] + 1}/{event['n_models']}) done in "
                        f"{event['seconds']:.0f}s, seen test {100 * event['seen_test_accuracy']:.1f}%")
        elif kind == "run_done":
            _say(start, f"{where}: done in {event['seconds']:.0f}s")

    return show


def _check_models(names, hint: str) -> None:
    """A usage error naming the available models, before anything is loaded."""
    from plural.core.model import available_models

    known = available_models()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                 f"available: {', '.join(known)}", param_hint=hint)


def _check_split(split: str | None) -> str | None:
    if split is not None and split not in SPLITS:
        raise typer.BadParameter(f"expected one of {', '.join(SPLITS)}, got {split!r}", param_hint="--split")
    return split


def _check_selection(selection: str) -> str:
    from plural.training.selection import SELECTIONS

    if selection not in SELECTIONS:
        raise typer.BadParameter(f"expected one of {', '.join(SELECTIONS)}, got {selection!r}", param_hint="--selection")
    return selection


def _model_options(settings: list[str], models) -> dict:
    """``["low_rank.n_components=4"]`` -> ``{"low_rank": {"n_components": 4}}``, values read as JSON
    where they parse (numbers, true/false) and as text otherwise; the model must be benched and the
    field one of its config's."""
    import dataclasses

    from plural.core.registry import model_class

    out: dict = {}
    for setting in settings:
        target, sep, value = setting.partition("=")
        name, dot, field = target.strip().partition(".")
        if not sep or not dot or not field:
            raise typer.BadParameter(f"expected MODEL.FIELD=VALUE, got {setting!r}", param_hint="--set")
        if name not in models:
            raise typer.BadParameter(f"{name!r} is not among the benched models {list(models)}", param_hint="--set")
        defaults = {f.name: f.default for f in dataclasses.fields(model_class(name).config_class)}
        if field not in defaults:
            raise typer.BadParameter(f"{name} has no config field {field!r}; it has {sorted(defaults)}",
                                     param_hint="--set")
        out.setdefault(name, {})[field] = _setting_value(setting, value.strip(), defaults[field])
    return out


def _setting_value(setting: str, value: str, default):
    """``value`` as the type of the field's ``default``: true / false (any case) for a flag, a whole
    number for an integer, a number for a float; JSON where it parses and text otherwise for the rest.
    A value of another type raises (a flag set to "False" must not read as a non-empty, true text)."""
    lowered = value.lower()
    if isinstance(default, bool):
        if lowered not in ("true", "false"):
            raise typer.BadParameter(f"{setting!r}: expected true or false", param_hint="--set")
        return lowered == "true"
    try:
        parsed = json.loads(lowered if lowered in ("true", "false", "null") else value)
    except ValueError:
        parsed = value
    if isinstance(default, (int, float)):
        number = isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
        if not number or (isinstance(default, int) and not isinstance(parsed, int)):
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise typer.BadParameter(f"{setting!r}: expected {kind}", param_hint="--set")
    return parsed


def _key_values(pairs: list[str]) -> dict:
    """``["user=userId", "min_gap=1.5"]`` -> ``{"user": "userId", "min_gap": 1.5}`` (numbers parsed)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--column")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out[key.strip()] = parsed if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) else value
    return out


def _int_or_str(value: str):
    return int(value) if value.isdigit() else value


_LIBRARY_ERRORS = (ValueError, OSError, KeyError, TypeError, ImportError)
"""What the library raises for bad input or a bad environment; CheckpointError and StoreError are
ValueErrors, FileNotFoundError and FileExistsError OSErrors."""


def _message(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return str(text) or type(err).__name__


def _is_library_error(err: BaseException) -> bool:
    if isinstance(err, _LIBRARY_ERRORS):
        return True
    model = sys.modules.get("plural.core.model")  # NotFittedError, without importing torch to check
    return model is not None and isinstance(err, model.NotFittedError)


def main(argv: list[str] | None = None) -> None:
    """The ``plural`` console script: runs the app and turns a library error into one line on
    stderr and exit status 1 (``PLURAL_DEBUG=1`` re-raises it with its traceback)."""
    try:
        app(args=argv, prog_name="plural")
    except Exception as err:
        if not _is_library_error(err) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"error: {_message(err)}", file=sys.stderr)
        sys.exit(ERROR_EXIT)


if __name__ == "__main__":
    main()
