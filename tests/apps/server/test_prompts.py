"""The HTTP service over a prompt-aware run (``train_run(..., prompts=True)`` on TRL rows): a real
server on a loopback port serves the run's responses-in-context catalog, scores texts under a
request's prompt, embeds a text comparison under its context's prompt; a prompt-blind run ignores
a prompt."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

PROMPTS = ["Write about pets.", "Explain the night sky."]
RESPONSES = ["Cats purr and sleep a lot.", "Dogs love long walks.", "Stars are distant suns.",
             "The moon reflects sunlight.", "Soup warms you in winter."]
SEP = "\x1f"


def write_trl(path: Path) -> Path:
    """TRL rows of 6 users under two prompts over five responses (a response on the prompt's topic wins)."""
    rng = random.Random(0)
    on_topic = {0: {0, 1}, 1: {2, 3}}
    rows = []
    for u in range(6):
        for _ in range(12):
            p = rng.randrange(2)
            a, b = rng.sample(range(len(RESPONSES)), 2)
            if b in on_topic[p] and a not in on_topic[p]:
                a, b = b, a
            rows.append({"user_id": f"u{u}", "prompt": PROMPTS[p], "chosen": RESPONSES[a],
                         "rejected": RESPONSES[b]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory, cache_dir) -> Path:
    from plural.data.encoders import TextEncoder
    from plural.training.runs import train_run

    folder = tmp_path_factory.mktemp("prompt_data")
    rows = write_trl(folder / "rows.jsonl")
    out = folder / "run"
    train_run(str(rows), "low_rank", out, max_epochs=3, batch_size=64, show_progress=False, prompts=True,
              model_options=dict(n_components=2, hidden_dim=16, item_dim=8), read_options={"kind": "trl"},
              encoder=TextEncoder(cache_dir=cache_dir))
    return out


@pytest.fixture(scope="module")
def server(prompt_run, serve_run):
    return serve_run(prompt_run)


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def contexts(prompt_run) -> dict[str, str]:
    """Prompt text -> context id, as the run's dataset has them."""
    from plural.training.runs import load_dataset

    record = json.loads((prompt_run / "run.json").read_text())
    raw = load_dataset(record["dataset_path"], **record["read_options"])
    return {str(t): str(c) for c, t in zip(raw.context_ids, raw.context_text)}


def score_text(http, text, prompt=None, user_id=None) -> float:
    body = {"user_id": user_id, "texts": [text]}
    if prompt is not None:
        body["prompt"] = prompt
    r = http.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    return r.json()["scores"][0]["score"]


def test_a_prompt_aware_run_starts_with_its_responses_in_context(http, prompt_run, contexts):
    ready = http.get("/v1/ready")
    assert ready.status_code == 200 and ready.json()["ready"], ready.text
    info = http.get("/v1/info").json()
    assert info["prompt_aware"] and info["texts_supported"] and info["has_user_vectors"]
    items = http.get("/v1/items", params={"limit": 1000}).json()
    assert items["total"] == info["n_items"] > len(RESPONSES)  # a response under each prompt it was judged under
    for item in items["items"]:
        context, _, response = item["item_id"].partition(SEP)
        assert context in contexts.values() and response and item["text"] in RESPONSES
    schema = http.get("/openapi.json").json()["components"]["schemas"]
    assert "prompt" in schema["ScoreIn"]["properties"] and "prompt" in schema["BatchScoreIn"]["properties"]
    assert "prompt-aware" in schema["ScoreIn"]["properties"]["prompt"]["description"]


def test_a_text_scores_differently_under_two_prompts(http, prompt_run, cache_dir):
    text = "A kitten naps in the sun."
    first, second = score_text(http, text, PROMPTS[0]), score_text(http, text, PROMPTS[1])
    bare = score_text(http, text)  # no prompt: the zero prompt block
    assert np.isfinite([first, second, bare]).all()
    assert first != pytest.approx(second, abs=1e-6) and bare not in (first, second)
    assert score_text(http, text, PROMPTS[0]) == pytest.approx(first)  # deterministic

    # the scores are the model's own for the texts embedded in context
    import plural
    from plural.data.encoders import encoder_from_spec
    from plural.data.prompts import encode_in_context

    model = plural.load_model(prompt_run)
    spec = model.encoder_spec_
    features = encode_in_context(spec, [text] * 3, [PROMPTS[0], PROMPTS[1], None],
                                 encoder_from_spec(spec, cache_dir=cache_dir))
    expected = plural.score_items(model, features, user=None)
    assert [first, second, bare] == pytest.approx(np.asarray(expected, np.float64).tolist(), abs=1e-5)


def test_user_and_batch_scores_under_a_prompt(http):
    user = "u0"
    text = "Comets have long tails."
    under = [score_text(http, text, p, user_id=user) for p in PROMPTS]
    assert under[0] != pytest.approx(under[1], abs=1e-6)
    r = http.post("/v1/batch/score", json={"user_ids": [user, None], "texts": [text], "prompt": PROMPTS[1]})
    assert r.status_code == 200, r.text
    got = [res["scores"][0]["score"] for res in r.json()["results"]]
    assert got == pytest.approx([under[1], score_text(http, text, PROMPTS[1])])


def test_bad_prompts_are_refused(http):
    r = http.post("/v1/score", json={"texts": ["hello"], "prompt": "x" * 2001})
    assert r.status_code == 422 and "2000" in json.dumps(r.json()["detail"])
    r = http.post("/v1/batch/score", json={"user_ids": [None], "texts": ["hello"], "prompt": "x" * 2001})
    assert r.status_code == 422
    for prompt in ("", "a\x00b"):
        assert http.post("/v1/score", json={"texts": ["hello"], "prompt": prompt}).status_code == 422
    items = http.get("/v1/items").json()["items"]
    r = http.post("/v1/score", json={"item_ids": [items[0]["item_id"]], "prompt": PROMPTS[0]})
    assert r.status_code == 422 and "give texts" in r.json()["detail"]


def test_catalog_ids_round_trip_through_recommend_score_rank(http):
    for user in (None, "u1"):
        r = http.post("/v1/recommend", json={"user_id": user, "n": 3, "exclude_judged": False})
        assert r.status_code == 200, r.text
        recommended = r.json()["items"]
        assert len(recommended) == 3 and all(SEP in i["item_id"] and i["text"] in RESPONSES for i in recommended)
        ids = [i["item_id"] for i in recommended]
        scores = http.post("/v1/score", json={"user_id": user, "item_ids": ids}).json()["scores"]
        assert [s["score"] for s in scores] == pytest.approx([i["score"] for i in recommended], abs=1e-5)
        ranked = http.post("/v1/rank", json={"user_id": user, "candidates": ids[::-1]}).json()["ranked"]
        assert [s["item_id"] for s in ranked] == ids
    r = http.post("/v1/recommend", json={"user_id": "u1", "n": 100})  # judged items left out
    assert r.status_code == 200 and len(r.json()["items"]) < http.get("/v1/info").json()["n_items"]
    for bad in ("a" + SEP + "b" + SEP + "c", SEP + "b", "a" + SEP, "x" * 129 + SEP + "b"):
        assert http.post("/v1/score", json={"item_ids": [bad]}).status_code == 422, bad
    assert http.post("/v1/score", json={"item_ids": ["nope" + SEP + "nope"]}).status_code == 422  # unknown


def test_text_comparisons_are_judged_under_their_contexts_prompt(http, contexts):
    items = http.get("/v1/items", params={"limit": 1000}).json()["items"]
    a, b = items[0]["item_id"], items[1]["item_id"]
    r = http.post("/v1/users", json={"user_id": "items-only", "comparisons": [
        {"item_a": a, "item_b": b, "label": 1, "context": a.partition(SEP)[0]}]})
    assert r.status_code == 201, r.text
    assert http.post("/v1/recommend", json={"user_id": "items-only", "n": 2}).status_code == 200

    texts = [{"text_a": "Parrots can talk.", "text_b": "Mars looks red.", "label": 1},
             {"text_a": "Goldfish need clean water.", "text_b": "Saturn has rings.", "label": 1}]
    vectors = {}
    for name, context in (("sky", contexts[PROMPTS[1]]), ("pets", contexts[PROMPTS[0]]), ("none", None),
                          ("unknown", "not-a-context")):
        comparisons = [{**c, "context": context} if context else c for c in texts]
        r = http.post("/v1/users", json={"user_id": f"texts-{name}", "comparisons": comparisons})
        assert r.status_code == 201, r.text
        vectors[name] = r.json()["state"]["vector"]
        assert http.get(f"/v1/users/texts-{name}").json()["n_logged"] == 2
    assert vectors["sky"] != pytest.approx(vectors["pets"], abs=1e-7)
    assert vectors["sky"] != pytest.approx(vectors["none"], abs=1e-7)
    assert vectors["unknown"] == pytest.approx(vectors["none"], abs=1e-6)  # no context text: no prompt
    assert np.isfinite(vectors["sky"]).all()


def test_a_prompt_blind_run_ignores_the_prompt(start_server):
    server = start_server()
    with server.client() as http:
        assert http.get("/v1/info").json()["prompt_aware"] is False
        text = "a short note about dogs, number 1"
        plain = score_text(http, text)
        assert score_text(http, text, PROMPTS[0]) == pytest.approx(plain)
        assert score_text(http, text, PROMPTS[1]) == pytest.approx(plain)
        r = http.post("/v1/batch/score", json={"user_ids": [None], "texts": [text], "prompt": PROMPTS[0]})
        assert r.status_code == 200 and r.json()["results"][0]["scores"][0]["score"] == pytest.approx(plain)
