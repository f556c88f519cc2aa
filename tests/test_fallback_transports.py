"""
Tests for the answer to pusher-js's HTTP fallback transports
(L{sockudo_tw.web.FallbackTransportResource}): when WebSocket fails,
pusher-js tries C{xhr_streaming} and C{xhr_polling} (and SockJS) under
C{/pusher/app/{key}/...}; this server serves none of them, and says so with
a 404 carrying the API's CORS headers, so that a browser reports the 404
instead of a misleading CORS error.

In memory through L{RootResource}, and once against the real daemon.
"""

from __future__ import annotations

import json

import treq
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Request

from sockudo_tw.config import CorsConfig, parse_config
from sockudo_tw.service import make_service
from sockudo_tw.web import FALLBACK_TRANSPORT_MESSAGE, RootResource
from tests.interop_harness import SharedServer, http_get
from tests.test_endpoints import _Running

ORIGIN = "http://page.example:8080"

#: What pusher-js 8.6 asks for: C{httpPath} (default C{/pusher}), then
#: C{/app/{key}}, a session (C{{0-999}/{8 chars}}), the transport and a
#: query string.
QUERY = "?protocol=7&client=js&version=8.6.0&t=1"
STREAMING = "/pusher/app/a-key/123/abcdefgh/xhr_streaming" + QUERY
POLLING = "/pusher/app/a-key/123/abcdefgh/xhr" + QUERY
SEND = "/pusher/app/a-key/123/abcdefgh/xhr_send?t=1&n=3"
SOCKJS_INFO = "/pusher/info?t=1"


class _Marker(Resource):
    """
    A leaf answering 200 with its name, to see where a request was routed.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Request) -> bytes:
        return self.name


class FallbackTransportTests(SynchronousTestCase):
    """
    Routing of the fallback URLs and their answers, with the default
    (any origin) and listed CORS origins.
    """

    def treq(self, cors: CorsConfig | None = None) -> StubTreq:
        """
        A client of a L{RootResource} whose WebSocket, API and health
        children are markers.
        """
        root = RootResource(_Marker(b"ws"), _Marker(b"api"), _Marker(b"health"), cors=cors)
        return StubTreq(root)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        cors: CorsConfig | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """
        Send one request; its status, headers (lower-cased names, last
        value) and body.
        """
        treq = self.treq(cors)
        response = self.successResultOf(
            treq.request(method, "http://127.0.0.1:6001" + path, headers=headers or {})
        )
        body = self.successResultOf(response.content())
        found = {
            name.decode().lower(): values[-1].decode()
            for name, values in response.headers.getAllRawHeaders()
        }
        return response.code, found, body

    def assert_explained_404(self, status: int, body: bytes) -> None:
        """
        The 404 with the JSON explanation.
        """
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body), {"error": FALLBACK_TRANSPORT_MESSAGE})
        self.assertIn("only WebSocket", FALLBACK_TRANSPORT_MESSAGE)

    def test_transports_answer_404_with_cors(self) -> None:
        """
        The POSTs of C{xhr_streaming}, C{xhr_polling} and their sends, and
        SockJS's C{/info} probe, get 404, the explanation and
        C{Access-Control-Allow-Origin: *} (the default C{cors.origin}).
        """
        for method, path in (
            ("POST", STREAMING),
            ("POST", POLLING),
            ("POST", SEND),
            ("GET", SOCKJS_INFO),
        ):
            status, headers, body = self.request(method, path, {"Origin": ORIGIN})
            self.assert_explained_404(status, body)
            self.assertEqual(headers.get("access-control-allow-origin"), "*", path)
            self.assertEqual(headers.get("content-type"), "application/json", path)

    def test_custom_http_path(self) -> None:
        """
        Under another C{httpPath} the transport's last segment is enough.
        """
        path = "/realtime/app/a-key/7/abcdefgh/xhr_streaming?t=1"
        status, headers, body = self.request("POST", path, {"Origin": ORIGIN})
        self.assert_explained_404(status, body)
        self.assertEqual(headers.get("access-control-allow-origin"), "*")

    def test_preflight(self) -> None:
        """
        The preflight of pusher-js's C{Content-Type: application/json} POST
        succeeds (204) with the configured methods and headers, so that the
        browser goes on to the POST and sees its 404.
        """
        status, headers, body = self.request(
            "OPTIONS",
            STREAMING,
            {
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        self.assertEqual((status, body), (204, b""))
        self.assertEqual(headers.get("access-control-allow-origin"), "*")
        self.assertIn("POST", headers.get("access-control-allow-methods", ""))
        self.assertIn("Content-Type", headers.get("access-control-allow-headers", ""))

    def test_listed_origin(self) -> None:
        """
        With listed C{cors.origin}, a listed origin is echoed with
        C{Vary: Origin} and credentials; another origin gets the 404 without
        CORS headers, and its preflight no C{204}.
        """
        cors = CorsConfig(origin=("https://app.example",))
        status, headers, body = self.request(
            "POST", STREAMING, {"Origin": "https://app.example"}, cors
        )
        self.assert_explained_404(status, body)
        self.assertEqual(headers.get("access-control-allow-origin"), "https://app.example")
        self.assertEqual(headers.get("access-control-allow-credentials"), "true")
        self.assertEqual(headers.get("vary"), "Origin")

        status, headers, body = self.request("POST", STREAMING, {"Origin": ORIGIN}, cors)
        self.assert_explained_404(status, body)
        self.assertNotIn("access-control-allow-origin", headers)

        status, headers, _ = self.request(
            "OPTIONS", STREAMING, {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}, cors
        )
        self.assertEqual(status, 404)
        self.assertNotIn("access-control-allow-origin", headers)

    def test_cors_off(self) -> None:
        """
        An empty C{cors.origin} sends no CORS header at all.
        """
        status, headers, body = self.request(
            "POST", STREAMING, {"Origin": ORIGIN}, CorsConfig(origin=())
        )
        self.assert_explained_404(status, body)
        self.assertNotIn("access-control-allow-origin", headers)

    def test_without_origin(self) -> None:
        """
        A request without C{Origin} (curl, a server) gets the explanation
        and no CORS header.
        """
        status, headers, body = self.request("POST", STREAMING)
        self.assert_explained_404(status, body)
        self.assertNotIn("access-control-allow-origin", headers)

    def test_other_routes_unchanged(self) -> None:
        """
        C{/app/{key}} still goes to the WebSocket resource, a WebSocket
        upgrade under C{/pusher} too (it then hears Pusher's 4005), and an
        unrelated unknown path is twisted.web's plain 404.
        """
        self.assertEqual(self.request("GET", "/app/a-key")[::2], (200, b"ws"))
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
        self.assertEqual(
            self.request("GET", "/pusher/123/abcdefgh/websocket", upgrade)[::2], (200, b"ws")
        )
        status, headers, body = self.request("GET", "/no/such/thing", {"Origin": ORIGIN})
        self.assertEqual(status, 404)
        self.assertNotIn(b"WebSocket", body)
        self.assertNotIn("access-control-allow-origin", headers)


class DaemonFallbackTests(TestCase):
    """
    The real C{twistd -n sockudo} answers the fallback URLs the same way.
    """

    timeout = 60

    async def test_daemon(self) -> None:
        """
        C{GET /pusher/info} (SockJS's probe) on the daemon: 404 with the
        explanation.
        """
        server = await SharedServer.get(self)
        status, body = await http_get("127.0.0.1", server.port, SOCKJS_INFO)
        self.assertEqual(status, 404, body)
        self.assertEqual(json.loads(body), {"error": FALLBACK_TRANSPORT_MESSAGE})


class ConfiguredCorsTests(TestCase):
    """
    The config's C{cors} section reaches the fallback answer of a service
    built by L{make_service}.
    """

    async def test_listed_origin(self) -> None:
        """
        With C{cors.origin} listing one origin, the fallback 404 echoes that
        origin and sends no CORS header to another one.
        """
        config = parse_config(
            {
                "host": "127.0.0.1",
                "metrics": {"enabled": False},
                "shutdown_grace_period": 2,
                "app_manager": {"array": {"apps": [{"id": "1", "key": "k", "secret": "s"}]}},
                "cors": {"origin": ["https://app.example"]},
            },
            {},
        )
        running = _Running(
            self, make_service(config, reactor, listen=["tcp:0:interface=127.0.0.1"])
        )
        port = await running.port()
        pool = HTTPConnectionPool(reactor, persistent=False)
        for origin, expected in (
            ("https://app.example", ["https://app.example"]),
            ("https://other.example", None),
        ):
            response = await treq.post(
                f"http://127.0.0.1:{port}{STREAMING}", headers={"Origin": origin}, pool=pool
            )
            body = await response.content()
            self.assertEqual(response.code, 404)
            self.assertEqual(json.loads(body), {"error": FALLBACK_TRANSPORT_MESSAGE})
            self.assertEqual(
                response.headers.getRawHeaders("access-control-allow-origin"), expected
            )
