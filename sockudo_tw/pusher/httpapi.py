"""
The Pusher HTTP API (pusher-protocol.md section 6) without I/O.

A L{HttpRequest} (method, path, query, headers, body, peer) goes in; an
L{HttpResponse} (status, headers, body) comes out. Every route, signature
check, limit, validation and error message is here; the glue
(L{sockudo_tw.api} for twisted.web, L{sockudo_tw.triggerchannel} for the
fast trigger front) only turns bytes into a request and a response into
bytes.

What needs the outside world is asked for, not done: L{handle} is a
generator that yields one I{need} at a time and is sent its answer back:

    - L{FindApp}: the app with this id or key (L{App} or L{None});
    - L{CountRate}: count a request against a per-second limit (an object
      with C{allowed}, C{limit}, C{remaining} and C{reset_after});
    - L{Publish}: an effect: broadcast these frames (and keep cache-channel
      ones); answered with L{None} once cache entries are stored;
    - L{Terminate}: an effect: close a user's connections; answered L{None};
    - L{SubscriptionCount}, L{PresenceMembers}, L{OccupiedChannels},
      L{CachedEvent}: adapter and cache queries.

A glue driver loops C{need = gen.send(answer)} until C{StopIteration}
carries the response; with in-memory stores every answer is at hand and the
whole request runs in one go, without Deferreds. If getting an answer fails,
the driver throws the exception into the generator, which then ends with it
(the glue answers L{internal_error}). Refusals never raise out of L{handle}:
they are responses.

Deliberate choices where Pusher and Sockudo differ:
  - a disabled app gets 403 on every route (Pusher); Sockudo lets it publish;
  - success bodies are Pusher's C{{}}, not Sockudo's C{{"ok":true}};
  - C{data} should be a string (Pusher); like Sockudo we also accept any other
    JSON value and publish its compact serialisation;
  - C{subscription_count} is answered for every channel kind (Sockudo).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Generator, Iterable, Mapping, Sequence
from typing import Any, NoReturn, Protocol
from urllib.parse import parse_qsl, unquote

from sockudo_tw.pusher.app import App, valid_app_id
from sockudo_tw.pusher.channels import (
    ChannelKind,
    channel_type,
    valid_user_id,
    validate_channel_name,
)
from sockudo_tw.pusher.events import (
    MalformedJSONError,
    channel_event,
    parse_json,
    valid_event_name,
)
from sockudo_tw.pusher.signing import ApiAuthError, verify_api_request

__all__ = [
    "CORS_HEADERS",
    "CORS_METHODS",
    "CORS_ORIGINS",
    "ApiConfig",
    "ApiError",
    "CachedEvent",
    "CountRate",
    "FindApp",
    "HttpRequest",
    "HttpResponse",
    "Need",
    "OccupiedChannels",
    "PresenceMembers",
    "Publish",
    "SubscriptionCount",
    "Terminate",
    "error_response",
    "handle",
    "internal_error",
    "is_trigger_path",
    "parse_query",
]

# The server SDKs' rule (^\d+\.\d+$), ASCII digits only, whole string.
_SOCKET_ID = re.compile(r"[0-9]+\.[0-9]+")
_RESERVED_PREFIXES = ("pusher:", "pusher_internal:")
_TRIGGER_INFO = frozenset({"user_count", "subscription_count"})
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON = (b"Content-Type", b"application/json")


CORS_ORIGINS = ("*",)
CORS_METHODS = ("GET", "POST", "OPTIONS")
CORS_HEADERS = ("Authorization", "Content-Type", "X-Requested-With", "Accept")
"""
Sockudo's C{cors.*} defaults: any origin, these methods and headers.
"""


class HttpRequest:
    """
    One parsed HTTP request (a plain slotted class: one is built per
    trigger).

    @ivar method: the method, as sent (C{b"POST"}).
    @ivar path: the path of the target, still percent-encoded.
    @ivar query: the query string of the target, without C{?}.
    @ivar headers: the header fields, names lower-cased, last value kept.
    @ivar body: the whole body.
    @ivar peer: the client's address, if known (for logs and limits).
    """

    __slots__ = ("body", "headers", "method", "path", "peer", "query")

    def __init__(
        self,
        method: bytes,
        path: bytes,
        query: bytes = b"",
        headers: Mapping[bytes, bytes] | None = None,
        body: bytes = b"",
        peer: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else {}
        self.body = body
        self.peer = peer


class HttpResponse:
    """
    The answer to one request: framing (C{Content-Length}, C{Date},
    C{Connection}) is the glue's.

    @ivar status: the HTTP status code.
    @ivar headers: response header fields in order.
    @ivar body: the body.
    @ivar log: a line the glue should log at info level (why a request
        was refused), or L{None}.
    """

    __slots__ = ("body", "headers", "log", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        log: str | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.log = log

    def __repr__(self) -> str:
        return f"HttpResponse({self.status}, {self.headers!r}, {self.body!r})"


class ApiConfig:
    """
    The API's settings.

    @ivar body_limit: the largest body in bytes (C{http_api.request_limit_in_mb});
        0 disables the check.
    @ivar rate_limited: whether the per-app limits are counted at all.
    @ivar cors_origins: C{cors.origin}; C{["*"]} allows any; empty answers
        no preflight.
    """

    __slots__ = (
        "body_limit",
        "cors_credentials",
        "cors_headers",
        "cors_methods",
        "cors_origins",
        "rate_limited",
    )

    def __init__(
        self,
        *,
        body_limit: int = 10 * 1024 * 1024,
        rate_limited: bool = True,
        cors_origins: Iterable[str] = CORS_ORIGINS,
        cors_methods: Iterable[str] = CORS_METHODS,
        cors_headers: Iterable[str] = CORS_HEADERS,
        cors_credentials: bool = True,
    ) -> None:
        self.body_limit = body_limit
        self.rate_limited = rate_limited
        self.cors_origins = tuple(cors_origins)
        self.cors_methods = ", ".join(cors_methods).encode("latin-1")
        self.cors_headers = ", ".join(cors_headers).encode("latin-1")
        self.cors_credentials = cors_credentials


# -- needs and effects ---------------------------------------------------------


class FindApp:
    """
    Need: the app with C{app_id}, or else the one with C{key}.
    """

    __slots__ = ("app_id", "key")

    def __init__(self, app_id: str | None = None, key: str | None = None) -> None:
        self.app_id = app_id
        self.key = key


class CountRate:
    """
    Need: count C{cost} against the limit C{key} of C{per_second}.
    """

    __slots__ = ("cost", "key", "per_second")

    def __init__(self, key: str, per_second: int, cost: int) -> None:
        self.key = key
        self.per_second = per_second
        self.cost = cost


class Publish:
    """
    Effect: broadcast each C{(channel, frame, socket_id)} of app C{app_id}
    (skipping C{socket_id}'s connection); keep the frames of C{cache}
    channels as their last event. Answered once those are stored.
    """

    __slots__ = ("app_id", "frames")

    def __init__(self, app_id: str, frames: list[tuple[str, bytes, str | None]]) -> None:
        self.app_id = app_id
        self.frames = frames


class Terminate:
    """
    Effect: close every connection of C{user_id} in app C{app_id}.
    """

    __slots__ = ("app_id", "user_id")

    def __init__(self, app_id: str, user_id: str) -> None:
        self.app_id = app_id
        self.user_id = user_id


class SubscriptionCount:
    """
    Need: the number of subscriptions to C{channel} (an C{int}).
    """

    __slots__ = ("app_id", "channel")

    def __init__(self, app_id: str, channel: str) -> None:
        self.app_id = app_id
        self.channel = channel


class PresenceMembers(SubscriptionCount):
    """
    Need: the user ids present in C{channel} (a collection).
    """

    __slots__ = ()


class CachedEvent(SubscriptionCount):
    """
    Need: C{channel}'s cached frame and its seconds to live, or L{None}.
    """

    __slots__ = ()


class OccupiedChannels:
    """
    Need: every channel of C{app_id} with its subscription count.
    """

    __slots__ = ("app_id",)

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id


Need = FindApp | CountRate | Publish | Terminate | SubscriptionCount | OccupiedChannels
Flow = Generator[Need, Any, HttpResponse]
"""
What L{handle} and its steps are: yield needs, receive answers, return the
response.
"""


class RateResult(Protocol):
    """
    What a L{CountRate} is answered with.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: int


# -- errors ------------------------------------------------------------------


class ApiError(Exception):
    """
    A refused API request.

    @ivar status: the HTTP status code.
    @ivar message: the text of the C{error} field of the JSON body.
    @ivar headers: extra response headers (C{Retry-After}, C{Allow}).
    @ivar log: why, for the glue's info log, if worth logging.
    """

    def __init__(
        self,
        status: int,
        message: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        log: str | None = None,
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers
        self.log = log


def _bad(message: str, log: str | None = None) -> NoReturn:
    """
    Refuse a malformed request with 400.
    """
    raise ApiError(400, message, log=log)


def json_response(
    status: int, payload: Mapping[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> HttpResponse:
    """
    C{payload} as compact JSON with C{status}.
    """
    body = _encoder.encode(payload).encode("utf-8") if payload else b"{}"
    return HttpResponse(status, [*headers, _JSON], body)


def error_response(error: ApiError) -> HttpResponse:
    """
    A refusal: its status and C{{"error": message}} (plus Sockudo's
    C{message} on 429).
    """
    payload = {"error": error.message}
    if error.status == 429:
        payload["message"] = "Rate limit exceeded. Please try again later."
    response = json_response(error.status, payload, error.headers)
    response.log = error.log
    return response


def internal_error() -> HttpResponse:
    """
    The answer to a bug or a failed backend (the glue logs the traceback).
    """
    return json_response(500, {"error": "Internal Server Error"})


# -- request parts -------------------------------------------------------------


def parse_query(raw: bytes) -> list[tuple[str, str]]:
    """
    The query string's parameters in order, percent- and C{+}-decoded,
    blank values kept, as C{parse_qsl(keep_blank_values=True,
    errors="strict")}.

    @raise UnicodeDecodeError: when a name or value is not UTF-8.
    """
    if b"%" in raw or b"+" in raw:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    # Nothing to decode (the common, SDK-signed case): split without
    # parse_qsl's per-item unquoting.
    params: list[tuple[str, str]] = []
    for item in raw.decode("utf-8").split("&"):
        if item:
            name, _, value = item.partition("=")
            params.append((name, value))
    return params


def _json_object(body: bytes) -> dict[str, Any]:
    """
    Decode a request body that must be one JSON object: strict UTF-8 (not
    the UTF-16/32 C{json.loads} would guess), then L{parse_json}'s rules.
    """
    try:
        value = parse_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        _bad(
            "Request body must be valid JSON: it is not UTF-8",
            "Refused an API request body that is not UTF-8",
        )
    except MalformedJSONError as e:
        _bad(
            f"Request body must be valid JSON: {e.reason}",
            f"Refused an API request body: {e.reason}",
        )
    if not isinstance(value, dict):
        _bad("Request body must be a JSON object")
    return value


def _info_attributes(raw: object) -> frozenset[str] | None:
    """
    The comma-separated C{info} parameter as a set, L{None} when absent.
    """
    if raw is None:
        return None
    if not isinstance(raw, str):
        _bad("info must be a comma-separated string")
    return frozenset(a.strip() for a in raw.split(",") if a.strip())


class _Event:
    """
    One validated event to publish.
    """

    __slots__ = ("channels", "data", "info", "name", "socket_id")

    def __init__(
        self,
        name: str,
        data: str,
        channels: tuple[str, ...],
        socket_id: str | None,
        info: frozenset[str] | None,
    ) -> None:
        self.name = name
        self.data = data
        self.channels = channels
        self.socket_id = socket_id
        self.info = info


def _event_name(app: App, item: dict[str, Any], where: str) -> str:
    """
    The validated C{name} of an event object.
    """
    name = item.get("name")
    if name is None:
        _bad(f"{where}Missing parameter: name")
    if not isinstance(name, str):
        _bad(f"{where}Expected name parameter to be a string")
    if not name:
        _bad(f"{where}Event name must not be empty")
    if not valid_event_name(name):
        _bad(f"{where}Event name must not contain control characters")
    if app.max_event_name_length and len(name) > app.max_event_name_length:
        _bad(f"{where}Event name is too long: {len(name)} > {app.max_event_name_length} characters")
    if name.startswith(_RESERVED_PREFIXES):
        _bad(f"{where}Event name {name} is reserved: pusher: and pusher_internal: prefixes")
    return name


def _event_channels(app: App, item: dict[str, Any], where: str) -> tuple[str, ...]:
    """
    The validated, de-duplicated C{channels} (or C{channel}) of an event.
    """
    channels: list[object]
    if item.get("channels") is not None:
        raw_channels = item["channels"]
        if not isinstance(raw_channels, list) or not raw_channels:
            _bad(f"{where}channels must be a non-empty list of channel names")
        channels = raw_channels
        if app.max_event_channels_at_once and len(channels) > app.max_event_channels_at_once:
            _bad(
                f"{where}Too many channels: {len(channels)} > "
                f"{app.max_event_channels_at_once} per event"
            )
    elif item.get("channel") is not None:
        channels = [item["channel"]]
    else:
        _bad(f"{where}Request must contain 'channels' (list) or 'channel' (string)")
    unique: dict[str, None] = {}
    for channel in channels:
        error = validate_channel_name(channel, app.max_channel_name_length)
        if error is not None:
            _bad(f"{where}{error}")
        assert isinstance(channel, str)
        unique[channel] = None
    if len(unique) > 1 and any(
        channel_type(c).kind is ChannelKind.PRIVATE_ENCRYPTED for c in unique
    ):
        _bad(f"{where}Cannot trigger to multiple channels when using encrypted channels")
    return tuple(unique)


def parse_event(app: App, item: object, where: str = "") -> _Event:
    """
    Validate one event object from C{/events} or a C{/batch_events} item.

    @param where: prefix for error messages (C{"batch[3]: "}).
    @raise ApiError: when it is refused.
    """
    if not isinstance(item, dict):
        _bad(f"{where}Event must be a JSON object")
    name = _event_name(app, item, where)
    if "data" not in item:
        _bad(f"{where}Missing parameter: data")
    raw_data = item["data"]
    data = raw_data if isinstance(raw_data, str) else _encoder.encode(raw_data)
    limit = app.max_event_payload_in_kb * 1024
    if limit and len(data.encode("utf-8")) > limit:
        raise ApiError(
            413,
            f"The data content of this event exceeds the allowed maximum ({limit} bytes). "
            "See http://pusher.com/docs/server_api_guide/server_publishing_events "
            "for more info",
        )
    channels = _event_channels(app, item, where)
    socket_id = item.get("socket_id")
    if socket_id is not None and (
        not isinstance(socket_id, str) or _SOCKET_ID.fullmatch(socket_id) is None
    ):
        _bad(f"{where}Invalid socket id: {socket_id!r}")
    return _Event(name, data, channels, socket_id, _info_attributes(item.get("info")))


# -- routing -------------------------------------------------------------------

# (path shape, methods, handler name); "*" is one segment, "**" the rest.
_ROUTES: tuple[tuple[tuple[str, ...], tuple[bytes, ...], str], ...] = (
    (("apps", "*", "events"), (b"POST",), "_trigger"),
    (("apps", "*", "batch_events"), (b"POST",), "_trigger_batch"),
    (("apps", "*", "channels"), (b"GET", b"HEAD"), "_channels"),
    (("apps", "*", "channels", "*"), (b"GET", b"HEAD"), "_channel"),
    (("apps", "*", "channels", "*", "users"), (b"GET", b"HEAD"), "_users"),
    (("apps", "*", "users", "*", "terminate_connections"), (b"POST",), "_terminate"),
    (("users", "*", "terminate_connections"), (b"POST",), "_terminate_unprefixed"),
    (("apps", "**"), (b"OPTIONS",), "_preflight"),
    (("users", "**"), (b"OPTIONS",), "_preflight"),
)


def _match(shape: tuple[str, ...], segments: list[str]) -> list[str] | None:
    """
    The C{*} segments of C{segments} if they fit C{shape}, else L{None}.
    """
    if shape[-1] == "**":
        if len(segments) < len(shape) or not segments[len(shape) - 1]:
            return None
    elif len(segments) != len(shape):
        return None
    captured: list[str] = []
    for want, got in zip(shape, segments, strict=False):
        if want == "*":
            if not got:
                return None
            captured.append(got)
        elif want != "**" and want != got:
            return None
    return captured


def is_trigger_path(path: bytes) -> bool:
    """
    Whether C{path} is C{/apps/{id}/events}: what the fast front serves.
    """
    parts = path.split(b"/")
    return len(parts) == 4 and not parts[0] and parts[1] == b"apps" and parts[3] == b"events"


def handle(request: HttpRequest, config: ApiConfig, now: float) -> Flow:
    """
    Serve one API request: route it, and return its route's flow (see the
    module docstring for the needs it yields). A refusal ends the flow
    with its response; only a bug or a failed need raises out of it.

    @param now: the time signatures are checked against.
    """
    try:
        decoded = unquote(request.path.decode("utf-8"), errors="strict")
    except UnicodeDecodeError:
        return _done(
            error_response(
                ApiError(
                    400, "Request URL must be UTF-8", log="Refused an API URL that is not UTF-8"
                )
            )
        )
    segments = decoded.split("/")[1:]
    if (
        request.method == b"POST"
        and len(segments) == 3
        and segments[0] == "apps"
        and segments[2] == "events"
        and segments[1]
    ):
        # The hot path: no route table, and no generator wrapping the
        # route's (each level costs on every need).
        return _Routes(request, config, now)._trigger(segments[1])
    allowed: list[bytes] = []
    for shape, methods, name in _ROUTES:
        captured = _match(shape, segments)
        if captured is None:
            continue
        if request.method not in methods:
            allowed.extend(methods)
            continue
        if name == "_preflight":
            return _done(_preflight(request, config))
        return _refusing(getattr(_Routes(request, config, now), name)(*captured))
    if allowed:
        allow = ", ".join(sorted({m.decode("ascii") for m in allowed}))
        return _done(
            error_response(
                ApiError(405, "Method not allowed", headers=[(b"Allow", allow.encode("ascii"))])
            )
        )
    return _done(json_response(404, {"error": "Not found"}))


def _done(response: HttpResponse) -> Flow:
    """
    A flow with nothing to ask: C{response} at once.
    """
    return response
    yield  # a generator, like every flow


def _refusing(route: Flow) -> Flow:
    """
    C{route}, its refusals (L{ApiError}) turned into their responses.
    """
    try:
        return (yield from route)
    except ApiError as e:
        return error_response(e)


class _Routes:
    """
    The routes of one request, and the steps they share.
    """

    __slots__ = ("_config", "_now", "_query", "_request")

    def __init__(self, request: HttpRequest, config: ApiConfig, now: float) -> None:
        self._request = request
        self._config = config
        self._now = now
        self._query: list[tuple[str, str]] = []

    # -- steps ------------------------------------------------------------------

    def _authorise(self, app_id: str | None) -> Generator[Need, Any, App]:
        """
        Find the app and check the request's signature.

        @param app_id: the id from the path, or L{None} to find the app by
            C{auth_key} (the un-prefixed C{/users/...} route).
        """
        request = self._request
        limit = self._config.body_limit
        if limit and len(request.body) > limit:
            raise ApiError(413, f"Request body too large: {len(request.body)} > {limit} bytes")
        try:
            query = self._query = parse_query(request.query)
            raw_path = request.path.decode("utf-8")
            decoded_path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
        except UnicodeDecodeError:
            _bad("Request URL must be UTF-8")
        app: App | None
        if app_id is None:
            key = next((v for k, v in query if k.lower() == "auth_key"), None)
            if not key:
                raise ApiError(401, "Missing parameter: auth_key")
            app = yield FindApp(key=key)
            if app is None:
                raise ApiError(401, "Unknown auth_key")
        elif not valid_app_id(app_id):
            raise ApiError(404, f"Unknown app: {app_id!r}")
        else:
            app = yield FindApp(app_id=app_id)
            if app is None:
                raise ApiError(404, f"Unknown app: {app_id}")
        paths = [raw_path] if decoded_path == raw_path else [raw_path, decoded_path]
        try:
            verify_api_request(
                key=app.key,
                secret=app.secret,
                method=request.method.decode("ascii", "replace"),
                paths=paths,
                query=query,
                body=request.body,
                now=self._now,
            )
        except ApiAuthError as e:
            raise ApiError(e.status, e.message) from None
        if not app.enabled:
            raise ApiError(403, "App is disabled")
        return app

    def _limit(self, key: str, per_second: int, cost: int) -> Generator[Need, Any, None]:
        """
        Count C{cost} against one of an app's per-second limits; 429 over it.
        """
        if not self._config.rate_limited or per_second <= 0:
            return
        result: RateResult = yield CountRate(key, per_second, cost)
        if not result.allowed:
            raise ApiError(
                429,
                "Too Many Requests",
                headers=[
                    (b"X-RateLimit-Limit", b"%d" % result.limit),
                    (b"X-RateLimit-Remaining", b"%d" % result.remaining),
                    (b"X-RateLimit-Reset", b"%d" % result.reset_after),
                    (b"Retry-After", b"%d" % result.reset_after),
                ],
            )

    def _param(self, name: str) -> str | None:
        """
        The first value of query parameter C{name}.
        """
        return next((v for k, v in self._query if k == name), None)

    def _publish(
        self, app: App, events: list[_Event]
    ) -> Generator[Need, Any, list[dict[str, dict[str, int]]]]:
        """
        Publish every event to every channel (all frames are built first,
        so a batch is published whole or not at all), then collect the
        C{info} attributes each event asked for.
        """
        frames = [
            (channel, channel_event(event.name, channel, event.data), event.socket_id)
            for event in events
            for channel in event.channels
        ]
        yield Publish(app.id, frames)
        results: list[dict[str, dict[str, int]]] = []
        for event in events:
            attributes: dict[str, dict[str, int]] = {}
            if event.info is not None:
                for channel in event.channels:
                    attributes[channel] = yield from self._attributes(
                        app, channel, event.info & _TRIGGER_INFO, strict=False
                    )
            results.append(attributes)
        return results

    def _attributes(
        self, app: App, channel: str, info: frozenset[str], strict: bool
    ) -> Generator[Need, Any, dict[str, int]]:
        """
        C{user_count} and C{subscription_count} for one channel, as asked.

        @param strict: refuse C{user_count} on a non-presence channel (400)
            instead of leaving it out.
        """
        attributes: dict[str, int] = {}
        if "user_count" in info:
            if channel_type(channel).kind is ChannelKind.PRESENCE:
                members: Collection[str] = yield PresenceMembers(app.id, channel)
                attributes["user_count"] = len(members)
            elif strict:
                _bad("user_count is only available for presence channels")
        if "subscription_count" in info:
            attributes["subscription_count"] = yield SubscriptionCount(app.id, channel)
        return attributes

    def _read(self, app_id: str) -> Generator[Need, Any, App]:
        """
        Authorise a read route and count it against C{max_read_requests_per_second}.
        """
        app = yield from self._authorise(app_id)
        yield from self._limit(f"app:{app.id}:read_requests", app.max_read_requests_per_second, 1)
        return app

    @staticmethod
    def _channel_name(app: App, segment: str) -> str:
        """
        The channel from a path segment; some HTTP stacks percent-encode
        characters such as C{@}, C{,} and C{;} once more.
        """
        channel = unquote(segment)
        error = validate_channel_name(channel, app.max_channel_name_length)
        if error is not None:
            _bad(error)
        return channel

    # -- routes -----------------------------------------------------------------

    def _trigger(self, app_id: str) -> Flow:
        """
        C{POST /apps/{id}/events}: publish one event to one or more
        channels. Refusals (all before publishing) are answered here:
        L{handle} runs this flow without L{_refusing} around it.
        """
        try:
            app = yield from self._authorise(app_id)
            event = parse_event(app, _json_object(self._request.body))
            if app.max_backend_events_per_second > 0:
                yield from self._limit(
                    f"app:{app.id}:backend_events", app.max_backend_events_per_second, 1
                )
        except ApiError as e:
            return error_response(e)
        frames = [
            (channel, channel_event(event.name, channel, event.data), event.socket_id)
            for channel in event.channels
        ]
        yield Publish(app.id, frames)
        if event.info is None:
            return HttpResponse(200, [_JSON], b"{}")
        attributes: dict[str, dict[str, int]] = {}
        for channel in event.channels:
            attributes[channel] = yield from self._attributes(
                app, channel, event.info & _TRIGGER_INFO, strict=False
            )
        return json_response(200, {"channels": attributes})

    def _trigger_batch(self, app_id: str) -> Flow:
        """
        C{POST /apps/{id}/batch_events}: several events, all or nothing.
        """
        app = yield from self._authorise(app_id)
        batch = _json_object(self._request.body).get("batch")
        if not isinstance(batch, list):
            _bad("Missing parameter: batch (a list of events)")
        if app.max_event_batch_size and len(batch) > app.max_event_batch_size:
            _bad(f"Batch too large: {len(batch)} > {app.max_event_batch_size} events")
        events = [parse_event(app, item, f"batch[{i}]: ") for i, item in enumerate(batch)]
        yield from self._limit(
            f"app:{app.id}:backend_events", app.max_backend_events_per_second, len(events)
        )
        results = yield from self._publish(app, events)
        if all(event.info is None for event in events):
            return json_response(200, {})
        answers = [found.get(ev.channels[0], {}) for ev, found in zip(events, results, strict=True)]
        return json_response(200, {"batch": answers})

    def _channels(self, app_id: str) -> Flow:
        """
        C{GET /apps/{id}/channels}: occupied channels, optionally filtered
        by prefix, with C{user_count} (presence) or C{subscription_count}.
        """
        app = yield from self._read(app_id)
        prefix = self._param("filter_by_prefix") or ""
        info = (_info_attributes(self._param("info")) or frozenset()) & _TRIGGER_INFO
        if "user_count" in info and not prefix.startswith("presence-"):
            _bad(
                "user_count is only available for presence channels. Use filter_by_prefix=presence-"
            )
        occupied: Mapping[str, int] = yield OccupiedChannels(app.id)
        listed: dict[str, dict[str, int]] = {}
        for name, count in sorted(occupied.items()):
            if count <= 0 or not name.startswith(prefix):
                continue
            attributes: dict[str, int] = {}
            if "user_count" in info and channel_type(name).kind is ChannelKind.PRESENCE:
                members: Collection[str] = yield PresenceMembers(app.id, name)
                attributes["user_count"] = len(members)
            if "subscription_count" in info:
                attributes["subscription_count"] = count
            listed[name] = attributes
        return json_response(200, {"channels": listed})

    def _channel(self, app_id: str, segment: str) -> Flow:
        """
        C{GET /apps/{id}/channels/{name}}: C{occupied} always, plus the
        C{info} attributes asked for.
        """
        app = yield from self._read(app_id)
        channel = self._channel_name(app, segment)
        info = _info_attributes(self._param("info")) or frozenset()
        if "cache" in info and not channel_type(channel).cache:
            _bad("cache is only available for cache channels")
        attributes = yield from self._attributes(app, channel, info & _TRIGGER_INFO, strict=True)
        count = attributes.get("subscription_count")
        if count is None:
            count = yield SubscriptionCount(app.id, channel)
        result: dict[str, Any] = {"occupied": count > 0, **attributes}
        if "cache" in info:
            entry: tuple[bytes, float] | None = yield CachedEvent(app.id, channel)
            if entry is None:
                result["cache"] = None
            else:
                frame, ttl = entry
                result["cache"] = {"data": frame.decode("utf-8"), "ttl": max(0, math.ceil(ttl))}
        return json_response(200, result)

    def _users(self, app_id: str, segment: str) -> Flow:
        """
        C{GET /apps/{id}/channels/{name}/users}: a presence channel's members.
        """
        app = yield from self._read(app_id)
        channel = self._channel_name(app, segment)
        if channel_type(channel).kind is not ChannelKind.PRESENCE:
            _bad("Only presence channels support this endpoint")
        members: Collection[str] = yield PresenceMembers(app.id, channel)
        return json_response(200, {"users": [{"id": str(uid)} for uid in members]})

    def _terminate(self, app_id: str, user_id: str) -> Flow:
        """
        C{POST /apps/{id}/users/{user}/terminate_connections}.
        """
        app = yield from self._authorise(app_id)
        return (yield from self._close_user(app, user_id))

    def _terminate_unprefixed(self, user_id: str) -> Flow:
        """
        The path pusher-http-python 3.3 posts to, without C{/apps/<id>}: the
        app is the one owning C{auth_key}.
        """
        app = yield from self._authorise(None)
        return (yield from self._close_user(app, user_id))

    def _close_user(self, app: App, raw_user_id: str) -> Flow:
        """
        Validate the user id from the path and close that user's sockets
        on every node.
        """
        user_id = unquote(raw_user_id)
        if not valid_user_id(user_id):
            _bad(f"Invalid user id: {user_id!r}")
        yield Terminate(app.id, user_id)
        return json_response(200, {})


def _preflight(request: HttpRequest, config: ApiConfig) -> HttpResponse:
    """
    Answer a CORS preflight (C{OPTIONS /apps/...}, C{/users/...}) from the
    C{cors} config, for browser tools calling the API directly.
    """
    raw_origin = request.headers.get(b"origin")
    if raw_origin is None or not config.cors_origins:
        return HttpResponse(204, [], b"")
    origin = raw_origin.decode("latin-1")
    any_origin = any(o in ("*", "any", "Any") for o in config.cors_origins)
    if not any_origin and origin not in config.cors_origins:
        return json_response(403, {"error": "Origin not allowed"})
    headers = [
        (b"Access-Control-Allow-Origin", b"*" if any_origin else raw_origin),
        (b"Access-Control-Allow-Methods", config.cors_methods),
        (b"Access-Control-Allow-Headers", config.cors_headers),
    ]
    if config.cors_credentials and not any_origin:
        headers.append((b"Access-Control-Allow-Credentials", b"true"))
        headers.append((b"Vary", b"Origin"))
    return HttpResponse(204, headers, b"")
