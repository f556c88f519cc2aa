"""
Tests for L{sockudo_tw.web}: routing of the shared resource tree and the
health endpoints (sockudo-reference.md section 3.7), in memory.
"""

from __future__ import annotations

import io

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.test_web import DummyChannel

from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.pusher.app import App
from sockudo_tw.web import (
    HEALTH_CHECK_TIMEOUT,
    HealthResource,
    Lifecycle,
    RedirectToHttps,
    RootResource,
    always_healthy,
    make_site,
)


class _Marker(Resource):
    """
    A leaf answering with its name and the path it saw.
    """

    isLeaf = True  # noqa: N815

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Request) -> bytes:
        return self.name + b" " + request.path


def _api() -> Resource:
    """
    A Klein app with one route under C{/apps} and one under C{/users}.
    """
    app = Klein()

    @app.route("/apps/<app_id>/channels")
    def channels(request: Request, app_id: str) -> bytes:
        return b"channels " + app_id.encode()

    @app.route("/users/<user_id>")
    def user(request: Request, user_id: str) -> bytes:
        return b"user " + user_id.encode()

    resource: Resource = app.resource()
    return resource


class WebTests(SynchronousTestCase):
    """
    Routing and health answers of L{RootResource}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.lifecycle = Lifecycle()
        self.healthy: Deferred[bool] | None = None
        self.store = MemoryAppStore([App("1", "k1", "s1"), App("2", "k2", "s2", enabled=False)])
        health = HealthResource(self.store, self._adapter_health, self.lifecycle, self.clock)
        self.root = RootResource(_Marker(b"ws"), _api(), health)
        self.treq = StubTreq(self.root)

    def _adapter_health(self) -> Deferred[bool]:
        """
        The adapter check: healthy unless a test installs a Deferred.
        """
        return self.healthy if self.healthy is not None else always_healthy()

    def get(self, path: str) -> tuple[int, bytes, str | None]:
        """
        GET C{path}; the status, body and X-Health-Check header.
        """
        response = self.successResultOf(self.treq.get("http://127.0.0.1" + path))
        body = self.successResultOf(response.content())
        header = response.headers.getRawHeaders("x-health-check", [None])[0]
        return response.code, body, header

    def test_root(self) -> None:
        """
        C{GET /} answers 200 OK.
        """
        self.assertEqual(self.get("/")[:2], (200, b"OK"))

    def test_up(self) -> None:
        """
        C{/up} answers 200 OK with the header when apps exist.
        """
        self.assertEqual(self.get("/up"), (200, b"OK", "OK"))
        self.assertEqual(self.get("/up/"), (200, b"OK", "OK"))

    def test_up_app(self) -> None:
        """
        C{/up/{id}}: 200 enabled, 503 ERROR disabled, 404 NOT_FOUND unknown.
        """
        self.assertEqual(self.get("/up/1"), (200, b"OK", "OK"))
        self.assertEqual(self.get("/up/2"), (503, b"ERROR", "ERROR"))
        self.assertEqual(self.get("/up/3"), (404, b"NOT_FOUND", "NOT_FOUND"))

    def test_no_apps(self) -> None:
        """
        Without any app C{/up} reports ERROR.
        """
        health = HealthResource(MemoryAppStore(), always_healthy, Lifecycle(), self.clock)
        treq = StubTreq(RootResource(_Marker(b"ws"), _api(), health))
        response = self.successResultOf(treq.get("http://127.0.0.1/up"))
        self.assertEqual(response.code, 503)

    def test_adapter_unhealthy(self) -> None:
        """
        A failing adapter check makes C{/up} and C{/up/{id}} ERROR.
        """
        self.healthy = succeed(False)
        self.assertEqual(self.get("/up"), (503, b"ERROR", "ERROR"))

    def test_adapter_timeout(self) -> None:
        """
        An adapter check that does not answer within the timeout is ERROR.
        """
        self.healthy = Deferred()
        d = self.treq.get("http://127.0.0.1/up")
        self.assertNoResult(d)
        self.clock.advance(HEALTH_CHECK_TIMEOUT)
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("x-health-check"), ["ERROR"])

    def test_draining(self) -> None:
        """
        Once shutdown starts, C{/up} answers 503.
        """
        self.lifecycle.draining = True
        self.assertEqual(self.get("/up"), (503, b"ERROR", "ERROR"))
        self.assertEqual(self.get("/up/1")[0], 503)

    def test_websocket_route(self) -> None:
        """
        C{/app/{key}} reaches the WebSocket resource with its full path.
        """
        self.assertEqual(self.get("/app/k1?protocol=7")[:2], (200, b"ws /app/k1"))

    def test_upgrade_on_other_path(self) -> None:
        """
        A WebSocket upgrade on a path outside C{/app/} still reaches the
        WebSocket resource (which refuses it with Pusher's 4005), while a
        plain GET of the same path is a 404.
        """
        response = self.successResultOf(
            self.treq.get(
                "http://127.0.0.1/nope/app/k1?protocol=7", headers={"Upgrade": ["websocket"]}
            )
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(response.content()), b"ws /nope/app/k1")
        self.assertEqual(self.get("/nope/app/k1")[0], 404)

    def test_api_routes(self) -> None:
        """
        C{/apps/...} and C{/users/...} reach the API with the whole path.
        """
        self.assertEqual(self.get("/apps/1/channels")[:2], (200, b"channels 1"))
        self.assertEqual(self.get("/users/u1")[:2], (200, b"user u1"))

    def test_unknown(self) -> None:
        """
        Other paths are 404.
        """
        self.assertEqual(self.get("/nope")[0], 404)
        self.assertEqual(self.get("/up/1/x")[0], 404)
        self.assertEqual(self.get("/up/1/")[0], 200)


class RedirectTests(SynchronousTestCase):
    """
    The C{ssl.redirect_http} listener's resource.
    """

    def test_redirect(self) -> None:
        """
        Every request is permanently redirected to the TLS port, same path.
        """
        treq = StubTreq(RedirectToHttps(6443))
        response = self.successResultOf(
            treq.get("http://example.com/apps/1?x=1", allow_redirects=False)
        )
        self.assertEqual(response.code, 301)
        self.assertEqual(
            response.headers.getRawHeaders("location"), ["https://example.com:6443/apps/1?x=1"]
        )


class AccessLogTests(SynchronousTestCase):
    """
    The access log of the listeners' C{Site}.
    """

    def _logged(self, access_log: bool) -> str:
        """
        What the site writes to its access log for one finished request.
        """
        site = make_site(Resource(), access_log=access_log)
        output = io.StringIO()
        site._logFile = output
        site._logDateTime = "25/Nov/2026:00:00:00 +0000"
        request = server.Request(DummyChannel(), False)
        request.method = b"POST"
        request.uri = b"/apps/1/events"
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 2
        site.log(request)
        return output.getvalue()

    def test_quiet_by_default(self) -> None:
        """
        Without debug no line is written per request, so a busy API does
        not log every trigger.
        """
        self.assertEqual(self._logged(False), "")

    def test_debug_logs_requests(self) -> None:
        """
        With debug each request gets its access-log line.
        """
        self.assertIn('"POST /apps/1/events HTTP/1.1" 200', self._logged(True))


class _Recorder(Resource):
    """
    A leaf that remembers the C{args} and body of the request it rendered.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[dict[bytes, list[bytes]], bytes]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append((dict(request.args or {}), request.content.read()))
        return b""


class FormBodyTests(SynchronousTestCase):
    """
    The listeners' C{Site} does not parse POST bodies as HTML forms.
    """

    def test_form_body_not_parsed(self) -> None:
        """
        A form-encoded POST body stays out of C{request.args} (only the
        query string is there) and is read whole by the resource, with or
        without the access log.
        """
        for access_log in (False, True):
            recorder = _Recorder()
            site = make_site(recorder, access_log=access_log)
            channel = DummyChannel()
            channel.site = site
            request = site.requestFactory(channel)
            request.requestHeaders.setRawHeaders(
                b"content-type", [b"application/x-www-form-urlencoded"]
            )
            request.gotLength(7)
            request.handleContentChunk(b"a=1&b=2")
            request.requestReceived(b"POST", b"/x?q=1", b"HTTP/1.1")
            self.assertEqual(recorder.seen, [({b"q": [b"1"]}, b"a=1&b=2")])
