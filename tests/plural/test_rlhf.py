"""plural.rlhf: a personalized TRL reward function, best-of-N, and one real GRPO step on CPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import plural
from plural.data.encoders import TextEncoder
from plural.data.prompts import with_prompts
from plural.rlhf import RewardFunction, best_of_n, best_of_n_batch, message_text

CATS = ["I love my cat, she purrs all day.", "Cats are the best companions.", "A kitten is a great pet for you.",
        "My cat sleeps on the sofa.", "Get a cat: cats are quiet and clean.", "The cat chased a ball of yarn."]
DOGS = ["I love my dog, he barks at the mailman.", "Dogs are the best companions.", "A puppy is a great pet for you.",
        "My dog sleeps on the porch.", "Get a dog: dogs are loyal and playful.", "The dog fetched the stick."]
PROMPTS = ["Which pet should I get?", "Tell me about your pet.", "What animal makes a good friend?"]
CAT, DOG = "My cat is fluffy and sweet.", "My dog is big and friendly."  # texts no one compared


def _rows():
    """Six users who prefer answers about cats (cat0..cat5), six who prefer dogs (dog0..dog5)."""
    rng = np.random.default_rng(0)
    rows = []
    for name, good, bad in (("cat", CATS, DOGS), ("dog", DOGS, CATS)):
        for u in range(6):
            for k in range(12):
                rows.append({"user_id": f"{name}{u}", "prompt": PROMPTS[k % 3],
                             "chosen": good[rng.integers(6)], "rejected": bad[rng.integers(6)]})
    return rows


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return TextEncoder(cache_dir=tmp_path_factory.mktemp("rlhf_cache"))


@pytest.fixture(scope="module")
def model(encoder):
    """A low-rank model of the two kinds of users (prompt-blind: it scores responses alone)."""
    data = plural.from_trl(_rows())
    model = plural.make_model("low_rank", hidden_dim=32, n_components=2, item_dim=8, learning_rate=1e-2)
    return plural.fit(model, data, encoder=encoder, max_epochs=40, batch_size=32, show_progress=False)


@pytest.fixture(scope="module")
def store(model):
    return plural.build_user_store(model)


def _margin(reward, user):
    cat, dog = reward(["Any pets?"] * 2, [CAT, DOG], user_id=[user, user])
    return cat - dog


def test_users_are_routed_to_their_own_rewards(model, store, caplog):
    reward = RewardFunction(model, store)
    assert reward.__name__ == "plural_reward" and callable(reward)
    assert reward.route("cat0")[0] == "store" and RewardFunction(model).route("cat0")[0] == "training"
    cat, dog, population = _margin(reward, "cat0"), _margin(reward, "dog0"), _margin(reward, None)
    assert cat > 0 > dog and dog < population < cat
    # the store's vector is what a training user gets through the store: the same rewards either way
    np.testing.assert_allclose(_margin(RewardFunction(model), "cat0"), cat, rtol=1e-5)
    # one call mixes users; each sample gets its own user's reward
    mixed = reward(None, [CAT, CAT, CAT], user_id=["cat1", "dog1", None])
    by_annotator = RewardFunction(model, store, user_column="annotator", name="by_annotator")
    assert by_annotator(None, [CAT, CAT, CAT], annotator=["cat1", "dog1", None]) == mixed
    # comparisons pin down differences of reward, not a user's level: compare each user's CAT - DOG
    on_dog = reward(None, [DOG, DOG, DOG], user_id=["cat1", "dog1", None])
    margin = [c - d for c, d in zip(mixed, on_dog)]
    assert margin[0] > margin[1] and all(isinstance(v, float) for v in mixed)
    assert mixed == [reward(None, [CAT], user_id=[u])[0] for u in ("cat1", "dog1")] + reward(None, [CAT])
    # unknown users: the population, logged as a warning once
    with caplog.at_level(logging.DEBUG, logger="plural.rlhf"):
        assert reward(None, [CAT, DOG], user_id=["stranger", "stranger"]) == reward(None, [CAT, DOG])
        reward(None, [CAT], user_id=["another"])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unknown" in r.getMessage()]
    assert len(warnings) == 1 and "stranger" in warnings[0].getMessage()
    assert reward.unknown_users_ == {"stranger", "another"} and reward.route_counts_["unknown"] == 3
    assert RewardFunction(model, unknown_users="none")(None, [CAT, DOG], user_id=["stranger", "cat0"])[0] is None
    with pytest.raises(KeyError, match="stranger"):
        RewardFunction(model, unknown_users="error")(None, [CAT], user_id=["stranger"])


def test_add_user_personalizes_from_a_few_comparisons(model, store):
    reward = RewardFunction(model, store)
    state = reward.add_user("dog0", [{"prompt": "Pets?", "chosen": "A cat is calm.", "rejected": "A dog is loud."},
                                     {"prompt": "Pets?", "chosen": "Cats are lovely.", "rejected": "Dogs are lovely."},
                                     {"chosen": [{"role": "assistant", "content": "My cat is smart."}],
                                      "rejected": [{"role": "assistant", "content": "My dog is smart."}]}])
    assert state.n_comparisons == 3 and state.user_id == "dog0"
    assert reward.route("dog0")[0] == "added"  # an added state comes before the store
    assert _margin(reward, "dog0") > 0  # this dog0 now likes cats
    reward.remove_user("dog0")
    assert _margin(reward, "dog0") < 0
    without_store = RewardFunction(model)  # model.adapt instead of plural.personalize
    without_store.add_user("new", [{"chosen": c, "rejected": d} for c, d in zip(DOGS[:3], CATS[:3])])
    assert _margin(without_store, "new") < 0
    import pandas as pd

    frame = pd.DataFrame({"prompt": ["Pets?", None], "chosen": CATS[:2], "rejected": DOGS[:2]})
    reward.add_user("from a frame", frame)  # a DataFrame (or a Dataset), a missing prompt is no prompt
    assert _margin(reward, "from a frame") > 0
    with pytest.raises(ValueError, match="no comparisons"):
        reward.add_user("x", [])
    with pytest.raises(ValueError, match="'chosen' and 'rejected'"):
        reward.add_user("x", [{"chosen": "a"}])


def test_chat_messages_score_their_assistant_content(model):
    reward = RewardFunction(model)
    as_chat = [[{"role": "assistant", "content": CAT}], [{"role": "assistant", "content": DOG}]]
    chat_prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Any pets?"}]
    assert reward([chat_prompt] * 2, as_chat, user_id=["cat0"] * 2) == reward(["Any pets?"] * 2, [CAT, DOG],
                                                                          user_id="cat0")
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": CAT}]}]
    assert message_text(blocks, role="assistant") == CAT
    assert message_text(chat_prompt, role="user") == "Any pets?"
    assert message_text(chat_prompt, role="user", chat="transcript") == "system: Be brief.\nuser: Any pets?"
    with pytest.raises(ValueError, match="no assistant message"):
        reward(None, [[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match="string or a list of chat messages"):
        reward(None, [3])


def test_prompt_aware_models_score_under_the_prompt(encoder):
    data = with_prompts(plural.from_trl(_rows()[::3]), encoder)
    model = plural.fit(plural.make_model("bradley_terry", hidden_dim=16), data, max_epochs=5, show_progress=False)
    reward = RewardFunction(model)
    asked = reward(["Which pet should I get?", "Tell me a joke."], [CAT, CAT])
    assert abs(asked[0] - asked[1]) > 1e-3 * max(map(abs, asked))
    chat = [[{"role": "user", "content": "Tell me a joke."}]]
    assert reward(chat, [CAT]) == pytest.approx(asked[1:], rel=1e-4)  # up to the encoder's batch noise
    # a model without user vectors scores its training users like everyone else
    assert reward.route("cat0") == ("training", None) and reward(None, [CAT], user_id="cat0") == reward(None, [CAT])


def test_per_user_normalisation_over_a_reference_set(model, store):
    reference = CATS + DOGS
    reward = RewardFunction(model, store, normalize="user", reference=reference)
    for user in ("cat0", "dog0", None):
        z = np.array(reward(None, reference, user_id=user))
        assert abs(z.mean()) < 1e-6 and z.std() == pytest.approx(1.0, rel=1e-5)
    raw = RewardFunction(model, store)
    assert np.sign(_margin(reward, "cat0")) == np.sign(_margin(raw, "cat0"))
    assert reward(None, [CAT, DOG], user_id="dog1") == reward(None, [CAT, DOG], user_id="dog1")
    with pytest.raises(ValueError, match="reference"):
        RewardFunction(model, normalize="user")
    with pytest.raises(ValueError, match="normalize"):
        RewardFunction(model, normalize="batch")


def test_bad_input_is_refused_clearly(model, store, planted):
    reward = RewardFunction(model)
    with pytest.raises(ValueError, match="3 prompts for 2 completions"):
        reward(["a", "b", "c"], [CAT, DOG])
    with pytest.raises(ValueError, match="1 user_id values for 2 completions"):
        reward(None, [CAT, DOG], user_id=["cat0"])
    with pytest.raises(ValueError, match="empty"):
        reward(["a"] * 0, [])
    with pytest.raises(ValueError, match="one string"):
        reward(None, CAT)
    with pytest.raises(ValueError, match="unknown_users"):
        RewardFunction(model, unknown_users="ignore")
    features_model = plural.make_model("bradley_terry").fit(planted[0], max_epochs=1, show_progress=False)
    with pytest.raises(ValueError, match="records no text encoder"):
        RewardFunction(features_model)
    with pytest.raises(ValueError, match="no user vectors"):
        RewardFunction(features_model, store, encoder=TextEncoder())
    with pytest.raises(ValueError, match="384-d features but"):
        RewardFunction(features_model, encoder=TextEncoder())(None, [CAT])


def test_best_of_n_picks_each_users_favourite(model, store):
    reward = RewardFunction(model, store)
    best, scores = best_of_n(reward, "Which pet?", [DOG, CAT], user_id="cat2")
    assert best == CAT and scores[1] > scores[0]
    assert best_of_n(reward, "Which pet?", [DOG, CAT], user_id="dog2")[0] == DOG
    with pytest.raises(ValueError, match="at least one"):
        best_of_n(reward, "Which pet?", [])
    picks = best_of_n_batch(reward, ["Which pet?", "Pets?", "Any pet?"], [[DOG, CAT], [CAT, DOG], [DOG]],
                            ["cat2", "dog2", None])
    assert [best for best, _ in picks] == [CAT, DOG, DOG] and [len(s) for _, s in picks] == [2, 2, 1]
    assert picks[0][1] == pytest.approx(scores, rel=1e-4)
    with pytest.raises(ValueError, match="1 user ids for 2 prompts"):
        best_of_n_batch(reward, ["a", "b"], [[CAT], [DOG]], ["cat2"])
    with pytest.raises(ValueError, match="no candidate got a reward"):
        best_of_n(RewardFunction(model, unknown_users="none"), None, [CAT], user_id="stranger")


def test_from_run_loads_the_model_and_builds_its_store(model, tmp_path):
    path = plural.save_model(model, tmp_path / "run")
    reward = RewardFunction.from_run(path)
    assert reward.store is not None and "cat0" in reward.store and reward.route("cat0")[0] == "store"
    np.testing.assert_allclose(_margin(reward, "cat0"), _margin(RewardFunction(model), "cat0"), rtol=1e-5)
    assert RewardFunction.from_run(path, store=None).store is None


class _Recorder:
    """A reward function that records what TRL passed and returned (TRL names it by ``__name__``)."""

    def __init__(self, reward):
        self.reward, self.calls = reward, []
        self.__name__ = reward.__name__

    def __call__(self, prompts, completions, **kwargs):
        out = self.reward(prompts, completions, **kwargs)
        self.calls.append({"prompts": prompts, "completions": completions, "user_id": kwargs["user_id"],
                           "keys": set(kwargs), "rewards": out})
        return out


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers deprecations inside TRL
def test_one_grpo_step_on_cpu_with_two_users(model, store, tmp_path):
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    transformers = pytest.importorskip("transformers")
    from datasets import Dataset
    from plural.data.encoders import default_model_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_path())  # MiniLM's BERT vocabulary
    tokenizer.eos_token = tokenizer.sep_token
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
    policy = transformers.GPT2LMHeadModel(config)
    reward = RewardFunction(model, store)
    recorder = _Recorder(reward)
    prompt = "Which pet should I get?"
    dataset = Dataset.from_list([{"prompt": prompt, "user_id": "cat0"}, {"prompt": prompt, "user_id": "dog0"}])
    args = trl.GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                          max_completion_length=8, report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                          logging_steps=1, seed=0, dataloader_num_workers=0)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=recorder, args=args, train_dataset=dataset,
                              processing_class=tokenizer)
    before = [p.detach().clone() for p in policy.parameters()]
    trainer.train()
    assert trainer.state.global_step == 1
    logs = trainer.state.log_history[0]
    assert "rewards/plural_reward/mean" in logs and logs["plural_reward/route_store"] == 1.0
    assert np.isfinite(logs["grad_norm"]) and logs["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # the step moved the policy
    (call,) = recorder.calls
    assert sorted(call["user_id"]) == ["cat0", "cat0", "dog0", "dog0"]
    assert {"completion_ids", "trainer_state"} <= call["keys"]
    completions = call["completions"]
    for_cat = reward(call["prompts"], completions, user_id=["cat0"] * len(completions))
    for_dog = reward(call["prompts"], completions, user_id=["dog0"] * len(completions))
    assert all(abs(c - d) > 1e-4 for c, d in zip(for_cat, for_dog))  # two users, two rewards, same texts
    mine = [c if u == "cat0" else d for u, c, d in zip(call["user_id"], for_cat, for_dog)]
    np.testing.assert_allclose(call["rewards"], mine, rtol=1e-6)  # TRL got each sample's own user's reward
