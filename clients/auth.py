"""Bearer tokens for the server's `--auth_token_file`: checked once, sent on every call.

gRPC sends the token as call metadata `authorization: Bearer <token>` (gRPC metadata keys are
lower case), REST as the header `Authorization: Bearer <token>`. A missing or wrong token is
answered with UNAUTHENTICATED / HTTP 401, which the clients never retry.
"""

from __future__ import annotations

import os
from pathlib import Path

from clients.errors import ClientError

GRPC_METADATA_KEY = "authorization"
HTTP_HEADER = "Authorization"
SCHEME = "Bearer"


def check_token(token: str) -> str:
    """The token itself, refused when it could not travel in a header (empty, spaces, control bytes)."""
    if not isinstance(token, str) or not token:
        raise ClientError("INVALID_ARGUMENT", None, "the bearer token is empty")
    if not all("!" <= ch <= "~" for ch in token):  # visible ASCII only: one header token, no spaces
        raise ClientError(
            "INVALID_ARGUMENT", None, "the bearer token may hold only visible ASCII characters, no spaces"
        )
    return token


def authorization_value(token: str) -> str:
    """`Bearer <token>`, the value of the header (REST) or metadata entry (gRPC)."""
    return f"{SCHEME} {check_token(token)}"


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in a file, surrounding whitespace (a trailing newline) stripped."""
    location = Path(path)
    try:
        text = location.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ClientError("INVALID_ARGUMENT", None, f"cannot read the token file {location}: {why}") from exc
    token = text.strip()
    if not token:
        raise ClientError("INVALID_ARGUMENT", None, f"the token file {location} is empty")
    try:
        return check_token(token)
    except ClientError as exc:
        raise ClientError("INVALID_ARGUMENT", None, f"{location}: {exc.message}") from exc
