"""Running the service: :func:`serve` (for ``plural serve``) and ``python -m apps.server``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from apps.server.service import SNAPSHOT_EVERY_S

logger = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.001


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          state_dir: str | os.PathLike | None = None, snapshot_every_s: float = SNAPSHOT_EVERY_S,
          token: str | None = None, log_level: str = "info") -> None:
    """Serve the run ``run_dir`` over HTTP with uvicorn until interrupted.

    One process, one event loop (async routes, worker threads for the heavier calls): the feedback
    log's writer and the snapshots assume a single process owns ``state_dir`` (it is locked), so
    there is no ``workers`` option.

    Args:
        run_dir: a run written by ``plural train``.
        host: the address to bind; loopback by default. Binding elsewhere without a token logs a warning.
        port: the TCP port (0: any free one).
        state_dir: the service's state; default ``<run_dir>.serve`` beside the run.
        snapshot_every_s: seconds between background snapshots of the user store.
        token: the bearer token for writes; default ``$PLURAL_API_TOKEN``.
        log_level: uvicorn's log level.
    """
    import sys

    import uvicorn

    from apps.server.app import TOKEN_ENV, create_app

    # The log's writer thread needs the GIL back after each fsync; with a 5 ms switch interval it
    # can wait that long behind the event loop, holding up every acknowledgement of its group.
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    run_dir = Path(run_dir)
    if token is None and not os.environ.get(TOKEN_ENV) and not _is_loopback(host):
        logger.warning("serving on %s without a token: anyone who can reach it can write; set %s", host, TOKEN_ENV)
    app = create_app(run_dir, state_dir, token, snapshot_every_s=snapshot_every_s)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, access_log=False,
                timeout_graceful_shutdown=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m apps.server",
                                     description="Serve a plural run over HTTP (a recommender backend).")
    parser.add_argument("run_dir", type=Path, help="run directory written by `plural train`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--state-dir", type=Path, default=None, help="default: RUN_DIR.serve beside the run")
    parser.add_argument("--snapshot-every", type=float, default=SNAPSHOT_EVERY_S, dest="snapshot_every_s",
                        help="seconds between snapshots of the user store")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    serve(args.run_dir, host=args.host, port=args.port, state_dir=args.state_dir,
          snapshot_every_s=args.snapshot_every_s, log_level=args.log_level)
