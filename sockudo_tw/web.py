# -*- test-case-name: tests.test_web -*-
"""
The HTTP resource tree shared by WebSocket and REST on every listener.

C{/app/...} goes to the WebSocket resource (a leaf, so C{/app/{key}} reaches
it whole), C{/apps/...} and C{/users/...} to the REST API (Klein sees the
full path), and C{/}, C{/up} and C{/up/{app_id}} answer health checks as
Sockudo does (sockudo-reference.md section 3.7).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request as HttpRequest
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from sockudo_tw.apps import IAppStore

__all__ = [
    "HEALTH_CHECK_TIMEOUT",
    "HealthResource",
    "Lifecycle",
    "RedirectToHttps",
    "RootResource",
    "always_healthy",
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
    ) -> None:
        super().__init__()
        self._app_store = app_store
        self._adapter_health = adapter_health
        self._lifecycle = lifecycle
        self._clock = clock
        self._app_id = app_id

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
        if request.finished or request._disconnected:
            return
        request.setResponseCode(_STATUS[status])
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-health-check", status.encode("ascii"))
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


class RootResource(Resource):
    """
    The root of every listener's C{Site}.
    """

    def __init__(self, websocket: IResource, api: IResource, health: IResource) -> None:
        super().__init__()
        self._websocket = websocket
        self._api = api
        self._health = health
        self._ok = _Ok()

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
            request.postpath.insert(0, request.prepath.pop())
            return self._api
        if path == b"up":
            return self._health
        if path == b"" and not request.postpath:
            return self._ok
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


class _QuietSite(Site):
    """
    A C{Site} that writes no access-log line per request: at the default
    level a busy API would otherwise log every trigger.
    """

    def log(self, request: HttpRequest) -> None:
        """
        Log nothing for this request.
        """


def make_site(root: IResource, access_log: bool = False) -> Site:
    """
    The C{Site} serving C{root}, without tracebacks in error pages, logging
    each request only when C{access_log} is set (debug).

    POST bodies are not parsed as HTML forms into C{request.args}: no route
    reads form fields (the API takes JSON), and twisted.web would otherwise
    parse every POST's C{Content-Type} through the C{email} package, which
    cost about a sixth of the server's CPU per API trigger.
    """
    site_class = Site if access_log else _QuietSite
    site = site_class(root, parsePOSTFormSubmission=False)
    site.displayTracebacks = False
    return site
