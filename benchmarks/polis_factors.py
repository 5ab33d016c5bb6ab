"""Where ``low_rank`` lost to the vote-matrix reference on Polis: its item factors or its adaptation?

    python benchmarks/polis_factors.py [--seed 1] [--users 100] [--out runs/polis_factors.json]

On one seed's bench episodes (item-disjoint, the users ``plural bench`` scores), each new user is
fitted by:

- ``ridge``: the reference's ridge fit of the support's votes (``benchmarks/polis_headroom.py``),
  on the reference's statement factors over its shrunk vote means, or on a model's factors
  (``B^T phi(x)``, whitened by the model's population prior so that one penalty suits both) over
  its population score (``tanh(r(x) / 2)``);
- ``adapt``: the model's own ``adapt`` (Newton under its empirical prior).

The models: ``low_rank`` trained from random weights (``spectral_start=False``, as before December
2026), from its spectral start (the default: ``plural.core.spectral``), and the spectral start
untrained. If the reference's factors carry the gain under the ridge and a model's do not, that
model's factors are what loses. Prints accuracy % and paired gain over k=0 at k = 0, 10, 50.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from polis_headroom import episode_accuracy, fit_factors  # noqa: E402  (a sibling script)

from apps.bench import BenchConfig, load_bench_dataset  # noqa: E402
from plural.core.model import make_model  # noqa: E402
from plural.data.splits import make_episodes  # noqa: E402
from plural.evaluation.fewshot import few_shot_curve  # noqa: E402
from plural.evaluation.protocol import protocol_split  # noqa: E402

KS = (0, 10, 50)
RANK = 8
LAMS = (0.3, 1.0, 3.0)


def ridge_curve(data, episodes, mean, factors, lam: float) -> dict:
    """``{k: (accuracy, paired gain)}`` of the reference's ridge fit on ``factors`` over ``mean``."""
    per_k = {k: {(e.user, e.draw): episode_accuracy(data, mean, factors, e, k, factors.shape[1], lam)
                 for e in episodes if k <= len(e.support_pool)} for k in KS}
    return _paired(per_k)


def _paired(per_k: dict) -> dict:
    out = {}
    for k in KS:
        users: dict[int, list[tuple[float, float]]] = {}
        for key, a in per_k[k].items():
            users.setdefault(key[0], []).append((a, a - per_k[0][key]))
        if users:
            out[k] = (float(np.mean([np.mean([a for a, _ in v]) for v in users.values()])),
                      float(np.mean([np.mean([g for _, g in v]) for v in users.values()])))
    return out


def model_curve(model, data, episodes) -> dict:
    curve = few_shot_curve(model, data, episodes, KS)["curve"]
    return {r["k"]: (r["accuracy"], r.get("gain_vs_k0", 0.0)) for r in curve}


def model_factors(model, data) -> tuple[np.ndarray, np.ndarray]:
    """``(the population's expected vote on the -1 .. 1 scale (n_items,), whitened factors (n_items,
    K))`` of a ``low_rank`` for every item of ``data``. The expected vote is the model's own: with
    cut points ``t_1 < .. < t_m`` between ``m + 1`` evenly spaced levels, ``-1 + (2 / m) * sum_j
    P(score above t_j)``, each cut point scored at the population as the model scores it (its
    threshold embedding and bias)."""
    items = model.items
    with torch.no_grad():
        phi, bias = items(torch.from_numpy(data.item_features), model.item_index(list(data.item_ids)))
        score = (phi @ model.population_weight + bias).double().numpy()
        factors = (phi @ model.basis).double().numpy()
        cuts = np.zeros(1)
        if items.n_thresholds:
            cuts = (items.threshold_embedding @ model.population_weight + items.threshold_biases()).double().numpy()
    root = np.linalg.cholesky(model.prior()[1].numpy())  # u = root z with z ~ N(0, I)
    above = 1.0 / (1.0 + np.exp(-(score[:, None] - cuts[None, :])))
    return -1.0 + 2.0 * above.mean(axis=1), factors @ root


def run(data, seed: int, n_users: int, max_epochs: int | None = None, model_options: dict | None = None) -> dict:
    """``{"rows": {row name: {k: (accuracy, paired gain)}}, "fits": {model: fit facts}}`` on
    ``data``'s bench episodes for ``seed``."""
    if data.context is None or (data.context < 0).any() or data.observations is None:
        raise ValueError("needs every comparison's conversation as its context, and the votes as observations")
    config = BenchConfig()
    protocol = protocol_split(data, seed, max_unseen_users=n_users)
    train = protocol.split.train
    episodes = make_episodes(data, protocol.scored, mode="items", n_draws=config.n_draws, random_state=seed)
    ref_mean, ref_factors = fit_factors(data, train, RANK)
    rows = {f"ridge, reference factors, lam={lam}": ridge_curve(data, episodes, ref_mean, ref_factors, lam)
            for lam in LAMS}
    fits = {}
    for name, start in (("random start", False), ("spectral start", True)):
        model = make_model("low_rank", **{**(model_options or {}), "spectral_start": start})
        model.fit(data, train_rows=train, val_rows=protocol.split.val,
                  max_epochs=config.max_epochs if max_epochs is None else max_epochs,
                  batch_size=config.batch_size, random_state=seed, show_progress=False)
        fits[name] = {key: model.fit_report_[key] for key in ("best_epoch", "epochs", "start")}
        own_mean, own_factors = model_factors(model, data)
        for lam in LAMS:
            rows[f"ridge, {name} factors, lam={lam}"] = ridge_curve(data, episodes, own_mean, own_factors, lam)
        rows[f"adapt, {name}"] = model_curve(model, data, episodes)
    untrained = make_model("low_rank", **(model_options or {})).build_for(data, train)
    untrained.initialize_from(data, train, seed)
    untrained.eval()
    fits["spectral start, untrained"] = {"start": untrained.start_}
    for lam in LAMS:
        rows[f"ridge, untrained spectral start factors, lam={lam}"] = ridge_curve(
            data, episodes, *model_factors(untrained, data), lam)
    rows["adapt, untrained spectral start"] = model_curve(untrained, data, episodes)
    return {"rows": rows, "fits": fits}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--data", default="polis", help="a bundled dataset whose contexts are conversations")
    parser.add_argument("--out", default="runs/polis_factors.json")
    args = parser.parse_args(argv)
    out = run(load_bench_dataset(args.data), args.seed, args.users)
    print(f"{args.data}, seed {args.seed}; accuracy % (paired gain over k=0); fits {out['fits']}")
    for name, curve in out["rows"].items():
        print(f"{name:52s} " + " ".join(f"k={k}: {100 * a:5.1f} ({100 * g:+.1f})" for k, (a, g) in curve.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"seed": args.seed, **out}, indent=2))
    return out


if __name__ == "__main__":
    main()
