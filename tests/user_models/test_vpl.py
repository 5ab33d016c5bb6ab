import numpy as np
import pyro
import pytest
import torch

from plural.core.batch import comparison_batch
from plural.training.checkpoint import load_model, save_model
from plural.data.container import PreferenceData
from plural.core.model import UserState, available_models, make_model
from user_models.vpl import VPL, VPLConfig, refine_posterior, sample_context

DIM, N_ITEMS = 8, 200
SMALL = dict(hidden_dim=32, item_dim=16, encoder_hidden=32, n_components=4, learning_rate=3e-3,
             kl_warmup_epochs=2)


def two_types(n_train=40, n_new=8, per_user=60, support=20, query=40, random_state=0):
    """Users of two types that agree on features 0-3 and disagree (opposite signs) on features 4-7.
    Train users make ``per_user`` comparisons; new users make ``support`` comparisons among the first
    half of the items and ``query`` among the second half (item-disjoint support and query).

    Returns the data, the train rows, and per new user ``(type, support rows, query rows)``.
    """
    rng = np.random.default_rng(random_state)
    x = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    shared = np.r_[rng.normal(size=4) * 0.5, np.zeros(4)]
    personal = np.r_[np.zeros(4), rng.normal(size=4) * 1.5]
    users, a, b, labels = [], [], [], []
    new_users, row = [], 0

    def comparisons(u, kind, n, lo, hi):
        w = shared + (1 if kind == 0 else -1) * personal
        ia, ib = rng.integers(lo, hi, n), rng.integers(lo, hi, n)
        ib = np.where(ia == ib, lo + (ib - lo + 1) % (hi - lo), ib)
        p = 1 / (1 + np.exp(-2.0 * (x[ia] - x[ib]) @ w))
        users.extend([u] * n), a.extend(ia), b.extend(ib), labels.extend(rng.random(n) < p)
        return n

    for u in range(n_train):
        row += comparisons(u, u % 2, per_user, 0, N_ITEMS)
    n_train_rows = row
    for j in range(n_new):
        u, kind = n_train + j, j % 2
        s = np.arange(row, row + comparisons(u, kind, support, 0, N_ITEMS // 2))
        row = s[-1] + 1
        q = np.arange(row, row + comparisons(u, kind, query, N_ITEMS // 2, N_ITEMS))
        row = q[-1] + 1
        new_users.append((kind, s, q))
    data = PreferenceData(user_ids=[f"u{i}" for i in range(n_train + n_new)],
                          item_ids=[f"i{i}" for i in range(N_ITEMS)], user=users, item_a=a, item_b=b,
                          label=np.asarray(labels, np.float32), item_features=x, name="two_types")
    return data, np.arange(n_train_rows), new_users


@pytest.fixture(scope="module")
def trained(fast_fit):
    data, train_rows, new_users = two_types()
    model = make_model("vpl", **SMALL).fit(data, train_rows=train_rows, random_state=0,
                                          **dict(fast_fit, max_epochs=10))
    return model, data, new_users


def accuracy(model, data, rows, state):
    batch = comparison_batch(data, rows, model)
    with torch.no_grad():
        margin = model.state_margin(batch, state)
    return float(((margin > 0).float() == batch["label"]).float().mean())


def test_registered_through_entry_points():
    assert "vpl" in available_models()
    assert isinstance(make_model("vpl"), VPL)


@pytest.mark.parametrize("field, value, message", [
    ("beta", -0.5, "beta must be >= 0, got -0.5"),
    ("kl_warmup_epochs", -1, "kl_warmup_epochs must be >= 0"),
    ("free_bits", -0.1, "free_bits must be >= 0"),
    ("context_size", 0, "context_size must be >= 1"),
    ("encoder_hidden", 0, "encoder_hidden must be >= 1"),
    ("encoder_lr_multiplier", 0.0, "encoder_lr_multiplier must be > 0"),
    ("refine_steps", -1, "refine_steps must be >= 0"),
])
def test_config_is_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        VPLConfig(**{field: value})


def test_sample_context_draws_distinct_comparisons_of_each_user():
    torch.manual_seed(0)
    indptr = torch.tensor([0, 3, 103, 110])
    users = torch.tensor([2, 1, 0])
    for max_keys in (1 << 20, 1):
        pos, seg = sample_context(indptr, users, size=8, max_keys=max_keys)
        counts = torch.bincount(seg, minlength=3)
        assert counts.tolist() == [7, 8, 3]
        owner = torch.searchsorted(indptr, pos, right=True) - 1
        assert torch.equal(owner, users[seg])
    pos, seg = sample_context(indptr, users, size=8)
    assert len(torch.unique(pos[seg == 1])) == 8


def test_adapting_a_new_user_beats_the_population(trained):
    model, data, new_users = trained
    gains = []
    for _, support, query in new_users:
        state = model.adapt(comparison_batch(data, support, model))
        assert state.vector.shape == (4,) and state.covariance.shape == (4, 4)
        assert state.n_comparisons == len(support)
        gains.append(accuracy(model, data, query, state) - accuracy(model, data, query, model.adapt(None)))
    assert np.mean(gains) > 0.15, gains
    assert min(gains) > 0, gains


def test_the_two_types_land_apart(trained):
    model, data, new_users = trained
    z = torch.stack([model.adapt(comparison_batch(data, s, model)).vector for _, s, _ in new_users])
    kinds = np.array([k for k, _, _ in new_users])
    direction = z[kinds == 0].mean(0) - z[kinds == 1].mean(0)
    side = (z - z.mean(0)) @ direction
    assert ((side > 0).numpy() == (kinds == 0)).all()


def test_empty_support_is_the_population(trained):
    model, data, _ = trained
    for support in (None, comparison_batch(data, np.arange(0), model)):
        state = model.adapt(support)
        assert torch.equal(state.vector, torch.zeros(4))
        assert torch.equal(state.covariance, torch.eye(4))
        assert state.n_comparisons == 0
    x = torch.from_numpy(data.item_features)
    idx = torch.arange(N_ITEMS)
    with torch.no_grad():
        assert torch.equal(model.reward(x, model.adapt(None), idx), model.reward(x, None, idx))
        assert torch.allclose(model.reward(x, torch.zeros(3, 4), idx)[2], model.reward(x, None, idx))


def test_user_states_and_active_units(trained):
    model, data, _ = trained
    states = model.user_states()
    assert states.shape == (40, 4)
    assert model.active_units() >= 1
    assert model.active_units(threshold=1e9) == 0
    # the types separate along the posterior means of the training users too
    kinds = np.array([int(u[1:]) % 2 for u in model.user_ids_])
    direction = states[kinds == 0].mean(0) - states[kinds == 1].mean(0)
    side = (states - states.mean(0)) @ direction
    assert ((side > 0).numpy() == (kinds == 0)).mean() > 0.9


def test_prior_swap(trained):
    model, data, new_users = trained
    support = comparison_batch(data, new_users[0][1], model)
    plain = model.adapt(support)
    same = model.adapt(support, prior=UserState(torch.zeros(4), torch.eye(4)))
    assert torch.allclose(plain.vector, same.vector, atol=1e-5)
    assert torch.allclose(plain.covariance, same.covariance, atol=1e-5)
    tight = model.adapt(support, prior=UserState(torch.ones(4), 1e-4 * torch.eye(4)))
    assert torch.allclose(tight.vector, torch.ones(4), atol=0.05)


def test_checkpoint_round_trip(trained, tmp_path):
    model, data, _ = trained
    loaded = load_model(save_model(model, tmp_path / "vpl"))
    x = torch.from_numpy(data.item_features)
    idx = torch.arange(N_ITEMS)
    with torch.no_grad():
        assert torch.equal(loaded.reward(x, None, idx), model.reward(x, None, idx))
        assert torch.equal(loaded.reward(x, model.user_states(), idx), model.reward(x, model.user_states(), idx))
    assert torch.equal(loaded.user_states(), model.user_states())
    support = comparison_batch(data, np.arange(10), model)
    assert torch.equal(loaded.adapt(support).vector, model.adapt(support).vector)


def test_rejects_support_of_the_wrong_feature_dimension(trained):
    model, data, _ = trained
    bad = comparison_batch(data, np.arange(5), model)
    bad["features_a"] = torch.zeros(5, DIM + 1)
    bad["features_b"] = torch.zeros(5, DIM + 1)
    with pytest.raises(ValueError, match=r"expects item features of shape \(n, 8\)"):
        model.adapt(bad)


def test_two_models_in_one_process_leave_pyro_param_store_alone(trained):
    model, data, _ = trained
    x = torch.from_numpy(data.item_features)
    store = pyro.get_param_store()
    before = set(store.keys())
    assert not before
    with torch.no_grad():
        reward_before = model.reward(x, model.user_states())
    small, rows, _ = two_types(n_train=10, n_new=2, per_user=20, random_state=1)
    fits = [make_model("vpl", **SMALL).fit(small, train_rows=rows, max_epochs=2, batch_size=64,
                                           random_state=3, show_progress=False) for _ in range(2)]
    assert all(f.fit_report_["epochs"] == 2 for f in fits)
    assert set(store.keys()) == before
    with torch.no_grad():
        assert torch.equal(model.reward(x, model.user_states()), reward_before)
        xs = torch.from_numpy(small.item_features)
        # the same seed gives the same model (deterministic); the two share no parameters
        assert torch.equal(fits[0].reward(xs, fits[0].user_states()), fits[1].reward(xs, fits[1].user_states()))
    assert not {id(p) for p in fits[0].parameters()} & {id(p) for p in fits[1].parameters()}


def test_varied_context_sizes_keep_between_one_and_all():
    import torch

    from user_models.vpl import sample_context

    torch.manual_seed(0)
    indptr = torch.tensor([0, 3, 40, 41])
    users = torch.tensor([0, 1, 2])
    sizes = []
    for _ in range(50):
        pos, seg = sample_context(indptr, users, size=8, vary_size=True)
        counts = torch.bincount(seg, minlength=3)
        assert (counts >= 1).all() and counts[0] <= 3 and counts[1] <= 8 and counts[2] == 1
        for u in range(3):  # positions stay inside each user's own comparisons
            p = pos[seg == u]
            assert ((p >= indptr[u]) & (p < indptr[u + 1])).all() and len(p.unique()) == len(p)
        sizes.append(int(counts[1]))
    assert min(sizes) < 4 and max(sizes) > 6


def test_encoder_reading_features_with_a_faster_encoder(fast_fit, tmp_path):
    data, train_rows, new_users = two_types()
    model = make_model("vpl", **SMALL, encoder_reads_features=True, encoder_lr_multiplier=10.0).fit(
        data, train_rows=train_rows, random_state=0, **dict(fast_fit, max_epochs=10))
    assert model.encoder.feature_map.in_features == DIM
    rates = sorted(group["lr"] for group in model.configure_optimizers().param_groups)
    assert rates == pytest.approx([SMALL["learning_rate"], 10 * SMALL["learning_rate"]])
    gains = [accuracy(model, data, q, model.adapt(comparison_batch(data, s, model)))
             - accuracy(model, data, q, model.adapt(None)) for _, s, q in new_users]
    assert np.mean(gains) > 0.1, gains
    loaded = load_model(save_model(model, tmp_path / "vpl"))
    support = comparison_batch(data, new_users[0][1], model)
    assert torch.equal(loaded.adapt(support).vector, model.adapt(support).vector)


def test_refinement_reaches_each_sets_map_and_its_laplace_spread():
    torch.manual_seed(0)
    k, sizes = 3, (5, 40)
    segment = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))
    jac = torch.randn(len(segment), k, dtype=torch.float64)
    offset = 0.3 * torch.randn(len(segment), dtype=torch.float64)
    label = torch.randint(0, 2, (len(segment),)).double()
    label[0] = 0.5  # a tie: a soft label
    weight = torch.rand(len(segment), dtype=torch.float64) + 0.5
    start = torch.randn(2, k, dtype=torch.float64)
    mean, std = refine_posterior(start, jac, offset, label, weight, segment, steps=25)
    for s in range(2):
        rows = segment == s
        z = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([z], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def loss():
            opt.zero_grad()
            m = offset[rows] + jac[rows] @ z
            value = (weight[rows] * torch.nn.functional.binary_cross_entropy_with_logits(
                m, label[rows], reduction="none")).sum() + 0.5 * z.pow(2).sum()
            value.backward()
            return value

        opt.step(loss)
        assert torch.allclose(mean[s], z.detach(), atol=1e-6)
        p = torch.sigmoid(offset[rows] + jac[rows] @ z.detach())
        hessian = torch.eye(k, dtype=torch.float64) + (jac[rows].T * (weight[rows] * p * (1 - p))) @ jac[rows]
        assert torch.allclose(std[s], torch.linalg.inv(hessian).diagonal().sqrt(), atol=1e-6)
    assert (std[1] < std[0]).all()  # eight times the comparisons: a narrower posterior


def test_refinement_is_differentiable_and_off_leaves_the_encoder_alone(trained):
    model, data, new_users = trained
    support = comparison_batch(data, new_users[0][1], model)
    refined = model.adapt(support)
    model.config.refine_steps = 0
    try:
        raw = model.adapt(support)
    finally:
        model.config.refine_steps = SMALL.get("refine_steps", VPLConfig.refine_steps)
    assert not torch.allclose(raw.vector, refined.vector)
    # gradients reach the personal map through the refined mean
    jac = torch.randn(6, 2, requires_grad=True)
    mean, std = refine_posterior(torch.zeros(1, 2), jac, torch.zeros(6), torch.ones(6), torch.ones(6),
                                 torch.zeros(6, dtype=torch.long), steps=2)
    (mean.sum() + std.sum()).backward()
    assert jac.grad is not None and jac.grad.abs().sum() > 0
