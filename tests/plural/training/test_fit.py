import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from plural.training.checkpoint import CheckpointError, load_model, save_model
from plural.training.saved_dir import record_checksums
from plural.data.splits import split_comparisons
from plural.evaluation.metrics import evaluate
from plural.core.model import NotFittedError, make_model


@pytest.fixture(scope="module")
def trained(planted, fast_fit):
    data, _ = planted
    split = split_comparisons(data, mode="comparisons", random_state=0)
    model = make_model("bradley_terry", hidden_dim=32).fit(
        data, train_rows=split.train, val_rows=split.val, random_state=0, **fast_fit)
    return data, split, model


def test_fit_learns_the_planted_reward(trained):
    data, split, model = trained
    acc = evaluate(model, data, split.test)["accuracy"]
    assert acc > 0.75  # labels are Bradley-Terry draws; chance is 0.5
    rep = model.fit_report_
    assert rep["n_train"] == len(split.train) and rep["device"] == "cpu"
    assert rep["best_val_loss"] is not None


def test_fit_is_deterministic_under_a_seed(planted, fast_fit):
    data, _ = planted
    rows = np.arange(600)
    a = make_model("bradley_terry", hidden_dim=16).fit(data, train_rows=rows, random_state=5, **fast_fit)
    b = make_model("bradley_terry", hidden_dim=16).fit(data, train_rows=rows, random_state=5, **fast_fit)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_early_stopping_restores_best_weights(planted):
    data, _ = planted
    model = make_model("bradley_terry", hidden_dim=64, learning_rate=0.05, dropout=0.0).fit(
        data, train_rows=np.arange(300), val_rows=np.arange(300, 900), max_epochs=40, patience=2,
        min_steps=0, show_progress=False)
    rep = model.fit_report_
    assert rep["epochs"] < 39  # stopped early
    val = evaluate(model, data, np.arange(300, 900))["log_loss"]
    assert val == pytest.approx(rep["best_val_loss"], rel=0.05)


def test_min_steps_keeps_a_small_set_training(planted):
    """The same fit as above, which stops within 39 epochs, trains on while it has made fewer than
    min_steps optimizer steps (300 rows, batch 100: 3 steps an epoch), and a default max_epochs
    grows to make room for them."""
    data, _ = planted
    options = dict(train_rows=np.arange(300), val_rows=np.arange(300, 900), patience=2, batch_size=100,
                   show_progress=False)
    model = make_model("bradley_terry", hidden_dim=64, learning_rate=0.05, dropout=0.0).fit(
        data, max_epochs=40, min_steps=60, **options)
    rep = model.fit_report_
    assert rep["min_epochs"] == 20 and rep["epochs"] >= 20
    assert rep["best_epoch"] is not None and rep["best_epoch"] <= rep["epochs"]
    model = make_model("bradley_terry", hidden_dim=16).fit(data, min_steps=120, max_epochs=None,
                                                           **{**options, "patience": 1})
    rep = model.fit_report_  # 120 steps are 40 epochs, plus the patience: 41, above the floor of 30
    assert (rep["min_epochs"], rep["max_epochs"]) == (40, 41) and rep["epochs"] >= 40
    with pytest.raises(ValueError, match="min_steps"):
        make_model("bradley_terry").fit(data, min_steps=-1, **options)


def test_checkpoint_round_trip_is_exact(trained, tmp_path):
    data, split, model = trained
    save_model(model, tmp_path / "bt")
    loaded = load_model(tmp_path / "bt")
    assert type(loaded) is type(model) and loaded.config == model.config
    x = torch.from_numpy(data.item_features[:50])
    assert torch.equal(loaded.reward(x), model.reward(x))
    assert loaded.item_ids_ == model.item_ids_ and loaded.user_ids_ == model.user_ids_
    assert loaded.user_counts_ == model.user_counts_
    users, counts = np.unique(data.user[split.train], return_counts=True)
    assert model.user_ids_ == list(data.user_ids[users]) and model.user_counts_ == counts.tolist()
    # nothing in the directory needs unpickling
    files = sorted(p.name for p in (tmp_path / "bt").iterdir())
    assert files == ["checksums.json", "config.json", "vocab.json", "weights.safetensors"]


def test_saving_again_replaces_atomically(trained, tmp_path):
    _, _, model = trained
    save_model(model, tmp_path / "bt")
    save_model(model, tmp_path / "bt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bt"]


def test_checkpoint_of_another_class_or_dimension_fails_clearly(trained, tmp_path):
    _, _, model = trained
    save_model(model, tmp_path / "bt")
    with pytest.raises(CheckpointError, match="holds a 'bradley_terry' model, not 'other'"):
        class Other(type(model)):
            name = "other"
        load_model(tmp_path / "bt", Other)
    wider = make_model("bradley_terry", hidden_dim=32).build(8, ["u"], ["i"])
    with pytest.raises(CheckpointError, match="16-d features; this model expects 8-d"):
        load_model(tmp_path / "bt", wider)
    cfg = json.loads((tmp_path / "bt" / "config.json").read_text())
    cfg["config"]["hidden_dim"] = 7
    (tmp_path / "bt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json is corrupt: its sha256"):
        load_model(tmp_path / "bt")  # a hand edit is refused until re-stamped
    record_checksums(tmp_path / "bt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "bt")
    cfg["config"]["hidden_dim"] = model.config.hidden_dim
    (tmp_path / "bt" / "config.json").write_text(json.dumps(cfg))
    vocab = json.loads((tmp_path / "bt" / "vocab.json").read_text())
    (tmp_path / "bt" / "vocab.json").write_text(json.dumps({**vocab, "user_counts": vocab["user_counts"][1:]}))
    record_checksums(tmp_path / "bt")
    with pytest.raises(CheckpointError, match="vocab.json does not describe this model: user_counts"):
        load_model(tmp_path / "bt")
    (tmp_path / "bt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "bt")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def test_unfitted_model_and_bad_arguments(planted):
    data, _ = planted
    model = make_model("bradley_terry")
    with pytest.raises(NotFittedError):
        model.reward(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="hidden_dim must be >= 1, got 0"):
        make_model("bradley_terry", hidden_dim=0)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        make_model("nope")
    with pytest.raises(ValueError, match="no training comparisons"):
        make_model("bradley_terry").fit(data, train_rows=np.array([], dtype=int), show_progress=False)
    with pytest.raises(TypeError, match="PreferenceData"):
        make_model("bradley_terry").fit([1, 2, 3])


DDP_SCRIPT = textwrap.dedent("""
    import json, sys, logging
    import numpy as np
    import pytorch_lightning as pl
    from plural.data.synthetic import make_population
    from plural.data.splits import split_comparisons
    from plural.evaluation.metrics import evaluate
    from plural.core.model import make_model

    strategy, devices, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    data, _ = make_population(n_users=60, n_items=300, dim=16, comparisons_per_user=60, random_state=0)
    split = split_comparisons(data, mode="comparisons", random_state=0)
    model = make_model("bradley_terry", hidden_dim=32).fit(
        data, train_rows=split.train, val_rows=split.val, max_epochs=15, batch_size=64,
        accelerator="cpu", devices=devices, strategy=strategy, show_progress=False, random_state=0)
    if model.trainer.global_rank == 0:
        result = evaluate(model, data, split.test)
        result["world_size"] = model.fit_report_["world_size"]
        open(out, "w").write(json.dumps(result))
""")


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT)
    results = {}
    for strategy, devices in (("auto", 1), ("ddp", 2)):
        out = tmp_path / f"{strategy}.json"
        proc = subprocess.run([sys.executable, str(script), strategy, str(devices), str(out)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[strategy] = json.loads(out.read_text())
    assert results["ddp"]["world_size"] == 2 and results["auto"]["world_size"] == 1
    assert results["ddp"]["accuracy"] > 0.75
    assert abs(results["ddp"]["accuracy"] - results["auto"]["accuracy"]) < 0.05


def test_a_model_can_ask_for_more_patience_than_fit_was_given(monkeypatch, planted):
    import pytorch_lightning as pl

    data = planted[0]
    patience = []
    original = pl.callbacks.EarlyStopping

    class Spy(original):
        def __init__(self, *args, **kwargs):
            patience.append(kwargs["patience"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pl.callbacks, "EarlyStopping", Spy)
    make_model("ideal_point", hidden_dim=8, item_dim=4, n_components=2).fit(
        data, patience=2, max_epochs=1, show_progress=False)
    make_model("bradley_terry", hidden_dim=8).fit(data, patience=2, max_epochs=1, show_progress=False)
    assert patience == [8, 2]


class _TrainerSpy:
    """Records the options ``plural.fit`` builds its ``pl.Trainer`` with."""

    def __init__(self, monkeypatch):
        import pytorch_lightning as pl

        self.kwargs = []
        spy = self
        original = pl.Trainer

        class Trainer(original):
            def __init__(self, *args, **kwargs):
                spy.kwargs.append(kwargs)
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(pl, "Trainer", Trainer)


def test_training_defaults_to_one_device_named_by_resolve_device(monkeypatch, planted):
    from plural.training import fit as fit_module

    data = planted[0]
    spy = _TrainerSpy(monkeypatch)
    monkeypatch.setenv("PLURAL_DEVICE", "cpu")
    make_model("bradley_terry", hidden_dim=8).fit(data, max_epochs=1, show_progress=False)
    assert {k: spy.kwargs[-1][k] for k in ("accelerator", "devices", "strategy", "deterministic")} == \
        {"accelerator": "cpu", "devices": 1, "strategy": "auto", "deterministic": True}
    # on a host with GPUs: the one resolve_device names, not Lightning's "auto" (DDP over all of them)
    monkeypatch.setattr(fit_module, "resolve_device", lambda device=None: torch.device("cuda", 1))
    assert fit_module.resolve_trainer_device() == ("cuda", [1])
    monkeypatch.setattr(fit_module, "resolve_device", lambda device=None: torch.device("cuda"))
    assert fit_module.resolve_trainer_device() == ("cuda", 1)
    assert fit_module.resolve_trainer_device(devices=2) == ("cuda", 2)  # more only when asked
    assert fit_module.resolve_trainer_device("cpu", "auto") == ("cpu", "auto")


def test_deterministic_is_a_fit_option(monkeypatch, planted):
    import inspect

    from plural.training.fit import fit

    assert inspect.signature(fit).parameters["deterministic"].default is True
    spy = _TrainerSpy(monkeypatch)
    make_model("bradley_terry", hidden_dim=8).fit(planted[0], max_epochs=1, show_progress=False,
                                                  deterministic=False)
    assert spy.kwargs[-1]["deterministic"] is False


def test_fit_accepts_a_configured_trainer(planted):
    import pytorch_lightning as pl

    from plural.training.fit import RestoreBestWeights, fit

    data = planted[0]
    restore = RestoreBestWeights()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[restore])
    model = fit(make_model("low_rank", hidden_dim=8, item_dim=4, n_components=2), data, trainer=trainer,
                val_rows=np.arange(200), train_rows=np.arange(200, 1200))
    assert model.trainer is trainer and model.fit_report_["epochs"] == 2
    assert model.fit_report_["best_epoch"] == restore.best_epoch is not None
    assert model.user_states().mean(0).abs().max() < 1e-5  # the end of training ran (recentring)
    with pytest.raises(ValueError, match="got a trainer and trainer options \\(devices, precision\\)"):
        fit(make_model("bradley_terry"), data, trainer=trainer, devices=2, precision=16)
    with pytest.raises(TypeError, match="pytorch_lightning.Trainer"):
        fit(make_model("bradley_terry"), data, trainer="gpu")


def test_a_model_without_trainable_parameters_is_fitted_by_plural_fit(planted):
    from plural.training.fit import fit

    data = planted[0]
    model = fit(make_model("item_winrate"), data, show_progress=False)  # "empty parameter list" before
    assert not model.has_trainable_parameters
    rep = model.fit_report_
    assert rep["epochs"] == 0 and rep["n_train"] == len(data) and rep["n_val"] == 0  # nothing held out
    y, w, n = data.label.astype(np.float64), data.weight.astype(np.float64), data.n_items
    wins = np.bincount(data.item_a, y * w, n) + np.bincount(data.item_b, (1 - y) * w, n)
    losses = np.bincount(data.item_a, (1 - y) * w, n) + np.bincount(data.item_b, y * w, n)
    seen = wins + losses > 0
    expected = np.where(seen, np.log((wins + 1.0) / (losses + 1.0)), 0.0)
    x = torch.from_numpy(data.item_features)
    np.testing.assert_allclose(model.reward(x, None, model.item_index(data.item_ids)).numpy(), expected, rtol=1e-6)
    rows = np.arange(500)
    again = make_model("item_winrate").fit(data, train_rows=rows, val_rows=np.arange(500, 600), show_progress=False)
    assert again.fit_report_["n_train"] == 500 and again.fit_report_["n_val"] == 0
    assert float(again.wins.sum() + again.losses.sum()) == pytest.approx(2 * float(data.weight[rows].sum()))


def test_fit_reports_how_far_the_personal_part_moved(planted, caplog):
    """``personal_spread``: users' rewards around the population's, relative to the population's own
    spread; a personal part held at zero by its prior is reported with a warning."""
    data, _ = planted
    options = dict(max_epochs=4, min_steps=0, batch_size=128, show_progress=False)
    moved = make_model("low_rank", hidden_dim=16, item_dim=8, n_components=2).fit(data, **options)
    assert moved.fit_report_["personal_spread"] > 0.05
    with caplog.at_level(logging.WARNING, logger="plural.training.fit"):
        pinned = make_model("low_rank", hidden_dim=16, item_dim=8, n_components=2, user_l2=1e9).fit(data, **options)
    assert pinned.fit_report_["personal_spread"] < 0.01
    assert "did not move" in caplog.text
    assert make_model("bradley_terry", hidden_dim=8).fit(data, **options).fit_report_["personal_spread"] is None
