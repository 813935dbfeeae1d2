"""Bearer-token authentication for both APIs (`--auth_token_file`).

The token file holds one token per line; blank lines and lines starting with `#` are ignored, so
several clients (or an old and a new token during a rotation) can be let in at once. The file is
re-read when its modification time or size changes, looked at no more than once a second, so
rotating a Kubernetes Secret takes effect without a restart; if the new file cannot be read, the
tokens already loaded stay in force and the failure is logged once.

A request carries `authorization: Bearer <token>` (gRPC metadata or the HTTP header). Every known
token is compared in constant time (`hmac.compare_digest`) and all of them are always compared, so
neither the answer nor its timing says which tokens exist or how much of one matched.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path

from serving.errors import Unauthenticated

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0
_SCHEME = "bearer "


class TokenFile:
    def __init__(self, path: Path, check_seconds: float = RELOAD_CHECK_SECONDS) -> None:
        self.path = path
        self._check_seconds = check_seconds
        self._signature: tuple[int, int] | None = None
        self._next_check = 0.0
        self._tokens: tuple[bytes, ...] = ()
        self._failed = False
        self._reload(initial=True)

    @property
    def count(self) -> int:
        return len(self._tokens)

    def _reload(self, initial: bool = False) -> None:
        try:
            stat = os.stat(self.path)
            signature = (stat.st_mtime_ns, stat.st_size)
            if signature == self._signature:
                return
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            if initial:
                raise ValueError(f"--auth_token_file: cannot read {self.path}: {exc}") from exc
            if not self._failed:
                log.error("cannot re-read the token file %s (%s); keeping the %d tokens loaded", self.path, exc, self.count)
                self._failed = True
            return
        tokens = tuple(
            line.strip().encode() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        )
        if not tokens:
            if initial:
                raise ValueError(f"--auth_token_file: {self.path} holds no token")
            if not self._failed:
                log.error("the token file %s is now empty; keeping the %d tokens loaded", self.path, self.count)
                self._failed = True
            return
        if not initial:
            log.info("token file %s changed: %d tokens", self.path, len(tokens))
        self._tokens, self._signature, self._failed = tokens, signature, False

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_seconds
            self._reload()

    def accepts(self, presented: bytes) -> bool:
        """Whether `presented` is one of the tokens (all compared, in constant time each)."""
        self._maybe_reload()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(token, presented)
        return matched

    def check(self, authorization: str | None) -> None:
        """Raise Unauthenticated unless `authorization` is `Bearer <a known token>`."""
        if not authorization:
            raise Unauthenticated('this server requires a bearer token: send "authorization: Bearer <token>"')
        if authorization[: len(_SCHEME)].lower() != _SCHEME:
            raise Unauthenticated('the authorization is not of the form "Bearer <token>"')
        if not self.accepts(authorization[len(_SCHEME) :].strip().encode()):
            raise Unauthenticated("invalid bearer token")
