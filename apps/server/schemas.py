"""Request and response shapes of the HTTP API, and the limits every request is held to.

Limits (a request over one gets a 413 or 422 whose message names the limit):

==========================  =======  ==================================================
``MAX_BODY_BYTES``          1 MiB    request body (413)
``MAX_ID_LENGTH``           128      characters of a user, item or context id
``MAX_TEXT_LENGTH``         2,000    characters of one text (a prompt too)
``MAX_TEXTS``               64       texts in one request (scored, or in comparisons)
``MAX_COMPARISONS``         100      comparisons in one write
``MAX_CANDIDATES``          1,000    item ids to score or rank, or to exclude
``MAX_N``                   100      items one recommendation returns
``MAX_BATCH_USERS``         100      users in one batch request
``MAX_POOL``                500      candidate comparisons the next question is chosen from
==========================  =======  ==================================================

Ids are strings of 1 to ``MAX_ID_LENGTH`` characters without control characters (C0, DEL,
C1) and without leading or trailing white space. The one exception is an item id of a
prompt-aware run's catalog (``plural train --prompts``), a response under a prompt:
``context_id + "\\u001f" + item_id``, two such ids joined by one U+001F (unit separator), as
``/v1/items`` and ``/v1/recommend`` give them. Texts, prompts included, are 1 to
``MAX_TEXT_LENGTH`` characters without NUL. Labels are 1 (``a`` preferred), 0 (``b`` preferred) or 0.5 (a tie). Nothing in a
request is evaluated or unpickled: bodies are JSON, parsed by pydantic into these models.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from plural.data.prompts import SEPARATOR as PROMPT_SEPARATOR

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_BODY_BYTES = 1 << 20
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 2000
MAX_TEXTS = 64
MAX_COMPARISONS = 100
MAX_CANDIDATES = 1000
MAX_N = 100
MAX_BATCH_USERS = 100
MAX_POOL = 500
DEFAULT_POOL = 100
MAX_WEIGHT = 1000.0

LIMITS = {"max_body_bytes": MAX_BODY_BYTES, "max_id_length": MAX_ID_LENGTH, "max_text_length": MAX_TEXT_LENGTH,
          "max_texts": MAX_TEXTS, "max_comparisons": MAX_COMPARISONS, "max_candidates": MAX_CANDIDATES,
          "max_n": MAX_N, "max_batch_users": MAX_BATCH_USERS, "max_pool": MAX_POOL, "max_weight": MAX_WEIGHT}


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o < 32 or 127 <= o < 160


def check_id(value: str, what: str = "id") -> str:
    """``value`` if it is a valid id (see the module docstring), else a ValueError naming the problem."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    bad = next((ch for ch in value if _is_control(ch)), None)
    if bad is not None:
        raise ValueError(f"{what} must not contain control characters (found U+{ord(bad):04X})")
    if value != value.strip():
        raise ValueError(f"{what} must not start or end with white space")
    return value


def check_item_id(value: str, what: str = "item id") -> str:
    """:func:`check_id`, and the id of a response under a prompt (``context_id + "\\x1f" + item_id``,
    each part a valid id) too."""
    if isinstance(value, str) and PROMPT_SEPARATOR in value:
        parts = value.split(PROMPT_SEPARATOR)
        if len(parts) != 2:
            raise ValueError(f"{what} holds {len(parts) - 1} U+001F separators; a response under a prompt is "
                             "context_id + U+001F + item_id")
        check_id(parts[0], f"{what}'s context part")
        check_id(parts[1], f"{what}'s item part")
        return value
    return check_id(value, what)


def _check_text(value: str) -> str:
    if not value:
        raise ValueError("text must not be empty")
    if len(value) > MAX_TEXT_LENGTH:
        raise ValueError(f"text is {len(value)} characters long; the limit is {MAX_TEXT_LENGTH}")
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


UserId = Annotated[str, AfterValidator(lambda v: check_id(v, "user id"))]
ItemId = Annotated[str, AfterValidator(lambda v: check_item_id(v, "item id"))]
ContextId = Annotated[str, AfterValidator(lambda v: check_id(v, "context id"))]
Text = Annotated[str, AfterValidator(_check_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComparisonIn(_Strict):
    """One judgement: each side is a catalog item (``item_a``) or a text (``text_a``), not both."""

    item_a: ItemId | None = None
    item_b: ItemId | None = None
    text_a: Text | None = None
    text_b: Text | None = None
    label: float = Field(description="1: a preferred, 0: b preferred, 0.5: a tie")
    weight: float = Field(1.0, description=f"how much the judgement counts, 0 to {MAX_WEIGHT:g}")
    context: ContextId | None = Field(None, description=(
        "the prompt / topic / conversation id, if any. For a prompt-aware run (/v1/info: prompt_aware), "
        "text_a and text_b are judged under this context's prompt when it names a context of the catalog "
        "that has a text, else with no prompt; catalog items carry their prompt in their id"))

    @model_validator(mode="after")
    def _check(self) -> "ComparisonIn":
        if self.label not in (0.0, 0.5, 1.0):
            raise ValueError(f"label must be 1 (a preferred), 0 (b preferred) or 0.5 (a tie), got {self.label!r}")
        if not (math.isfinite(self.weight) and 0 <= self.weight <= MAX_WEIGHT):
            raise ValueError(f"weight must be a finite number from 0 to {MAX_WEIGHT:g}, got {self.weight!r}")
        for side in ("a", "b"):
            item, text = getattr(self, f"item_{side}"), getattr(self, f"text_{side}")
            if (item is None) == (text is None):
                raise ValueError(f"side {side} needs exactly one of item_{side} or text_{side}")
        if self.item_a is not None and self.item_a == self.item_b:
            raise ValueError(f"item {self.item_a!r} is compared with itself")
        if self.text_a is not None and self.text_a == self.text_b:
            raise ValueError("a text is compared with itself")
        return self


class ComparisonsIn(_Strict):
    comparisons: list[ComparisonIn] = Field(min_length=1, max_length=MAX_COMPARISONS)
    update: Literal["now", "deferred"] = Field("now", description=(
        "now: the user's state is recomputed before the reply, which carries it; deferred: the "
        "comparisons are committed to the log (durably) and the reply comes at once, without a state "
        "(pending: true), and the state is recomputed soon after, once for all the user's writes that "
        "arrived meanwhile (GET /v1/users/{user_id} shows the comparisons still pending). Deferred "
        "writes take much less CPU under load; reads made right after them use the previous state"))

    @model_validator(mode="after")
    def _count_texts(self) -> "ComparisonsIn":
        n = sum((c.text_a is not None) + (c.text_b is not None) for c in self.comparisons)
        if n > MAX_TEXTS:
            raise ValueError(f"{n} texts in one request; the limit is {MAX_TEXTS}")
        return self


class CreateUserIn(ComparisonsIn):
    user_id: UserId


_PROMPT_DESCRIPTION = (
    f"the prompt every text of the request is scored under (1 to {MAX_TEXT_LENGTH} characters); "
    "null: no prompt. Used by a prompt-aware run (/v1/info: prompt_aware); a prompt-blind run's "
    "reward does not depend on a prompt, so it ignores it. Needs texts: catalog items of a "
    "prompt-aware run carry their prompt in their id")


def _check_scoring(body):
    """Something to score (item ids or texts), and a prompt only with texts."""
    if not body.item_ids and not body.texts:
        raise ValueError("give a non-empty list of item_ids or texts to score")
    if body.prompt is not None and not body.texts:
        raise ValueError("prompt is the prompt the texts are scored under: give texts with it (a prompt-aware "
                         "run's catalog items carry their prompt in their id)")
    return body


class ScoreIn(_Strict):
    """Score catalog items and/or texts for a user, or for the population when ``user_id`` is null;
    texts under ``prompt`` for a prompt-aware run."""

    user_id: UserId | None = None
    item_ids: list[ItemId] | None = Field(None, max_length=MAX_CANDIDATES)
    texts: list[Text] | None = Field(None, max_length=MAX_TEXTS)
    prompt: Text | None = Field(None, description=_PROMPT_DESCRIPTION)

    @model_validator(mode="after")
    def _something(self) -> "ScoreIn":
        return _check_scoring(self)


class RankIn(_Strict):
    user_id: UserId | None = None
    candidates: list[ItemId] = Field(min_length=1, max_length=MAX_CANDIDATES)


class RecommendIn(_Strict):
    user_id: UserId | None = None
    n: int = Field(10, ge=1, le=MAX_N)
    exclude_judged: bool = Field(True, description="leave out the items the user has judged")
    exclude: list[ItemId] = Field(default_factory=list, max_length=MAX_CANDIDATES)
    candidates: list[ItemId] | None = Field(None, min_length=1, max_length=MAX_CANDIDATES,
                                            description="recommend only among these")


class BatchScoreIn(_Strict):
    user_ids: list[UserId | None] = Field(min_length=1, max_length=MAX_BATCH_USERS,
                                          description="null scores for the population")
    item_ids: list[ItemId] | None = Field(None, max_length=MAX_CANDIDATES)
    texts: list[Text] | None = Field(None, max_length=MAX_TEXTS)
    prompt: Text | None = Field(None, description=_PROMPT_DESCRIPTION)

    @model_validator(mode="after")
    def _something(self) -> "BatchScoreIn":
        return _check_scoring(self)


class BatchRankIn(_Strict):
    user_ids: list[UserId | None] = Field(min_length=1, max_length=MAX_BATCH_USERS)
    candidates: list[ItemId] = Field(min_length=1, max_length=MAX_CANDIDATES)


class BatchRecommendIn(_Strict):
    user_ids: list[UserId | None] = Field(min_length=1, max_length=MAX_BATCH_USERS)
    n: int = Field(10, ge=1, le=MAX_N)
    exclude_judged: bool = True


# ---------------------------------------------------------------------- responses
class UserStateOut(BaseModel):
    user_id: str
    in_store: bool
    n_comparisons: int = Field(description="comparisons the state is estimated from (training + logged)")
    n_logged: int = Field(description="comparisons of this user in the feedback log")
    vector: list[float] | None
    covariance_diagonal: list[float] | None = Field(description="posterior variance of each coordinate, "
                                                    "where the store keeps a covariance")
    total_sd: float | None = Field(description="sqrt of the covariance's trace")
    updated_at: float | None
    pending: int = Field(0, description="logged comparisons not in the state yet (deferred writes)")


class WriteOut(BaseModel):
    user_id: str
    accepted: int
    first_seq: int
    last_seq: int
    n_comparisons: int
    created: bool
    state: UserStateOut | None = Field(description="the new state; null for a deferred write")
    pending: bool = Field(False, description="true for a deferred write: the state is updated after the reply")
    replayed: bool = Field(False, description="true when this is the stored reply to a retried Idempotency-Key")


class DeleteOut(BaseModel):
    user_id: str
    deleted: bool
    removed_comparisons: int
    removed_from_store: bool


class ScoredItem(BaseModel):
    item_id: str | None = None
    text: str | None = None
    score: float


class ScoreOut(BaseModel):
    user_id: str | None
    scores: list[ScoredItem]


class RankOut(BaseModel):
    user_id: str | None
    ranked: list[ScoredItem]


class RecommendOut(BaseModel):
    user_id: str | None
    items: list[ScoredItem]


class BatchScoreOut(BaseModel):
    results: list[ScoreOut]


class BatchRankOut(BaseModel):
    results: list[RankOut]


class BatchRecommendOut(BaseModel):
    results: list[RecommendOut]


class ItemOut(BaseModel):
    item_id: str
    text: str | None = None


class QuestionOut(BaseModel):
    user_id: str
    item_a: ItemOut
    item_b: ItemOut
    score: float | None = Field(description="the strategy's value of asking it (nats of expected "
                                "information gain for eig); null for random")
    strategy: str
    pool_size: int
    n_comparisons: int


class MapPoint(BaseModel):
    x: float
    y: float


class MapOut(BaseModel):
    snapshot_seq: int
    computed_at: float
    n_users: int
    explained_variance_ratio: list[float]
    points: list[list[float]] = Field(description="[x, y] of a seeded sample of stored users")
    user: MapPoint | None = None


class ItemsOut(BaseModel):
    total: int
    offset: int
    items: list[ItemOut]


class Problem(BaseModel):
    detail: Any


Strategy = Literal["eig", "targeted", "entropy", "random"]
