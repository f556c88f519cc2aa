# -*- test-case-name: tests.test_api -*-
"""
The Pusher HTTP API (pusher-protocol.md section 6) as a Klein app.

Every request is signed (L{sockudo_tw.pusher.signing.verify_api_request});
errors are real HTTP status codes with Sockudo's JSON body C{{"error": "..."}}
because server SDKs treat any 2xx as success. A publish is validated whole
(every channel, every batch item) before the first broadcast, so a refused
request delivers nothing. Broadcasts go to the adapter, which returns at once;
C{info} attributes are asked of the adapter afterwards.

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
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound

from sockudo_tw.adapters import IAdapter
from sockudo_tw.appstores import IAppStore
from sockudo_tw.caches import IChannelCache
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
from sockudo_tw.ratelimit import (
    IRateLimiter,
    RateLimitResult,
    get_header,
    rate_limit_headers,
    set_header,
    set_status,
)

__all__ = ["ApiError", "PusherApi"]

# The server SDKs' rule (^\d+\.\d+$), ASCII digits only, whole string.
_SOCKET_ID = re.compile(r"[0-9]+\.[0-9]+")
_RESERVED_PREFIXES = ("pusher:", "pusher_internal:")
_TRIGGER_INFO = frozenset({"user_count", "subscription_count"})
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_log = Logger()


class ApiError(Exception):
    """
    A refused API request.

    @ivar status: the HTTP status code.
    @ivar message: the text of the C{error} field of the JSON body.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def _bad(message: str) -> NoReturn:
    """
    Refuse a malformed request with 400.
    """
    raise ApiError(400, message)


@attrs.frozen
class _Event:
    """
    One validated event to publish.
    """

    name: str
    data: str
    channels: tuple[str, ...]
    socket_id: str | None
    info: frozenset[str] | None


def _info_attributes(raw: object) -> frozenset[str] | None:
    """
    The comma-separated C{info} parameter as a set, L{None} when absent.
    """
    if raw is None:
        return None
    if not isinstance(raw, str):
        _bad("info must be a comma-separated string")
    return frozenset(a.strip() for a in raw.split(",") if a.strip())


def _parse_event(app: App, item: object, where: str = "") -> _Event:
    """
    Validate one event object from C{/events} or a C{/batch_events} item.

    @param where: prefix for error messages (C{"batch[3]: "}).
    """
    if not isinstance(item, dict):
        _bad(f"{where}Event must be a JSON object")
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

    socket_id = item.get("socket_id")
    if socket_id is not None and (
        not isinstance(socket_id, str) or _SOCKET_ID.fullmatch(socket_id) is None
    ):
        _bad(f"{where}Invalid socket id: {socket_id!r}")

    return _Event(name, data, tuple(unique), socket_id, _info_attributes(item.get("info")))


def _json_object(body: bytes) -> dict[str, Any]:
    """
    Decode a request body that must be one JSON object: strict UTF-8 (not
    the UTF-16/32 C{json.loads} would guess), then L{parse_json}'s rules.
    """
    try:
        value = parse_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        _log.info("Refused an API request body that is not UTF-8")
        _bad("Request body must be valid JSON: it is not UTF-8")
    except MalformedJSONError as e:
        _log.info("Refused an API request body: {reason}", reason=e.reason)
        _bad(f"Request body must be valid JSON: {e.reason}")
    if not isinstance(value, dict):
        _bad("Request body must be a JSON object")
    return value


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


def _respond(request: IRequest, status: int, payload: Mapping[str, Any]) -> bytes:
    """
    Set C{status} and the JSON content type; return C{payload} as compact
    JSON bytes.
    """
    set_status(request, status)
    set_header(request, b"Content-Type", b"application/json")
    if not payload:
        return b"{}"  # every successful trigger's answer
    return _encoder.encode(payload).encode("utf-8")


def _utf8_url(request: IRequest) -> bool:
    """
    Whether the parts of the URL Klein decodes (path segments, once
    percent-decoded, and the host) are UTF-8.
    """
    prepath: list[bytes] = request.prepath or []
    postpath: list[bytes] = request.postpath or []
    host = get_header(request, b"host") or ""
    try:
        b"/".join(prepath + postpath).decode("utf-8")
        # get_header decodes as Latin-1; Klein needs UTF-8.
        host.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _TriggerFastPath(Resource):
    """
    The API's resource: C{POST /apps/{app_id}/events} goes straight to
    L{PusherApi.trigger}, everything else to Klein.

    Triggers are the API's hot path, and Klein's routing and Deferred
    plumbing cost about twice the handler itself. Only paths Klein would
    route to C{trigger} with the same C{app_id} are taken here (a UTF-8
    segment without C{/}, a UTF-8 C{Host}); anything else falls through,
    so answers are the same either way.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, api: PusherApi, routed: IResource) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._api = api
        self._routed = routed

    def render(self, request: IRequest) -> bytes | int:
        """
        Serve a trigger here, or hand the request to Klein.
        """
        postpath: list[bytes] | None = request.postpath
        if (
            request.method == b"POST"
            and postpath is not None
            and len(postpath) == 3
            and postpath[0] == b"apps"
            and postpath[2] == b"events"
            and postpath[1]
            and b"/" not in postpath[1]
        ):
            host = get_header(request, b"host")
            try:
                app_id = postpath[1].decode("utf-8")
                if host is not None:
                    # get_header decodes as Latin-1; Klein needs UTF-8.
                    host.encode("latin-1").decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                return self._api.render_trigger(request, app_id)
        if not _utf8_url(request):
            # Klein would log a traceback and answer in plain text.
            _log.info("Refused an API request whose URL is not UTF-8")
            return _respond(request, 400, {"error": "Request URL must be UTF-8"})
        routed: Any = self._routed
        rendered: bytes | int = routed.render(request)
        return rendered


class PusherApi:
    """
    The HTTP API, routed by Klein, with its collaborators injected.

    Serve L{resource} at the root of the site (the routes carry their full
    paths, C{/apps/...}, and the un-prefixed C{/users/...} the Python SDK
    uses); anything else it answers 404.

    @param clock: the time signatures are checked against.
    @param app_store: where apps are looked up.
    @param adapter: delivery and channel queries.
    @param cache: where cache channels keep their last event.
    @param rate_limiter: counts each app's publishes
        (C{max_backend_events_per_second}) and reads
        (C{max_read_requests_per_second}); L{None} enforces neither.
    @param request_limit_in_mb: the whole-request body cap
        (C{http_api.request_limit_in_mb}); 0 disables it.
    @param cors_origins: C{cors.origin}; C{["*"]} allows any. Empty
        answers no preflight.
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        app_store: IAppStore,
        adapter: IAdapter,
        cache: IChannelCache,
        rate_limiter: IRateLimiter | None = None,
        request_limit_in_mb: float = 10,
        cors_origins: Iterable[str] = ("*",),
        cors_methods: Iterable[str] = ("GET", "POST", "OPTIONS"),
        cors_headers: Iterable[str] = (
            "Authorization",
            "Content-Type",
            "X-Requested-With",
            "Accept",
        ),
        cors_credentials: bool = True,
    ) -> None:
        self._clock = clock
        self._app_store = app_store
        self._adapter = adapter
        self._cache = cache
        self._rate_limiter = rate_limiter
        self._body_limit = int(request_limit_in_mb * 1024 * 1024)
        self._cors_origins = tuple(cors_origins)
        self._cors_methods = ", ".join(cors_methods)
        self._cors_headers = ", ".join(cors_headers)
        self._cors_credentials = cors_credentials

    def resource(self) -> IResource:
        """
        The twisted.web resource serving this API: Klein's, behind the fast
        path for single triggers.
        """
        routed: IResource = self.app.resource()
        return _TriggerFastPath(self, routed)

    def render_trigger(self, request: Any, app_id: str) -> int:
        """
        Run L{trigger} for C{request} as Klein would, without Klein's routing
        and Deferred plumbing: the response or the error handlers' answer is
        written as soon as the handler is done, which with an in-memory app
        store is before this returns.

        @return: C{NOT_DONE_YET}, the answer being written here.
        """
        coroutine = self.trigger(request, app_id)
        # Run it as far as it goes now: with an in-memory app store it
        # finishes without waiting on anything, and then needs none of a
        # Deferred's machinery (a sizeable share of a trigger's CPU).
        try:
            coroutine.send(None)
        except StopIteration as done:
            self._write_answer(done.value, request)
            return NOT_DONE_YET
        except Exception:
            self._write_failure(Failure(), request)  # type: ignore[no-untyped-call]
            return NOT_DONE_YET
        # It awaits a Deferred that has not fired: resuming re-checks that
        # Deferred, so Twisted can drive the rest from here.
        d = Deferred.fromCoroutine(coroutine)
        if not d.called:
            # Waiting on a remote store: stop if the client goes, as Klein does.
            request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(self._write_answer, self._write_failure, (request,), {}, (request,))
        return NOT_DONE_YET

    def _write_failure(self, failure: Failure, request: Any) -> None:
        """
        Answer a failed fast-path request with the error handler Klein would
        have chosen, unless the client has gone.
        """
        if request.finished or request._disconnected:
            if not isinstance(failure.value, CancelledError):
                self._log.failure("Unhandled error processing request", failure=failure)
            return
        if isinstance(failure.value, ApiError):
            self._write_answer(self._api_error(request, failure), request)
        else:
            self._write_answer(self._internal_error(request, failure), request)

    @staticmethod
    def _write_answer(body: bytes, request: Any) -> None:
        """
        Write C{body} and finish, as Klein does with a route's bytes, unless
        the client has gone.
        """
        if request.finished or request._disconnected:
            return
        request.write(body)
        request.finish()

    # Plumbing shared by every route.

    def _body(self, request: IRequest) -> bytes:
        """
        The raw body, refused with 413 above the whole-request cap.
        """
        content = request.content
        if content is None:
            return b""
        content.seek(0, 2)
        size = content.tell()
        if self._body_limit and size > self._body_limit:
            raise ApiError(413, f"Request body too large: {size} > {self._body_limit} bytes")
        content.seek(0)
        body: bytes = content.read()
        return body

    async def _authorise(self, request: IRequest, app_id: str | None) -> tuple[App, bytes]:
        """
        Find the app and check the request's signature.

        @param app_id: the id from the path, or L{None} to find the app by
            C{auth_key} (the un-prefixed C{/users/...} route).
        @return: the app and the raw body.
        """
        body = self._body(request)
        uri: bytes = request.uri
        path: bytes = request.path
        raw_query = uri.partition(b"?")[2]
        try:
            query = parse_query(raw_query)
            raw_path = path.decode("utf-8")
            decoded_path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
        except UnicodeDecodeError:
            _bad("Request URL must be UTF-8")
        app: App | None
        if app_id is None:
            key = next((v for k, v in query if k.lower() == "auth_key"), None)
            if not key:
                raise ApiError(401, "Missing parameter: auth_key")
            app = await self._app_store.find_by_key(key)
            if app is None:
                raise ApiError(401, "Unknown auth_key")
        elif not valid_app_id(app_id):
            raise ApiError(404, f"Unknown app: {app_id!r}")
        else:
            app = await self._app_store.find_by_id(app_id)
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
                body=body,
                now=self._clock.seconds(),
            )
        except ApiAuthError as e:
            raise ApiError(e.status, e.message) from None
        if not app.enabled:
            raise ApiError(403, "App is disabled")
        return app, body

    async def _limit(self, request: IRequest, key: str, per_second: int, cost: int) -> None:
        """
        Count C{cost} against one of an app's per-second limits; 429 over it.
        """
        if self._rate_limiter is None or per_second <= 0:
            return
        result: RateLimitResult = await self._rate_limiter.hit(key, per_second, 1.0, cost)
        if not result.allowed:
            rate_limit_headers(request, result, refused=True)
            raise ApiError(429, "Too Many Requests")

    async def _publish(self, app: App, events: list[_Event]) -> list[dict[str, dict[str, int]]]:
        """
        Broadcast every event to every channel, store cache-channel events,
        then collect the C{info} attributes each event asked for.
        """
        # Every frame is built before the first is sent, so a batch is
        # published whole or not at all.
        frames = [
            (channel, channel_event(event.name, channel, event.data), event.socket_id)
            for event in events
            for channel in event.channels
        ]
        stores: list[Deferred[None]] = []
        for channel, frame, socket_id in frames:
            self._adapter.broadcast(app.id, channel, frame, socket_id)
            if channel_type(channel).cache:
                stores.append(self._cache.store(app.id, channel, frame))
        for store in stores:
            try:
                await store
            except Exception:
                # Delivery already happened; a lost cache entry is not the
                # publisher's error.
                self._log.failure("Could not store cache channel event for {app_id}", app_id=app.id)
        results: list[dict[str, dict[str, int]]] = []
        for event in events:
            attributes: dict[str, dict[str, int]] = {}
            if event.info is not None:
                for channel in event.channels:
                    attributes[channel] = await self._channel_attributes(
                        app, channel, event.info & _TRIGGER_INFO, strict=False
                    )
            results.append(attributes)
        return results

    async def _channel_attributes(
        self, app: App, channel: str, info: frozenset[str], strict: bool
    ) -> dict[str, int]:
        """
        C{user_count} and C{subscription_count} for one channel, as asked.

        @param strict: refuse C{user_count} on a non-presence channel (400)
            instead of leaving it out.
        """
        attributes: dict[str, int] = {}
        presence = channel_type(channel).kind is ChannelKind.PRESENCE
        if "user_count" in info:
            if presence:
                members = await self._adapter.presence_members(app.id, channel)
                attributes["user_count"] = len(members)
            elif strict:
                _bad("user_count is only available for presence channels")
        if "subscription_count" in info:
            attributes["subscription_count"] = await self._adapter.channel_subscription_count(
                app.id, channel
            )
        return attributes

    @staticmethod
    def _query(request: IRequest) -> dict[str, str]:
        """
        The decoded query parameters, first value of each.
        """
        raw = request.uri.partition(b"?")[2].decode("utf-8", "replace")
        params: dict[str, str] = {}
        for k, v in parse_qsl(raw, keep_blank_values=True):
            params.setdefault(k, v)
        return params

    @staticmethod
    def _channel_from_path(name: str) -> str:
        """
        The channel name from a path segment; some HTTP stacks percent-encode
        characters such as C{@}, C{,} and C{;}.
        """
        return unquote(name)

    # Routes.

    @app.route("/apps/<app_id>/events", methods=["POST"])
    async def trigger(self, request: IRequest, app_id: str) -> bytes:
        """
        Publish one event to one or more channels.
        """
        app, body = await self._authorise(request, app_id)
        event = _parse_event(app, _json_object(body))
        await self._limit(
            request, f"app:{app.id}:backend_events", app.max_backend_events_per_second, 1
        )
        (attributes,) = await self._publish(app, [event])
        if event.info is None:
            return _respond(request, 200, {})
        return _respond(request, 200, {"channels": attributes})

    @app.route("/apps/<app_id>/batch_events", methods=["POST"])
    async def trigger_batch(self, request: IRequest, app_id: str) -> bytes:
        """
        Publish several events, each to one channel, all or nothing.
        """
        app, body = await self._authorise(request, app_id)
        payload = _json_object(body)
        batch = payload.get("batch")
        if not isinstance(batch, list):
            _bad("Missing parameter: batch (a list of events)")
        if app.max_event_batch_size and len(batch) > app.max_event_batch_size:
            _bad(f"Batch too large: {len(batch)} > {app.max_event_batch_size} events")
        events = [_parse_event(app, item, f"batch[{i}]: ") for i, item in enumerate(batch)]
        await self._limit(
            request, f"app:{app.id}:backend_events", app.max_backend_events_per_second, len(events)
        )
        results = await self._publish(app, events)
        if all(event.info is None for event in events):
            return _respond(request, 200, {})
        return _respond(
            request,
            200,
            {
                "batch": [
                    attrs.get(ev.channels[0], {}) for ev, attrs in zip(events, results, strict=True)
                ]
            },
        )

    @app.route("/apps/<app_id>/channels", methods=["GET"])
    async def channels(self, request: IRequest, app_id: str) -> bytes:
        """
        List occupied channels, optionally filtered by prefix, with
        C{user_count} (presence only) or C{subscription_count}.
        """
        app, _ = await self._authorise(request, app_id)
        await self._limit(
            request, f"app:{app.id}:read_requests", app.max_read_requests_per_second, 1
        )
        params = self._query(request)
        prefix = params.get("filter_by_prefix", "")
        info = (_info_attributes(params.get("info")) or frozenset()) & _TRIGGER_INFO
        if "user_count" in info and not prefix.startswith("presence-"):
            _bad(
                "user_count is only available for presence channels. Use filter_by_prefix=presence-"
            )
        occupied = await self._adapter.channels(app.id)
        listed: dict[str, dict[str, int]] = {}
        for name, count in sorted(occupied.items()):
            if count <= 0 or not name.startswith(prefix):
                continue
            attributes: dict[str, int] = {}
            if "user_count" in info and channel_type(name).kind is ChannelKind.PRESENCE:
                attributes["user_count"] = len(await self._adapter.presence_members(app.id, name))
            if "subscription_count" in info:
                attributes["subscription_count"] = count
            listed[name] = attributes
        return _respond(request, 200, {"channels": listed})

    @app.route("/apps/<app_id>/channels/<name>", methods=["GET"])
    async def channel(self, request: IRequest, app_id: str, name: str) -> bytes:
        """
        One channel's state: C{occupied} always, plus the C{info} attributes
        asked for.
        """
        app, _ = await self._authorise(request, app_id)
        await self._limit(
            request, f"app:{app.id}:read_requests", app.max_read_requests_per_second, 1
        )
        channel = self._channel_from_path(name)
        error = validate_channel_name(channel, app.max_channel_name_length)
        if error is not None:
            _bad(error)
        info = _info_attributes(self._query(request).get("info")) or frozenset()
        kind = channel_type(channel)
        if "cache" in info and not kind.cache:
            _bad("cache is only available for cache channels")
        attributes = await self._channel_attributes(app, channel, info & _TRIGGER_INFO, strict=True)
        count = attributes.get("subscription_count")
        if count is None:
            count = await self._adapter.channel_subscription_count(app.id, channel)
        result: dict[str, Any] = {"occupied": count > 0, **attributes}
        if "cache" in info:
            entry = await self._cache.fetch(app.id, channel)
            if entry is None:
                result["cache"] = None
            else:
                frame, ttl = entry
                result["cache"] = {
                    "data": frame.decode("utf-8"),
                    "ttl": max(0, math.ceil(ttl)),
                }
        return _respond(request, 200, result)

    @app.route("/apps/<app_id>/channels/<name>/users", methods=["GET"])
    async def users(self, request: IRequest, app_id: str, name: str) -> bytes:
        """
        The members of a presence channel.
        """
        app, _ = await self._authorise(request, app_id)
        await self._limit(
            request, f"app:{app.id}:read_requests", app.max_read_requests_per_second, 1
        )
        channel = self._channel_from_path(name)
        error = validate_channel_name(channel, app.max_channel_name_length)
        if error is not None:
            _bad(error)
        if channel_type(channel).kind is not ChannelKind.PRESENCE:
            _bad("Only presence channels support this endpoint")
        members = await self._adapter.presence_members(app.id, channel)
        return _respond(request, 200, {"users": [{"id": str(uid)} for uid in members]})

    @app.route("/apps/<app_id>/users/<user_id>/terminate_connections", methods=["POST"])
    async def terminate(self, request: IRequest, app_id: str, user_id: str) -> bytes:
        """
        Close every connection signed in as C{user_id}.
        """
        app, _ = await self._authorise(request, app_id)
        return self._terminate(request, app, user_id)

    @app.route("/users/<user_id>/terminate_connections", methods=["POST"])
    async def terminate_unprefixed(self, request: IRequest, user_id: str) -> bytes:
        """
        The path pusher-http-python 3.3 posts to, without C{/apps/<id>}: the
        app is the one owning C{auth_key}.
        """
        app, _ = await self._authorise(request, None)
        return self._terminate(request, app, user_id)

    def _terminate(self, request: IRequest, app: App, raw_user_id: str) -> bytes:
        """
        Validate the user id from the path and have the adapter close that
        user's sockets on every node.
        """
        user_id = unquote(raw_user_id)
        if not valid_user_id(user_id):
            _bad(f"Invalid user id: {user_id!r}")
        self._adapter.terminate_user_connections(app.id, user_id)
        return _respond(request, 200, {})

    @app.route("/apps/<path:rest>", methods=["OPTIONS"])
    @app.route("/users/<path:rest>", methods=["OPTIONS"])
    def preflight(self, request: IRequest, rest: str) -> bytes:
        """
        Answer a CORS preflight from C{cors} config (browser tools calling
        the API directly).
        """
        origin = get_header(request, b"origin")
        if origin is None or not self._cors_origins:
            set_status(request, 204)
            return b""
        any_origin = any(o in ("*", "any", "Any") for o in self._cors_origins)
        if not any_origin and origin not in self._cors_origins:
            return _respond(request, 403, {"error": "Origin not allowed"})
        set_status(request, 204)
        set_header(request, b"Access-Control-Allow-Origin", b"*" if any_origin else origin.encode())
        set_header(request, b"Access-Control-Allow-Methods", self._cors_methods.encode())
        set_header(request, b"Access-Control-Allow-Headers", self._cors_headers.encode())
        if self._cors_credentials and not any_origin:
            set_header(request, b"Access-Control-Allow-Credentials", b"true")
            set_header(request, b"Vary", b"Origin")
        return b""

    # Errors, all as Sockudo's JSON body.

    @app.handle_errors(ApiError)
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        """
        A refusal: its status and C{{"error": message}} (plus Sockudo's
        C{message} on 429).
        """
        error = failure.value
        assert isinstance(error, ApiError)
        if error.status >= 500:
            self._log.error(
                "API error {status}: {message}", status=error.status, message=error.message
            )
        payload = {"error": error.message}
        if error.status == 429:
            payload["message"] = "Rate limit exceeded. Please try again later."
        return _respond(request, error.status, payload)

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        """
        No route matched: a JSON 404.
        """
        return _respond(request, 404, {"error": "Not found"})

    @app.handle_errors(MethodNotAllowed)
    def _method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        """
        A route matched with another method: 405 with C{Allow}.
        """
        error = failure.value
        assert isinstance(error, MethodNotAllowed)
        if error.valid_methods:
            set_header(request, b"Allow", ", ".join(error.valid_methods).encode())
        return _respond(request, 405, {"error": "Method not allowed"})

    @app.handle_errors(Exception)
    def _internal_error(self, request: IRequest, failure: Failure) -> bytes:
        """
        A bug: log it with its traceback, answer a JSON 500.
        """
        self._log.failure("Unhandled error in the HTTP API", failure=failure)
        return _respond(request, 500, {"error": "Internal Server Error"})
