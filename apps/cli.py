"""The ``plural`` command: train, evaluate and demo models on bundled or your own data."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="plural: pluralistic and personalized preference models.")
console = Console()


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


@app.command()
def train(
    data: str = typer.Option(..., help="bundled dataset (ukpconvarg1, polis, movielens) or a file path"),
    model: str = typer.Option("bradley_terry", help="model name"),
    out: Path = typer.Option(..., help="run directory to write"),
    seed: int = typer.Option(0, help="random seed for splits, weights and shuffling"),
    max_epochs: int = typer.Option(30, help="upper bound on epochs (early stopping on validation log-loss)"),
    batch_size: int = typer.Option(256),
    split: str = typer.Option(None, help="'items' (item-disjoint) or 'comparisons'; default by dataset"),
    devices: str = typer.Option("auto", help="Lightning devices"),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp"),
    precision: str = typer.Option(None, help="Lightning precision, e.g. 16-mixed"),
    overwrite: bool = typer.Option(False, help="replace OUT even if it holds files that are not a plural run"),
) -> None:
    """Train MODEL on the seen users of DATA and save the run to OUT."""
    from plural.training.runs import train_run

    _quiet_lightning()
    start = time.perf_counter()
    record = train_run(data, model, out, random_state=seed, max_epochs=max_epochs, batch_size=batch_size,
                       split_mode=split, devices=_int_or_str(devices), strategy=strategy,
                       precision=precision, overwrite=overwrite)
    rep = record["fit_report"]
    console.print(f"[bold]trained[/] {model} on {data}: {record['n_train']} comparisons from "
                  f"{record['n_seen_users']} users, {rep['epochs']} epochs in {rep['seconds']:.1f}s "
                  f"on {rep['device']}; saved to {out} ({time.perf_counter() - start:.1f}s total)")


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
def demo(
    data: str = typer.Option("ukpconvarg1", help="bundled dataset for the baseline"),
    personal_data: str = typer.Option("polis", help="bundled dataset for the latent-user model"),
    model: str = typer.Option("low_rank", help="latent-user model to personalize with"),
    out: Path = typer.Option(Path("runs/demo"), help="run directory"),
) -> None:
    """Train the Bradley-Terry baseline, then a latent-user model, and personalize it for users it
    never saw from 10 of their comparisons."""
    from plural.training.runs import personalization_run

    console.rule(f"1. Bradley-Terry baseline on {data}")
    train(data=data, model="bradley_terry", out=out / "bradley_terry", seed=0, max_epochs=30,
          batch_size=256, split=None, devices="auto", strategy="auto", precision=None, overwrite=False)
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
    console.print(f"stored users who best explain their comparisons (posterior weight over {len(neighbours)} "
                  f"stored users; the population prior holds {100 * (1 - sum(w for _, w in neighbours)):.1f}%): "
                  + ", ".join(f"{uid} ({100 * w:.2f}%)" for uid, w in top))
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
                             help="comma-separated bundled or synthetic datasets, or file paths"),
    models: str = typer.Option(None, help="comma-separated model names (default: the whole zoo and baselines)"),
    seeds: str = typer.Option("0", help="comma-separated seeds"),
    out: Path = typer.Option(Path("runs/bench"), help="output directory (results.json, results.md, PNGs)"),
    max_unseen_users: int = typer.Option(300, help="unseen users scored per dataset and seed (0: all)"),
    max_epochs: int = typer.Option(20),
    quick: bool = typer.Option(False, help="tiny synthetic data and few epochs (seconds)"),
    jobs: int = typer.Option(1, help="worker processes, one (dataset, seed) run each at a time"),
    kind: str = typer.Option("pairs", help="how to read a file given in --data: pairs, trl, ratings, rankings "
                                            "or votes"),
    column: list[str] = typer.Option([], "--column", help="for a file in --data: a converter option KEY=VALUE "
                                     "naming a column or setting a value, e.g. user=userId, item=movieId, "
                                     "rating=stars, item_table=items.csv, item_text=title (repeatable)"),
) -> None:
    """Run the evaluation protocol over datasets x models x seeds and write a table and plots."""
    from apps.bench import BenchConfig, load_bench_dataset, markdown_table, run_benchmark

    _quiet_lightning()
    names = [d.strip() for d in data.split(",") if d.strip()]
    config = BenchConfig(seeds=tuple(int(s) for s in seeds.split(",")),
                         max_unseen_users=max_unseen_users or None, max_epochs=3 if quick else max_epochs,
                         jobs=jobs)
    if models:
        config.models = tuple(m.strip() for m in models.split(","))
    start = time.perf_counter()
    with console.status("loading and encoding datasets (embeddings are cached)"):
        read = dict(kind=kind, **_key_values(column))
        datasets = {}
        for n in names:  # keyed by the data's name: a file's stem, not its path
            loaded = load_bench_dataset(n, quick=quick, read_options=read)
            if loaded.name in datasets:
                raise typer.BadParameter(f"two datasets are named {loaded.name!r}", param_hint="--data")
            datasets[loaded.name] = loaded
    record = run_benchmark(datasets, config, out, show_progress=False)
    console.print(markdown_table(record))
    console.print(f"wrote {out}/results.json, results.md and {len(record.get('plots', []))} plot(s) "
                  f"in {time.perf_counter() - start:.0f}s")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
