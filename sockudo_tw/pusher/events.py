"""
Serialising Pusher frames.

Rule (pusher-protocol.md section 2.1): C{data} sent by the server is always a
string, except on C{pusher:error} where it is an object. Absent fields are
left out, never written as C{null}. Frames are compact JSON encoded once as
UTF-8 bytes, ready to be framed once for every subscriber.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from sockudo_tw.pusher.errors import PusherError, PusherErrorCode

__all__ = [
    "MAX_JSON_DEPTH",
    "MISSING",
    "Inbound",
    "MalformedJSONError",
    "cache_miss",
    "channel_event",
    "client_event",
    "command_data",
    "connection_established",
    "decode",
    "encode",
    "error_frame",
    "member_added",
    "member_removed",
    "parse_json",
    "ping",
    "pong",
    "relay_data",
    "signin_success",
    "subscription_count",
    "subscription_error",
    "subscription_succeeded",
    "valid_event_name",
    "watchlist_events",
]

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_quote = json.encoder.encode_basestring
"""
A string as L{_encoder} writes it (C{ensure_ascii=False}): quoted, escaped.
"""


def encode(frame: dict[str, Any]) -> bytes:
    """
    Compact JSON bytes for one frame.
    """
    return _encoder.encode(frame).encode("utf-8")


def channel_event(event: str, channel: str, data: str, user_id: str | None = None) -> bytes:
    """
    A channel event as subscribers receive it; C{data} is passed through as
    the exact string the publisher sent.

    The same bytes as L{encode} of the frame's dict, joined from its quoted
    strings (C{json}'s own C{encode_basestring}, what the encoder applies to
    each string), without building the dict and encoder state per event.
    """
    text = (
        '{"event":'
        + _quote(event)
        + ',"channel":'
        + _quote(channel)
        + ',"data":'
        + _quote(data)
        + ("}" if user_id is None else ',"user_id":' + _quote(user_id) + "}")
    )
    return text.encode("utf-8")


def error_frame(code: int | None, message: str) -> bytes:
    """
    A C{pusher:error} frame (object data, code may be null after the
    handshake).
    """
    return encode({"event": "pusher:error", "data": {"code": code, "message": message}})


# ---------------------------------------------------------------------------
# Server frames with fixed shapes (pusher-protocol.md section 2.3).


_EMPTY = "{}"


def _text(value: Any) -> str:
    """
    Compact JSON text for the string-encoded C{data} of a server frame.
    """
    return _encoder.encode(value)


def connection_established(socket_id: str, activity_timeout: int) -> bytes:
    """
    The first frame of every accepted connection.
    """
    data = _text({"socket_id": socket_id, "activity_timeout": activity_timeout})
    return encode({"event": "pusher:connection_established", "data": data})


def subscription_succeeded(channel: str, members: Mapping[str, Any] | None = None) -> bytes:
    """
    C{pusher_internal:subscription_succeeded}; C{members} (user id to
    C{user_info}) makes it the presence shape with ids, hash and count.
    """
    if members is None:
        data = _EMPTY
    else:
        data = _text(
            {"presence": {"ids": list(members), "hash": dict(members), "count": len(members)}}
        )
    return encode(
        {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": data}
    )


def member_added(channel: str, user_id: str, user_info: Any) -> bytes:
    """
    C{pusher_internal:member_added} for the other members of a presence
    channel.
    """
    data = _text({"user_id": user_id, "user_info": user_info})
    return encode({"event": "pusher_internal:member_added", "channel": channel, "data": data})


def member_removed(channel: str, user_id: str) -> bytes:
    """
    C{pusher_internal:member_removed}, sent when a user's last socket leaves.
    """
    data = _text({"user_id": user_id})
    return encode({"event": "pusher_internal:member_removed", "channel": channel, "data": data})


def subscription_count(channel: str, count: int) -> bytes:
    """
    C{pusher_internal:subscription_count} (pusher-js re-emits it as
    C{pusher:subscription_count}).
    """
    data = _text({"subscription_count": count})
    return encode({"event": "pusher_internal:subscription_count", "channel": channel, "data": data})


def cache_miss(channel: str) -> bytes:
    """
    C{pusher:cache_miss} for a cache channel with nothing stored.
    """
    return encode({"event": "pusher:cache_miss", "channel": channel, "data": _EMPTY})


def subscription_error(channel: str, message: str, status: int) -> bytes:
    """
    A channel-scoped C{pusher:subscription_error} in pusher-js's own shape
    (Laravel Echo's C{.error()} binds it).
    """
    data = _text({"type": "AuthError", "error": message, "status": status})
    return encode({"event": "pusher:subscription_error", "channel": channel, "data": data})


def signin_success(user_data: str) -> bytes:
    """
    C{pusher:signin_success} echoing the exact C{user_data} string signed.
    """
    return encode({"event": "pusher:signin_success", "data": _text({"user_data": user_data})})


def watchlist_events(events: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    """
    C{pusher_internal:watchlist_events} in pusher-js's format: a list of
    C{(name, user_ids)} where name is C{online} or C{offline}.
    """
    data = _text({"events": [{"name": name, "user_ids": list(ids)} for name, ids in events]})
    return encode({"event": "pusher_internal:watchlist_events", "data": data})


def ping() -> bytes:
    """
    A server C{pusher:ping}.
    """
    return _PING


def pong() -> bytes:
    """
    The reply to a client's C{pusher:ping} (encoded once).
    """
    return _PONG


_PING = encode({"event": "pusher:ping", "data": _EMPTY})
_PONG = encode({"event": "pusher:pong", "data": _EMPTY})


def client_event(event: str, channel: str, data: str | None, user_id: str | None) -> bytes:
    """
    A relayed client event: C{data} left out when the client sent none,
    C{user_id} on presence channels.
    """
    frame: dict[str, Any] = {"event": event, "channel": channel}
    if data is not None:
        frame["data"] = data
    if user_id is not None:
        frame["user_id"] = user_id
    return encode(frame)


# ---------------------------------------------------------------------------
# Parsing JSON from clients and publishers.

MAX_JSON_DEPTH = 64
"""
The deepest nesting of arrays and objects accepted in any JSON a client or
publisher sends (the envelope counts as one level). Deeper text is refused
before the decoder sees it, so it never reaches Python's recursion limit.
"""


class MalformedJSONError(ValueError):
    """
    Text that is not JSON we accept: a syntax error, C{NaN} or C{Infinity},
    nesting deeper than L{MAX_JSON_DEPTH}, or a string holding a lone
    surrogate (not Unicode, so it could never be encoded to UTF-8 again).

    @ivar reason: what is wrong, for the client's error message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _refuse_constant(name: str) -> Any:
    raise MalformedJSONError(f"Invalid JSON: {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise MalformedJSONError(f"Invalid JSON: {text[:40]} is out of range")
    return value


_strict_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
# Every byte but brackets and quotes, deleted by the nesting check; braces
# become square brackets there (only the depth matters).
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')
_BRACES_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_BRACKET_RUN = re.compile(rb"\[+|\]+")
_PEEL_PASSES = 8
# A \uD800-\uDFFF escape (or text that looks like one after a backslash):
# only then can a decoded string hold a surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_nesting(text: str, max_depth: int) -> None:
    """
    Refuse C{text} if its arrays and objects nest deeper than C{max_depth},
    without recursion and mostly at C speed: escaped backslashes and quotes
    are dropped, then everything but brackets and quotes, then the string
    literals (every other piece between quotes); from the brackets left,
    innermost pairs are peeled a few times (each pass lowers the depth by
    one and makes wide, shallow JSON vanish), then the runs of what remains
    are counted.
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    structure = unescaped.encode("utf-8", "surrogatepass").translate(
        _BRACES_AS_SQUARE, _NOT_STRUCTURE
    )
    brackets = b"".join(structure.split(b'"')[::2])
    passes = min(_PEEL_PASSES, max_depth)
    peeled = 0
    while brackets and peeled < passes:
        brackets = brackets.replace(b"[]", b"")
        peeled += 1
    depth = peeled
    for run in _BRACKET_RUN.finditer(brackets):
        size = run.end() - run.start()
        if brackets[run.start()] == 0x5B:  # "["
            depth += size
            if depth > max_depth:
                raise MalformedJSONError(f"Invalid JSON: nested deeper than {max_depth} levels")
        else:
            depth -= size


def parse_json(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """
    Decode JSON text received from outside.

    Stricter than C{json.loads} in the three ways that otherwise surface as
    tracebacks later: nesting is bounded (checked before decoding, and only
    scanned for when the text holds more brackets than the limit); C{NaN},
    C{Infinity} and numbers that overflow to it are refused (clients could
    not parse them back); a lone surrogate escape such as C{"\\ud800"} is
    refused (checked only when the text holds such an escape).

    @param text: text decoded from strict UTF-8, so that escapes are the
        only way a surrogate can get in.
    @raise MalformedJSONError: with the reason, for any text refused.
    """
    if text.count("{") + text.count("[") > max_depth:
        _check_nesting(text, max_depth)
    try:
        value = _strict_decoder.decode(text)
    except MalformedJSONError:
        raise
    except (ValueError, RecursionError):
        raise MalformedJSONError("Invalid JSON") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None:
        try:
            _encoder.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedJSONError("Invalid JSON: text is not valid Unicode") from None
    return value


# ---------------------------------------------------------------------------
# Inbound frames.


# Pusher enforces no charset on event names (Laravel's are like
# App\Events\OrderShipped), so only control characters are refused.
_EVENT_NAME = re.compile(r"[^\x00-\x1f\x7f]+")


def valid_event_name(name: str) -> bool:
    """
    Whether C{name} is a usable event name: not empty and free of ASCII
    control characters (newlines included). Length limits are the app's.
    """
    return _EVENT_NAME.fullmatch(name) is not None


@attrs.frozen
class Inbound:
    """
    One decoded client frame.

    @ivar event: the event name.
    @ivar channel: the top-level C{channel} field as sent (any JSON type), or
        L{None}.
    @ivar data: the C{data} field as sent, or L{MISSING}.
    """

    event: str
    channel: object
    data: object


class _Missing:
    """
    Marker type for a field the client left out.
    """

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def decode(text: str) -> Inbound:
    """
    Parse one text frame.

    @raise PusherError: (code 4300) when it is not a JSON object with a
        string C{event}, or is refused by L{parse_json}.
    """
    try:
        frame = parse_json(text)
    except MalformedJSONError as e:
        raise PusherError(PusherErrorCode.GENERIC_ERROR, e.reason) from None
    if not isinstance(frame, dict):
        raise PusherError(PusherErrorCode.GENERIC_ERROR, "Invalid message: expected a JSON object")
    event = frame.get("event")
    if not isinstance(event, str) or not event:
        raise PusherError(PusherErrorCode.GENERIC_ERROR, "Invalid message: missing event name")
    return Inbound(event=event, channel=frame.get("channel"), data=frame.get("data", MISSING))


def command_data(frame: Inbound) -> dict[str, Any]:
    """
    The C{data} of a C{pusher:*} command as an object; a string holding a JSON
    object is accepted too (some clients double-encode).

    @raise PusherError: (4300) when there is no object to read.
    """
    data = frame.data
    if isinstance(data, str):
        try:
            data = parse_json(data)
        except MalformedJSONError:
            data = None
    if not isinstance(data, dict):
        raise PusherError(
            PusherErrorCode.GENERIC_ERROR, f"Invalid data for {frame.event}: expected an object"
        )
    return data


def relay_data(data: object) -> str | None:
    """
    A client event's C{data} as the string subscribers receive: strings pass
    through, other JSON values are serialised, a missing field stays missing.
    """
    if data is MISSING:
        return None
    if isinstance(data, str):
        return data
    return _text(data)
