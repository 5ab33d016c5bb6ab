"""``python -m apps.server RUN_DIR --port 8000``."""

from apps.server.cli import main

main()
