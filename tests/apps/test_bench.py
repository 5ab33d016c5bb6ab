import json

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
