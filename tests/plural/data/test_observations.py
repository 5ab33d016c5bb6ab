import numpy as np
import pandas as pd
import pytest

from plural.data.converters import from_ratings, from_votes
from plural.data.observations import following, levels_of, threshold_rows
from plural.data.splits import make_episodes


def _votes():
    # ann agrees with a, b and disagrees with c; bob passes on a, agrees with c, disagrees with b;
    # cid agrees with everything (no pair) and votes on a twice (the last vote counts)
    return pd.DataFrame({
        "user_id": ["ann", "ann", "ann", "bob", "bob", "bob", "cid", "cid", "cid"],
        "item_id": ["a", "b", "c", "a", "b", "c", "a", "b", "a"],
        "vote": [1, 1, -1, 0, -1, 1, -1, 1, 1]})


def test_from_votes_keeps_every_cast_vote_of_the_voters_with_comparisons_as_an_observation():
    data = from_votes(_votes(), max_pairs_per_user=None)
    obs = data.observations
    assert obs.n_levels == 2 and obs.level_names == ("disagree", "agree")
    got = sorted((data.user_ids[u], data.item_ids[i], int(lv)) for u, i, lv in zip(obs.user, obs.item, obs.level))
    assert got == [("ann", "a", 1), ("ann", "b", 1), ("ann", "c", 0), ("bob", "b", 0), ("bob", "c", 1)]
    assert data.meta["observations_without_comparisons"] == 2  # cid's two votes: cid has no pair
    assert from_votes(_votes(), observations=False).observations is None


def test_from_votes_gives_each_observation_its_voters_group_as_context():
    df = _votes().assign(conversation=["x"] * 3 + ["y"] * 6)
    data = from_votes(df, group="conversation", max_pairs_per_user=None)
    obs = data.observations
    users = data.user_ids[obs.user]
    assert [data.context_ids[c] for c in obs.context] == [u.split("/")[0] for u in users]


def test_from_ratings_puts_ratings_on_their_scale_and_refuses_one_off_it():
    df = pd.DataFrame({"user_id": ["u"] * 3 + ["v"] * 2, "item_id": ["a", "b", "c", "a", "b"],
                       "rating": [1.0, 2.5, 5.0, 4.0, 1.0]})
    data = from_ratings(df, max_pairs_per_user=None)
    obs = data.observations
    assert obs.level_names == ("1", "2.5", "4", "5")
    got = {(data.user_ids[u], data.item_ids[i]): int(lv) for u, i, lv in zip(obs.user, obs.item, obs.level)}
    assert got == {("u", "a"): 0, ("u", "b"): 1, ("u", "c"): 3, ("v", "a"): 2, ("v", "b"): 0}
    data = from_ratings(df, max_pairs_per_user=None, scale=[1, 2, 2.5, 3, 4, 5])
    assert data.observations.n_levels == 6 and data.observations.level[0] == 0
    with pytest.raises(ValueError, match="not on the scale"):
        from_ratings(df, scale=[1, 2, 3, 4, 5])


def test_threshold_rows_compare_each_observation_with_the_thresholds_around_its_level():
    source, threshold, label = threshold_rows(np.array([0, 1]), 2)  # a two-level scale: one row each
    assert source.tolist() == [0, 1] and threshold.tolist() == [0, 0] and label.tolist() == [0, 1]
    source, threshold, label = threshold_rows(np.array([3, 0, 2]), 4)
    assert list(zip(source, threshold, label)) == [(0, 2, 1), (1, 0, 0), (2, 1, 1), (2, 2, 0)]
    with pytest.raises(ValueError, match="at least two"):
        levels_of([3, 3])


def test_observations_follow_the_comparisons_of_their_user_and_item():
    data = from_votes(_votes(), max_pairs_per_user=None)
    obs = data.observations
    for row in range(len(data)):
        mine = following(data, [row])
        assert set(zip(obs.user[mine], obs.item[mine])) == {
            (data.user[row], data.item_a[row]), (data.user[row], data.item_b[row])}
    assert len(following(data)) == len(obs)


def test_an_item_disjoint_support_and_query_share_no_observation():
    rng = np.random.default_rng(0)
    users = np.repeat([f"u{i}" for i in range(6)], 30)
    items = np.tile([f"s{j}" for j in range(30)], 6)
    data = from_votes(pd.DataFrame({"user_id": users, "item_id": items, "vote": rng.choice([-1, 1], 180)}),
                      max_pairs_per_user=None)
    episodes = make_episodes(data, np.arange(data.n_users), n_draws=2, random_state=0)
    assert episodes
    for ep in episodes:
        support, query = following(data, ep.support_pool), following(data, ep.query)
        assert len(support) and len(query) and not set(support) & set(query)


def test_the_container_refuses_bad_observations_naming_the_row():
    data = from_votes(_votes(), max_pairs_per_user=None)
    with pytest.raises(ValueError, match="unknown item id 'zz'"):
        data.with_observations(["ann"], ["zz"], [1], 2)
    with pytest.raises(ValueError, match="observation 1: level index 2 outside 0..1"):
        data.with_observations(["ann", "bob"], ["a", "a"], [1, 2], 2)
    with pytest.raises(ValueError, match="observation 1: user .* more than one observation"):
        data.with_observations(["ann", "ann"], ["a", "a"], [1, 0], 2)
    with pytest.raises(ValueError, match="n_levels must be an integer >= 2"):
        data.with_observations(["ann"], ["a"], [0], 1)
    kept = data.subset([0])
    assert kept.observations is data.observations  # a subset shares them; following picks its own
    assert "observations=5" in repr(data) and "observations" not in repr(from_votes(_votes(), observations=False))


def test_prompt_aware_items_keep_each_observation_on_its_prompt_and_response():
    import dataclasses

    from plural.data.prompts import with_prompts

    df = _votes().assign(conversation=["x"] * 3 + ["y"] * 6)
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "text": ["apples", "bananas", "cherries"]})
    data = from_votes(df, group="conversation", max_pairs_per_user=None, item_table=items)
    data = dataclasses.replace(data, context_text=np.array(["about x", "about y"], dtype=object))
    aware = with_prompts(data)
    obs, before = aware.observations, data.observations
    assert len(obs) == len(before)
    got = sorted((aware.user_ids[u], aware.item_ids[i], int(lv)) for u, i, lv in zip(obs.user, obs.item, obs.level))
    want = sorted((data.user_ids[u], f"{data.context_ids[c]}\x1f{data.item_ids[i]}", int(lv))
                  for u, i, c, lv in zip(before.user, before.item, before.context, before.level))
    assert got == want
    assert len(following(aware)) == len(obs)
