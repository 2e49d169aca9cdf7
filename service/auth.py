"""API keys: which paths need one, and the constant-time check.

The request middleware applies it before the app sees the request, so an unauthenticated client
never gets its body read or parsed; the routers' `require_api_key` dependency does the same check
again (it is what puts the Bearer scheme into the OpenAPI schema).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

# Every inference and model route. Health probes, /metrics, the server metadata at /v2 and the
# docs stay open: orchestrators and scrapers call them without credentials.
GUARDED_PREFIXES = ("/v1/", "/v2/models", "/v2/repository")

UNAUTHORIZED_MESSAGE = "a valid API key is required (Authorization: Bearer <key>)"


def is_guarded(path: str) -> bool:
    return path.startswith(GUARDED_PREFIXES)


def bearer_token(authorization: str | None) -> bytes:
    """The credentials of an `Authorization: Bearer <token>` header (b"" for anything else).
    Starlette decodes header values as latin-1, so encoding back gives the bytes sent."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return b""
    return token.strip().encode("latin-1")


def key_matches(given: bytes, keys: Sequence[bytes]) -> bool:
    """True when `given` is one of `keys`; the time does not depend on which key matched."""
    matched = False
    for key in keys:  # no early exit
        matched |= hmac.compare_digest(given, key)
    return matched
