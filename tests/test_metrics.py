# -*- test-case-name: tests.test_metrics -*-
"""
Tests for L{sockudo_tw.metrics}: Sockudo's exact metric names, types and
labels, gauges computed at scrape time, and the metrics listener.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.hooks import IPusherEvents
from sockudo_tw.metrics import (
    CONNECTION_ERROR_TYPES,
    CONTENT_TYPE,
    GLOBAL_APP,
    UNKNOWN_APP,
    AppMetrics,
    MeteredRateLimiter,
    MeteredResource,
    MetricsObserver,
    MetricsResource,
    PusherMetrics,
    WebhookMetrics,
    channel_type_label,
    channels_by_type,
    generate_text,
    metrics_endpoint,
    metrics_service,
    metrics_site,
    open_connections,
    recipient_count_bucket,
)
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.channels import channel_type
from sockudo_tw.queues import MemoryJobQueue
from sockudo_tw.ratelimit import MemoryRateLimiter
from sockudo_tw.registry import Registry
from sockudo_tw.webhooks import IWebhookMetrics

_BASE = frozenset({"app_id", "port"})

#: sockudo-reference.md section 6: name -> (type, labels).
SOCKUDO_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "sockudo_connected": ("gauge", _BASE),
    "sockudo_new_connections_total": ("counter", _BASE),
    "sockudo_new_disconnections_total": ("counter", _BASE),
    "sockudo_connection_errors_total": ("counter", _BASE | {"error_type"}),
    "sockudo_socket_received_bytes": ("counter", _BASE),
    "sockudo_socket_transmitted_bytes": ("counter", _BASE),
    "sockudo_ws_messages_received_total": ("counter", _BASE),
    "sockudo_ws_messages_sent_total": ("counter", _BASE),
    "sockudo_http_received_bytes": ("counter", _BASE),
    "sockudo_http_transmitted_bytes": ("counter", _BASE),
    "sockudo_http_calls_received_total": ("counter", _BASE),
    "sockudo_horizontal_adapter_resolve_time": ("histogram", _BASE),
    "sockudo_horizontal_adapter_resolved_promises": ("counter", _BASE),
    "sockudo_horizontal_adapter_uncomplete_promises": ("counter", _BASE),
    "sockudo_horizontal_adapter_sent_requests": ("counter", _BASE),
    "sockudo_horizontal_adapter_received_requests": ("counter", _BASE),
    "sockudo_horizontal_adapter_received_responses": ("counter", _BASE),
    "sockudo_rate_limit_checks_total": ("counter", _BASE | {"limiter_type", "request_context"}),
    "sockudo_rate_limit_triggered_total": ("counter", _BASE | {"limiter_type", "request_context"}),
    "sockudo_channel_subscriptions_total": ("counter", _BASE | {"channel_type"}),
    "sockudo_channel_unsubscriptions_total": ("counter", _BASE | {"channel_type"}),
    "sockudo_active_channels": ("gauge", _BASE | {"channel_type"}),
    "sockudo_broadcast_latency_ms": (
        "histogram",
        _BASE | {"channel_type", "recipient_count_bucket"},
    ),
}

#: Ours (issue 7 point 2): name -> (type, labels).
OUR_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "sockudo_broadcast_fanout_size": ("histogram", _BASE),
    "sockudo_broadcast_fanout_duration_ms": ("histogram", _BASE),
    "sockudo_http_request_duration_ms": ("histogram", _BASE),
    "sockudo_outbound_buffer_closes_total": ("counter", _BASE),
    "sockudo_cluster_link_up": ("gauge", frozenset({"port", "link"})),
    "sockudo_webhooks_sent_total": ("counter", _BASE),
    "sockudo_webhooks_failed_total": ("counter", _BASE),
    "sockudo_webhook_retries_total": ("counter", _BASE),
    "sockudo_webhook_queue_depth": ("gauge", frozenset({"port"})),
}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@attrs.frozen
class Sample:
    """
    One exposed series value.
    """

    name: str
    labels: Mapping[str, str]
    value: float


@attrs.frozen
class Scrape:
    """
    A parsed text exposition: family types and every sample.
    """

    types: Mapping[str, str]
    samples: list[Sample]

    @classmethod
    def parse(cls, text: bytes) -> Scrape:
        """
        Parse the Prometheus text format as written by L{generate_text}.
        """
        types: dict[str, str] = {}
        samples: list[Sample] = []
        for line in text.decode("utf-8").splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                types[name] = kind
            elif line and not line.startswith("#"):
                match = _SAMPLE.match(line)
                assert match is not None, line
                name, labels, value = match.groups()
                samples.append(Sample(name, dict(_LABEL.findall(labels or "")), float(value)))
        return cls(types, samples)

    def family(self, name: str) -> list[Sample]:
        """
        The samples of family C{name} (with a histogram's suffixes).
        """
        names = {name} | {name + suffix for suffix in _HISTOGRAM_SUFFIXES}
        return [sample for sample in self.samples if sample.name in names]

    def value(self, name: str, **labels: str) -> float:
        """
        The value of the one sample C{name} whose labels include C{labels}.
        """
        found = [
            sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]
        assert len(found) == 1, (name, labels, found)
        return found[0]


def scrape(registry: CollectorRegistry) -> Scrape:
    """
    Scrape C{registry} as the metrics resource would.
    """
    return Scrape.parse(generate_text(registry))


def exercise(app: AppMetrics) -> None:
    """
    Record at least one event of every kind on C{app}.
    """
    app.connection_opened()
    app.connection_closed()
    app.connection_error("app_disabled")
    app.message_received(12)
    app.messages_sent(5, count=3)
    app.outbound_buffer_closed()
    app.subscribed("presence")
    app.unsubscribed("presence")
    app.broadcast("public", recipients=3, fanout_ms=0.2, latency_ms=1.5)
    app.http_call(100, 20, duration_ms=3.0)
    app.rate_limit_check("client_events", "unknown", triggered=True)
    app.adapter_request_sent()
    app.adapter_request_received()
    app.adapter_response_received()
    app.adapter_request_resolved(0.02, complete=True)
    app.adapter_request_resolved(7.0, complete=False)
    app.webhook_sent()
    app.webhook_failed()
    app.webhook_retried()


def busy_metrics(registry: CollectorRegistry, **kwargs: object) -> PusherMetrics:
    """
    A L{PusherMetrics} on C{registry} with every source reporting and every
    kind of event recorded for app C{"app-1"}.
    """
    sources: dict[str, object] = {
        "connections": lambda: {"app-1": 2},
        "active_channels": lambda: {"app-1": {"public": 1}},
        "cluster_links": lambda: {"publisher": True, "subscriber": False},
        "webhook_queue_depth": lambda: 4,
    }
    sources.update(kwargs)
    metrics = PusherMetrics(registry, **sources)  # type: ignore[arg-type]
    exercise(metrics.app("app-1"))
    return metrics


class ExpositionTests(SynchronousTestCase):
    """
    The scrape carries Sockudo's metrics exactly as Sockudo names them.
    """

    def assert_families(self, expected: Mapping[str, tuple[str, frozenset[str]]]) -> None:
        """
        Every family in C{expected} is exposed with its type, has samples,
        and every sample carries exactly the expected label names.
        """
        result = scrape(self.registry)
        for name, (kind, labels) in expected.items():
            self.assertEqual(result.types.get(name), kind, name)
            samples = result.family(name)
            self.assertTrue(samples, name)
            for sample in samples:
                wanted = labels | {"le"} if sample.name == name + "_bucket" else labels
                self.assertEqual(set(sample.labels), wanted, sample)

    def setUp(self) -> None:
        """
        A fresh registry with one busy L{PusherMetrics}.
        """
        self.registry = CollectorRegistry()
        busy_metrics(self.registry)

    def test_sockudo_metrics(self) -> None:
        """
        Every metric of sockudo-reference.md section 6 is exposed with the
        same name, type and labels.
        """
        self.assert_families(SOCKUDO_METRICS)

    def test_our_metrics(self) -> None:
        """
        Our additions (fan-out, slow consumers, cluster link, webhooks, API
        latency) are exposed with their types and labels.
        """
        self.assert_families(OUR_METRICS)

    def test_nothing_else(self) -> None:
        """
        The scrape holds exactly the documented families, every sample
        belongs to its C{TYPE} line (no C{x_total} header over an C{x}
        series) and there is no C{_created} series.
        """
        result = scrape(self.registry)
        self.assertEqual(set(result.types), set(SOCKUDO_METRICS) | set(OUR_METRICS))
        for sample in result.samples:
            owner = sample.name
            if owner not in result.types:
                owner = re.sub(r"_(bucket|count|sum)$", "", owner)
                self.assertEqual(result.types.get(owner), "histogram", sample)
            self.assertFalse(sample.name.endswith("_created"), sample)

    def test_bare_counter_header(self) -> None:
        """
        Counters Sockudo names without C{_total} keep that name in their
        C{HELP} and C{TYPE} lines too.
        """
        text = generate_text(self.registry).decode()
        self.assertIn("\n# TYPE sockudo_socket_received_bytes counter\n", text)
        self.assertIn(
            "\n# HELP sockudo_socket_received_bytes Total amount of bytes that sockudo received\n",
            text,
        )
        self.assertNotIn("sockudo_socket_received_bytes_total", text)
        self.assertIn("\n# TYPE sockudo_new_connections_total counter\n", text)

    def test_values(self) -> None:
        """
        Each event adds what Sockudo adds: a broadcast counts size times
        recipients, a resolved request counts as resolved or uncomplete.
        """
        result = scrape(self.registry)
        app = {"app_id": "app-1", "port": "9601"}
        self.assertEqual(result.value("sockudo_ws_messages_sent_total", **app), 3)
        self.assertEqual(result.value("sockudo_socket_transmitted_bytes", **app), 15)
        self.assertEqual(result.value("sockudo_socket_received_bytes", **app), 12)
        self.assertEqual(result.value("sockudo_http_received_bytes", **app), 100)
        self.assertEqual(result.value("sockudo_http_transmitted_bytes", **app), 20)
        self.assertEqual(result.value("sockudo_horizontal_adapter_resolved_promises", **app), 1)
        self.assertEqual(result.value("sockudo_horizontal_adapter_uncomplete_promises", **app), 1)
        self.assertEqual(result.value("sockudo_horizontal_adapter_resolve_time_count", **app), 2)
        self.assertEqual(
            result.value(
                "sockudo_rate_limit_triggered_total",
                limiter_type="client_events",
                request_context="unknown",
            ),
            1,
        )
        self.assertEqual(
            result.value(
                "sockudo_broadcast_latency_ms_count",
                channel_type="public",
                recipient_count_bucket="xs",
            ),
            1,
        )

    def test_counters_start_at_zero(self) -> None:
        """
        Once an app is known, its counters are exposed at zero, so the first
        event shows in C{rate()}.
        """
        registry = CollectorRegistry()
        PusherMetrics(registry).app("quiet")
        result = scrape(registry)
        self.assertEqual(result.value("sockudo_new_connections_total", app_id="quiet"), 0)
        self.assertEqual(result.value("sockudo_socket_received_bytes", app_id="quiet"), 0)

    def test_prefix_and_port(self) -> None:
        """
        The prefix replaces C{sockudo_} in every name and C{port} carries the
        metrics listener port given.
        """
        registry = CollectorRegistry()
        exercise(PusherMetrics(registry, prefix="pusher_", port=9999).app("a"))
        result = scrape(registry)
        self.assertIn("pusher_socket_received_bytes", result.types)
        self.assertIn(
            "\n# TYPE pusher_socket_received_bytes counter\n", generate_text(registry).decode()
        )
        for sample in result.samples:
            self.assertTrue(sample.name.startswith("pusher_"), sample)
            self.assertEqual(sample.labels["port"], "9999")

    def test_one_collector_per_registry(self) -> None:
        """
        A second L{PusherMetrics} with the same prefix on one registry is
        refused rather than exporting duplicate series.
        """
        self.assertRaises(ValueError, PusherMetrics, self.registry)

    def test_histogram_buckets(self) -> None:
        """
        Buckets are cumulative and their bounds inclusive: 1.0 ms counts in
        C{le="1.0"}, 1.5 ms only from C{le="2.5"}.
        """
        registry = CollectorRegistry()
        app = PusherMetrics(registry).app("a")
        app.http_call(0, 0, duration_ms=1.0)
        app.http_call(0, 0, duration_ms=1.5)
        app.http_call(0, 0, duration_ms=99999.0)
        result = scrape(registry)
        name = "sockudo_http_request_duration_ms_bucket"
        self.assertEqual(result.value(name, le="0.5"), 0)
        self.assertEqual(result.value(name, le="1.0"), 1)
        self.assertEqual(result.value(name, le="2.5"), 2)
        self.assertEqual(result.value(name, le="1000.0"), 2)
        self.assertEqual(result.value(name, le="+Inf"), 3)
        self.assertEqual(result.value("sockudo_http_request_duration_ms_sum"), 100001.5)

    def test_connection_error_types(self) -> None:
        """
        Each of Sockudo's error types is its own series, and errors before
        an app is known go to the fixed L{UNKNOWN_APP} label.
        """
        registry = CollectorRegistry()
        metrics = PusherMetrics(registry)
        for error_type in CONNECTION_ERROR_TYPES:
            metrics.app(UNKNOWN_APP).connection_error(error_type)
        metrics.app(UNKNOWN_APP).connection_error("app_not_found")
        result = scrape(registry)
        samples = result.family("sockudo_connection_errors_total")
        self.assertEqual(len(samples), len(CONNECTION_ERROR_TYPES))
        self.assertEqual(
            result.value("sockudo_connection_errors_total", error_type="app_not_found"), 2
        )
        self.assertEqual({sample.labels["app_id"] for sample in samples}, {"unknown"})


class LabelTests(SynchronousTestCase):
    """
    The label values shared with Sockudo.
    """

    def test_recipient_count_bucket(self) -> None:
        """
        The buckets end at 10, 100, 1000 and 10000 inclusive.
        """
        cases = {
            0: "xs",
            10: "xs",
            11: "sm",
            100: "sm",
            101: "md",
            1000: "md",
            1001: "lg",
            10000: "lg",
            10001: "xl",
        }
        self.assertEqual({n: recipient_count_bucket(n) for n in cases}, cases)

    def test_channel_type_label(self) -> None:
        """
        Cache channels are C{cache}; others are their kind.
        """
        cases = {
            "news": "public",
            "private-a": "private",
            "private-encrypted-a": "private_encrypted",
            "presence-a": "presence",
            "cache-a": "cache",
            "private-cache-a": "cache",
            "presence-cache-a": "cache",
        }
        self.assertEqual({name: channel_type_label(channel_type(name)) for name in cases}, cases)


class ScrapeTimeGaugeTests(SynchronousTestCase):
    """
    Current-state gauges are read from their sources at scrape time, so they
    cannot drift from the truth.
    """

    def test_connected_follows_source(self) -> None:
        """
        C{connected} is whatever the source says at each scrape, whatever
        the connect and disconnect counters say.
        """
        sockets = {"a": 3}
        registry = CollectorRegistry()
        metrics = PusherMetrics(registry, connections=lambda: sockets)
        app = metrics.app("a")
        for _ in range(5):
            app.connection_opened()
        self.assertEqual(scrape(registry).value("sockudo_connected", app_id="a"), 3)
        sockets["a"] = 1
        sockets["b"] = 7
        result = scrape(registry)
        self.assertEqual(result.value("sockudo_connected", app_id="a"), 1)
        self.assertEqual(result.value("sockudo_connected", app_id="b"), 7)

    def test_connected_zero_for_known_app(self) -> None:
        """
        An app with metrics but no open socket reports 0 rather than
        vanishing from the scrape.
        """
        registry = CollectorRegistry()
        PusherMetrics(registry, connections=dict).app("a").connection_closed()
        self.assertEqual(scrape(registry).value("sockudo_connected", app_id="a"), 0)

    def test_active_channels(self) -> None:
        """
        C{active_channels} reports the source's counts and zero for the other
        channel types of known apps.
        """
        registry = CollectorRegistry()
        metrics = PusherMetrics(
            registry, active_channels=lambda: {"a": {"presence": 2, "server_to_user": 1}}
        )
        metrics.app("b")
        result = scrape(registry)
        name = "sockudo_active_channels"
        self.assertEqual(result.value(name, app_id="a", channel_type="presence"), 2)
        self.assertEqual(result.value(name, app_id="a", channel_type="server_to_user"), 1)
        self.assertEqual(result.value(name, app_id="a", channel_type="public"), 0)
        self.assertEqual(result.value(name, app_id="b", channel_type="cache"), 0)

    def test_cluster_link(self) -> None:
        """
        Each cluster link is 1 when up and 0 when down, as of the scrape.
        """
        links = {"publisher": True, "subscriber": True}
        registry = CollectorRegistry()
        PusherMetrics(registry, cluster_links=lambda: links)
        self.assertEqual(scrape(registry).value("sockudo_cluster_link_up", link="subscriber"), 1)
        links["subscriber"] = False
        self.assertEqual(scrape(registry).value("sockudo_cluster_link_up", link="subscriber"), 0)

    def test_single_node(self) -> None:
        """
        Without cluster links or a webhook queue, those families are absent.
        """
        registry = CollectorRegistry()
        PusherMetrics(registry).app("a")
        result = scrape(registry)
        self.assertNotIn("sockudo_cluster_link_up", result.types)
        self.assertNotIn("sockudo_webhook_queue_depth", result.types)

    def test_webhook_queue_depth(self) -> None:
        """
        The webhook queue depth is read at scrape time.
        """
        depth = [5]
        registry = CollectorRegistry()
        PusherMetrics(registry, webhook_queue_depth=lambda: depth[0])
        self.assertEqual(scrape(registry).value("sockudo_webhook_queue_depth", port="9601"), 5)
        depth[0] = 0
        self.assertEqual(scrape(registry).value("sockudo_webhook_queue_depth"), 0)

    def test_failing_source(self) -> None:
        """
        A source that raises is logged and drops only its own family from
        that scrape.
        """

        def broken() -> Mapping[str, int]:
            raise ZeroDivisionError()

        registry = CollectorRegistry()
        PusherMetrics(registry, connections=broken).app("a").connection_opened()
        result = scrape(registry)
        self.assertNotIn("sockudo_connected", result.types)
        self.assertEqual(result.value("sockudo_new_connections_total", app_id="a"), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


@attrs.define
class _Writer:
    """
    A log file collecting its lines.
    """

    lines: list[str]

    def write(self, line: str) -> None:
        """
        Keep C{line}.
        """
        self.lines.append(line)


class ResourceTests(SynchronousTestCase):
    """
    The leaf resource, the metrics Site and its listener.
    """

    def test_render(self) -> None:
        """
        C{GET} returns the registry in the 0.0.4 text format, computed at
        request time.
        """
        sockets = {"a": 1}
        registry = CollectorRegistry()
        PusherMetrics(registry, connections=lambda: sockets)
        resource = MetricsResource(registry)
        sockets["a"] = 4
        request = DummyRequest([b""])
        body = resource.render(request)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [CONTENT_TYPE.encode()]
        )
        self.assertTrue(CONTENT_TYPE.startswith("text/plain; version=0.0.4"))
        self.assertEqual(Scrape.parse(body).value("sockudo_connected", app_id="a"), 4)

    def test_site(self) -> None:
        """
        The metrics Site serves C{/metrics} and 404s everything else.
        """
        registry = CollectorRegistry()
        busy_metrics(registry)
        treq = StubTreq(metrics_site(registry).resource)
        response = self.successResultOf(treq.get("http://metrics.test/metrics"))
        self.assertEqual(response.code, 200)
        body = self.successResultOf(treq.content(response))
        self.assertEqual(Scrape.parse(body).value("sockudo_connected", app_id="app-1"), 2)
        missing = self.successResultOf(treq.get("http://metrics.test/"))
        self.assertEqual(missing.code, 404)
        other = self.successResultOf(treq.get("http://metrics.test/apps/1/events"))
        self.assertEqual(other.code, 404)

    def test_site_has_no_access_log(self) -> None:
        """
        Scrapes write no access log line (Prometheus scrapes every few
        seconds).
        """
        written: list[str] = []
        site = metrics_site(CollectorRegistry())
        site._logFile = _Writer(written)  # type: ignore[attr-defined]
        site._logFormatter = lambda timestamp, request: "GET /metrics"  # type: ignore[attr-defined]
        site.log(DummyRequest([b"metrics"]))  # type: ignore[arg-type]
        self.assertEqual(written, [])
        # The same call on a plain Site does write: the check can fail.
        plain = Site(MetricsResource(CollectorRegistry()), logFormatter=site._logFormatter)  # type: ignore[attr-defined]
        plain._logFile = site._logFile  # type: ignore[attr-defined]
        plain.log(DummyRequest([b"metrics"]))  # type: ignore[arg-type]
        self.assertEqual(written, ["GET /metrics\n"])

    def test_endpoint(self) -> None:
        """
        The listener endpoint follows the host's address family.
        """
        reactor = MemoryReactor()
        self.assertIsInstance(metrics_endpoint(reactor, "0.0.0.0", 9601), TCP4ServerEndpoint)
        self.assertIsInstance(metrics_endpoint(reactor, "::", 9601), TCP6ServerEndpoint)

    def test_service(self) -> None:
        """
        The metrics service listens on C{metrics.host:metrics.port} with the
        metrics Site, and stops listening when stopped.
        """
        reactor = MemoryReactor()
        registry = CollectorRegistry()
        service = metrics_service(reactor, registry, "127.0.0.1", 9601)
        self.assertEqual(service.name, "metrics")
        service.startService()
        [(port, factory, _backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (9601, "127.0.0.1"))
        self.assertIsInstance(factory, Site)
        self.assertIsInstance(factory.resource.getStaticEntity(b"metrics"), MetricsResource)
        self.successResultOf(service.stopService())


class ObserverTests(SynchronousTestCase):
    """
    L{MetricsObserver} turns the WebSocket glue's events into Sockudo's
    counters.
    """

    def setUp(self) -> None:
        """
        An observer over a fresh registry.
        """
        self.registry = CollectorRegistry()
        self.observer = MetricsObserver(PusherMetrics(self.registry))

    def test_provides_interface(self) -> None:
        """
        The observer is an L{IPusherEvents}.
        """
        self.assertTrue(verifyObject(IPusherEvents, self.observer))

    def test_connections(self) -> None:
        """
        Opens and closes count as connections and disconnections.
        """
        self.observer.connection_opened("a", "1.1")
        self.observer.connection_opened("a", "1.2")
        self.observer.connection_closed("a", "1.1")
        result = scrape(self.registry)
        self.assertEqual(result.value("sockudo_new_connections_total", app_id="a"), 2)
        self.assertEqual(result.value("sockudo_new_disconnections_total", app_id="a"), 1)

    def test_rejections(self) -> None:
        """
        Refusals count under Sockudo's error types; an unknown key under
        C{unknown}, over quota as C{socket_handling_failed} as in Sockudo.
        """
        self.observer.connection_rejected(None, 4001)
        self.observer.connection_rejected("a", 4003)
        self.observer.connection_rejected("a", 4004)
        self.observer.connection_rejected("a", 4009)
        result = scrape(self.registry)
        name = "sockudo_connection_errors_total"
        self.assertEqual(result.value(name, app_id=UNKNOWN_APP, error_type="app_not_found"), 1)
        self.assertEqual(result.value(name, app_id="a", error_type="app_disabled"), 1)
        self.assertEqual(result.value(name, app_id="a", error_type="socket_handling_failed"), 1)
        self.assertEqual(result.value(name, app_id="a", error_type="origin_not_allowed"), 1)

    def test_subscriptions(self) -> None:
        """
        Subscriptions count by Sockudo's channel type label.
        """
        self.observer.subscribed("a", "presence-room", "1.1")
        self.observer.subscribed("a", "private-cache-x", "1.1")
        self.observer.unsubscribed("a", "presence-room", "1.1")
        result = scrape(self.registry)
        self.assertEqual(
            result.value("sockudo_channel_subscriptions_total", channel_type="presence"), 1
        )
        self.assertEqual(
            result.value("sockudo_channel_subscriptions_total", channel_type="cache"), 1
        )
        self.assertEqual(
            result.value("sockudo_channel_unsubscriptions_total", channel_type="presence"), 1
        )

    def test_messages(self) -> None:
        """
        Messages in, single frames out and broadcasts (size times recipients)
        count as messages and bytes; a broadcast also counts its fan-out; a
        slow consumer closed counts as an outbound-buffer close.
        """
        self.observer.message_received("a", 30)
        self.observer.message_sent("a", 10)
        self.observer.broadcast_delivered("a", "news", 100, 4)
        self.observer.slow_consumer_closed("a", "1.1")
        result = scrape(self.registry)
        self.assertEqual(result.value("sockudo_ws_messages_received_total"), 1)
        self.assertEqual(result.value("sockudo_socket_received_bytes"), 30)
        self.assertEqual(result.value("sockudo_ws_messages_sent_total"), 5)
        self.assertEqual(result.value("sockudo_socket_transmitted_bytes"), 410)
        self.assertEqual(result.value("sockudo_broadcast_fanout_size_sum"), 4)
        self.assertEqual(result.value("sockudo_outbound_buffer_closes_total"), 1)

    def test_broadcast_latency(self) -> None:
        """
        A timed fan-out is observed as Sockudo's C{broadcast_latency_ms},
        labelled with the channel type and the recipient-count bucket.
        """
        self.observer.broadcast_timed("a", "presence-room", 50, 0.002)
        result = scrape(self.registry)
        labels = {"app_id": "a", "channel_type": "presence", "recipient_count_bucket": "sm"}
        self.assertEqual(result.value("sockudo_broadcast_latency_ms_count", **labels), 1)
        self.assertAlmostEqual(result.value("sockudo_broadcast_latency_ms_sum", **labels), 2.0)


class _Echo(Resource):
    """
    A leaf answering with the request body, or later when told to wait.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, wait: bool = False) -> None:
        super().__init__()
        self.wait = wait
        self.pending: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        """
        Echo the body, or hold the request open.
        """
        if self.wait:
            self.pending.append(request)
            return NOT_DONE_YET
        return b"echo:" + request.content.read()


class MeteredResourceTests(SynchronousTestCase):
    """
    L{MeteredResource} counts REST calls, bytes and time per known app.
    """

    def setUp(self) -> None:
        """
        A wrapped echo resource at C{/apps} and C{/users}, one known app.
        """
        self.registry = CollectorRegistry()
        self.metrics = PusherMetrics(self.registry)
        self.clock = Clock()
        self.store = MemoryAppStore([App(id="app-1", key="key-1", secret="s")])
        self.echo = _Echo()
        metered = MeteredResource(self.echo, self.metrics, self.clock, self.store)
        root = Resource()
        root.putChild(b"apps", metered)
        root.putChild(b"users", metered)
        self.treq = StubTreq(root)

    def call(self, method: str, url: str, body: bytes = b"") -> int:
        """
        Make one request through the wrapper; return its status.
        """
        response = self.successResultOf(self.treq.request(method, url, data=body))
        self.successResultOf(self.treq.content(response))
        code: int = response.code
        return code

    def test_known_app(self) -> None:
        """
        A call for a known app counts under its id, with the body bytes
        received and the response bytes sent.
        """
        self.assertEqual(self.call("POST", "http://x/apps/app-1/events", b"0123456789"), 200)
        result = scrape(self.registry)
        self.assertEqual(result.value("sockudo_http_calls_received_total", app_id="app-1"), 1)
        self.assertEqual(result.value("sockudo_http_received_bytes", app_id="app-1"), 10)
        self.assertEqual(result.value("sockudo_http_transmitted_bytes", app_id="app-1"), 15)

    def test_unknown_app(self) -> None:
        """
        Ids the app store does not know count under L{UNKNOWN_APP}.
        """
        self.call("GET", "http://x/apps/nope-1/channels")
        self.call("GET", "http://x/apps/nope-2/channels")
        result = scrape(self.registry)
        self.assertEqual(result.value("sockudo_http_calls_received_total", app_id=UNKNOWN_APP), 2)
        self.assertEqual(
            {s.labels["app_id"] for s in result.family("sockudo_http_calls_received_total")},
            {UNKNOWN_APP},
        )

    def test_auth_key(self) -> None:
        """
        The un-prefixed C{/users/...} route counts under the app of its
        C{auth_key}.
        """
        self.call("POST", "http://x/users/u1/terminate_connections?auth_key=key-1")
        result = scrape(self.registry)
        self.assertEqual(result.value("sockudo_http_calls_received_total", app_id="app-1"), 1)

    def test_duration(self) -> None:
        """
        The time from the request to its finished response is observed.
        """
        self.echo.wait = True
        d = self.treq.get("http://x/apps/app-1/channels")
        self.clock.advance(0.25)
        [request] = self.echo.pending
        request.write(b"late")
        request.finish()
        self.treq.flush()
        self.successResultOf(d)
        result = scrape(self.registry)
        self.assertEqual(result.value("sockudo_http_request_duration_ms_sum", app_id="app-1"), 250)
        self.assertEqual(result.value("sockudo_http_transmitted_bytes", app_id="app-1"), 4)

    def test_walks_wrapped_tree(self) -> None:
        """
        A wrapped resource with children is walked as C{Site} would.
        """
        tree = Resource()
        tree.putChild(b"app-1", _Echo())
        root = Resource()
        root.putChild(b"apps", MeteredResource(tree, self.metrics, self.clock, self.store))
        treq = StubTreq(root)
        response = self.successResultOf(treq.post("http://x/apps/app-1", data=b"hi"))
        self.assertEqual(self.successResultOf(treq.content(response)), b"echo:hi")
        self.assertEqual(
            scrape(self.registry).value("sockudo_http_received_bytes", app_id="app-1"), 2
        )


@attrs.frozen
class _FakeProtocol:
    """
    What L{open_connections} reads of a WebSocket protocol.
    """

    session: Any


class SourceTests(SynchronousTestCase):
    """
    The scrape-time sources the composition root wires in.
    """

    def test_open_connections(self) -> None:
        """
        Accepted connections count per app; those without a session (still
        being accepted, or refused) do not.
        """

        def session(app_id: str) -> object:
            return attrs.make_class("S", ["app"])(App(id=app_id, key="k", secret="s"))

        protocols = [
            _FakeProtocol(session("a")),
            _FakeProtocol(session("a")),
            _FakeProtocol(session("b")),
            _FakeProtocol(None),
        ]
        self.assertEqual(open_connections(protocols), {"a": 2, "b": 1})

    def test_channels_by_type(self) -> None:
        """
        The node registry's occupied channels count per app and channel
        type label; vacated channels and emptied apps drop out.
        """
        registry: Registry[object] = Registry()
        for socket_id in ("1.1", "1.2"):
            registry.add_socket("a", socket_id, object())
        registry.add_socket("b", "2.1", object())
        registry.subscribe("a", "news", "1.1")
        registry.subscribe("a", "news", "1.2")
        registry.subscribe("a", "private-x", "1.1")
        registry.subscribe("a", "cache-y", "1.2")
        registry.subscribe("b", "private-encrypted-z", "2.1")
        self.assertEqual(
            channels_by_type(registry),
            {"a": {"public": 1, "private": 1, "cache": 1}, "b": {"private_encrypted": 1}},
        )
        registry.unsubscribe("a", "private-x", "1.1")
        registry.remove_socket("2.1")
        self.assertEqual(channels_by_type(registry), {"a": {"public": 1, "cache": 1}})

    def test_memory_queue_depth(self) -> None:
        """
        The memory webhook queue's depth counts waiting and in-progress
        jobs, and drops as jobs finish.
        """
        clock = Clock()
        pending: list[Deferred[bool]] = []

        def handler(job: str) -> Deferred[bool]:
            d: Deferred[bool] = Deferred()
            pending.append(d)
            return d

        queue = MemoryJobQueue(clock, max_in_progress=1)
        for job in "abc":
            queue.enqueue(job)
        self.assertEqual(queue.depth(), 3)
        queue.start(handler)
        clock.advance(0)
        self.assertEqual((len(pending), queue.depth()), (1, 3))
        pending[0].callback(True)
        clock.advance(0)
        self.assertEqual(queue.depth(), 2)

    def test_watch(self) -> None:
        """
        Sources given to C{watch} after construction are read at the next
        scrape; L{None} leaves a source alone.
        """
        registry = CollectorRegistry()
        metrics = PusherMetrics(registry, webhook_queue_depth=lambda: 3)
        metrics.watch(connections=lambda: {"a": 9})
        result = scrape(registry)
        self.assertEqual(result.value("sockudo_connected", app_id="a"), 9)
        self.assertEqual(result.value("sockudo_webhook_queue_depth"), 3)


class WebhookMetricsTests(SynchronousTestCase):
    """
    L{WebhookMetrics} counts webhook delivery for the sender.
    """

    def test_counts(self) -> None:
        """
        Deliveries, failed attempts and given-up requests count per app; a
        malformed job (no app) counts under C{unknown}.
        """
        registry = CollectorRegistry()
        webhooks = WebhookMetrics(PusherMetrics(registry))
        self.assertTrue(verifyObject(IWebhookMetrics, webhooks))
        webhooks.attempt_failed("a", "timeout")
        webhooks.attempt_failed("a", "503")
        webhooks.delivered("a", events=3, attempts=3)
        webhooks.dropped("a", 1, "retries_exhausted")
        webhooks.dropped("", 0, "malformed")
        result = scrape(registry)
        self.assertEqual(result.value("sockudo_webhooks_sent_total", app_id="a"), 1)
        self.assertEqual(result.value("sockudo_webhook_retries_total", app_id="a"), 2)
        self.assertEqual(result.value("sockudo_webhooks_failed_total", app_id="a"), 1)
        self.assertEqual(result.value("sockudo_webhooks_failed_total", app_id=UNKNOWN_APP), 1)


class MeteredRateLimiterTests(SynchronousTestCase):
    """
    L{MeteredRateLimiter} counts checks and refusals of the limiter it
    wraps.
    """

    def test_counts(self) -> None:
        """
        Three hits against a limit of two: three checks, one triggered,
        under Sockudo's labels for the IP limiter; the wrapped limiter's
        answers pass through unchanged; no connection gauge for C{global}.
        """
        registry = CollectorRegistry()
        metrics = PusherMetrics(registry)
        limiter = MeteredRateLimiter(
            MemoryRateLimiter(Clock()), metrics.app(GLOBAL_APP), "api_rate_limit", "http_api"
        )
        allowed = [self.successResultOf(limiter.hit("1.2.3.4", 2, 60)).allowed for _ in range(3)]
        self.assertEqual(allowed, [True, True, False])
        result = scrape(registry)
        labels = {
            "app_id": "global",
            "limiter_type": "api_rate_limit",
            "request_context": "http_api",
        }
        self.assertEqual(result.value("sockudo_rate_limit_checks_total", **labels), 3)
        self.assertEqual(result.value("sockudo_rate_limit_triggered_total", **labels), 1)
        self.assertEqual(result.family("sockudo_connected"), [])
