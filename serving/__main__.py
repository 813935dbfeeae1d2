"""`python -m serving` / `serve`: parse flags, then run until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from serving.config import ConfigError, log_ignored, parse_args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    log_ignored(config)  # once per server, not once per worker
    if config.workers > 1:
        from serving.workers import run_workers

        return run_workers(config)
    from serving.server import serve

    try:
        asyncio.run(serve(config))
    except (OSError, ConfigError) as exc:  # the port is taken; a config the models refute (labels)
        logging.getLogger("serving").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
