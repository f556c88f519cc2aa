# -*- test-case-name: tests.test_console -*-
"""
The console's web resources, all behind HTTP Basic authentication
(L{BasicAuthGuard}): the page (C{/}), the live feed as Server-Sent Events
(C{/feed}), the app's counts (C{/stats}), the configured apps (C{/apps})
and the trigger form's target (C{/trigger}), which signs an ordinary
C{POST /apps/<id>/events} and runs it through L{PusherApi.serve}, the HTTP
API's own path (checks, limits, publish).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Sequence
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request as HTTPRequest
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site

from sockudo_tw.adapters import IAdapter
from sockudo_tw.api import PusherApi
from sockudo_tw.appstores import IAppStore
from sockudo_tw.console.feed import ConsoleFeed, ViewerFilter
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.httpapi import HttpRequest, HttpResponse
from sockudo_tw.pusher.signing import sign_api_query

__all__ = ["BasicAuthGuard", "ConsoleSite", "ConsoleTrigger", "console_root", "page_html"]

_SECURITY_HEADERS = (
    (b"Cache-Control", b"no-store"),
    (b"X-Frame-Options", b"DENY"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
)
_PAGE_POLICY = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; img-src data:; frame-ancestors 'none'; form-action 'none'"
)
# The page sends this header with every state-changing request; a form or
# image on another site cannot (a custom header needs a CORS preflight,
# which the console never grants), so Basic credentials the browser holds
# cannot be used from elsewhere.
CSRF_HEADER = b"x-sockudo-console"
MAX_TRIGGER_BODY = 64 * 1024


# IRequest's methods carry no annotations: typed shims.


def _set_header(request: IRequest, name: bytes, value: bytes) -> None:
    request.setHeader(name, value)  # type: ignore[no-untyped-call]


def _set_status(request: IRequest, code: int) -> None:
    request.setResponseCode(code)  # type: ignore[no-untyped-call]


def _header(request: IRequest, name: bytes) -> bytes | None:
    value: bytes | None = request.getHeader(name)  # type: ignore[no-untyped-call]
    return value


def _write(request: IRequest, data: bytes) -> None:
    request.write(data)  # type: ignore[no-untyped-call]


def _finish(request: IRequest) -> None:
    request.finish()  # type: ignore[no-untyped-call]


def _end_stream(request: IRequest) -> None:
    """
    End a feed this side: its producer first, so the connection's next
    request may register its own.
    """
    if not _gone(request):
        request.unregisterProducer()  # type: ignore[attr-defined]
        _finish(request)


def _gone(request: IRequest) -> bool:
    return bool(getattr(request, "_disconnected", False))


def page_html() -> bytes:
    """
    The console page, one self-contained file shipped in the package.
    """
    return resources.files("sockudo_tw.console").joinpath("page.html").read_bytes()


def _json(request: IRequest, status: int, value: object) -> bytes:
    _set_status(request, status)
    _set_header(request, b"Content-Type", b"application/json")
    return json.dumps(value).encode()


class BasicAuthGuard(Resource):
    """
    Answers 401 unless the request carries the configured Basic
    credentials (compared in constant time); then hands it to C{inner}.
    """

    _log = Logger()

    def __init__(self, inner: IResource, username: str, password: str) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        if not username or not password:
            raise ValueError("the console needs a username and a password")
        self._inner = inner
        self._expected = f"{username}:{password}".encode()

    def authorized(self, request: IRequest) -> bool:
        """
        Whether C{request} carries the right credentials.
        """
        header = _header(request, b"authorization") or b""
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:  # noqa: N802
        """
        The inner resource's child when authorized, else the 401.
        """
        for name, value in _SECURITY_HEADERS:
            _set_header(request, name, value)
        if not self.authorized(request):
            if _header(request, b"authorization") is not None:
                self._log.warn("console: wrong credentials from {peer}", peer=_peer(request))
            return _UNAUTHORIZED
        child: IResource = self._inner.getChildWithDefault(path, request)  # type: ignore[no-untyped-call]
        return child

    def render(self, request: IRequest) -> bytes | int:
        """
        The root path itself, guarded the same way.
        """
        for name, value in _SECURITY_HEADERS:
            _set_header(request, name, value)
        if not self.authorized(request):
            return _UNAUTHORIZED.render(request)
        rendered: bytes | int = self._inner.render(request)  # type: ignore[no-untyped-call]
        return rendered


class _Unauthorized(Resource):
    isLeaf = True  # noqa: N815

    def render(self, request: IRequest) -> bytes:
        _set_status(request, 401)
        _set_header(
            request, b"WWW-Authenticate", b'Basic realm="sockudo-tw console", charset="UTF-8"'
        )
        _set_header(request, b"Content-Type", b"text/plain")
        return b"authentication required\n"


_UNAUTHORIZED = _Unauthorized()  # type: ignore[no-untyped-call]


class _Page(Resource):
    isLeaf = True  # noqa: N815

    def render_GET(self, request: IRequest) -> bytes:
        if request.postpath not in ([], [b""]):
            _set_status(request, 404)
            return b"not found\n"
        _set_header(request, b"Content-Type", b"text/html; charset=utf-8")
        _set_header(request, b"Content-Security-Policy", _PAGE_POLICY)
        return page_html()


def _peer(request: IRequest) -> str:
    peer = request.getClientAddress()  # type: ignore[no-untyped-call]
    return str(getattr(peer, "host", peer) or "")


class ConsoleSite(Site):
    """
    The console listener's Site: no access log line per request (the feed
    and counts are polled); failed logins and triggers are logged instead.
    """

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        """
        The name in the listener's start and stop lines.
        """
        return "sockudo-tw console"

    def log(self, request: HTTPRequest) -> None:
        """
        Log nothing per request.
        """


def _arg(request: IRequest, name: bytes) -> str:
    values: list[bytes] = (request.args or {}).get(name) or [b""]
    return values[0].decode("utf-8", "replace")


class _Feed(Resource):
    """
    C{GET /feed?app=ID&channel=TEXT&event=TEXT}: the live tail of one app
    as Server-Sent Events; 503 when too many viewers already watch.
    """

    isLeaf = True  # noqa: N815

    def __init__(self, feed: ConsoleFeed, apps: IAppStore) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._feed = feed
        self._apps = apps

    def render_GET(self, request: IRequest) -> bytes | int:
        app_id = _arg(request, b"app")
        if not app_id:
            return _json(request, 400, {"error": "app is required"})
        finding: Deferred[App | None] = self._apps.find_by_id(app_id)

        def found(app: App | None) -> None:
            self._open(request, app_id, app.key if app is not None else None)

        def failed(failure: Failure) -> None:
            self._open(request, app_id, None)

        finding.addCallbacks(found, failed)
        return NOT_DONE_YET

    def _open(self, request: IRequest, app_id: str, app_key: str | None) -> None:
        if _gone(request):
            return
        selection = ViewerFilter(
            app_id, app_key, _arg(request, b"channel"), _arg(request, b"event")
        )
        viewer = self._feed.add(selection, partial(_write, request), partial(_end_stream, request))
        if viewer is None:
            _write(request, _json(request, 503, {"error": "too many console viewers"}))
            _finish(request)
            return
        _set_header(request, b"Content-Type", b"text/event-stream")
        _set_header(request, b"X-Accel-Buffering", b"no")
        request.registerProducer(viewer, True)  # type: ignore[attr-defined]
        request.notifyFinish().addBoth(lambda _: self._feed.remove(viewer))  # type: ignore[attr-defined]
        _write(request, b"retry: 2000\nevent: hello\ndata: {}\n\n")


class _Stats(Resource):
    """
    C{GET /stats?app=ID}: the app's open connections and occupied channels
    (cluster-wide: the adapter's own answers).
    """

    isLeaf = True  # noqa: N815

    def __init__(self, adapter: IAdapter) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._adapter = adapter

    def render_GET(self, request: IRequest) -> bytes | int:
        app_id = _arg(request, b"app")
        if not app_id:
            return _json(request, 400, {"error": "app is required"})
        Deferred.fromCoroutine(self._answer(request, app_id))
        return NOT_DONE_YET

    async def _answer(self, request: IRequest, app_id: str) -> None:
        try:
            connections = await self._adapter.app_connection_count(app_id)
            channels = await self._adapter.channels(app_id)
            busiest = sorted(channels.items(), key=lambda kv: (-kv[1], kv[0]))[:50]
            body = _json(
                request,
                200,
                {"connections": connections, "channels": len(channels), "busiest": busiest},
            )
        except Exception as e:
            body = _json(request, 503, {"error": str(e)})
        if not _gone(request):
            _write(request, body)
            _finish(request)


class _Apps(Resource):
    """
    C{GET /apps}: the ids of the apps in the config file (a database store
    is not listed: type the id).
    """

    isLeaf = True  # noqa: N815

    def __init__(self, app_ids: Sequence[str]) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._app_ids = list(app_ids)

    def render_GET(self, request: IRequest) -> bytes:
        return _json(request, 200, {"apps": self._app_ids})


class ConsoleTrigger:
    """
    Runs a trigger of the console's form through the HTTP API: an ordinary
    C{POST /apps/<id>/events}, signed with the app's own credentials, so
    the same checks, limits and publish apply as for an SDK.
    """

    def __init__(self, api: PusherApi, apps: IAppStore, clock: IReactorTime) -> None:
        self._api = api
        self._apps = apps
        self._clock = clock

    async def trigger(self, form: dict[str, Any]) -> tuple[int, bytes]:
        """
        Publish what the form asked for; the API's status and body.
        """
        app_id = str(form.get("app") or "")
        app = await self._apps.find_by_id(app_id) if app_id else None
        if app is None:
            return 404, json.dumps({"error": f"no app {app_id!r}"}).encode()
        raw_channels = form.get("channels", form.get("channel", ""))
        if isinstance(raw_channels, str):
            channels = [c.strip() for c in raw_channels.split(",") if c.strip()]
        else:
            channels = [str(c) for c in raw_channels]
        body: dict[str, Any] = {
            "name": str(form.get("event") or ""),
            "channels": channels,
            "data": form.get("data") if isinstance(form.get("data"), str) else "",
        }
        if form.get("socket_id"):
            body["socket_id"] = str(form["socket_id"])
        encoded = json.dumps(body).encode()
        path = f"/apps/{app.id}/events"
        now = int(self._clock.seconds())
        query = sign_api_query(app.key, app.secret, "POST", path, [], encoded, now)
        request = HttpRequest(
            b"POST",
            path.encode(),
            urlencode(query).encode(),
            {b"content-type": b"application/json"},
            encoded,
            "console",
        )
        answer = self._api.serve(request)
        response: HttpResponse = answer if isinstance(answer, HttpResponse) else await answer
        return response.status, response.body


class _Trigger(Resource):
    """
    C{POST /trigger} with a JSON form C{{"app", "channel", "event", "data",
    "socket_id"}} and the console's own header: see L{ConsoleTrigger}.
    """

    isLeaf = True  # noqa: N815

    def __init__(self, trigger: ConsoleTrigger) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._trigger = trigger

    def render_POST(self, request: IRequest) -> bytes | int:
        if _header(request, CSRF_HEADER) != b"1":
            return _json(request, 403, {"error": "missing the console's request header"})
        content = request.content
        raw = content.read(MAX_TRIGGER_BODY + 1) if content is not None else b""
        if len(raw) > MAX_TRIGGER_BODY:
            return _json(request, 413, {"error": "form too large"})
        try:
            form = json.loads(raw)
        except ValueError:
            return _json(request, 400, {"error": "expected a JSON object"})
        if not isinstance(form, dict):
            return _json(request, 400, {"error": "expected a JSON object"})
        Deferred.fromCoroutine(self._answer(request, form))
        return NOT_DONE_YET

    _log = Logger()

    async def _answer(self, request: IRequest, form: dict[str, Any]) -> None:
        try:
            status, body = await self._trigger.trigger(form)
        except Exception as e:
            self._log.failure("console trigger failed")
            status, body = 500, json.dumps({"error": str(e)}).encode()
        self._log.info(
            "console trigger from {peer}: app {app} event {event!r} on {channel!r}: {status}",
            peer=_peer(request),
            app=form.get("app"),
            event=form.get("event"),
            channel=form.get("channel"),
            status=status,
        )
        if _gone(request):
            return
        try:
            api_answer: Any = json.loads(body) if body else {}
        except ValueError:
            api_answer = body.decode("utf-8", "replace")
        _write(request, _json(request, 200, {"status": status, "body": api_answer}))
        _finish(request)


def console_root(
    feed: ConsoleFeed,
    apps: IAppStore,
    adapter: IAdapter,
    trigger: ConsoleTrigger,
    app_ids: Sequence[str],
    username: str,
    password: str,
) -> IResource:
    """
    The console's resource tree, behind Basic authentication.
    """
    root = _Page()  # type: ignore[no-untyped-call]
    inner = Resource()  # type: ignore[no-untyped-call]
    inner.putChild(b"", root)
    inner.putChild(b"feed", _Feed(feed, apps))
    inner.putChild(b"stats", _Stats(adapter))
    inner.putChild(b"apps", _Apps(app_ids))
    inner.putChild(b"trigger", _Trigger(trigger))
    return BasicAuthGuard(inner, username, password)
