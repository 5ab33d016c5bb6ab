"""plural.training.runs: a run on a user's own file, with the split the data needs, evaluated again
from the run directory alone."""

import json

import numpy as np
import pytest

from plural.data.converters import from_file
from plural.data.encoders import FeatureEncoder
from plural.evaluation.protocol import protocol_split
from plural.training.runs import evaluate_run, train_run

FIT = dict(max_epochs=1, batch_size=64, show_progress=False)


def write_trl(path, n_users=30, per_user=6, seed=0):
    """TRL rows, every response its own text, users in an ``annotator`` column."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for u in range(n_users):
            for j in range(per_user):
                good, bad = f"answer {u}-{j} that helps {rng.integers(1000)}", f"answer {u}-{j} that does not"
                f.write(json.dumps({"annotator": f"a{u}", "prompt": f"question {j}", "chosen": good,
                                    "rejected": bad}) + "\n")
    return path


@pytest.fixture
def trl_file(tmp_path):
    return write_trl(tmp_path / "prefs.jsonl")


def encoder_for(data, dim=8):
    rng = np.random.default_rng(0)
    return FeatureEncoder(rng.normal(size=(len(data.item_ids), dim)), item_ids=data.item_ids)


READ = {"kind": "trl", "user_id": "annotator"}


def test_a_trl_file_is_split_by_comparison_and_keeps_every_row(trl_file, tmp_path):
    data = from_file(trl_file, **READ)
    assert data.meta["split_mode"] == "comparisons"
    record = train_run(str(trl_file), "bradley_terry", tmp_path / "run", read_options=READ,
                       encoder=encoder_for(data), **FIT)
    assert record["split_mode"] == "comparisons" and record["n_dropped_by_split"] == 0
    seen_rows = int(np.isin(data.user, protocol_split(data, 0).seen).sum())
    assert record["n_train"] + record["n_val"] + record["n_test"] == seen_rows  # nothing silently dropped
    assert record["n_comparisons"] == len(data) == 180
    with np.load(tmp_path / "run" / "split.npz") as split:
        np.testing.assert_array_equal(split["test"], protocol_split(data, 0).split.test)

    items = train_run(str(trl_file), "bradley_terry", tmp_path / "items", read_options=READ, split_mode="items",
                      encoder=encoder_for(data), **FIT)
    assert items["split_mode"] == "items" and items["n_dropped_by_split"] > 0.3 * seen_rows


def test_eval_reads_the_file_again_from_anywhere(trl_file, tmp_path, monkeypatch):
    monkeypatch.chdir(trl_file.parent)
    data = from_file(trl_file, **READ)
    enc = encoder_for(data)
    train_run(trl_file.name, "bradley_terry", tmp_path / "run", read_options=READ, encoder=enc, **FIT)  # relative
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["dataset"] == "prefs.jsonl" and record["dataset_path"] == str(trl_file.resolve())
    assert record["read_options"] == READ
    monkeypatch.chdir(tmp_path.parent)
    out = evaluate_run(tmp_path / "run", encoder=enc)
    assert out["results"]["seen_test"]["n"] > 0 and "unseen_k0" in out["results"]

    write_trl(trl_file, n_users=29)  # the file changed since training: a user fewer
    with pytest.raises(ValueError, match="does not fit the dataset"):
        evaluate_run(tmp_path / "run", encoder=enc)
    trl_file.unlink()
    with pytest.raises(ValueError, match="not there now"):
        evaluate_run(tmp_path / "run", encoder=enc)


def test_an_item_table_path_is_recorded_absolute(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_a": ["x", "y", "x"], "item_b": ["y", "z", "z"],
                  "label": [1, 0, 1]}).to_csv("pairs.csv", index=False)
    pd.DataFrame({"item_id": ["x", "y", "z"], "text": ["ex", "why", "zed"]}).to_csv("items.csv", index=False)
    from plural.training.runs import _how_to_read

    path, options = _how_to_read("pairs.csv", {"kind": "pairs", "item_table": "items.csv"})
    assert path == str(tmp_path / "pairs.csv") and options["item_table"] == str(tmp_path / "items.csv")
    assert _how_to_read("polis", {}) == (None, {})


def test_bad_names_fail_before_the_data_loads(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'; available: .*bradley_terry"):
        train_run("no-such-file.csv", "nope", tmp_path / "a")
    with pytest.raises(ValueError, match="split mode"):
        train_run("no-such-file.csv", "bradley_terry", tmp_path / "b", split_mode="random")
    with pytest.raises(ValueError, match="bundled dataset"):
        train_run("polis", "bradley_terry", tmp_path / "c", read_options={"kind": "votes"})
