"""Tests for plural.data.bundled: the three real datasets in datasets/ load with the counts that
their README cards state (default cap 500 and seed 0)."""

from pathlib import Path

import numpy as np
import pytest

from plural.data.bundled import DATASETS, datasets_dir, load

# (comparisons, users, items, ties) as printed in datasets/<name>/README.md
COUNTS = {
    "ukpconvarg1": (84445, 3815, 1052, 19105),
    "polis": (731192, 3270, 2063, 0),
    "movielens": (253863, 608, 9742, 0),
}
EXCLUDED = ("vtaiwan.uberx", "austria-climate")


@pytest.fixture(scope="module")
def loaded():
    return {name: load(name) for name in DATASETS}


def _counts(data):
    return (data.n_comparisons, data.n_users, data.n_items, int((data.label == 0.5).sum()))


@pytest.mark.parametrize("name", DATASETS)
def test_loads_with_the_counts_of_its_card(loaded, name):
    data = loaded[name]
    assert data.name == name
    assert _counts(data) == COUNTS[name]
    assert {0.0, 1.0} <= set(np.unique(data.label).tolist())
    assert data.item_text is not None and len(data.item_text) == data.n_items
    assert data.meta["dataset"] == name
    assert data.meta["licence"] and data.meta["source"] and data.meta["attribution"]
    if name != "movielens":  # a debate / a conversation; MovieLens ratings have no context
        assert (data.context >= 0).all() and len(data.context_text) == len(data.context_ids)
    assert len(data.users_present()) == data.n_users


def test_datasets_folder_is_data_not_a_package():
    folder = datasets_dir()
    assert not (folder / "__init__.py").exists()
    for name in DATASETS:
        assert (folder / name / "README.md").is_file() and (folder / name / "prepare.py").is_file()
    assert (folder / "movielens" / "README.txt").is_file()


def test_ukpconvarg1_ties_and_topics(loaded):
    data = loaded["ukpconvarg1"]
    assert len(data.context_ids) == 32
    assert all("stance" in t for t in data.context_text)
    no_ties = load("ukpconvarg1", drop_ties=True)
    assert not (no_ties.label == 0.5).any()
    assert no_ties.meta["dropped_ties"] == COUNTS["ukpconvarg1"][3]
    assert len(no_ties) == len(data) - COUNTS["ukpconvarg1"][3]
    assert "dropped_ties" not in data.meta


def test_polis_is_namespaced_and_english_only(loaded):
    data = loaded["polis"]
    convs = set(data.context_ids.tolist())
    assert len(convs) == 12
    assert not any(c.startswith(x) for c in convs for x in EXCLUDED)
    voter_conv = [u.rsplit("/", 1)[0] for u in data.user_ids]
    item_conv = [i.rsplit("/", 1)[0] for i in data.item_ids]
    assert set(voter_conv) <= convs and set(item_conv) <= convs
    # a comparison's context, voter and both statements belong to one conversation
    ctx = data.context_ids[data.context]
    assert (np.asarray(voter_conv, dtype=object)[data.user] == ctx).all()
    assert (np.asarray(item_conv, dtype=object)[data.item_a] == ctx).all()
    assert (np.asarray(item_conv, dtype=object)[data.item_b] == ctx).all()
    assert np.bincount(data.user).max() <= 500
    assert data.meta["dropped_pass_votes"] > 0 and data.meta["pairs_capped"] > 0


def test_movielens_features(loaded):
    data = loaded["movielens"]
    feats = data.item_features
    assert feats.shape == (data.n_items, 22) and np.isfinite(feats).all()
    names = data.meta["feature_names"]
    assert len(names) == 22 and "genre:(no genres listed)" in names
    genres = feats[:, :20]
    assert set(np.unique(genres).tolist()) == {0.0, 1.0} and (genres.sum(1) >= 1).all()
    toy = int(np.flatnonzero(data.item_ids == "1")[0])
    assert data.item_text[toy].startswith("Toy Story (1995) | ")
    assert feats[toy, names.index("genre:Animation")] == 1.0
    assert np.bincount(data.user).max() <= 500


def test_cap_is_a_parameter():
    data = load("movielens", max_pairs_per_user=50)
    assert np.bincount(data.user).max() == 50


@pytest.mark.parametrize("name", ["polis", "movielens"])
def test_seed_fixes_sampling_and_orientation(loaded, name):
    first, again = loaded[name], load(name, random_state=0)
    for col in ("user", "item_a", "item_b", "label"):
        np.testing.assert_array_equal(getattr(first, col), getattr(again, col))
    other = load(name, random_state=1)
    assert not np.array_equal(first.label, other.label)
    assert len(first) == len(other)  # the cap, not the seed, sets the count


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="ukpconvarg1, polis, movielens"):
        load("imdb")


def test_missing_datasets_dir_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("PLURAL_DATASETS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="PLURAL_DATASETS_DIR"):
        load("polis")


# ---------------------------------------------------------------------------- after a plain pip install
@pytest.fixture
def installed_without_data(monkeypatch, tmp_path):
    """The lookup as after ``pip install plural``: no $PLURAL_DATASETS_DIR, and no checkout's
    datasets/ folder next to the package (site-packages/datasets is empty, or Hugging Face's)."""
    import plural.data.bundled as bundled

    monkeypatch.delenv("PLURAL_DATASETS_DIR", raising=False)
    empty = tmp_path / "site-packages" / "datasets"
    empty.mkdir(parents=True)
    monkeypatch.setattr(bundled, "CHECKOUT_DATASETS", empty)
    return empty


def test_without_the_data_load_says_where_to_get_it(installed_without_data):
    with pytest.raises(FileNotFoundError) as err:
        load("polis")
    message = str(err.value)
    assert "not part of the installed package" in message and "clone" in message
    assert "PLURAL_DATASETS_DIR" in message and str(installed_without_data) in message


def test_a_datasets_package_in_site_packages_is_not_the_data(installed_without_data):
    (installed_without_data / "__init__.py").write_text("")  # Hugging Face's `datasets`
    (installed_without_data / "polis").mkdir()
    (installed_without_data / "polis" / "README.md").write_text("")
    with pytest.raises(FileNotFoundError, match="clone"):
        load("polis")


def test_the_env_var_finds_a_copy_of_the_data(installed_without_data, monkeypatch, tmp_path):
    import plural.data.bundled as bundled

    real = Path(bundled.__file__).resolve().parents[2] / "datasets"
    monkeypatch.setenv("PLURAL_DATASETS_DIR", str(real))
    assert datasets_dir() == real
    assert load("ukpconvarg1").n_comparisons == COUNTS["ukpconvarg1"][0]
    monkeypatch.setenv("PLURAL_DATASETS_DIR", str(tmp_path))  # a folder, but not the data
    with pytest.raises(FileNotFoundError, match="is not plural's datasets folder"):
        load("polis")
