"""Signed submissions: HMAC-SHA256 of the body with a per-key secret.

A game client holding a key with a signing secret sends, with each submission,

    X-Rankstream-Timestamp: <unix seconds>
    X-Rankstream-Signature: <hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

so a body altered on the way, or made by someone who only sniffed the key, is refused.
The timestamp bounds replays to `MAX_SKEW_S` either side of the server's clock (and a
replayed body carrying an event_id is applied once anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Rankstream-Timestamp"
SIGNATURE_HEADER = "X-Rankstream-Signature"
MAX_SKEW_S = 300


class BadSignature(ValueError):
    """A signed key's request without a valid signature; `header` names what is wrong."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(message)
        self.header = header


def generate_secret() -> str:
    """A new signing secret."""
    return secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature of a body sent at `timestamp`."""
    message = b"%d." % timestamp + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise BadSignature unless the headers sign this body, recently enough."""
    raw_time = headers.get(TIMESTAMP_HEADER.lower())
    given = headers.get(SIGNATURE_HEADER.lower())
    if raw_time is None:
        raise BadSignature(TIMESTAMP_HEADER, "this key signs its submissions: header missing")
    if given is None:
        raise BadSignature(SIGNATURE_HEADER, "this key signs its submissions: header missing")
    if not raw_time.isdigit() or len(raw_time) > 12:
        raise BadSignature(TIMESTAMP_HEADER, "must be unix seconds")
    timestamp = int(raw_time)
    if abs(now - timestamp) > MAX_SKEW_S:
        raise BadSignature(
            TIMESTAMP_HEADER, f"more than {MAX_SKEW_S}s away from the server's clock"
        )
    if not hmac.compare_digest(sign(secret, timestamp, body), given.strip().lower()):
        raise BadSignature(SIGNATURE_HEADER, "does not match the body and timestamp")
