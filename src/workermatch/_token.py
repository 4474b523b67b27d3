"""Signed worker tokens: hand clients a worker id they cannot forge.

A ``worker_id`` hint wins over every other rule, so a client that could name any worker could
write onto another machine's record.  The ids the shipped stores make are random UUIDs, which
nobody guesses; a deployment whose ids are guessable (sequential, or the dashboard's own), or
that wants to be sure, hands out a token instead: the id and an HMAC of it under a server key.
The endpoint verifies the token and passes the id it carries as the hint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import attrs

from ._errors import InvalidInput
from ._model import check_id, quote

__all__ = ["WorkerTokens"]

_SEPARATOR = "."
_MAC_CHARS = 32  # 192 bits of the SHA-256 MAC, base64url without padding


def _c_key(value: object) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes) or len(value) < 16:
        raise InvalidInput(
            "the token key must be at least 16 bytes (use secrets.token_bytes(32))", field="key"
        )
    return value


@attrs.frozen(repr=False)
class WorkerTokens:
    """Issue and verify signed worker tokens under a server ``key`` (bytes, or text as UTF-8;
    at least 16 bytes).  The repr never shows the key.

    >>> tokens = WorkerTokens(b"0123456789abcdef-server-key")
    >>> token = tokens.issue("w1")
    >>> tokens.verify(token)
    'w1'
    """

    key: bytes = attrs.field(converter=_c_key)

    def __repr__(self) -> str:
        return "WorkerTokens(key=<hidden>)"

    def _mac(self, worker_id: str) -> str:
        digest = hmac.new(self.key, worker_id.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii")[:_MAC_CHARS]

    def issue(self, worker_id: str) -> str:
        """The token of ``worker_id``: the id, a dot, and its MAC."""
        wid = check_id(worker_id, "worker_id")
        return f"{wid}{_SEPARATOR}{self._mac(wid)}"

    def verify(self, token: object) -> str:
        """The worker id ``token`` carries; :class:`~workermatch.InvalidInput` (field
        ``"worker_token"``) when it was not issued under this key."""
        if not isinstance(token, str) or _SEPARATOR not in token or len(token) > 400:
            raise InvalidInput(
                f"worker token {quote(token)} is not a worker token", field="worker_token"
            )
        wid, _, mac = token.rpartition(_SEPARATOR)
        try:
            wid = check_id(wid, "worker_token")
        except InvalidInput:
            raise InvalidInput(
                f"worker token {quote(token)} is not a worker token", field="worker_token"
            ) from None
        if not hmac.compare_digest(mac, self._mac(wid)):
            raise InvalidInput(
                f"worker token {quote(token)} was not issued by this server", field="worker_token"
            )
        return wid
