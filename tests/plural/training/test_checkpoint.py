"""Tests for plural.training.checkpoint: what a load refuses, and what it tells about older saves."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from plural.training.checkpoint import CheckpointError, load_model, save_model
from plural.core.model import make_model
from plural.training.runs import train_run
from plural.training.saved_dir import record_checksums


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = make_model("low_rank", hidden_dim=8, n_components=2, item_dim=4).build(
        6, ["ann", "bob", "cy"], ["x", "y", "z"], user_counts=[2, 1, 4])
    return model, save_model(model, tmp_path / "m")


def _edit(path, name, change):
    file = path / name
    content = json.loads(file.read_text())
    change(content)
    file.write_text(json.dumps(content))
    record_checksums(path)  # past the checksums: the reader itself must refuse the edit


@pytest.mark.parametrize("change, message", [
    (lambda v: v["user_ids"].__setitem__(1, "ann"), "user_ids lists 'ann' more than once"),
    (lambda v: v["item_ids"].__setitem__(2, "x"), "item_ids lists 'x' more than once"),
    (lambda v: v["user_ids"].pop(), "2 user_ids, but config.json says 3"),
    (lambda v: v.pop("item_ids"), "item_ids must be a list of strings"),
    (lambda v: v["user_ids"].__setitem__(0, 7), "user_ids must be a list of strings"),
])
def test_a_vocabulary_with_duplicate_or_missing_ids_is_refused(saved, change, message):
    _, path = saved
    _edit(path, "vocab.json", change)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


@pytest.mark.parametrize("name, content, message", [
    ("vocab.json", b"{not json", "vocab.json is corrupt"),
    ("vocab.json", b"[1, 2]", "vocab.json is corrupt: expected a JSON object"),
    ("config.json", b"\xff\xfe", "config.json is corrupt"),
    ("weights.safetensors", b"\x00" * 3, "weights.safetensors could not be read"),
])
def test_every_unreadable_file_is_a_checkpoint_error_naming_it(saved, name, content, message):
    _, path = saved
    (path / name).write_bytes(content)
    record_checksums(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_a_missing_or_unknown_config_field(saved, caplog):
    model, path = saved
    _edit(path, "config.json", lambda c: c["config"].pop("adapt_steps"))
    with caplog.at_level(logging.WARNING, logger="plural.training.checkpoint"):
        loaded = load_model(path)
    assert loaded.config.adapt_steps == type(model.config)().adapt_steps
    assert "no 'adapt_steps'" in caplog.text and "using the default" in caplog.text
    _edit(path, "config.json", lambda c: c["config"].update(from_the_future=1))
    with pytest.raises(CheckpointError, match="from_the_future"):
        load_model(path)
    _edit(path, "config.json", lambda c: c.update(model="no_such_model"))
    with pytest.raises(CheckpointError, match="unknown model 'no_such_model'"):
        load_model(path)


def test_train_refuses_a_foreign_out_directory_before_training(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("precious")
    # the dataset does not exist: the guard must speak before anything is loaded or trained
    with pytest.raises(FileExistsError, match="data.csv"):
        train_run("no-such-dataset.csv", "bradley_terry", out)
    assert (out / "data.csv").read_text() == "precious"
