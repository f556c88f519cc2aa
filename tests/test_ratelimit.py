# -*- test-case-name: tests.test_ratelimit -*-
"""
Tests for L{sockudo_tw.ratelimit}: the memory limiter, client address
selection and the resource wrapper's 429 answers.
"""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sockudo_tw.ratelimit import (
    IRateLimiter,
    MemoryRateLimiter,
    RateLimitedResource,
    RateLimitResult,
    RateLimitRule,
    client_ip,
)


class MemoryRateLimiterTests(SynchronousTestCase):
    """
    L{MemoryRateLimiter} counts fixed windows on its clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.limiter = MemoryRateLimiter(self.clock)

    def hit(
        self, key: str = "k", limit: int = 3, window: float = 10, cost: int = 1
    ) -> RateLimitResult:
        """
        One synchronous hit.
        """
        return self.successResultOf(self.limiter.hit(key, limit, window, cost))

    def test_interface(self) -> None:
        """
        It provides L{IRateLimiter}.
        """
        self.assertTrue(verifyObject(IRateLimiter, self.limiter))

    def test_admits_exactly_max(self) -> None:
        """
        A window admits exactly C{max_requests} hits (no N-1 off-by-one),
        counting C{remaining} down to 0, then refuses.
        """
        self.assertEqual(self.hit(), RateLimitResult(True, 3, 2, 10))
        self.assertEqual(self.hit(), RateLimitResult(True, 3, 1, 10))
        self.assertEqual(self.hit(), RateLimitResult(True, 3, 0, 10))
        self.assertEqual(self.hit(), RateLimitResult(False, 3, 0, 10))

    def test_limit_of_one(self) -> None:
        """
        A limit of one admits one.
        """
        self.assertTrue(self.hit(limit=1).allowed)
        self.assertFalse(self.hit(limit=1).allowed)

    def test_window_resets(self) -> None:
        """
        When the window ends, the count starts again; C{reset_after} counts
        down in whole seconds, rounded up.
        """
        for _ in range(3):
            self.hit()
        self.clock.advance(9.5)
        self.assertEqual(self.hit(), RateLimitResult(False, 3, 0, 1))
        self.clock.advance(0.5)
        self.assertEqual(self.hit(), RateLimitResult(True, 3, 2, 10))

    def test_refusals_not_counted(self) -> None:
        """
        Refused hits do not extend the penalty.
        """
        for _ in range(10):
            self.hit()
        self.clock.advance(10)
        self.assertTrue(self.hit().allowed)

    def test_keys_independent(self) -> None:
        """
        Each key has its own window.
        """
        for _ in range(3):
            self.hit("a")
        self.assertFalse(self.hit("a").allowed)
        self.assertTrue(self.hit("b").allowed)

    def test_cost(self) -> None:
        """
        A hit may count for several requests, and is refused whole when it
        does not fit.
        """
        self.assertEqual(self.hit(cost=2), RateLimitResult(True, 3, 1, 10))
        self.assertEqual(self.hit(cost=2), RateLimitResult(False, 3, 1, 10))
        self.assertTrue(self.hit(cost=1).allowed)

    def test_sweep(self) -> None:
        """
        Ended windows are forgotten, so memory follows the active keys.
        """
        for i in range(5):
            self.hit(f"k{i}", window=1)
        self.clock.advance(61)
        self.hit("new", window=1)
        self.assertEqual(list(self.limiter._windows), ["new"])


def request_from(peer: str = "10.0.0.1", **headers: str) -> DummyRequest:
    """
    A request from C{peer} carrying C{headers} (underscores become dashes).
    """
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", peer, 1234)
    for name, value in headers.items():
        request.requestHeaders.addRawHeader(name.replace("_", "-"), value)
    return request


class ClientIpTests(SynchronousTestCase):
    """
    L{client_ip} picks the address to count, trusting proxies only as told.
    """

    def test_peer(self) -> None:
        """
        Without trusted hops, the peer address, whatever headers say.
        """
        request = request_from("10.0.0.1", x_forwarded_for="1.1.1.1", x_real_ip="2.2.2.2")
        self.assertEqual(client_ip(request, 0), "10.0.0.1")

    def test_forwarded_one_hop(self) -> None:
        """
        With one trusted proxy, the last C{X-Forwarded-For} entry (the one
        our proxy appended).
        """
        request = request_from(x_forwarded_for="6.6.6.6, 1.1.1.1")
        self.assertEqual(client_ip(request, 1), "1.1.1.1")

    def test_forwarded_two_hops(self) -> None:
        """
        With two trusted proxies, the second-to-last entry.
        """
        request = request_from(x_forwarded_for="6.6.6.6, 1.1.1.1, 3.3.3.3")
        self.assertEqual(client_ip(request, 2), "1.1.1.1")

    def test_forwarded_short(self) -> None:
        """
        Fewer entries than hops: the first entry.
        """
        self.assertEqual(client_ip(request_from(x_forwarded_for="1.1.1.1"), 3), "1.1.1.1")

    def test_forwarded_garbage_then_real_ip(self) -> None:
        """
        A non-address entry falls back to C{X-Real-IP}, then the peer.
        """
        request = request_from(x_forwarded_for="nonsense", x_real_ip="2.2.2.2")
        self.assertEqual(client_ip(request, 1), "2.2.2.2")
        self.assertEqual(client_ip(request_from(x_forwarded_for="nonsense"), 1), "10.0.0.1")

    def test_ipv6(self) -> None:
        """
        IPv6 forwarded addresses are accepted.
        """
        self.assertEqual(client_ip(request_from(x_forwarded_for="::1"), 1), "::1")


class Hello(Resource):
    """
    A resource tree answering C{hello} at any path below it.
    """

    isLeaf = True  # noqa: N815

    def render_GET(self, request: IRequest) -> bytes:
        return b"hello " + b"/".join(request.postpath)  # type: ignore[attr-defined]


@implementer(IRateLimiter)
class BrokenLimiter:
    """
    A limiter whose backend is down.
    """

    def hit(
        self, key: str, max_requests: int, window_seconds: float, cost: int = 1
    ) -> Deferred[RateLimitResult]:
        return fail(ConnectionError("backend down"))


class RateLimitedResourceTests(SynchronousTestCase):
    """
    L{RateLimitedResource} in a resource tree, driven through StubTreq.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = MemoryRateLimiter(self.clock)
        self.rule = RateLimitRule(max_requests=2, window_seconds=60, identifier="api")

    def tree(self, rule: RateLimitRule | None = None) -> StubTreq:
        """
        C{/apps/...} served by L{Hello} behind the limiter.
        """
        root = Resource()
        root.putChild(b"apps", RateLimitedResource(Hello(), self.limiter, rule or self.rule))
        return StubTreq(root)

    def get(
        self, treq: StubTreq, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """
        GET C{path}; the status, the lower-cased headers and the body.
        """
        d = treq.get("http://x" + path, headers=headers)
        treq.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        found = {k.lower(): v[0] for k, v in response.headers.getAllRawHeaders()}
        return response.code, found, body

    def test_admitted_with_headers(self) -> None:
        """
        Admitted requests reach the wrapped resource with the rest of the
        path, and carry the rate-limit headers.
        """
        treq = self.tree()
        code, headers, body = self.get(treq, "/apps/3/events")
        self.assertEqual((code, body), (200, b"hello 3/events"))
        self.assertEqual(headers[b"x-ratelimit-limit"], b"2")
        self.assertEqual(headers[b"x-ratelimit-remaining"], b"1")
        self.assertEqual(headers[b"x-ratelimit-reset"], b"60")
        self.assertNotIn(b"retry-after", headers)

    def test_refused(self) -> None:
        """
        Over the limit: 429, Sockudo's body and headers, and the wrapped
        resource is not called.
        """
        treq = self.tree()
        self.get(treq, "/apps/a")
        self.get(treq, "/apps/b")
        self.clock.advance(15)
        code, headers, body = self.get(treq, "/apps/c")
        self.assertEqual(code, 429)
        self.assertEqual(
            json.loads(body),
            {
                "error": "Too Many Requests",
                "message": "Rate limit exceeded. Please try again later.",
            },
        )
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"x-ratelimit-remaining"], b"0")
        self.assertEqual(headers[b"x-ratelimit-reset"], b"45")
        self.assertEqual(headers[b"retry-after"], b"45")
        self.clock.advance(45)
        self.assertEqual(self.get(treq, "/apps/c")[0], 200)

    def test_per_forwarded_client(self) -> None:
        """
        Behind a trusted proxy each forwarded client has its own count.
        """
        treq = self.tree(RateLimitRule(max_requests=1, trust_hops=1))
        self.assertEqual(self.get(treq, "/apps/x", headers={"X-Forwarded-For": "1.1.1.1"})[0], 200)
        self.assertEqual(self.get(treq, "/apps/x", headers={"X-Forwarded-For": "1.1.1.1"})[0], 429)
        self.assertEqual(self.get(treq, "/apps/x", headers={"X-Forwarded-For": "2.2.2.2"})[0], 200)

    def test_leaf_position(self) -> None:
        """
        A request ending at the wrapper itself is limited too.
        """
        treq = self.tree(RateLimitRule(max_requests=1))
        self.assertEqual(self.get(treq, "/apps")[0], 200)
        self.assertEqual(self.get(treq, "/apps")[0], 429)

    def test_disabled_rule(self) -> None:
        """
        A rule of 0 requests does not limit.
        """
        treq = self.tree(RateLimitRule(max_requests=0))
        for _ in range(5):
            self.assertEqual(self.get(treq, "/apps/x")[0], 200)

    def test_backend_failure_fails_closed(self) -> None:
        """
        A failing backend answers 500 with Sockudo's message rather than
        letting requests through unlimited.
        """
        root = Resource()
        root.putChild(b"apps", RateLimitedResource(Hello(), BrokenLimiter(), self.rule))
        code, _, body = self.get(StubTreq(root), "/apps/x")
        self.assertEqual(code, 500)
        self.assertEqual(json.loads(body)["message"], "Rate limiter backend unavailable.")
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)


class _Collect(Protocol):
    """
    Send one raw request, collect whatever comes back.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.got_status: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.got_status.called:
            self.got_status.callback(self.received)


UPGRADE = (
    b"GET /app/key?protocol=7 HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class WebSocketUpgradeTests(TestCase):
    """
    The wrapper in front of Autobahn's C{WebSocketResource}, over a real
    loopback socket: the C{websocket_rate_limit} use.
    """

    def test_upgrade_then_refused(self) -> Deferred[None]:
        """
        The first upgrade gets C{101 Switching Protocols}; the second, over
        a limit of one, a 429 and no WebSocket.
        """
        from autobahn.twisted.resource import WebSocketResource
        from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.web.server import Site

        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        root = Resource()
        limiter = MemoryRateLimiter(reactor)
        rule = RateLimitRule(max_requests=1, identifier="websocket_connect")
        root.putChild(b"app", RateLimitedResource(WebSocketResource(factory), limiter, rule))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        async def connect() -> bytes:
            protocol = _Collect(UPGRADE)
            await connectProtocol(endpoint, protocol)
            try:
                return await protocol.got_status
            finally:
                assert protocol.transport is not None
                protocol.transport.abortConnection()

        async def check() -> None:
            first = await connect()
            self.assertTrue(first.startswith(b"HTTP/1.1 101"), first)
            second = await connect()
            self.assertTrue(second.startswith(b"HTTP/1.1 429"), second)
            self.assertIn(b"Retry-After: 60", second)

        return Deferred.fromCoroutine(check())
