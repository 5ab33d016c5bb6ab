"""plural's HTTP service: a recommender backend with durable online feedback (issue 14).

``create_app(run_dir, state_dir=None, token=None)`` builds the FastAPI app (``apps.server.app``);
``serve(run_dir, host, port, ...)`` runs it with uvicorn (``apps.server.cli``); ``python -m
apps.server RUN_DIR --port 8000`` does the same from a shell. Imports are lazy, so importing
the package loads neither FastAPI nor torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from apps.server.app import create_app

        return create_app
    if name == "serve":
        from apps.server.cli import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
