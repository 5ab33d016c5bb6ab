import json

import pytest

from apps.bench import BenchConfig, load_bench_dataset, markdown_table, run_benchmark


def test_quick_benchmark_writes_results_table_and_plots(tmp_path):
    data = load_bench_dataset("synthetic_mixture", quick=True)
    assert data.meta["oracle_accuracy"] > data.meta["majority_type_accuracy"]
    config = BenchConfig(models=("bradley_terry", "low_rank"), ks=(0, 2, 10), n_draws=1, max_epochs=3,
                         max_unseen_users=8)
    record = run_benchmark({"synthetic_mixture": data}, config, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    run = saved["datasets"]["synthetic_mixture"]["runs"][0]
    assert set(run["models"]) == {"bradley_terry", "low_rank", "low_rank+store"}
    assert "unseen_item_disjoint" in run["models"]["low_rank+store"]
    entry = run["models"]["low_rank"]
    assert {"seen_test", "unseen_item_disjoint", "unseen_random", "fit"} <= set(entry)
    assert saved["config"]["ks"] == [0, 2, 10] and "torch" in saved["versions"]
    table = (tmp_path / "results.md").read_text()
    assert "| low_rank |" in table and "| low_rank+store |" in table and "Random split" in table
    assert table == markdown_table(record)
    png = tmp_path / "curves_synthetic_mixture.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_worker_processes_run_every_seed_and_keep_each_finished_run(tmp_path):
    data = load_bench_dataset("synthetic_mixture", quick=True)
    config = BenchConfig(models=("item_winrate", "bradley_terry"), ks=(0, 2), n_draws=1, max_epochs=1,
                         max_unseen_users=4, seeds=(0, 1), jobs=2, random_split=False)
    record = run_benchmark({"synthetic_mixture": data}, config, tmp_path)
    runs = record["datasets"]["synthetic_mixture"]["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    for seed in (0, 1):
        partial = json.loads((tmp_path / "partial" / f"synthetic_mixture-seed{seed}.json").read_text())
        assert partial["seed"] == seed and set(partial["models"]) == {"item_winrate", "bradley_terry"}
    assert "±" in (tmp_path / "results.md").read_text()  # two seeds give a spread


def test_bench_config_rejects_bad_jobs():
    import pytest

    with pytest.raises(ValueError, match="jobs"):
        BenchConfig(jobs=0)


def test_few_shot_oracle_rises_from_the_type_mixture_towards_the_oracle():
    from plural.data.splits import make_episodes, split_users
    from plural.data.synthetic import few_shot_oracle, make_mixture, type_oracle

    syn = make_mixture(n_types=2, n_users=80, n_items=300, dim=8, comparisons_per_user=80, scale=8.0, type_weights=[1, 1],
                       shared_weight=0.0, random_state=1)
    _, unseen = split_users(syn.data, 0.5, random_state=0)
    curve = {row["k"]: row["accuracy"]
             for row in few_shot_oracle(syn.data, make_episodes(syn.data, unseen, random_state=0), (0, 20),
                                        type_oracle(syn))}
    # two unrelated types in equal shares: knowing the type from 20 labels is worth a lot
    assert curve[20] > curve[0] + 0.1
    assert curve[20] <= syn.oracle_accuracy() + 0.05


def test_workers_report_progress_and_the_json_is_strict(tmp_path):
    data = load_bench_dataset("synthetic_mixture", quick=True)
    config = BenchConfig(models=("item_winrate", "bradley_terry"), ks=(0, 2), n_draws=1, max_epochs=1,
                         max_unseen_users=4, seeds=(0, 1), jobs=2, random_split=False)
    events = []
    record = run_benchmark({"synthetic_mixture": data}, config, tmp_path, progress=events.append)
    for seed in (0, 1):
        mine = [(e["event"], e.get("model")) for e in events if e["seed"] == seed]
        assert mine == [("run_start", None), ("model_start", "item_winrate"), ("model_done", "item_winrate"),
                        ("model_start", "bradley_terry"), ("model_done", "bradley_terry"), ("run_done", None)]
    done = [e for e in events if e["event"] == "model_done"]
    assert all(e["seconds"] >= 0 and 0 <= e["seen_test_accuracy"] <= 1 and e["n_models"] == 2 for e in done)
    text = (tmp_path / "results.json").read_text()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert markdown_table(saved) == (tmp_path / "results.md").read_text() == markdown_table(record)


def test_nan_is_written_as_null_and_read_back_as_missing(tmp_path):
    import math

    import numpy as np

    from apps.bench import to_json

    nan = float("nan")
    row = lambda k, acc, gain: {"k": k, "accuracy": acc, "gain_vs_k0": gain, "adapt_ms_median": nan,  # noqa: E731
                                "gain_ci95": [nan, np.float64("inf")]}
    entry = {"seen_test": {"accuracy": np.float64(0.75), "log_loss": np.float32(nan)}, "fit": {"seconds": 2.0},
             "unseen_item_disjoint": {"curve": [row(0, 0.6, 0.0), row(2, nan, nan)]}}
    record = {"config": {"ks": (0, 2)}, "datasets": {"d": {"runs": [
        {"seed": 0, "split_mode": "items", "models": {"m": entry}, "n": np.int64(3), "a": np.arange(2)}]}}}
    text = to_json(record)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    json.dumps(back, allow_nan=False)
    run = back["datasets"]["d"]["runs"][0]
    assert run["models"]["m"]["seen_test"] == {"accuracy": 0.75, "log_loss": None}
    assert run["models"]["m"]["unseen_item_disjoint"]["curve"][1]["accuracy"] is None
    assert run["models"]["m"]["unseen_item_disjoint"]["curve"][0]["gain_ci95"] == [None, None]
    assert run["n"] == 3.0 and run["a"] == [0, 1]  # numpy scalars as before (float), arrays as lists
    assert markdown_table(back) == markdown_table(record)
    assert not math.isnan(back["datasets"]["d"]["runs"][0]["models"]["m"]["fit"]["seconds"])


def test_without_matplotlib_the_results_are_written_and_the_plots_skipped(tmp_path, monkeypatch):
    import sys

    import apps.plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"plural\[plots\]"):
        apps.plots.plot_few_shot_curves({"datasets": {}}, tmp_path)
    data = load_bench_dataset("synthetic_mixture", quick=True)
    config = BenchConfig(models=("item_winrate",), ks=(0, 2), n_draws=1, max_epochs=1, max_unseen_users=4,
                         random_split=False)
    record = run_benchmark({"synthetic_mixture": data}, config, tmp_path)
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.md").is_file()
    assert record["plots"] == [] and "plural[plots]" in record["plots_skipped"]
    assert not list(tmp_path.glob("*.png"))


def test_split_mode_and_models_are_checked_first():
    with pytest.raises(ValueError, match="split_mode"):
        BenchConfig(split_mode="random")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        run_benchmark({}, BenchConfig(models=("bradley_terry", "nope")))


def test_a_name_ending_in_prompts_gives_prompt_aware_items(tmp_path):
    """``rows.jsonl+prompts``: the TRL rows of a file, one item per (prompt, response), the features
    [response, prompt, response * prompt] of the recorded encoder, and the name says so."""
    rows = [{"prompt": p, "chosen": c, "rejected": r, "user_id": u}
            for u in ("ann", "bob") for p in ("Say it briefly.", "Explain it in depth.")
            for c, r in (("Short answer.", "A long and winding answer with details."),
                         ("Polite reply, thank you.", "Rude reply."))]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = load_bench_dataset(str(path), read_options={"kind": "trl"})
    aware = load_bench_dataset(f"{path}+prompts", read_options={"kind": "trl"})
    assert aware.name == f"{plain.name}+prompts" and len(aware) == len(plain) == 8
    assert len(plain.item_ids) == 4 and len(aware.item_ids) == 8  # each response under each prompt
    assert aware.item_features.shape[1] == 3 * plain.item_features.shape[1]
    assert aware.meta["encoder"]["prompts"] == "response|prompt|response*prompt"
    with pytest.raises(ValueError, match="no prompts"):
        load_bench_dataset("synthetic_mixture+prompts")
