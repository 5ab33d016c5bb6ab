"""The HTTP API (FastAPI), versioned under ``/v1``; the OpenAPI schema is at ``/openapi.json`` and
the interactive docs at ``/docs``.

Routes (bodies and replies are JSON; shapes in ``apps.server.schemas``):

======  ========================================  ===============================================
POST    /v1/users                                 create a user from a few comparisons (201; 409 if they exist)
POST    /v1/users/{user_id}/comparisons           add comparisons; the state is updated online (now or deferred)
GET     /v1/users/{user_id}                       vector, uncertainty, comparison count, in store
DELETE  /v1/users/{user_id}                       delete from the store, the log and the snapshot
GET     /v1/users/{user_id}/next                  the next comparison to ask (?pool=&strategy=)
POST    /v1/score                                 score item ids and/or texts, texts under a prompt (user or population)
POST    /v1/rank                                  rank candidate item ids
POST    /v1/recommend                             top-N items, excluding what the user judged
POST    /v1/batch/score, /v1/batch/rank, /v1/batch/recommend   the same for many users
GET     /v1/map                                   2-D PCA map of stored users (?user_id=&limit=)
GET     /v1/items                                 the catalog (?offset=&limit=)
GET     /v1/info                                  model, limits, snapshot and log state
GET     /v1/health, /v1/ready, /v1/metrics        liveness, readiness (503 until loaded), metrics
======  ========================================  ===============================================

Writes (the POSTs under ``/v1/users`` and the DELETE) need ``Authorization: Bearer <token>`` when
a token is configured (``create_app(token=...)`` or ``$PLURAL_API_TOKEN``); it is compared with
``hmac.compare_digest``. A write may carry an ``Idempotency-Key`` header (1 to 128 printable
characters): a retry with the same key and the same request gets the first reply again (with
``"replayed": true``) and is not counted twice; the same key with another request is a 422.

Errors are ``{"detail": ...}`` with a 4xx naming the problem: 400 (texts for a model whose catalog
is not text embeddings; a model without user vectors), 401 (token), 404 (unknown user), 409 (user
exists), 413 (body over ``MAX_BODY_BYTES``), 422 (validation: unknown item, empty list, bad label,
too many candidates, bad id, ...), 503 (not ready). A ``ValueError`` or ``KeyError`` raised by the
library becomes a 422 or 404 with its message, never a 500.

A prompt-aware run (``plural train --prompts``; ``/v1/info`` says ``"prompt_aware": true``) serves
the catalog it was trained on: one item per (prompt, response), whose id is ``context_id``, U+001F,
``item_id`` (``"\\u001f"`` in JSON; the bare item id for a response with no prompt). Texts are scored
under the request's ``prompt`` (``/v1/score``, ``/v1/batch/score``; none: no prompt), and a text in
a comparison under the prompt of the comparison's ``context`` when that names a context of the
catalog with a text (else none). A prompt-blind run ignores ``prompt``: its reward does not depend
on one; a ``prompt`` without ``texts`` is a 422.

A user id may hold ``/`` (Polis ids do): the user routes match the rest of the path, so
``/v1/users/conv1/p7/next`` is user ``conv1/p7``'s next question (percent-encoding ``/`` as
``%2F`` is optional); the one ambiguity is that a user whose id ends in ``/next`` cannot be read
with ``GET /v1/users/{user_id}``.

``/`` serves ``apps/web/index.html`` and ``/web/*`` the rest of ``apps/web/`` when that folder exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from apps.server import schemas
from apps.server.service import SNAPSHOT_EVERY_S, Service, ServiceError

logger = logging.getLogger(__name__)

TOKEN_ENV = "PLURAL_API_TOKEN"
DRAIN_S = 30.0
"""Seconds a shutdown waits for deferred updates to be applied (the rest replay on the next start)."""
WEB_DIR = Path(__file__).resolve().parents[1] / "web"
LATENCY_WINDOW = 4096
"""Latencies kept per route for the p50 / p99 of ``/v1/metrics`` (the most recent ones)."""


# ---------------------------------------------------------------------- middleware (pure ASGI: cheap)
class BodyLimit:
    """413 for a request body over ``limit`` bytes: by its ``Content-Length``, or, for a body
    without one (chunked), by reading it here first (at most ``limit`` bytes are held)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await _send_json(send, 400, {"detail": "Content-Length is not a number"})
                break
        if length is not None:
            if length > self.limit:
                return await _send_json(send, 413, {"detail": f"request body over {self.limit} bytes"})
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                return await _send_json(send, 413, {"detail": f"request body over {self.limit} bytes"})
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class Metrics:
    """Request counts per route and status, and latency percentiles per route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, dict[int, int]] = {}
        self.latency: dict[str, deque] = {}
        self.started = time.time()

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            by_status = self.counts.setdefault(route, {})
            by_status[status] = by_status.get(status, 0) + 1
            window = self.latency.get(route)
            if window is None:
                window = self.latency[route] = deque(maxlen=LATENCY_WINDOW)
            window.append(seconds)

    def summary(self) -> dict:
        import numpy as np

        with self._lock:
            routes = {}
            for route, by_status in sorted(self.counts.items()):
                lat = np.asarray(self.latency.get(route, ()), dtype=np.float64) * 1e3
                routes[route] = {"count": sum(by_status.values()), "by_status": {str(k): v for k, v in
                                                                                 sorted(by_status.items())},
                                 "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
                                 "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
                                 "window": int(len(lat))}
        return {"uptime_s": round(time.time() - self.started, 3), "routes": routes}


class MetricsMiddleware:
    """Counts every request under its route's path template (``POST /v1/users/{user_id}/comparisons``);
    a request refused before routing (a 413) is matched against the routes here."""

    def __init__(self, app, metrics: Metrics, routes=None) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route_of(self, scope) -> str:
        route = scope.get("route")
        if route is None and self.routes is not None:
            from starlette.routing import Match

            for candidate in self.routes:
                if candidate.matches(scope)[0] is Match.FULL:
                    route = candidate
                    break
        return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.record(f"{scope.get('method', '?')} {self._route_of(scope)}", status,
                                time.perf_counter() - start)


class ReadsInFlight:
    """Counts the requests in flight that are not writes (``Service.reads_in_flight``) and notes
    when the last one came and went (``Service.last_read_at``): while there are any, and for
    ``apps.server.service.READ_QUIET_S`` after, a write's state is computed in the compute thread
    rather than on the event loop (``INLINE_COMPARISONS``), so reads do not wait behind writes'
    computations."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    @staticmethod
    def _is_write(scope) -> bool:
        method, path = scope.get("method"), scope.get("path", "")
        if method == "DELETE":
            return path.startswith("/v1/users/")
        return method == "POST" and (path == "/v1/users" or (path.startswith("/v1/users/")
                                                             and path.endswith("/comparisons")))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self._is_write(scope):
            return await self.app(scope, receive, send)
        self.service.reads_in_flight += 1
        self.service.last_read_at = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self.service.reads_in_flight -= 1
            self.service.last_read_at = time.monotonic()


# ---------------------------------------------------------------------- the app
def _request_sha(route: str, user_id: str, body) -> str:
    canonical = json.dumps({"route": route, "user_id": user_id, "body": body.model_dump(mode="json")},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return schemas.check_id(value, "Idempotency-Key")
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


def _write_reply(reply: dict, status: int = 200) -> JSONResponse:
    """A write's reply as JSON directly: the service renders it with exactly the fields of
    ``schemas.WriteOut`` (the route's ``response_model``, kept for the API's schema), so validating
    it again per write would only cost time."""
    return JSONResponse(reply, status_code=status)


def _user_path(user_id: Annotated[str, PathParam(description="a user id")]) -> str:
    try:
        return schemas.check_id(user_id, "user id")
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


UserPath = Annotated[str, Depends(_user_path)]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def create_app(run_dir, state_dir=None, token: str | None = None, *, snapshot_every_s: float = SNAPSHOT_EVERY_S,
               synchronous: str = "FULL", service: Service | None = None, web_dir: Path | None = None) -> FastAPI:
    """The service's FastAPI app for a run written by ``plural train``.

    Args:
        run_dir: the run directory (checkpoint + ``run.json``); never written to.
        state_dir: the service's state (feedback log, snapshots); default ``<run_dir>.serve``.
        token: the bearer token writes need; default ``$PLURAL_API_TOKEN``; none: writes are open.
        snapshot_every_s: seconds between background snapshots of the store.
        synchronous: the feedback log's SQLite ``synchronous`` (``"FULL"``; see ``apps.server.feedback``).
        service: an already built :class:`Service` (tests).
        web_dir: the static web page folder (default ``apps/web``; served only if it exists).

    The model, catalog and store load in the background when the app starts (its lifespan):
    ``/v1/health`` answers at once, ``/v1/ready`` is 503 until everything is loaded.
    """
    svc = service or Service(run_dir, state_dir, snapshot_every_s=snapshot_every_s, synchronous=synchronous)
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        token = None
    expected = None if token is None else token.encode()
    metrics = Metrics()
    web = WEB_DIR if web_dir is None else Path(web_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not svc.ready and svc.status == "starting":
            svc.start(background=True)
        try:
            yield
        finally:
            if svc.ready and not await svc.drain(DRAIN_S):  # what is left is replayed on the next start
                logger.warning("shutting down with %d users' deferred updates not applied", svc.n_deferred)
            await asyncio.to_thread(svc.close)

    app = FastAPI(title="plural", version="1", lifespan=lifespan,
                  description="Personalized preference models as a recommender backend: score, rank and "
                              "recommend for users who give comparisons, with durable online feedback.")
    app.state.service = svc
    app.state.metrics = metrics

    # -------------------------------------------------------------- errors
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, err: ServiceError):
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, err: ValueError):
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(KeyError)
    async def _key_error(request: Request, err: KeyError):
        message = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
        return JSONResponse({"detail": message}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        return JSONResponse({"detail": "; ".join(problems), "errors": json.loads(json.dumps(
            [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in err.errors()],
            default=str))}, status_code=422)

    # -------------------------------------------------------------- auth
    async def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if expected is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is needed for writes",
                                headers={"WWW-Authenticate": "Bearer"})

    writes = [Depends(require_token)]

    # -------------------------------------------------------------- users
    @app.post("/v1/users", status_code=201, response_model=schemas.WriteOut, dependencies=writes, tags=["users"])
    async def create_user(body: schemas.CreateUserIn, idempotency_key: IdemKey = None):
        key = _idempotency_key(idempotency_key)
        return _write_reply(await svc.add_comparisons(body.user_id, body.comparisons, create_only=True,
                                                      idempotency_key=key, deferred=body.update == "deferred",
                                                      request_sha256=_request_sha("create", body.user_id, body)),
                            201)

    @app.post("/v1/users/{user_id:path}/comparisons", response_model=schemas.WriteOut, dependencies=writes,
              tags=["users"])
    async def add_comparisons(user_id: UserPath, body: schemas.ComparisonsIn, idempotency_key: IdemKey = None):
        key = _idempotency_key(idempotency_key)
        return _write_reply(await svc.add_comparisons(user_id, body.comparisons, idempotency_key=key,
                                                      deferred=body.update == "deferred",
                                                      request_sha256=_request_sha("add", user_id, body)))

    @app.delete("/v1/users/{user_id:path}", response_model=schemas.DeleteOut, dependencies=writes, tags=["users"])
    async def delete_user(user_id: UserPath):
        return await svc.delete_user(user_id)

    @app.get("/v1/users/{user_id:path}/next", response_model=schemas.QuestionOut, tags=["users"])
    async def next_question(user_id: UserPath,
                            pool: Annotated[int, Query(ge=2, le=schemas.MAX_POOL)] = schemas.DEFAULT_POOL,
                            strategy: schemas.Strategy = "eig"):
        return await asyncio.to_thread(svc.next_question, user_id, pool, strategy)

    @app.get("/v1/users/{user_id:path}", response_model=schemas.UserStateOut, tags=["users"])
    async def get_user(user_id: UserPath):
        return svc.user_state(user_id)

    # -------------------------------------------------------------- scoring
    @app.post("/v1/score", response_model=schemas.ScoreOut, tags=["scoring"],
              description="Scores of catalog items (`item_ids`) and texts (`texts`) for a user, or for the "
                          "population when `user_id` is null. A prompt-aware run scores the texts under "
                          "`prompt` (null: no prompt); a prompt-blind run ignores `prompt`.")
    async def score(body: schemas.ScoreIn):
        if body.texts:  # the encoder may load its model or embed: off the event loop
            return await asyncio.to_thread(svc.score, body.user_id, body.item_ids, body.texts, body.prompt)
        return svc.score(body.user_id, body.item_ids, None)

    @app.post("/v1/rank", response_model=schemas.RankOut, tags=["scoring"])
    async def rank(body: schemas.RankIn):
        return svc.rank(body.user_id, body.candidates)

    @app.post("/v1/recommend", response_model=schemas.RecommendOut, tags=["scoring"])
    async def recommend(body: schemas.RecommendIn):
        return svc.recommend(body.user_id, body.n, body.exclude_judged, body.exclude, body.candidates)

    @app.post("/v1/batch/score", response_model=schemas.BatchScoreOut, tags=["batch"],
              description="`/v1/score` for many users; the texts are embedded once, under `prompt` for a "
                          "prompt-aware run.")
    async def batch_score(body: schemas.BatchScoreIn):
        return await asyncio.to_thread(svc.batch_score, body.user_ids, body.item_ids, body.texts, body.prompt)

    @app.post("/v1/batch/rank", response_model=schemas.BatchRankOut, tags=["batch"])
    async def batch_rank(body: schemas.BatchRankIn):
        return await asyncio.to_thread(svc.batch_rank, body.user_ids, body.candidates)

    @app.post("/v1/batch/recommend", response_model=schemas.BatchRecommendOut, tags=["batch"])
    async def batch_recommend(body: schemas.BatchRecommendIn):
        return await asyncio.to_thread(svc.batch_recommend, body.user_ids, body.n, body.exclude_judged)

    # -------------------------------------------------------------- the page's helpers
    @app.get("/v1/map", response_model=schemas.MapOut, tags=["page"])
    async def user_map(user_id: Annotated[str | None, Query(max_length=schemas.MAX_ID_LENGTH)] = None,
                       limit: Annotated[int, Query(ge=0, le=5000)] = 500):
        if user_id is not None:
            user_id = _user_path(user_id)
        return svc.user_map(user_id, limit)

    @app.get("/v1/items", response_model=schemas.ItemsOut, tags=["page"])
    async def items(offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100):
        return svc.items(offset, limit)

    # -------------------------------------------------------------- operations
    @app.get("/v1/health", tags=["operations"])
    async def health():
        return {"status": "ok"}

    @app.get("/v1/ready", tags=["operations"])
    async def ready():
        body = {"ready": svc.ready, "status": svc.status, "error": svc.error}
        if svc.ready:
            body.update(model=svc.run.model.name, n_items=len(svc.run.data.item_ids),
                        n_users=len(svc.store) if svc.store is not None else 0)
        return JSONResponse(body, status_code=200 if svc.ready else 503)

    @app.get("/v1/metrics", tags=["operations"])
    async def get_metrics():
        out = metrics.summary()
        out["log"] = svc.log.stats() if svc.log is not None else None
        out["n_users"] = len(svc.store) if svc.store is not None else 0
        out["last_snapshot"] = svc.last_snapshot
        out["deferred"] = svc.deferred_summary()
        return out

    @app.get("/v1/info", tags=["operations"])
    async def info():
        return {**svc.info(), "limits": schemas.LIMITS, "auth_required_for_writes": expected is not None}

    # -------------------------------------------------------------- the web page (if there is one)
    @app.get("/", include_in_schema=False)
    async def index_page():
        page = web / "index.html"
        if page.is_file():
            return FileResponse(page)
        return JSONResponse({"detail": "no web page here; the API is under /v1 (see /docs)"}, status_code=404)

    app.mount("/web", OptionalStaticFiles(directory=web), name="web")
    # outermost first: metrics (so 413s and 401s are counted), then the body limit
    app.add_middleware(BodyLimit, limit=schemas.MAX_BODY_BYTES)
    app.add_middleware(ReadsInFlight, service=svc)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app


class OptionalStaticFiles:
    """``StaticFiles`` over a folder that may not exist (yet): a 404 until it does."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._files = None

    async def __call__(self, scope, receive, send):
        if not self.directory.is_dir():
            return await _send_json(send, 404, {"detail": "no web page is installed (apps/web is missing)"})
        if self._files is None:
            from starlette.staticfiles import StaticFiles

            self._files = StaticFiles(directory=self.directory)
        await self._files(scope, receive, send)
