# -*- test-case-name: tests.test_metrics_service -*-
"""
The metrics as the daemon composes them (L{sockudo_tw.service.make_service}):
the listener, the observer and the metered API, in memory and over real
loopback sockets.
"""

from __future__ import annotations

from typing import Any

import attrs
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from sockudo_tw.config import ServerConfig, parse_config
from sockudo_tw.metrics import CONTENT_TYPE, UNKNOWN_APP
from sockudo_tw.service import SockudoService, make_service
from tests.test_metrics import Scrape

APP = {"id": "app-id", "key": "app-key", "secret": "app-secret"}
SMALL = {"id": "small-id", "key": "small-key", "secret": "s", "max_connections": 1}
OFF = {"id": "off-id", "key": "off-key", "secret": "s", "enabled": False}


def config(metrics: dict[str, Any]) -> ServerConfig:
    """
    Three apps (one open, one with a quota of 1, one disabled) and the
    given C{metrics} section, with no environment.
    """
    return parse_config(
        {
            "metrics": metrics,
            "shutdown_grace_period": 2,
            "app_manager": {"array": {"apps": [APP, SMALL, OFF]}},
        },
        {},
    )


class ComposeTests(SynchronousTestCase):
    """
    C{make_service} starts the metrics listener only when enabled.
    """

    def test_listener(self) -> None:
        """
        Enabled, the metrics Site listens on C{metrics.host:metrics.port}
        and serves the daemon's metrics at C{/metrics}, labelled with that
        port and prefix.
        """
        reactor = MemoryReactorClock()
        conf = config({"enabled": True, "host": "127.0.0.1", "port": 9611, "prometheus": {}})
        make_service(conf, reactor).startService()
        servers = [(s[0], s[3]) for s in reactor.tcpServers]
        self.assertIn((9611, "127.0.0.1"), servers)
        site = reactor.tcpServers[servers.index((9611, "127.0.0.1"))][1]
        self.assertIsInstance(site, Site)
        from treq.testing import StubTreq

        client = StubTreq(site.resource)
        response = self.successResultOf(client.get("http://m/metrics"))
        self.assertEqual(response.headers.getRawHeaders("content-type"), [CONTENT_TYPE])
        self.assertEqual(self.successResultOf(client.get("http://m/")).code, 404)

    def test_prefix(self) -> None:
        """
        C{metrics.prometheus.prefix} renames every series.
        """
        reactor = MemoryReactorClock()
        conf = config({"enabled": True, "port": 9612, "prometheus": {"prefix": "pusher_"}})
        make_service(conf, reactor).startService()
        site = next(s[1] for s in reactor.tcpServers if s[0] == 9612)
        from treq.testing import StubTreq

        client = StubTreq(site.resource)
        body = self.successResultOf(
            client.content(self.successResultOf(client.get("http://m/metrics")))
        )
        self.assertIn(b"# TYPE pusher_connected gauge", body)
        self.assertNotIn(b"sockudo_", body)

    def test_rate_limit_and_api(self) -> None:
        """
        REST calls through the daemon's site are counted, and so are the
        IP limiter's checks and refusals (app id C{global}, as in Sockudo).
        """
        from treq.testing import StubTreq

        reactor = MemoryReactorClock()
        conf = parse_config(
            {
                "metrics": {"enabled": True, "port": 9614},
                "rate_limiter": {"enabled": True, "api_rate_limit": {"max_requests": 1}},
                "app_manager": {"array": {"apps": [APP]}},
            },
            {},
        )
        make_service(conf, reactor).startService()
        main = StubTreq(reactor.tcpServers[0][1].resource)
        codes = [
            self.successResultOf(main.get("http://s/apps/app-id/channels")).code for _ in range(2)
        ]
        self.assertEqual(codes[1], 429)
        metrics = StubTreq(next(s[1] for s in reactor.tcpServers if s[0] == 9614).resource)
        response = self.successResultOf(metrics.get("http://m/metrics"))
        result = Scrape.parse(self.successResultOf(metrics.content(response)))
        labels = {"app_id": "global", "limiter_type": "api_rate_limit"}
        self.assertEqual(result.value("sockudo_rate_limit_checks_total", **labels), 2)
        self.assertEqual(result.value("sockudo_rate_limit_triggered_total", **labels), 1)
        self.assertEqual(result.value("sockudo_http_calls_received_total", app_id="app-id"), 2)
        # /up/{id} counts as a call of that app (Sockudo counts /up too).
        up = self.successResultOf(main.get("http://s/up/app-id"))
        self.assertEqual(up.code, 200)
        response = self.successResultOf(metrics.get("http://m/metrics"))
        result = Scrape.parse(self.successResultOf(metrics.content(response)))
        self.assertEqual(result.value("sockudo_http_calls_received_total", app_id="app-id"), 3)

    def test_disabled(self) -> None:
        """
        Disabled, nothing listens on the metrics port (Sockudo starts no
        listener).
        """
        reactor = MemoryReactorClock()
        make_service(config({"enabled": False, "port": 9613}), reactor).startService()
        self.assertNotIn(9613, [s[0] for s in reactor.tcpServers])


class _Client(WebSocketClientProtocol):
    """
    Fires the factory's C{established} on C{pusher:connection_established}
    (the connection was accepted) and C{closed} with the close code.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N803
        if b"pusher:connection_established" in payload and not self.factory.established.called:
            self.factory.established.callback(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N803
        if not self.factory.established.called:
            self.factory.established.errback(Failure(ConnectionError(f"closed: {code}")))
        self.factory.closed.callback(code)


async def _autobahn_timers_done() -> None:
    """
    Wait (bounded) for Autobahn's batched handshake timers, which stay
    scheduled for up to a second after the handshake they guarded ended.
    """
    from twisted.internet.task import deferLater

    for _ in range(10):
        due = [c.getTime() for c in reactor.getDelayedCalls() if "_notify_bucket" in repr(c)]
        if not due:
            return
        # Wake once, when the last of them is due, rather than polling.
        await deferLater(reactor, max(0.0, max(due) - reactor.seconds()), lambda: None)


class _Daemon(TestCase):
    """
    The composed daemon on free loopback ports, real clients, scrapes over
    HTTP (helpers only; the tests are in subclasses).
    """

    def setUp(self) -> Deferred[None]:
        """
        Start the daemon with its main and metrics listeners on free
        loopback ports.
        """
        conf = self.daemon_config()
        # Port 0 (any free port) is for tests only; config requires 1-65535.
        conf = attrs.evolve(conf, metrics=attrs.evolve(conf.metrics, port=0))
        self.addCleanup(lambda: Deferred.fromCoroutine(_autobahn_timers_done()))
        self.service: SockudoService = make_service(
            conf, reactor, listen=["tcp:0:interface=127.0.0.1"]
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.clients: list[_Client] = []
        return Deferred.fromCoroutine(self._ports())

    def daemon_config(self) -> ServerConfig:
        """
        The daemon's config: the three apps, metrics on 127.0.0.1.
        """
        return config({"enabled": True, "host": "127.0.0.1"})

    async def _ports(self) -> None:
        """
        Learn the bound ports.
        """
        service = self.service
        self.port = (await service.listening_port(0)).getHost().port
        self.metrics_port = (await service.listening_port(-1)).getHost().port

    async def connect(self, key: str) -> tuple[_Client | None, Deferred[int | None]]:
        """
        Open a WebSocket to C{/app/{key}}; the client if accepted (it got
        C{connection_established}), and a Deferred firing with the close
        code.
        """
        url = f"ws://127.0.0.1:{self.port}/app/{key}?protocol=7"
        factory = WebSocketClientFactory(url, reactor=reactor)
        factory.protocol = _Client
        factory.established = Deferred()
        factory.closed = Deferred()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await endpoint.connect(factory)
        try:
            client: _Client = await factory.established
        except ConnectionError:
            return None, factory.closed
        self.addCleanup(lambda: client.transport.abortConnection())
        return client, factory.closed

    async def scrape(self) -> Scrape:
        """
        GET the metrics listener's C{/metrics}.
        """
        response = await treq.get(f"http://127.0.0.1:{self.metrics_port}/metrics", persistent=False)
        self.assertEqual(response.code, 200)
        return Scrape.parse(await response.content())

    async def _until(self, done: Any) -> None:
        """
        Scrape until C{done(scrape)} holds (the server sees a client's
        close a moment after the client sent it); bounded.
        """
        from twisted.internet.task import deferLater

        for _ in range(100):
            if done(await self.scrape()):
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.fail("condition not reached")


class LoopbackTests(_Daemon):
    """
    Real clients on 127.0.0.1 against the composed daemon, scraped over
    HTTP.
    """

    def test_connected_matches_open_sockets(self) -> None:
        """
        Accepted, refused (unknown key, disabled app, over quota), closed
        and aborted connections over real sockets: C{sockudo_connected}
        equals the sockets still open, and the refusals are counted.
        """
        return Deferred.fromCoroutine(self._connected_matches_open_sockets())

    async def _connected_matches_open_sockets(self) -> None:
        """
        The scenario, step by step.
        """
        open_clients = []
        for _ in range(5):
            client, _closed = await self.connect("app-key")
            assert client is not None
            open_clients.append(client)
        small, _closed = await self.connect("small-key")
        assert small is not None
        for key in ("nope-key", "off-key", "small-key"):
            refused, closed = await self.connect(key)
            self.assertIsNone(refused)
            await closed
        result = await self.scrape()
        self.assertEqual(result.value("sockudo_connected", app_id="app-id"), 5)
        self.assertEqual(result.value("sockudo_connected", app_id="small-id"), 1)
        errors = {
            (s.labels["app_id"], s.labels["error_type"]): s.value
            for s in result.family("sockudo_connection_errors_total")
        }
        self.assertEqual(
            errors,
            {
                (UNKNOWN_APP, "app_not_found"): 1,
                ("off-id", "app_disabled"): 1,
                ("small-id", "socket_handling_failed"): 1,
            },
        )

        # A clean close and two aborted TCP connections.
        closing = open_clients.pop()
        closing.sendClose(1000)
        for client in (open_clients.pop(), small):
            client.transport.abortConnection()
        await self._until(lambda r: r.value("sockudo_connected", app_id="app-id") == 3)
        result = await self.scrape()
        self.assertEqual(result.value("sockudo_connected", app_id="small-id"), 0)
        self.assertEqual(result.value("sockudo_new_connections_total", app_id="app-id"), 5)
        self.assertEqual(result.value("sockudo_new_disconnections_total", app_id="app-id"), 2)

    def test_api_metered(self) -> None:
        """
        REST calls are counted per known app with their bytes; unknown app
        ids are counted under C{unknown}.
        """
        return Deferred.fromCoroutine(self._api_metered())

    async def _api_metered(self) -> None:
        """
        Two unsigned calls: one for a known app (401), one for an unknown
        one (404).
        """
        base = f"http://127.0.0.1:{self.port}"
        first = await treq.post(f"{base}/apps/app-id/events", data=b"{}", persistent=False)
        await first.content()
        second = await treq.get(f"{base}/apps/who/channels", persistent=False)
        await second.content()
        result = await self.scrape()
        self.assertEqual(result.value("sockudo_http_calls_received_total", app_id="app-id"), 1)
        self.assertEqual(result.value("sockudo_http_received_bytes", app_id="app-id"), 2)
        self.assertGreater(result.value("sockudo_http_transmitted_bytes", app_id="app-id"), 0)
        self.assertEqual(result.value("sockudo_http_calls_received_total", app_id=UNKNOWN_APP), 1)


class _Receiver(Resource):
    """
    A webhook endpoint answering 200 and counting requests.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def render_POST(self, request: Any) -> bytes:
        """
        Count the request.
        """
        self.requests += 1
        return b""


class WebhookLoopbackTests(_Daemon):
    """
    Webhook deliveries of the composed daemon are counted.
    """

    def daemon_config(self) -> ServerConfig:
        """
        One app whose C{channel_occupied} webhooks go to a local receiver.
        """
        self.receiver = _Receiver()
        port = reactor.listenTCP(0, Site(self.receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        hook = {
            "url": f"http://127.0.0.1:{port.getHost().port}/hook",
            "event_types": ["channel_occupied"],
        }
        return parse_config(
            {
                "metrics": {"enabled": True, "host": "127.0.0.1"},
                "queue": {"driver": "memory"},
                "shutdown_grace_period": 2,
                "app_manager": {"array": {"apps": [dict(APP, webhooks=[hook])]}},
            },
            {},
        )

    def test_webhook_sent(self) -> None:
        """
        A subscription that occupies a channel sends one webhook, counted
        in C{sockudo_webhooks_sent_total}.
        """
        return Deferred.fromCoroutine(self._webhook_sent())

    async def _webhook_sent(self) -> None:
        """
        Connect, subscribe, wait for the delivery to be counted.
        """
        client, _closed = await self.connect("app-key")
        assert client is not None
        client.sendMessage(b'{"event":"pusher:subscribe","data":{"channel":"room"}}')
        await self._until(
            lambda r: (
                r.family("sockudo_webhooks_sent_total")
                and r.value("sockudo_webhooks_sent_total", app_id="app-id") == 1
            )
        )
        self.assertEqual(self.receiver.requests, 1)
        result = await self.scrape()
        self.assertEqual(result.value("sockudo_webhooks_failed_total", app_id="app-id"), 0)
        self.assertEqual(result.value("sockudo_webhook_queue_depth"), 0)


class MetricsSiteTests(SynchronousTestCase):
    """
    The metrics listener's start and stop lines name it plainly.
    """

    def test_start_line(self) -> None:
        """
        The listener's "starting on" line (Twisted takes its name from the
        factory's C{logPrefix}) says C{sockudo-tw metrics}, not an internal
        class name.
        """
        from prometheus_client import CollectorRegistry

        from sockudo_tw.metrics import metrics_site

        self.assertEqual(metrics_site(CollectorRegistry()).logPrefix(), "sockudo-tw metrics")
