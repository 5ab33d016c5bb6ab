"""End to end on a bundled real dataset: `plural train` then `plural eval`, as a user runs them."""

import json

import pytest
from typer.testing import CliRunner

from apps.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_train_and_eval_bradley_terry_on_ukpconvarg1(tmp_path):
    out = tmp_path / "bt"
    result = runner.invoke(app, ["train", "--data", "ukpconvarg1", "--model", "bradley_terry", "--out",
                                 str(out), "--max-epochs", "4", "--batch-size", "512"])
    assert result.exit_code == 0, result.output
    assert "trained bradley_terry on ukpconvarg1" in result.output
    record = json.loads((out / "run.json").read_text())
    assert record["split_mode"] == "comparisons"  # natively pairwise, few judgments per worker
    assert record["n_seen_users"] > 3000 and record["n_train"] > 40000

    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    assert "seen, test" in result.output and "unseen, k=0" in result.output

    from plural.training.runs import evaluate_run

    res = evaluate_run(out)["results"]
    # PROTOCOL.md: population BT on frozen MiniLM text features is about 74% on this data; chance is 50%
    assert 0.70 < res["seen_test"]["accuracy"] < 0.90
    assert 0.70 < res["unseen_k0"]["accuracy"] < 0.90


def test_unknown_dataset_and_missing_run(tmp_path):
    result = runner.invoke(app, ["train", "--data", "nope", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "neither a bundled dataset" in str(result.exception)
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code != 0 and "not a plural run" in str(result.exception)


def test_bench_quick_writes_table_and_plot(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--data", "synthetic_mixture", "--models",
                                 "bradley_terry,item_winrate", "--max-unseen-users", "6", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| item_winrate |" in result.output
    assert (tmp_path / "results.json").is_file() and (tmp_path / "curves_synthetic_mixture.png").is_file()


def test_bench_reads_a_users_own_ratings_file_with_named_columns(tmp_path):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    ratings = pd.DataFrame([(f"person{u}", f"film{i}", int(rng.integers(1, 6)))
                            for u in range(30) for i in rng.choice(24, 16, replace=False)],
                           columns=["who", "what", "stars"])
    ratings.to_csv(tmp_path / "my_ratings.csv", index=False)
    pd.DataFrame({"film": [f"film{i}" for i in range(24)],
                  "title": [f"a film about topic {i % 5}, number {i}" for i in range(24)]}
                 ).to_csv(tmp_path / "films.csv", index=False)
    result = runner.invoke(app, ["bench", "--quick", "--data", str(tmp_path / "my_ratings.csv"), "--kind", "ratings",
                                 "--column", "user=who", "--column", "item=what", "--column", "rating=stars",
                                 "--column", f"item_table={tmp_path / 'films.csv'}", "--column", "item_id=film",
                                 "--column", "item_text=title", "--column", "min_gap=2",
                                 "--models", "item_winrate,bradley_terry", "--max-unseen-users", "6",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "### my_ratings" in result.output and "| bradley_terry |" in result.output
    with pytest.raises(SystemExit):
        app(["bench", "--data", "x.csv", "--column", "no_equals_sign"], standalone_mode=True)
