"""End to end on a bundled real dataset: `plural train` then `plural eval`, as a user runs them."""

import json
import re

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


def test_bench_selection_is_checked_and_recorded(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--data", "synthetic_mixture", "--selection", "newest"])
    assert result.exit_code != 0 and "new_users" in result.output
    result = runner.invoke(app, ["bench", "--quick", "--data", "synthetic_mixture", "--models", "bradley_terry",
                                 "--max-unseen-users", "6", "--selection", "new_users", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["config"]["selection"] == "new_users"
    fit = record["datasets"]["synthetic_mixture"]["runs"][0]["models"]["bradley_terry"]["fit"]
    assert fit["selection"]["requested"] == "new_users"  # no personal part: selected on validation loss


def write_ratings(folder, name, columns, n_users, n_films, per_user, seed):
    """A ratings file (1-5 stars, ``columns`` = user, item, rating names) and ``films.csv`` (film, title)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    pd.DataFrame([(f"person{u}", f"film{i}", int(rng.integers(1, 6)))
                  for u in range(n_users) for i in rng.choice(n_films, per_user, replace=False)],
                 columns=columns).to_csv(folder / name, index=False)
    pd.DataFrame({"film": [f"film{i}" for i in range(n_films)],
                  "title": [f"a film about topic {i % 5}, number {i}" for i in range(n_films)]}
                 ).to_csv(folder / "films.csv", index=False)


def test_bench_reads_a_users_own_ratings_file_with_named_columns(tmp_path):
    write_ratings(tmp_path, "my_ratings.csv", ["who", "what", "stars"], 30, 24, 16, seed=0)
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


def test_bench_learns_from_a_ratings_files_ratings_and_takes_model_settings(tmp_path):
    write_ratings(tmp_path, "stars.csv", ["user_id", "item_id", "rating"], 40, 30, 20, seed=1)
    result = runner.invoke(app, ["bench", "--quick", "--data", str(tmp_path / "stars.csv"), "--kind", "ratings",
                                 "--column", f"item_table={tmp_path / 'films.csv'}", "--column", "item_id=film",
                                 "--column", "item_text=title", "--models", "low_rank",
                                 "--set", "low_rank.n_components=2", "--max-unseen-users", "6",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "Observations (votes, ratings)" in result.output  # the stars, on their 1-5 scale
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["config"]["model_options"] == {"low_rank": {"n_components": 2}}
    fit = record["datasets"]["stars"]["runs"][0]["models"]["low_rank"]["fit"]
    assert fit["n_train_observation_rows"] > 0
    for bad, message in (("low_rank.n_component=2", "no config field 'n_component'"),
                         ("vpl.beta=1", "not among the benched models"), ("low_rank=2", "MODEL.FIELD=VALUE"),
                         ("low_rank.use_observations=no", "expected true or false"),
                         ("low_rank.n_components=2.5", "expected a whole number"),
                         ("low_rank.prior_scale=wide", "expected a number")):
        result = runner.invoke(app, ["bench", "--quick", "--models", "low_rank", "--set", bad])
        said = " ".join(result.output.replace("│", " ").split())  # the error box wraps long lines
        assert result.exit_code != 0 and message in said, result.output


def test_model_settings_take_the_type_of_their_field():
    from apps.cli import _model_options

    options = _model_options(["low_rank.use_observations=False", "low_rank.temper_training=TRUE",
                              "low_rank.prior_scale=1", "low_rank.n_components=3"], ["low_rank"])
    assert options == {"low_rank": {"use_observations": False, "temper_training": True, "prior_scale": 1,
                                    "n_components": 3}}
    assert options["low_rank"]["use_observations"] is False


# ---------------------------------------------------------------------------- errors are one line
def test_library_errors_are_one_line_on_stderr(tmp_path, capsys, monkeypatch):
    from apps.cli import main

    monkeypatch.delenv("PLURAL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", "nope", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: 'nope' is neither a bundled dataset (ukpconvarg1, polis, movielens) nor a file\n"
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(tmp_path)])
    assert exit_.value.code == 1 and capsys.readouterr().err.startswith("error: ")
    monkeypatch.setenv("PLURAL_DEBUG", "1")  # the escape hatch: the exception itself
    with pytest.raises(FileNotFoundError, match="not a plural run"):
        main(["eval", str(tmp_path)])


def test_the_console_script_prints_no_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("plural")
    env = {k: v for k, v in os.environ.items() if k != "PLURAL_DEBUG"}
    proc = subprocess.run([str(script), "eval", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path} is not a plural run (no run.json); train one "
                                                "with `plural train`"]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_wrong_model_fails_before_the_data_loads(tmp_path):
    result = runner.invoke(app, ["train", "--data", "no-such-file.csv", "--model", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output and "bradley_terry" in result.output
    result = runner.invoke(app, ["bench", "--data", "no-such-file.csv", "--models", "bradley_terry,nope"])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
    result = runner.invoke(app, ["train", "--data", "polis", "--split", "random", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "items, comparisons" in result.output
    result = runner.invoke(app, ["train", "--data", "polis", "--column", "user=x", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "bundled dataset" in result.output


# ---------------------------------------------------------------------------- a user's own file
def _trl_file(path, n_users=20, per_user=5):
    with open(path, "w") as f:
        for u in range(n_users):
            for j in range(per_user):
                f.write(json.dumps({"annotator": f"a{u}", "prompt": f"q{j}", "chosen": f"a kind answer {u}.{j}",
                                    "rejected": f"a curt reply {u}.{j}"}) + "\n")
    return path


def test_train_and_eval_a_trl_file_split_by_comparison(tmp_path, monkeypatch):
    data = _trl_file(tmp_path / "mine.jsonl")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--data", "mine.jsonl", "--kind", "trl", "--column", "user_id=annotator",
                                 "--model", "bradley_terry", "--out", str(tmp_path / "run"), "--max-epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "trained bradley_terry on mine.jsonl (comparisons split)" in result.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["split_mode"] == "comparisons" and record["n_dropped_by_split"] == 0
    assert record["read_options"] == {"kind": "trl", "user_id": "annotator"}
    assert record["dataset_path"] == str(data.resolve())
    monkeypatch.chdir(tmp_path.parent)  # eval reads the file again from its recorded path
    result = runner.invoke(app, ["eval", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "seen, test" in result.output and "comparisons split" in result.output

    result = runner.invoke(app, ["train", "--data", str(data), "--kind", "trl", "--column", "user_id=annotator",
                                 "--split", "items", "--model", "bradley_terry", "--out", str(tmp_path / "items"),
                                 "--max-epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "(items split)" in result.output and "left out" in result.output  # says what the item split drops


# ---------------------------------------------------------------------------- bench progress, --split
def test_bench_prints_progress_and_takes_split(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--data", "synthetic_mixture", "--models",
                                 "item_winrate,bradley_terry", "--max-unseen-users", "6", "--split", "comparisons",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "synthetic_mixture seed 0: started (2 models)" in out
    assert "synthetic_mixture seed 0: item_winrate (1/2) started" in out
    assert re.search(r"\[\d\d:\d\d\] synthetic_mixture seed 0: bradley_terry \(2/2\) done in \d+s, seen test "
                     r"\d+\.\d%", out)
    assert out.index("item_winrate (1/2) started") < out.index("bradley_terry (2/2) started") < out.index("| model |")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["datasets"]["synthetic_mixture"]["runs"][0]["split_mode"] == "comparisons"
    assert saved["config"]["split_mode"] == "comparisons"
    assert "pair protocol" in out


def _prompt_rows_file(path):
    rows = [{"prompt": p, "chosen": c, "rejected": r, "user_id": f"u{u}"}
            for u in range(6) for p in ("Say it briefly.", "Explain it in depth.", "Tell me about tides.")
            for c, r in (("Short answer.", "A long and winding answer with details."),
                         ("Polite reply, thank you.", "Rude reply."), ("Tides follow the moon.", "No idea."))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_with_prompts_and_eval_rebuild_the_responses_in_context(tmp_path):
    data = _prompt_rows_file(tmp_path / "rows.jsonl")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(data), "--kind", "trl", "--model", "low_rank",
                                 "--prompts", "--out", str(out), "--max-epochs", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["prompts"] is True
    assert record["fit_report"]["encoder"]["prompts"] == "response|prompt|response*prompt"
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 0 and "seen, test" in result.output, result.output


def test_commands_called_from_python_take_their_option_defaults(tmp_path):
    """The demo calls `train` as a function: every option it does not pass is the option's default,
    not typer's OptionInfo (which a bare call would hand to TextEncoder)."""
    from apps.cli import _with_option_defaults, train

    out = tmp_path / "run"
    _with_option_defaults(train, data=str(_prompt_rows_file(tmp_path / "rows.jsonl")), kind="trl", model="bradley_terry",
                          out=out, max_epochs=1)
    assert json.loads((out / "run.json").read_text())["prompts"] is False
