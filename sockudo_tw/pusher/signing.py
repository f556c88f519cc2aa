"""
Every signature in the Pusher protocol: channel auth, user sign-in, signed
HTTP API requests and webhooks.

All are lowercase hex HMAC-SHA256 keyed with the app secret, always over the
exact strings the client sent (never re-serialised), compared in constant
time (pusher-protocol.md sections 5 and 6.1).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

__all__ = [
    "EMPTY_BODY_MD5",
    "ApiAuthError",
    "api_string_to_sign",
    "channel_string_to_sign",
    "hmac_sha256_hex",
    "sign_api_query",
    "token",
    "user_string_to_sign",
    "verify_api_request",
    "verify_token",
    "webhook_signature",
]

EMPTY_BODY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
TIMESTAMP_WINDOW = 600
_MD5 = hashlib.md5()
"""
An empty MD5 state, copied for each body (cheaper than a new one).
"""

_SHA256_BLOCK = 64
_INNER_PAD = bytes(b ^ 0x36 for b in range(256))
_OUTER_PAD = bytes(b ^ 0x5C for b in range(256))
_PADS_KEPT = 1024
_pads: dict[str, tuple[Any, Any]] = {}
"""
Each recent secret's two HMAC pads, hashed: L{_hmac_pads}.
"""


def _hmac_pads(secret: str) -> tuple[Any, Any]:
    """
    SHA-256 states that have hashed C{secret}'s inner and outer HMAC pads
    (RFC 2104), kept for the next message under the same secret: copying
    them costs less than OpenSSL's key set-up per message (C{hmac.digest}).
    At most L{_PADS_KEPT} secrets are kept; past that the cache starts over.
    """
    pads = _pads.get(secret)
    if pads is None:
        key = secret.encode("utf-8")
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        pads = (
            hashlib.sha256(key.translate(_INNER_PAD)),
            hashlib.sha256(key.translate(_OUTER_PAD)),
        )
        if len(_pads) >= _PADS_KEPT:
            _pads.clear()
        _pads[secret] = pads
    return pads


def hmac_sha256_hex(secret: str, message: str | bytes) -> str:
    """
    Lowercase hex HMAC-SHA256 of C{message} under C{secret}.
    """
    if isinstance(message, str):
        message = message.encode("utf-8")
    inner_pad, outer_pad = _hmac_pads(secret)
    inner = inner_pad.copy()
    inner.update(message)
    outer = outer_pad.copy()
    outer.update(inner.digest())
    return str(outer.hexdigest())


def channel_string_to_sign(socket_id: str, channel: str, channel_data: str | None) -> str:
    """
    C{socket_id:channel}, plus C{:channel_data} whenever the subscribe carried
    one (for any channel kind, as pusher-http-node signs it).
    """
    if channel_data is None:
        return f"{socket_id}:{channel}"
    return f"{socket_id}:{channel}:{channel_data}"


def user_string_to_sign(socket_id: str, user_data: str) -> str:
    """
    The string a C{pusher:signin} token signs.
    """
    return f"{socket_id}::user::{user_data}"


def token(key: str, secret: str, string_to_sign: str) -> str:
    """
    An auth token C{"<key>:<hex signature>"}, as app servers produce.
    """
    return f"{key}:{hmac_sha256_hex(secret, string_to_sign)}"


def verify_token(key: str, secret: str, string_to_sign: str, auth: object) -> bool:
    """
    Whether C{auth} is C{"<key>:<signature of string_to_sign>"}, compared in
    constant time over the whole token (key part included).
    """
    if not isinstance(auth, str):
        return False
    expected = token(key, secret, string_to_sign)
    return hmac.compare_digest(expected.encode("utf-8"), auth.encode("utf-8", "replace"))


def webhook_signature(secret: str, body: bytes) -> str:
    """
    C{X-Pusher-Signature} for a webhook body.
    """
    return hmac_sha256_hex(secret, body)


def api_string_to_sign(method: str, path: str, query: Iterable[tuple[str, str]]) -> str:
    """
    C{METHOD\\npath\\ncanonical query}: every parameter but C{auth_signature},
    keys lower-cased and sorted, values decoded and not re-escaped.
    """
    return _string_to_sign(method, path, [(k.lower(), v) for k, v in query])


_BY_NAME = itemgetter(0)


def _string_to_sign(method: str, path: str, lowered: list[tuple[str, str]]) -> str:
    """
    L{api_string_to_sign} of parameters whose names are lower-cased already.
    """
    params = [kv for kv in lowered if kv[0] != "auth_signature"]
    params.sort(key=_BY_NAME)  # stable: repeated names keep their order
    canonical = "&".join(["=".join(kv) for kv in params])
    return method.upper() + "\n" + path + "\n" + canonical


def sign_api_query(
    key: str,
    secret: str,
    method: str,
    path: str,
    params: Sequence[tuple[str, str]],
    body: bytes,
    timestamp: int,
) -> list[tuple[str, str]]:
    """
    Build a signed query for a request, as the server SDKs do (used by tests
    and tools that call the API).
    """
    query = [
        *params,
        ("auth_key", key),
        ("auth_timestamp", str(timestamp)),
        ("auth_version", "1.0"),
    ]
    if body:
        query.append(("body_md5", hashlib.md5(body).hexdigest()))
    signature = hmac_sha256_hex(secret, api_string_to_sign(method, path, query))
    return [*query, ("auth_signature", signature)]


class ApiAuthError(Exception):
    """
    A signed API request was refused.

    @ivar status: the HTTP status to answer with.
    @ivar message: the error text, in the hosted service's words.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expired(given: str, now: float) -> ApiAuthError:
    """
    Pusher's refusal of a timestamp outside the window; C{given} is shown as
    a date when it is one, else as sent (cut to 40 characters).
    """
    try:
        shown = _iso(int(given))
    except (ValueError, OverflowError, OSError):
        shown = given[:40]
    return ApiAuthError(
        401,
        f"Timestamp expired: Given timestamp ({shown}) not within "
        f"{TIMESTAMP_WINDOW}s of server time ({_iso(now)})",
    )


def verify_api_request(
    *,
    key: str,
    secret: str,
    method: str,
    paths: Sequence[str],
    query: Sequence[tuple[str, str]],
    body: bytes,
    now: float,
) -> None:
    """
    Check a signed HTTP API request for the app with C{key}/C{secret}.

    @param paths: the request path as received, then any alternative spelling
        (its percent-decoded form) that the signature may have been made over.
    @param query: decoded query parameters in order, repeated keys kept.
    @raise ApiAuthError: with status 401 and Pusher's message when any check
        fails; nothing is returned on success.
    """
    lowered = [(k.lower(), v) for k, v in query]
    params = dict(reversed(lowered))  # the first value of a name wins
    auth_key = params.get("auth_key")
    if not auth_key:
        raise ApiAuthError(401, "Missing parameter: auth_key")
    if not hmac.compare_digest(auth_key.encode(), key.encode()):
        raise ApiAuthError(401, "Unknown auth_key")
    raw_ts = params.get("auth_timestamp")
    if not raw_ts:
        raise ApiAuthError(401, "Timestamp required")
    # A plain ASCII integer: int() would also take "+1", " 1", "1_0" and other
    # scripts' digits. Twelve digits reach the year 33658, far out of any window.
    if (
        len(raw_ts) > 12
        or not raw_ts.isascii()
        or not raw_ts.isdigit()
        or abs(now - int(raw_ts)) >= TIMESTAMP_WINDOW
    ):
        raise _expired(raw_ts, now)
    version = params.get("auth_version")
    if not version:
        raise ApiAuthError(401, "Version required")
    if version != "1.0":
        raise ApiAuthError(401, "Version not supported")
    body_md5 = params.get("body_md5")
    if body or body_md5 is not None:
        digest = _MD5.copy()  # a copy skips OpenSSL's look-up of MD5
        digest.update(body)
        actual = digest.hexdigest()
        if body_md5 is None:
            raise ApiAuthError(401, "Missing parameter: body_md5")
        if not hmac.compare_digest(body_md5.encode(), actual.encode()):
            raise ApiAuthError(401, "body_md5 does not match the request body")
    sent = params.get("auth_signature", "")
    string_to_sign = ""
    for path in paths:
        string_to_sign = _string_to_sign(method, path, lowered)
        expected = hmac_sha256_hex(secret, string_to_sign)
        if hmac.compare_digest(expected.encode(), sent.encode("utf-8", "replace")):
            return
    raise ApiAuthError(
        401,
        "Invalid signature: you should have sent "
        f'HmacSHA256Hex("{string_to_sign}", your_secret_key), but you sent "{sent}"',
    )
