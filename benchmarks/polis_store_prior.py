"""Why the store prior ties plain ``adapt`` on Polis: what the stored users' vectors hold.

    python benchmarks/polis_store_prior.py [--seeds 0,1,2] [--users 100] [--out runs/polis_store_prior.json]

For each seed it trains ``low_rank`` on the bench's Polis split (``plural bench`` defaults: 20 epochs
at most, batch 512) and builds its user store, then:

1. **Shape of the stored vectors.** Centred per conversation (each user's, from the store's
   ``contexts`` metadata), the vectors get Gaussian mixtures of 1 and 2 components
   fitted on 80% of the users and scored on the rest (held-out log-likelihood per user), and each
   component of the 2-component fit is described by its share of users, the trace of its covariance
   and the median number of training comparisons of its users (the store's ``n_comparisons``).
2. **Other store priors.** The bench's unseen-user episodes (item-disjoint, 3 draws) are scored with
   plain ``adapt`` and with ``personalize`` over: the whole store (``by_context=False``, the bench's
   ``+store`` before contexts); only the stored users with at least ``--min-comparisons`` training
   comparisons (likewise); and ``personalize``'s default, which keeps the new user among the stored
   users of their own conversation, recentred on the population mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.mixture import GaussianMixture

from plural.query.personalize import build_user_store, personalize
from apps.bench import load_bench_dataset
from plural.data.splits import DEFAULT_SHOTS, make_episodes
from plural.evaluation.protocol import protocol_split
from plural.evaluation.fewshot import few_shot_curve
from plural.core.model import make_model
from plural.query.store import UserStore

MODEL = "low_rank"


def require_conversations(data) -> None:
    if data.context_ids is None or (data.context < 0).any():
        raise ValueError(f"{data.name}: every comparison needs a conversation (context)")


def conversation_of_users(ids: list[str], metadata: list[dict]) -> np.ndarray:
    """Each stored user's conversation, from their store metadata's ``contexts``: a Polis voter
    (namespaced by conversation) has comparisons in exactly one."""
    for u, meta in zip(ids, metadata):
        if len(meta.get("contexts", [])) != 1:
            raise ValueError(f"user {u!r} has comparisons in {len(meta.get('contexts', []))} conversations, not one")
    return np.array([meta["contexts"][0] for meta in metadata], dtype=object)


def centred(vectors: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``vectors`` less the mean of their group."""
    out = vectors.astype(np.float64).copy()
    for g in np.unique(groups):
        out[groups == g] -= out[groups == g].mean(0)
    return out


def mixture_shape(vectors: np.ndarray, n_comparisons: np.ndarray, seed: int) -> dict:
    """Held-out log-likelihood per user of 1- and 2-component Gaussian mixtures, and the
    2-component fit's components (share of users, covariance trace, median comparisons)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(vectors))
    fit, held = order[: len(order) * 4 // 5], order[len(order) * 4 // 5:]
    out: dict = {"n_users": int(len(vectors))}
    for k in (1, 2):
        gm = GaussianMixture(k, covariance_type="full", n_init=3, reg_covar=1e-4, random_state=seed)
        out[f"heldout_loglik_{k}"] = float(gm.fit(vectors[fit]).score(vectors[held]))
    gm = GaussianMixture(2, covariance_type="full", n_init=3, reg_covar=1e-4, random_state=seed).fit(vectors)
    label = gm.predict(vectors)
    out["components"] = sorted(({"share": float(np.mean(label == j)),
                                 "cov_trace": float(np.trace(gm.covariances_[j])),
                                 "median_comparisons": float(np.median(n_comparisons[label == j]))}
                                for j in range(2) if (label == j).any()), key=lambda c: c["cov_trace"])
    return out


def sub_store(ids: list[str], vectors: np.ndarray) -> UserStore:
    store = UserStore(vectors.shape[1], metric="ip", index="flat")
    store.add(ids, vectors.astype(np.float32))
    return store


def run(data, seed: int = 0, n_users: int = 100, min_comparisons: int = 30, ks=DEFAULT_SHOTS,
        max_epochs: int = 20, model_options: dict | None = None) -> dict:
    """The shape of the stored vectors and the few-shot curves of each prior, for one seed."""
    require_conversations(data)
    protocol = protocol_split(data, seed, max_unseen_users=n_users)  # the users plural bench scores
    split, scored = protocol.split, protocol.scored
    episodes = make_episodes(data, scored, mode="items", n_draws=3, random_state=seed)
    model = make_model(MODEL, **(model_options or {}))
    model.fit(data, train_rows=split.train, val_rows=split.val, max_epochs=max_epochs, batch_size=512,
              random_state=seed, show_progress=False)
    store = build_user_store(model)
    ids = list(model.user_ids_)
    metadata = [store.metadata(u) for u in ids]
    conversation = conversation_of_users(ids, metadata)
    vectors = store.get(ids).astype(np.float64)
    counts = np.array([meta["n_comparisons"] for meta in metadata])
    out = {"seed": seed, "n_scored": int(len(scored)),
           "shape": mixture_shape(centred(vectors, conversation), counts, seed)}
    keep = np.flatnonzero(counts >= min_comparisons)
    priors = {"whole store": (store, False),
              f">= {min_comparisons} comparisons": (sub_store([ids[i] for i in keep], vectors[keep]), False),
              "own conversation, centred": (store, True)}  # personalize's default
    curves = {"adapt": few_shot_curve(model, data, episodes, ks)}
    for name, (s, by_context) in priors.items():
        curves[name] = few_shot_curve(model, data, episodes, ks, adapt_fn=lambda m, support, s=s, b=by_context:
                                      personalize(m, s, support, by_context=b))
    out["curves"] = {name: {int(r["k"]): {"accuracy": r["accuracy"], "gain_vs_k0": r["gain_vs_k0"]}
                            for r in c["curve"]} for name, c in curves.items()}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="polis")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--min-comparisons", type=int, default=30)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/polis_store_prior.json")
    args = parser.parse_args(argv)
    data = load_bench_dataset(args.data)
    runs = [run(data, int(s), args.users, args.min_comparisons, max_epochs=args.max_epochs)
            for s in args.seeds.split(",")]
    names = list(runs[0]["curves"])
    ks = sorted(runs[0]["curves"]["adapt"])
    mean = {n: {k: float(np.mean([r["curves"][n][k]["gain_vs_k0"] for r in runs if k in r["curves"][n]]))
                for k in ks} for n in names}
    result = {"runs": runs, "mean_gain_vs_k0": mean}
    print(f"{args.data}, {MODEL}, seeds {args.seeds}: stored vectors centred per conversation")
    for r in runs:
        s = r["shape"]
        parts = ", ".join(f"{100 * c['share']:.0f}% of users with covariance trace {c['cov_trace']:.2f} "
                          f"and median {c['median_comparisons']:.0f} training comparisons" for c in s["components"])
        print(f"  seed {r['seed']}: held-out log-likelihood per user {s['heldout_loglik_1']:.2f} (1 Gaussian), "
              f"{s['heldout_loglik_2']:.2f} (2); the 2 components: {parts}")
    print("mean paired gain over k=0 (points):")
    print("| prior | " + " | ".join(f"k={k}" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for n in names:
        print(f"| {n} | " + " | ".join(f"{100 * mean[n][k]:+.1f}" for k in ks) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
