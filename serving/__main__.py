"""`python -m serving` / `serve`: parse flags, then run until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from serving.config import ConfigError, parse_args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        from serving.workers import run_workers

        return run_workers(config)
    from serving.server import serve

    try:
        asyncio.run(serve(config))
    except OSError as exc:  # e.g. the port is taken
        logging.getLogger("serving").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
