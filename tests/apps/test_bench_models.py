"""The bench's default models come from the registry, and what it records beside accuracy comes from
each model's ``diagnostics()``."""

from apps.bench import BenchConfig, load_bench_dataset, run_dataset
from plural.core.model import available_models, model_class

TODAYS_ORDER = ("bradley_terry", "item_winrate", "per_user_logistic", "anchored_logistic", "low_rank",
                "ideal_point", "em_mixture", "vpl")


def test_default_models_are_every_model_in_listing_order():
    models = BenchConfig().models
    assert models == tuple(available_models(ordered=True))
    assert sorted(models) == available_models()
    assert models[:len(TODAYS_ORDER)] == TODAYS_ORDER  # the results JSON is compared key by key
    orders = [model_class(name).listing_order for name in models]
    assert orders == sorted(orders)


def test_run_dataset_records_the_models_diagnostics(monkeypatch):
    cls = model_class("bradley_terry")
    monkeypatch.setattr(cls, "diagnostics", lambda self: {"made_up_rate": 0.25})
    data = load_bench_dataset("synthetic_mixture", quick=True)
    config = BenchConfig(models=("bradley_terry",), ks=(0, 2), n_draws=1, max_epochs=1, max_unseen_users=4,
                         random_split=False, retrieval=False)
    entry = run_dataset(data, config, 0)["models"]["bradley_terry"]
    assert entry["made_up_rate"] == 0.25
