# -*- test-case-name: tests.test_web,tests.test_fallback_transports -*-
"""
The HTTP resource tree shared by WebSocket and REST on every listener.

C{/app/...} goes to the WebSocket resource (a leaf, so C{/app/{key}} reaches
it whole), C{/apps/...} and C{/users/...} to the REST API (Klein sees the
full path), and C{/}, C{/up} and C{/up/{app_id}} answer health checks as
Sockudo does (sockudo-reference.md section 3.7). pusher-js's HTTP fallback
transports (C{/pusher/...}) get a 404 saying only WebSocket is served, with
CORS headers (L{FallbackTransportResource}).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http import Request as HttpRequest
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from sockudo_tw.appstores import AppStoreUnavailableError, IAppStore
from sockudo_tw.compat.twisted import request_gone
from sockudo_tw.config import CorsConfig, HttpLimits
from sockudo_tw.usage import mount_operational

if TYPE_CHECKING:
    from sockudo_tw.workers import WorkersView

__all__ = [
    "BARE_EOL",
    "FALLBACK_TRANSPORT_ENDINGS",
    "FALLBACK_TRANSPORT_MESSAGE",
    "FALLBACK_TRANSPORT_PATH",
    "HEALTH_CHECK_TIMEOUT",
    "REASONS",
    "SERVER_NAME",
    "BoundedChannel",
    "BoundedRequest",
    "FallbackTransportResource",
    "HealthResource",
    "JsonError",
    "Lifecycle",
    "RedirectToHttps",
    "RootResource",
    "SockudoSite",
    "always_healthy",
    "error_response",
    "make_site",
]

HEALTH_CHECK_TIMEOUT = 0.4
"""
Seconds each health check may take before it counts as failed (Sockudo's
C{HEALTH_CHECK_TIMEOUT_MS}, 400).
"""

HealthCheck = Callable[[], Deferred[bool]]


def always_healthy() -> Deferred[bool]:
    """
    The health check of backends that cannot fail (the local adapter).
    """
    return succeed(True)


@attrs.define
class Lifecycle:
    """
    Process-wide state the health checks report.

    @ivar draining: set when shutdown starts; C{/up} then answers 503 so a
        load balancer stops sending new clients here.
    """

    draining: bool = False


_STATUS = {"OK": 200, "DEGRADED": 200, "ERROR": 503, "NOT_FOUND": 404}


class HealthResource(Resource):
    """
    C{/up} and C{/up/{app_id}}: plain-text C{OK}, C{ERROR} or C{NOT_FOUND},
    repeated in the C{X-Health-Check} header.
    """

    _log = Logger()

    def __init__(
        self,
        app_store: IAppStore,
        adapter_health: HealthCheck,
        lifecycle: Lifecycle,
        clock: IReactorTime,
        app_id: str | None = None,
        workers: WorkersView | None = None,
    ) -> None:
        """
        @param workers: the group's beacons when this is one of several
            worker processes: C{/up} then also says how many run
            (C{X-Workers: running/expected}) and fails once one has been
            missing for L{sockudo_tw.workers.DOWN_GRACE}.
        """
        super().__init__()
        self._app_store = app_store
        self._adapter_health = adapter_health
        self._lifecycle = lifecycle
        self._clock = clock
        self._app_id = app_id
        self._workers = workers

    def getChild(self, path: bytes, request: Request) -> Resource:
        """
        C{/up/{app_id}}; a trailing slash is the same resource, anything
        deeper is 404.
        """
        if not path:
            return self
        if self._app_id is not None:
            return NoResource()
        return HealthResource(
            self._app_store,
            self._adapter_health,
            self._lifecycle,
            self._clock,
            path.decode("utf-8", "replace"),
            self._workers,
        )

    def render_GET(self, request: Request) -> int:
        """
        Run the checks and answer when they are done.
        """
        d = Deferred.fromCoroutine(self._status())
        d.addTimeout(HEALTH_CHECK_TIMEOUT, self._clock)

        def failed(failure: Failure) -> str:
            if failure.check(TimeoutError):
                self._log.warn(
                    "Health check timed out after {timeout}s for app {app_id}",
                    timeout=HEALTH_CHECK_TIMEOUT,
                    app_id=self._app_id,
                )
            elif failure.check(AppStoreUnavailableError):
                pass  # the app store logs its outage once
            else:
                self._log.failure(
                    "Health check failed for app {app_id}", failure, app_id=self._app_id
                )
            return "ERROR"

        d.addErrback(failed)
        d.addCallback(self._write, request)
        return NOT_DONE_YET

    render_HEAD = render_GET

    async def _status(self) -> str:
        """
        Sockudo's checks in order: draining, the app(s), then the adapter.
        """
        if self._lifecycle.draining:
            return "ERROR"
        if self._app_id is None:
            if not await self._app_store.all_apps():
                return "ERROR"
        else:
            app = await self._app_store.find_by_id(self._app_id)
            if app is None:
                return "NOT_FOUND"
            if not app.enabled:
                return "ERROR"
        if not await self._adapter_health():
            return "ERROR"
        return "OK"

    def _write(self, status: str, request: Request) -> None:
        """
        Send the status line, header and body, unless the client has gone.
        """
        if request_gone(request):
            return
        if self._workers is not None:
            group = self._workers.status()
            request.setHeader(b"x-workers", f"{group.running}/{group.expected}".encode("ascii"))
            if not group.healthy and status == "OK":
                status = "ERROR"
        request.setResponseCode(_STATUS[status])
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-health-check", status.encode("ascii"))
        if not getattr(self._app_store, "reachable", True):
            # Known apps are still served from memory: say so without
            # failing the check (every node shares the database).
            request.setHeader(b"x-app-store", b"unreachable")
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(status.encode("ascii"))
        request.finish()


class _Ok(Resource):
    """
    C{GET /}: a liveness answer that consults nothing.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"OK"

    render_HEAD = render_GET


def _is_websocket_upgrade(request: Request) -> bool:
    """
    Whether C{request} asks to upgrade to a WebSocket.
    """
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and upgrade.lower() == b"websocket"


def _utf8(first: bytes, rest: list[bytes]) -> bool:
    """
    Whether the percent-decoded path segments are all UTF-8.
    """
    try:
        first.decode("utf-8")
        for segment in rest:
            segment.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class JsonError(Resource):
    """
    A refusal in the API's form: C{code} and C{{"error": message}}.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self._code = code
        self._body = json.dumps({"error": message}).encode("utf-8")

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._code)
        request.setHeader(b"content-type", b"application/json")
        return self._body


FALLBACK_TRANSPORT_PATH = b"pusher"
"""
The first path segment of pusher-js's HTTP fallback URLs by default (its
C{httpPath} option, C{/pusher}): C{xhr_streaming}, C{xhr_polling} and
C{sockjs} all live under it.
"""

FALLBACK_TRANSPORT_ENDINGS = frozenset(
    {b"xhr_streaming", b"xhr", b"xhr_send", b"eventsource", b"htmlfile", b"jsonp", b"jsonp_send"}
)
"""
The last path segment of an HTTP fallback request under any C{httpPath}:
pusher-js's C{xhr_streaming} and C{xhr_polling} (whose sends go to
C{xhr_send}) and SockJS's other transports.
"""

FALLBACK_TRANSPORT_MESSAGE = (
    "This server supports only WebSocket transports (ws, wss): HTTP fallback transports "
    "(xhr_streaming, xhr_polling, sockjs) are not available. "
    "Connect with enabledTransports: ['ws', 'wss']."
)


def _is_fallback_transport(path: bytes, request: Request) -> bool:
    """
    Whether C{request} (first segment C{path}) asks for an HTTP fallback
    transport: under C{/pusher/}, or ending with one of the transports'
    segments.
    """
    if path == FALLBACK_TRANSPORT_PATH:
        return True
    rest = request.postpath
    last = rest[-1] if rest else path
    return last in FALLBACK_TRANSPORT_ENDINGS


class FallbackTransportResource(Resource):
    """
    The answer to pusher-js's and SockJS's HTTP fallback transports, which
    this server does not implement: 404 with a JSON body saying that only
    WebSocket is served, with the API's CORS headers (C{cors}) so that a
    browser shows that 404 instead of a misleading CORS error. The
    preflight pusher-js's C{Content-Type: application/json} POSTs cause is
    answered as the API answers one.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, cors: CorsConfig) -> None:
        super().__init__()
        self._origins = cors.origin
        self._any_origin = any(o in ("*", "any", "Any") for o in cors.origin)
        self._credentials = cors.credentials
        self._methods = ", ".join(cors.methods).encode("latin-1")
        self._headers = ", ".join(cors.allowed_headers).encode("latin-1")
        self._body = json.dumps({"error": FALLBACK_TRANSPORT_MESSAGE}).encode("utf-8")

    def _allow_origin(self, request: Request) -> bool:
        """
        Set C{Access-Control-Allow-Origin} (and, for a listed origin with
        credentials, C{Access-Control-Allow-Credentials}) when the request's
        C{Origin} is allowed.

        @return: whether it is (no C{Origin}: nothing to allow, false).
        """
        origin = request.getHeader(b"origin")
        if origin is None or not self._origins:
            return False
        if self._any_origin:
            request.setHeader(b"access-control-allow-origin", b"*")
            return True
        if origin.decode("latin-1") not in self._origins:
            return False
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"vary", b"Origin")
        if self._credentials:
            request.setHeader(b"access-control-allow-credentials", b"true")
        return True

    def render(self, request: Request) -> bytes:
        """
        A preflight (C{OPTIONS} with C{Access-Control-Request-Method}) from
        an allowed origin gets 204 with the allowed methods and headers;
        every other request 404 with the explanation.
        """
        allowed = self._allow_origin(request)
        preflight = (
            request.method == b"OPTIONS"
            and request.getHeader(b"access-control-request-method") is not None
        )
        if preflight and allowed:
            request.setResponseCode(204)
            request.setHeader(b"access-control-allow-methods", self._methods)
            request.setHeader(b"access-control-allow-headers", self._headers)
            return b""
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return self._body


class RootResource(Resource):
    """
    The root of every listener's C{Site}.

    @param cors: the API's CORS settings, also sent with the answer to the
        HTTP fallback transports (L{FallbackTransportResource}).
    @param usage_enabled: serve C{GET /usage} (C{http_api.usage_enabled}).
    """

    def __init__(
        self,
        websocket: IResource,
        api: IResource,
        health: IResource,
        cors: CorsConfig | None = None,
        usage_enabled: bool = True,
    ) -> None:
        super().__init__()
        self._websocket = websocket
        self._api = api
        self._health = health
        self._ok = _Ok()
        self._fallback = FallbackTransportResource(cors if cors is not None else CorsConfig())
        mount_operational(self, usage_enabled)  # /live and /usage (usage.py)

    def getChild(self, path: bytes, request: Request) -> IResource:
        """
        Route by the first path segment; the API gets the segment back so
        its routes see the whole C{/apps/...} path.
        """
        if path == b"app" or _is_websocket_upgrade(request):
            # An upgrade on any other path still completes, so that the
            # client hears Pusher's 4005 "Path not found" instead of an HTTP
            # 404 that pusher-js would retry forever.
            return self._websocket
        if path in (b"apps", b"users"):
            assert request.prepath is not None and request.postpath is not None
            if not _utf8(path, request.postpath):
                # Klein would log a traceback and answer an HTML 400.
                return JsonError(400, "Invalid request path: not UTF-8 once percent-decoded")
            request.postpath.insert(0, request.prepath.pop())
            return self._api
        if path == b"up":
            return self._health
        if path == b"" and not request.postpath:
            return self._ok
        if _is_fallback_transport(path, request):
            return self._fallback
        missing: IResource = Resource.getChild(self, path, request)
        return missing


class RedirectToHttps(Resource):
    """
    The C{ssl.redirect_http} listener: a permanent redirect of every request
    to the same path on the TLS port.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, https_port: int) -> None:
        super().__init__()
        self._port = https_port

    def render(self, request: Request) -> bytes:
        host = (request.getRequestHostname() or b"localhost").decode("ascii", "replace")
        if ":" in host:
            host = f"[{host}]"
        location = f"https://{host}:{self._port}".encode("ascii") + request.uri
        request.setResponseCode(301)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Moved Permanently"


SERVER_NAME = b"sockudo-tw"
"""
The C{Server} header of twisted.web's answers: the name, never versions.
"""

REASONS: dict[int, bytes] = {
    **RESPONSES,
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}
"""
Reason phrases by status (RFC 9110's), twisted.web's table completed with
the statuses it lacks or names after older RFCs.
"""


def error_response(code: int, message: str) -> bytes:
    """
    A whole HTTP/1.1 answer refusing a request, with Pusher's JSON error body,
    after which the connection is closed.
    """
    body = json.dumps({"error": message}).encode("utf-8")
    head = b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"Error"))
    return (
        head
        + b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (len(body),)
        + body
    )


BARE_EOL = re.compile(rb"(?<!\r)\n|\r(?=[^\n])")
"""
An LF without its CR, or a CR followed by anything but LF: RFC 9112 lets a
server reject both in a request head, and twisted.web's line parser would
wait for a CRLF that never comes.
"""


_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \x00-\x20\x7f]+ HTTP/[0-9]\.[0-9]")
"""
A request line as RFC 9112 spells it: a method token, one space, a target
without spaces or controls, one space, the version.
"""


class BoundedChannel(HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel with every bound of the HTTP edge
    (L{HttpLimits}): a head over C{max_header_bytes} or C{max_headers} gets
    431, a bare LF or CR in it 400, a body over the limit 413 as soon as its
    C{Content-Length} (or, chunked, its size so far) says so; a head not
    complete C{header_timeout_seconds} after it started (or after connect),
    or a body C{body_timeout_seconds} after its head, gets 408. Each refusal
    is written at once with a JSON body and the connection closed, reading
    nothing more. Idle keep-alive connections close after twisted.web's
    C{timeOut} (the C{Site}'s, C{idle_timeout_seconds}).

    Set by the C{Site} before the connection starts:

    @ivar limits: the bounds.
    @ivar clock: for the timeouts.
    @ivar head_started: when the head being read started; L{None} between
        requests. A L{sockudo_tw.triggerchannel.TriggerChannel} handing a
        connection over passes its own, so the timeout does not restart.
    """

    edge_log = Logger()
    limits: HttpLimits = HttpLimits()
    clock: IReactorTime
    head_started: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self._tail = b""
        self._head_bytes = 0
        self._head_lines = 0
        self._body_started: float | None = None
        self._deadline: IDelayedCall | None = None
        self._receiving = False
        self.refused = False

    def connectionMade(self) -> None:
        """
        Apply the limits and start the first head's timeout.
        """
        self.maxHeaders = self.limits.max_headers
        self.totalHeadersSize = self.limits.max_header_bytes
        self.MAX_LENGTH = self.limits.max_header_bytes
        super().connectionMade()
        if self.head_started is None:
            self.head_started = self.clock.seconds()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        """
        Check what starts a request head for bare line ends, then parse as
        twisted.web does; keep the deadline of a head or body still coming.
        """
        if self.refused:
            return
        if self.line_mode and not self._receiving:
            if self.head_started is None:
                self.head_started = self.clock.seconds()
            if not self._scan_head(data):
                return
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False
        if not self.refused and (self.head_started is not None or self._body_started is not None):
            self._arm()

    def _scan_head(self, data: bytes) -> bool:
        """
        Refuse a head (as far as C{data} continues it) with a bare LF or CR.

        @return: whether the request may go on.
        """
        combined = self._tail + data
        end = combined.find(b"\r\n\r\n")
        head = combined if end < 0 else combined[: end + 4]
        # Only the new bytes, and the tail's last one (a CR before them),
        # need checking; the lookbehind still sees the tail.
        if BARE_EOL.search(head, max(len(self._tail) - 1, 0)) is not None:
            self.refuse(400, "Malformed request head: line ends must be CRLF")
            return False
        self._tail = b"" if end >= 0 else combined[-3:]
        return True

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 (Twisted's name)
        """
        Count the head's bytes and fields against the limits.
        """
        if self.refused:
            return
        if self.head_started is None:
            self.head_started = self.clock.seconds()
        self._head_bytes += len(line) + 2
        if not line:
            if self._head_lines:
                # The end of the head.
                self.head_started = None
                self._tail = b""
            self._head_bytes = 0
            self._head_lines = 0
            super().lineReceived(line)
            return
        self._head_lines += 1
        limits = self.limits
        if b"\n" in line or b"\r" in line:
            self.refuse(400, "Malformed request head: line ends must be CRLF")
        elif self._head_lines == 1 and _REQUEST_LINE.fullmatch(line) is None:
            self.refuse(400, "Malformed request line: expected METHOD TARGET HTTP/x.y")
        elif line[:15].lower() == b"content-length:" and len(line) > 15 + 40:
            # More digits than any limit (and than int() takes): 413 now.
            value = line[15:].strip(b" \t")
            if value.isdigit() and len(value) > 18:
                self.refuse(413, f"Request body too large: more than {limits.body_limit} bytes")
            else:
                super().lineReceived(line)
        elif self._head_bytes > limits.max_header_bytes:
            self.refuse(
                431, f"Request header fields too large: more than {limits.max_header_bytes} bytes"
            )
        elif self._head_lines - 1 > limits.max_headers:
            self.refuse(431, f"Too many request header fields: more than {limits.max_headers}")
        else:
            super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 (Twisted's name)
        """
        A line longer than the whole head may be: 431, or 400 if it is
        really several lines with bare line ends.
        """
        if BARE_EOL.search(line) is not None:
            self.refuse(400, "Malformed request head: line ends must be CRLF")
        else:
            self.refuse(
                431,
                f"Request header fields too large: more than {self.limits.max_header_bytes} bytes",
            )

    def allHeadersReceived(self) -> None:  # noqa: N802 (Twisted's name)
        """
        Refuse a declared body over the limit before reading any of it (and
        before any C{100 Continue}); otherwise start the body's timeout.
        """
        limit = self.limits.body_limit
        if self.length is not None and self.length > limit:
            self.refuse(413, f"Request body too large: {self.length} > {limit} bytes")
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._body_started = self.clock.seconds()

    def allContentReceived(self) -> None:  # noqa: N802 (Twisted's name)
        """
        Serve the request, unless it was refused meanwhile.
        """
        if self.refused:
            return
        self._body_started = None
        # Nothing is due until the next head spans reads (or for good, if
        # the request upgrades to a WebSocket and this channel is left).
        self._stop_deadline()
        super().allContentReceived()

    def checkPersistence(self, request: Any, version: bytes) -> bool:  # noqa: N802
        """
        Whether the connection stays open after C{request}, reading every
        C{Connection} header's comma-separated options (RFC 9110 section
        7.6.1); twisted.web reads only the first header's space-separated
        words.
        """
        values = request.requestHeaders.getRawHeaders(b"Connection") or []
        options = {option.strip().lower() for value in values for option in value.split(b",")}
        if version != b"HTTP/1.1":
            return False
        if b"close" in options:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return True

    def refuse(self, code: int, message: str) -> None:
        """
        Answer C{code} with C{message} in Pusher's JSON error form and close,
        reading nothing more from this connection.
        """
        if self.refused:
            return
        self.refused = True
        self._stop_deadline()
        self.edge_log.debug(
            "Refused an HTTP request from {peer}: {code} {message}",
            peer=str(self.transport.getPeer()) if self.transport is not None else None,
            code=code,
            message=message,
        )
        if self.transport is not None:
            self.transport.write(error_response(code, message))
        self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop the deadline along with twisted.web's timers.
        """
        self._stop_deadline()
        super().connectionLost(reason)

    # -- header and body timeouts ----------------------------------------------

    def _due(self) -> float | None:
        """
        When the head or body being read must be complete, if one is.
        """
        if self.head_started is not None:
            return self.head_started + self.limits.header_timeout_seconds
        if self._body_started is not None:
            return self._body_started + self.limits.body_timeout_seconds
        return None

    def _arm(self) -> None:
        """
        Make sure L{_expire} runs by the current deadline (one timer per
        connection, moved only when a deadline comes earlier).
        """
        due = self._due()
        if due is None:
            return
        delay = max(due - self.clock.seconds(), 0.0)
        call = self._deadline
        if call is not None and call.active():
            if call.getTime() > due:
                call.reset(delay)
            return
        self._deadline = self.clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        """
        408 and close if the head or body is late; otherwise wait for the
        deadline now due.
        """
        self._deadline = None
        due = self._due()
        if due is None:
            return
        if self.clock.seconds() >= due:
            if self.head_started is None:
                seconds, part = self.limits.body_timeout_seconds, "body"
            elif self._tail or self._head_bytes:
                seconds, part = self.limits.header_timeout_seconds, "headers"
            else:
                # Nothing of a request came: close without a word.
                self.refused = True
                self.loseConnection()
                return
            self.refuse(408, f"Request {part} not received within {seconds} seconds")
            return
        self._arm()

    def _stop_deadline(self) -> None:
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()


class BoundedRequest(Request):
    """
    twisted.web's request with a bounded body (chunked bodies are counted as
    they come), RFC 9110's reason phrases and no versions in C{Server}.
    """

    _body_size = 0

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 (twisted.web's name)
        """
        Keep a body chunk in memory, or refuse the request with 413 when the
        body passes the limit.
        """
        channel = self.channel
        if isinstance(channel, BoundedChannel):
            if channel.refused:
                return
            self._body_size += len(data)
            limit = channel.limits.body_limit
            if self._body_size > limit:
                channel.refuse(413, f"Request body too large: more than {limit} bytes")
                return
        super().handleContentChunk(data)

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:  # noqa: N802
        """
        Set the status with RFC 9110's reason phrase (twisted.web has none
        for 429).
        """
        if message is None:
            message = REASONS.get(code, b"Unknown Status")
        super().setResponseCode(code, message)

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:  # noqa: N802
        """
        Set a response header; twisted.web's C{Server} (with its version)
        becomes L{SERVER_NAME}.
        """
        if name == b"Server":
            value = SERVER_NAME
        super().setHeader(name, value)


@implementer(IProtocolNegotiationFactory)
class SockudoSite(Site):
    """
    The C{Site} of every listener: L{BoundedChannel}s and L{BoundedRequest}s
    with bodies in memory, HTTP/1.1 offered over ALPN (h2 is not served),
    and an access-log line per request only when asked for (at the default
    level a busy API would otherwise log every trigger).
    """

    noisy = False
    protocol = BoundedChannel  # type: ignore[assignment]
    requestFactory = BoundedRequest  # noqa: N815 (twisted.web's name)

    def __init__(
        self,
        root: IResource,
        limits: HttpLimits,
        clock: IReactorTime,
        access_log: bool = False,
    ) -> None:
        super().__init__(
            root,
            parsePOSTFormSubmission=False,
            timeout=limits.idle_timeout_seconds,
            reactor=clock,
        )
        self.limits = limits
        self.clock = clock
        self.access_log = access_log
        self.displayTracebacks = False

    def buildProtocol(self, addr: IAddress | None) -> BoundedChannel:  # type: ignore[override]
        """
        A channel with this site's limits.
        """
        channel: BoundedChannel = super().buildProtocol(addr)
        channel.limits = self.limits
        channel.clock = self.clock
        return channel

    def getContentFile(self, length: int | None) -> IO[bytes]:  # noqa: N802 (twisted.web's name)
        """
        Keep every body in memory: bodies are bounded by the limit, and
        nothing a client sends before being authenticated goes to disk.
        """
        return io.BytesIO()

    def acceptableProtocols(self) -> list[bytes]:  # noqa: N802 (Twisted's name)
        """
        HTTP/1.1 only over ALPN.
        """
        return [b"http/1.1"]

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        """
        The name in the listener's start and stop lines.
        """
        return "sockudo-tw HTTP"

    def log(self, request: HttpRequest) -> None:
        """
        Write the access-log line of C{request} if the access log is on.
        """
        if self.access_log:
            super().log(request)


def make_site(
    root: IResource,
    access_log: bool = False,
    limits: HttpLimits | None = None,
    clock: IReactorTime | None = None,
) -> SockudoSite:
    """
    The C{Site} serving C{root}, without tracebacks in error pages, within
    C{limits} (L{HttpLimits}' defaults if not given), logging each request
    only when C{access_log} is set (debug).

    POST bodies are not parsed as HTML forms into C{request.args}: no route
    reads form fields (the API takes JSON), and twisted.web would otherwise
    parse every POST's C{Content-Type} through the C{email} package, which
    cost about a sixth of the server's CPU per API trigger.
    """
    if clock is None:
        from twisted.internet import reactor

        clock = reactor
    assert clock is not None
    return SockudoSite(root, limits or HttpLimits(), clock, access_log)
