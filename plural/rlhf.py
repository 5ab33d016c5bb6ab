"""A personalized reward for RLHF: plural's model as a TRL reward function.

:class:`RewardFunction` is a callable with the signature TRL's online trainers (``GRPOTrainer``,
``RLOOTrainer``) call reward functions with, ``reward_fn(prompts=..., completions=..., **columns)``,
where ``columns`` are the dataset's other columns, one entry per sample, plus TRL's own keywords
(``completion_ids``, ``trainer_state``, ``log_metric``, ...). A ``user_id`` column routes each
sample to that user's reward:

1. a user added with :meth:`RewardFunction.add_user` (a few of their comparisons, personalized
   with :func:`plural.personalize` over the store, or ``model.adapt`` without one): that state;
2. a user in the :class:`plural.UserStore`: their stored vector (and covariance, where kept);
3. a user the model was trained on: their learned state;
4. anyone else, and samples whose user id is None: the population reward (``unknown_users``
   says what happens to an id that is given but unknown).

Texts are embedded as the model was trained on them (:func:`plural.data.prompts.encode_in_context`
with the encoder the model records): a prompt-aware model scores a completion under its prompt,
a prompt-blind one scores the completion alone. Nothing here imports TRL; it only calls this.

:func:`best_of_n` (and :func:`best_of_n_batch`, several prompts in one call) picks the candidate
response a user's reward rates highest, with any such callable.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["RewardFunction", "best_of_n", "best_of_n_batch", "message_text"]

ROUTES = ("added", "store", "training", "population")
"""Where a sample's user state came from, in the order they are tried."""

UNKNOWN_POLICIES = ("population", "none", "error")
CHAT_MODES = ("content", "transcript")


# ---------------------------------------------------------------------- texts
def _content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = [b.get("text", "") for b in content if isinstance(b, Mapping) and b.get("type", "text") == "text"]
        return "".join(p for p in parts if isinstance(p, str))
    raise ValueError(f"message content must be text or a list of content blocks, got {type(content).__name__}")


def message_text(value: Any, *, role: str, chat: str = "content", what: str = "text") -> str:
    """A TRL cell as the text plural embeds.

    Args:
        value: a string (returned as it is), or a conversation: a list of ``{"role", "content"}``
            messages.
        role: for ``chat="content"``, whose words count: ``"assistant"`` (a completion: the
            content of its assistant messages, joined by newlines; messages without a role count as
            the assistant's) or ``"user"`` (a prompt: the content of its *last* user message, the
            one a completion answers; system messages and earlier turns are left out).
        chat: ``"content"`` as above, or ``"transcript"``: every message as a ``role: content``
            line, as :func:`plural.from_trl` renders conversational rows, for a model trained on
            such rows.
        what: what the value is, for error messages.

    Raises:
        ValueError: not a string or a list of messages, or no message of that role.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, Mapping) and "content" in m for m in value):
        raise ValueError(f"{what} must be a string or a list of chat messages ({{'role', 'content'}} dicts), "
                         f"got {value!r:.120}")
    if chat == "transcript":
        return "\n".join(f"{m.get('role', 'user')}: {_content_text(m['content'])}" for m in value)
    if role == "assistant":
        texts = [_content_text(m["content"]) for m in value if m.get("role", "assistant") == "assistant"]
        if not texts:
            raise ValueError(f"{what} has no assistant message to score: {value!r:.120}")
        return "\n".join(texts)
    texts = [_content_text(m["content"]) for m in value if m.get("role") == role]
    if not texts:
        raise ValueError(f"{what} has no {role} message: {value!r:.120}")
    return texts[-1]


def _comparison_rows(comparisons: Any) -> list[Mapping]:
    """Comparisons as a list of row mappings (a list of dicts, a DataFrame, a Dataset)."""
    if hasattr(comparisons, "to_pandas"):
        comparisons = comparisons.to_pandas()
    if hasattr(comparisons, "to_dict") and hasattr(comparisons, "columns"):
        comparisons = comparisons.to_dict("records")
    if isinstance(comparisons, Mapping) or isinstance(comparisons, (str, bytes)):
        raise ValueError("comparisons must be a sequence of rows ({'prompt', 'chosen', 'rejected'}), "
                         f"got one {type(comparisons).__name__}")
    rows = list(comparisons)
    for pos, row in enumerate(rows):
        if not isinstance(row, Mapping) or "chosen" not in row or "rejected" not in row:
            raise ValueError(f"comparison {pos} must be a mapping with 'chosen' and 'rejected' (and optionally "
                             f"'prompt'), got {row!r:.120}")
    return rows


# ---------------------------------------------------------------------- the reward function
class RewardFunction:
    """A personalized reward for TRL's online trainers (see the module docstring for the routing).

    Args:
        model: a fitted plural model trained on texts (it records its encoder, ``encoder_spec_``).
        store: a :class:`plural.UserStore` of the model's users (checked against the model's
            fingerprint): users in it are scored with their stored vectors, and :meth:`add_user`
            personalizes with it as the prior. None: no store.
        encoder: the text encoder (default: rebuilt from the model's ``encoder_spec_``; one given
            must match it). Required for a model that records none.
        normalize: False (raw rewards), or ``"user"``: each user's reward z-scored over the fixed
            ``reference`` completions, ``(r - mean_u) / std_u`` with the mean and standard
            deviation of that user's rewards of the reference set, so users' rewards are on one
            scale whatever the size of their personal part (deterministic: the same user and
            completion always get the same value).
        reference: the reference completions for ``normalize="user"`` (strings or messages).
        reference_prompts: their prompts (None: no prompt), for a prompt-aware model.
        unknown_users: a user id that is given but not known (not added, not in the store, not a
            training user): ``"population"`` (the population reward; the first unknown id is
            logged as a warning, later ones at debug level), ``"none"`` (None for the sample, which
            TRL reads as "this reward does not apply": with several reward functions the others
            decide) or ``"error"`` (``KeyError``).
        chat: how chat messages become text (:func:`message_text`): ``"content"`` (a
            completion's assistant content, a prompt's last user message) or ``"transcript"``
            (``role: content`` lines, as :func:`plural.from_trl` renders conversations).
        user_column: the dataset column holding user ids.
        name: ``__name__``, what TRL logs the reward under (``rewards/<name>/mean``).

    Attributes:
        users: the states added with :meth:`add_user`, by user id.
        unknown_users_: the distinct unknown user ids met so far.
        route_counts_: samples scored so far per route (``ROUTES``, and ``"unknown"``).

    Example:
        >>> reward = RewardFunction.from_run("runs/low_rank")                    # doctest: +SKIP
        >>> reward.add_user("ann", [{"prompt": "Pets?", "chosen": "Cats.", "rejected": "Dogs."}])  # doctest: +SKIP
        >>> trainer = trl.GRPOTrainer(model=policy, reward_funcs=reward, ...)    # doctest: +SKIP
    """

    def __init__(self, model, store=None, encoder=None, *, normalize: bool | str = False,
                 reference: Sequence | None = None, reference_prompts: Sequence | None = None,
                 unknown_users: str = "population", chat: str = "content", user_column: str = "user_id",
                 name: str = "plural_reward") -> None:
        from plural.data.encoders import resolve_encoder
        from plural.query.personalize import check_store_fingerprint

        model.check_is_fitted()
        if unknown_users not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown_users must be one of {UNKNOWN_POLICIES}, got {unknown_users!r}")
        if chat not in CHAT_MODES:
            raise ValueError(f"chat must be one of {CHAT_MODES}, got {chat!r}")
        if normalize not in (False, None, "user"):
            raise ValueError(f"normalize must be False or 'user', got {normalize!r}")
        self.model = model.eval()  # no dropout: a completion's reward does not change between calls
        self.spec = getattr(model, "encoder_spec_", None)
        if self.spec is None and encoder is None:
            raise ValueError(f"this {type(model).__name__} records no text encoder (it was trained on features, "
                             "or saved before encoders were recorded): pass encoder= the TextEncoder it was "
                             "trained with")
        self.encoder = resolve_encoder(self.spec, encoder)
        if not callable(getattr(self.encoder, "encode", None)):
            raise ValueError(f"encoder must embed texts (a TextEncoder), got {type(self.encoder).__name__}")
        if store is not None:
            if int(model.user_dim) == 0:
                raise ValueError(f"{model.name} has no user vectors: a store cannot be used with it")
            if store.dim != model.user_dim:
                raise ValueError(f"store holds {store.dim}-d vectors but {model.name} has {model.user_dim}-d users")
            check_store_fingerprint(model, store)
        self.store = store
        self.normalize = "user" if normalize == "user" else False
        self.unknown_policy = unknown_users
        self.chat = chat
        self.user_column = user_column
        self.__name__ = name
        self.users: dict[str, Any] = {}
        self.unknown_users_: set[str] = set()
        self.route_counts_: Counter = Counter()
        self._reference = None
        if self.normalize:
            if reference is None or len(reference) < 2:
                raise ValueError("normalize='user' needs reference= completions (at least 2) to take each "
                                 "user's mean and spread over")
            self._reference = self._features(list(reference), None if reference_prompts is None
                                             else list(reference_prompts), "reference ")
        elif reference is not None:
            logger.warning("reference completions are used only with normalize='user'; ignoring them")

    @classmethod
    def from_run(cls, path: str | os.PathLike, *, store: Any = "auto", **options) -> "RewardFunction":
        """A reward function of a saved model (a run of ``plural train`` or ``plural.save_model``).

        Args:
            path: the run or checkpoint directory (``plural.load_model`` verifies it).
            store: ``"auto"`` (a store of the model's training users, ``plural.build_user_store``,
                where the model can personalize with one), a path of a saved store
                (``UserStore.load``, refused for another model), a store, or None.
            options: the constructor's.
        """
        from plural.query.personalize import build_user_store, supports_retrieval
        from plural.query.store import UserStore
        from plural.training.checkpoint import load_model

        model = load_model(path)
        if isinstance(store, str) and store == "auto":
            store = build_user_store(model) if supports_retrieval(model) and model.user_dim > 0 else None
        elif isinstance(store, (str, os.PathLike)):
            store = UserStore.load(store, model=model)
        return cls(model, store, **options)

    def __repr__(self) -> str:
        return (f"RewardFunction({self.model.name}, store={None if self.store is None else len(self.store)} users, "
                f"added={len(self.users)}, normalize={self.normalize!r}, unknown_users={self.unknown_policy!r})")

    # ------------------------------------------------------------------ users
    def add_user(self, user_id: str, comparisons: Any):
        """Personalize a user from a few of their comparisons and keep the state (it routes their
        samples from now on, before the store and the training users).

        Args:
            user_id: the id the ``user_id`` column will carry.
            comparisons: rows with ``chosen`` and ``rejected`` texts (or messages) and optionally a
                ``prompt`` (a list of dicts, a DataFrame, a Dataset), TRL's preference format: the
                user preferred ``chosen`` to ``rejected`` under ``prompt``. Ties are not expressible.

        Returns:
            The :class:`plural.UserState`: :func:`plural.personalize` over the store where the model
            can use one, else ``model.adapt``.
        """
        import torch

        from plural.query.personalize import personalize

        if user_id is None:
            raise ValueError("user_id must be given (None routes to the population)")
        rows = _comparison_rows(comparisons)
        if not rows:
            raise ValueError(f"no comparisons given for user {user_id!r}")
        chosen = [message_text(r["chosen"], role="assistant", chat=self.chat, what=f"comparison {i} chosen")
                  for i, r in enumerate(rows)]
        rejected = [message_text(r["rejected"], role="assistant", chat=self.chat, what=f"comparison {i} rejected")
                    for i, r in enumerate(rows)]
        prompts = [self._prompt_text(r.get("prompt"), f"comparison {i} prompt") for i, r in enumerate(rows)]
        features = torch.from_numpy(self._features(chosen + rejected, prompts + prompts, "comparison ", parse=False))
        n = len(rows)
        support = {"features_a": features[:n], "features_b": features[n:],
                   "label": torch.ones(n, dtype=torch.float32), "weight": torch.ones(n, dtype=torch.float32)}
        # personalize adapts as the model always does where it cannot use a store; the store's
        # fingerprint was checked when this reward function was made
        state = self.model.adapt(support) if self.store is None else \
            personalize(self.model, self.store, support, check_fingerprint=False)
        state.user_id = str(user_id)
        self.users[str(user_id)] = state
        return state

    def remove_user(self, user_id: str) -> None:
        """Forget a user added with :meth:`add_user` (``KeyError`` if none was)."""
        del self.users[str(user_id)]

    def route(self, user_id: str | None) -> tuple[str, Any]:
        """``(route, user)`` for a user id: the route (one of ``ROUTES``, or ``"unknown"``) and what
        :func:`plural.score_items` takes for it (a state, a training user's id, or None)."""
        if user_id is None:
            return "population", None
        uid = str(user_id)
        if uid in self.users:
            return "added", self.users[uid]
        if self.store is not None and uid in self.store:
            return "store", self._stored_state(uid)
        if int(self.model.user_index([uid])[0]) >= 0:  # a model without user vectors scores them all alike
            return "training", uid if self.model.user_dim > 0 else None
        return "unknown", None

    def _stored_state(self, user_id: str):
        import torch

        from plural.core.model import UserState

        vector = self.store.get([user_id])[0]
        cov = self.store.get_covariance([user_id])[0]
        return UserState(vector=torch.from_numpy(np.array(vector, dtype=np.float32)),
                         covariance=None if cov is None else torch.from_numpy(np.array(cov, dtype=np.float32)),
                         user_id=user_id)

    def _unknown(self, user_id: str) -> None:
        if self.unknown_policy == "error":
            raise KeyError(f"unknown user {user_id!r}: not added, not in the store and not a training user of "
                           f"the model (unknown_users='error')")
        if user_id not in self.unknown_users_:
            level = logging.WARNING if not self.unknown_users_ else logging.DEBUG
            outcome = "the population reward" if self.unknown_policy == "population" else "no reward (None)"
            logger.log(level, "%s: user %r is unknown (not added, not in the store, not a training user); "
                       "unknown users get %s%s", self.__name__, user_id, outcome,
                       "" if self.unknown_users_ else " (further unknown users are logged at debug level)")
            self.unknown_users_.add(user_id)

    # ------------------------------------------------------------------ scoring
    def _prompt_text(self, prompt: Any, what: str) -> str | None:
        if prompt is None or (isinstance(prompt, float) and np.isnan(prompt)):
            return None
        return message_text(prompt, role="user", chat=self.chat, what=what)

    def _features(self, completions: list, prompts: list | None, what: str, parse: bool = True) -> np.ndarray:
        """Features of completions under prompts, embedded in one batch as the model expects."""
        from plural.data.prompts import encode_in_context

        if prompts is not None and len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} {what}prompts for {len(completions)} completions")
        if parse:
            completions = [message_text(c, role="assistant", chat=self.chat, what=f"{what}completion {i}")
                           for i, c in enumerate(completions)]
            prompts = None if prompts is None else [self._prompt_text(p, f"{what}prompt {i}")
                                                    for i, p in enumerate(prompts)]
        features = encode_in_context(self.spec, completions, prompts, encoder=self.encoder)
        if features.shape[1] != self.model.feature_dim_:
            raise ValueError(f"the encoder gives {features.shape[1]}-d features but {self.model.name} expects "
                             f"{self.model.feature_dim_}-d ones: is it the encoder the model was trained with?")
        return features

    def _score(self, features: np.ndarray, user) -> np.ndarray:
        from plural.query.scoring import score_items

        scores = score_items(self.model, features, user=user).astype(np.float64)
        if self.normalize:
            ref = score_items(self.model, self._reference, user=user).astype(np.float64)
            scale = ref.std()
            scores = (scores - ref.mean()) / (scale if scale > 1e-12 else 1.0)
        return scores

    def __call__(self, prompts: Sequence | None = None, completions: Sequence | None = None,
                 user_id: Sequence | str | None = None, **kwargs) -> list[float | None]:
        """Rewards of ``completions`` (one per sample) for each sample's user.

        Args:
            prompts: one per completion (strings or chat messages), or None for no prompts.
            completions: strings or chat messages (TRL's conversational format).
            user_id: one user id per sample (None entries: the population), one id for every
                sample, or None (all the population). Read from ``kwargs[user_column]`` when the
                column has another name.
            kwargs: TRL's other keywords and dataset columns; ``log_metric``, when TRL passes it,
                gets the share of samples per route (``<name>/route_<route>``).

        Returns:
            ``len(completions)`` floats (None for an unknown user under ``unknown_users="none"``).

        Raises:
            ValueError: completions missing or empty, lengths that differ, or a sample that is not
                text or messages. KeyError: an unknown user under ``unknown_users="error"``.
        """
        if self.user_column != "user_id":
            user_id = kwargs.get(self.user_column, user_id)
        if completions is None or isinstance(completions, (str, bytes)):
            raise ValueError("completions must be a list (strings or chat messages), got "
                             f"{'nothing' if completions is None else 'one string'}")
        completions = list(completions)
        n = len(completions)
        if n == 0:
            raise ValueError("completions is empty: nothing to score")
        if prompts is not None:
            prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
            if len(prompts) != n:
                raise ValueError(f"{len(prompts)} prompts for {n} completions")
        if user_id is None or isinstance(user_id, str):
            users = [user_id] * n
        else:
            users = list(user_id)
            if len(users) != n:
                raise ValueError(f"{len(users)} {self.user_column} values for {n} completions")
        features = self._features(completions, prompts, "")
        out: list[float | None] = [None] * n
        groups: dict[Any, list[int]] = {}
        for i, u in enumerate(users):
            groups.setdefault(None if u is None else str(u), []).append(i)
        counts: Counter = Counter()
        for uid, rows in groups.items():
            kind, user = self.route(uid)
            counts[kind] += len(rows)
            if kind == "unknown":
                self._unknown(uid)
                if self.unknown_policy == "none":
                    continue
            for i, value in zip(rows, self._score(features[rows], user).tolist()):
                out[i] = float(value)
        self.route_counts_.update(counts)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for kind in (*ROUTES, "unknown"):
                log_metric(f"{self.__name__}/route_{kind}", counts.get(kind, 0) / n)
        return out


# ---------------------------------------------------------------------- best of N
def best_of_n(reward_fn: Callable, prompt: Any, candidates: Sequence, user_id: str | None = None,
              **columns) -> tuple[Any, list[float | None]]:
    """The candidate response a user's reward rates highest.

    Args:
        reward_fn: a :class:`RewardFunction`, or any callable with TRL's reward-function signature.
        prompt: the prompt the candidates answer (a string, chat messages, or None).
        candidates: the responses (strings or chat messages), at least one.
        user_id: whose reward (None: the population).
        columns: other per-sample columns the reward function reads, one value each (repeated).

    Returns:
        ``(best candidate, scores)``: ties go to the first; scores in candidate order (None where
        the reward function gave none).

    Raises:
        ValueError: no candidates, or no candidate got a reward (every score None or NaN).
    """
    return best_of_n_batch(reward_fn, [prompt], [candidates], [user_id],
                           **{key: [value] for key, value in columns.items()})[0]


def best_of_n_batch(reward_fn: Callable, prompts: Sequence, candidates: Sequence[Sequence],
                    user_ids: Sequence | None = None, **columns) -> list[tuple[Any, list[float | None]]]:
    """:func:`best_of_n` for several prompts, scored in one call of ``reward_fn`` (one batch of texts).

    Args:
        reward_fn: as in :func:`best_of_n`.
        prompts: ``m`` prompts.
        candidates: ``m`` lists of candidate responses, one list per prompt (each non-empty).
        user_ids: ``m`` user ids (None entries, or None for all: the population).
        columns: other columns, ``m`` values each (repeated over each prompt's candidates).

    Returns:
        ``m`` pairs ``(best candidate, scores)``.
    """
    prompts, candidates = list(prompts), [list(c) for c in candidates]
    m = len(prompts)
    user_ids = [None] * m if user_ids is None else list(user_ids)
    for what, values in (("candidate lists", candidates), ("user ids", user_ids),
                         *((f"{key!r} values", list(v)) for key, v in columns.items())):
        if len(values) != m:
            raise ValueError(f"{len(values)} {what} for {m} prompts")
    empty = next((i for i, c in enumerate(candidates) if not c), None)
    if m == 0 or empty is not None:
        raise ValueError("best_of_n needs at least one candidate" + ("" if m == 0 else f" (prompt {empty} has none)"))
    sizes = [len(c) for c in candidates]
    repeat = lambda values: [v for v, k in zip(values, sizes) for _ in range(k)]  # noqa: E731
    flat = [c for cs in candidates for c in cs]
    scores = list(reward_fn(prompts=repeat(prompts), completions=flat, user_id=repeat(user_ids),
                            **{key: repeat(list(v)) for key, v in columns.items()}))
    if len(scores) != len(flat):
        raise ValueError(f"the reward function returned {len(scores)} scores for {len(flat)} candidates")
    out, start = [], 0
    for i, k in enumerate(sizes):
        chunk = scores[start:start + k]
        start += k
        values = np.array([np.nan if s is None else float(s) for s in chunk])
        if np.isnan(values).all():
            raise ValueError(f"no candidate got a reward for prompt {i} (user {user_ids[i]!r})")
        out.append((candidates[i][int(np.nanargmax(values))], chunk))
    return out
