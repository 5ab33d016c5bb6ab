import json

from plural.bench import BenchConfig, load_bench_dataset, markdown_table, run_benchmark


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
