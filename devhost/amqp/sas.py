"""Shared Access Signature tokens: the form Service Bus and Event Hubs accept, made and verified.

A token is ``SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>&skn=<key name>``;
the signature is the base64 HMAC-SHA256, under the key (its UTF-8 text, as the SDKs use it),
of the URL-encoded resource, a newline and the expiry in epoch seconds. The resource is a URL
(``sb://host/queue``); a token for a path also grants everything under it (``sb://host/`` is
the whole namespace).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass
from typing import Final

TOKEN_PREFIX: Final = "SharedAccessSignature "


class SasError(Exception):
    """A token that grants nothing; ``code`` is the reason Service Bus gives for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SasGrant:
    """What a verified token grants: ``path`` (no leading or trailing slash) until ``expiry``."""

    resource: str
    path: str
    expiry: float
    key_name: str

    def covers(self, entity_path: str, now: float) -> bool:
        """Whether this grant is live at ``now`` and reaches ``entity_path``."""
        if now >= self.expiry:
            return False
        if not self.path:
            return True
        wanted = entity_path.strip("/").lower()
        return wanted == self.path or wanted.startswith(self.path + "/")


def resource_path(resource: str) -> str:
    """The entity path of a token resource or an attach address: the URL without its scheme
    and host, no leading or trailing slash, lower case (entity names are case-insensitive)."""
    text = resource.strip()
    if "://" in text:
        parsed = urllib.parse.urlsplit(text)
        text = parsed.path
    return text.strip("/").lower()


def sign(resource: str, key_name: str, key: str, expiry: int) -> str:
    """A token for ``resource`` signed with ``key``, valid until ``expiry`` (epoch seconds)."""
    encoded = urllib.parse.quote_plus(resource)
    signature = _signature(key, encoded, expiry)
    query = urllib.parse.urlencode(
        {"sr": resource, "sig": signature, "se": str(expiry), "skn": key_name}
    )
    return TOKEN_PREFIX + query


def verify(token: str, *, keys: dict[str, str], now: float | None = None) -> SasGrant:
    """Check ``token`` against ``keys`` (key name to key); return what it grants.

    Raises :class:`SasError` for a malformed, unsigned, wrongly signed, unknown-key or expired
    token. The signature is compared in constant time.
    """
    now = time.time() if now is None else now
    if not token.startswith(TOKEN_PREFIX):
        raise SasError("InvalidToken", "the token is not a SharedAccessSignature")
    fields: dict[str, str] = {}
    raw_fields: dict[str, str] = {}
    for part in token[len(TOKEN_PREFIX) :].split("&"):
        name, sep, value = part.partition("=")
        if not sep or name in fields:
            raise SasError("InvalidToken", f"malformed token field {name!r}")
        raw_fields[name] = value
        fields[name] = urllib.parse.unquote_plus(value)
    missing = [name for name in ("sr", "sig", "se", "skn") if not fields.get(name)]
    if missing:
        raise SasError("InvalidToken", f"the token lacks {', '.join(missing)}")
    try:
        expiry = int(fields["se"])
    except ValueError:
        raise SasError("InvalidToken", "the token's expiry (se) is not a number") from None
    key = keys.get(fields["skn"])
    if key is None:
        raise SasError(
            "InvalidSignature", f"the key name {fields['skn']!r} is not a known access policy"
        )
    # The resource is signed as it appears in the token (URL-encoded); SDKs differ in the case
    # of the escapes they write, so the canonical Python encoding is accepted too.
    candidates = {raw_fields["sr"], urllib.parse.quote_plus(fields["sr"])}
    given = fields["sig"].encode("ascii", "replace")
    if not any(
        hmac.compare_digest(_signature(key, encoded, expiry).encode("ascii"), given)
        for encoded in candidates
    ):
        raise SasError("InvalidSignature", "the token's signature does not match the key")
    if now >= expiry:
        raise SasError("ExpiredToken", f"the token expired at {expiry} (epoch seconds)")
    return SasGrant(
        resource=fields["sr"],
        path=resource_path(fields["sr"]),
        expiry=float(expiry),
        key_name=fields["skn"],
    )


def _signature(key: str, encoded_resource: str, expiry: int) -> str:
    digest = hmac.new(
        key.encode("utf-8"), f"{encoded_resource}\n{expiry}".encode(), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")
