# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics under Sockudo's exact names, on an injected registry.

Operators scrape sockudo-tw as they scraped Sockudo (sockudo-reference.md
section 6): the same names, types and labels (C{app_id}, and C{port}, which is
the B{metrics listener} port as in Sockudo), so their dashboards keep working.

Two departures from the obvious prometheus_client code, both on purpose:

  - Counts are plain integers on a per-app L{AppMetrics} object, exported by
    one custom collector at scrape time. The hot paths (a message in, a
    broadcast out) cost an attribute increment: no lock, no label lookup, no
    dict built per call. The reactor thread is the only writer.
  - Current-state gauges (C{connected}, C{active_channels}, the cluster link,
    the webhook queue depth) are never incremented or decremented: they are
    read from injected callables when Prometheus scrapes, so they cannot drift
    (Sockudo #205 showed 4,600 connected with about 100 real sockets). This is
    synapse's C{LaterGauge} idea.

prometheus_client would name a counter C{x_total} and add C{x_created}
series; Sockudo exports some counters without the suffix
(C{sockudo_socket_received_bytes}) and no C{_created} series.
L{generate_text} writes exactly Sockudo's names.

Where the counts come from: L{MetricsObserver} (the WebSocket glue's and
the adapter's events), L{MeteredResource} (REST calls and C{/up}),
L{MeteredRateLimiter} and L{WebhookMetrics}; L{sockudo_tw.service} wires
them and serves L{metrics_site} when C{metrics.enabled}.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.http import Request as HTTPRequest
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Request, Site
from zope.interface import implementer

from sockudo_tw.appstores import IAppStore
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.pusher.channels import ChannelType, channel_type
from sockudo_tw.pusher.errors import PusherErrorCode
from sockudo_tw.ratelimit import IRateLimiter, RateLimitResult
from sockudo_tw.webhooks import IWebhookMetrics

__all__ = [
    "CONNECTION_ERROR_TYPES",
    "CONTENT_TYPE",
    "DEFAULT_PREFIX",
    "GLOBAL_APP",
    "UNKNOWN_APP",
    "AppMetrics",
    "MeteredRateLimiter",
    "MeteredResource",
    "MetricsObserver",
    "MetricsResource",
    "PusherMetrics",
    "WebhookMetrics",
    "channel_type_label",
    "channels_by_type",
    "generate_text",
    "metrics_endpoint",
    "metrics_service",
    "metrics_site",
    "open_connections",
    "recipient_count_bucket",
]

DEFAULT_PREFIX = "sockudo_"

#: The text format Sockudo serves (sockudo-reference.md section 3.7). Our
#: output is exactly that format, so we say so rather than announcing the
#: 1.0.0 format (UTF-8 names) that newer prometheus_client defaults to.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The C{app_id} label for connection errors before an app is known (unknown
#: key): a fixed value, so that random keys cannot grow the series set.
UNKNOWN_APP = "unknown"

#: The C{app_id} label of node-wide counts (Sockudo's IP rate limiter).
GLOBAL_APP = "global"

# Label values that are not apps: no connection or channel gauges for them.
_PSEUDO_APPS = frozenset({UNKNOWN_APP, GLOBAL_APP})

#: Sockudo's C{error_type} values for C{connection_errors_total}.
CONNECTION_ERROR_TYPES = (
    "app_not_found",
    "app_disabled",
    "app_validation_failed",
    "websocket_upgrade_error",
    "websocket_upgrade_failed",
    "origin_not_allowed",
    "invalid_message_format",
    "message_parse_error",
    "missing_event_name",
    "authentication_failed",
    "authentication_error",
    "socket_handling_failed",
)

_CHANNEL_TYPES = ("public", "private", "presence", "private_encrypted", "cache")

# Sockudo observes milliseconds into the Rust client's default buckets.
_RESOLVE_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_MS_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
_BROADCAST_LATENCY_BUCKETS = (*_LATENCY_MS_BUCKETS, 2500.0, 5000.0)
_FANOUT_DURATION_BUCKETS = (0.05, 0.1, 0.25, *_LATENCY_MS_BUCKETS)
_FANOUT_SIZE_BUCKETS = (0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)


def recipient_count_bucket(recipients: int) -> str:
    """
    Sockudo's C{recipient_count_bucket} label for a broadcast's fan-out:
    C{xs} up to 10, C{sm} up to 100, C{md} up to 1000, C{lg} up to 10000,
    else C{xl}.
    """
    if recipients <= 10:
        return "xs"
    if recipients <= 100:
        return "sm"
    if recipients <= 1000:
        return "md"
    if recipients <= 10000:
        return "lg"
    return "xl"


def channel_type_label(kind: ChannelType) -> str:
    """
    The C{channel_type} label Sockudo uses: C{cache} for every cache
    channel, otherwise the kind (C{public}, C{private}, C{presence},
    C{private_encrypted}; ours adds C{server_to_user}).
    """
    if kind.cache:
        return "cache"
    return kind.kind.value


class _HasSession(Protocol):
    """
    What L{open_connections} reads of a WebSocket protocol.
    """

    session: Any


def open_connections(protocols: Iterable[_HasSession]) -> dict[str, int]:
    """
    Count open, accepted WebSocket connections by app id: the source for
    C{connected}, read from the glue's own set of live protocols, so a
    missed or failed cleanup cannot make it drift.
    """
    counts: dict[str, int] = {}
    for protocol in protocols:
        session = protocol.session
        if session is not None:
            app_id = session.app.id
            counts[app_id] = counts.get(app_id, 0) + 1
    return counts


class _ChannelIndex(Protocol):
    """
    What L{channels_by_type} reads of the node's registry.
    """

    def app_ids(self) -> list[str]: ...

    def channel_counts(self, app_id: str) -> dict[str, int]: ...


def channels_by_type(registry: _ChannelIndex) -> dict[str, dict[str, int]]:
    """
    Count the node's occupied channels per app id and channel type label:
    the source for C{active_channels}.
    """
    result: dict[str, dict[str, int]] = {}
    for app_id in registry.app_ids():
        kinds: dict[str, int] = {}
        for name in registry.channel_counts(app_id):
            label = channel_type_label(channel_type(name))
            kinds[label] = kinds.get(label, 0) + 1
        result[app_id] = kinds
    return result


class _Histogram:
    """
    A cumulative histogram as Prometheus wants it, kept as plain numbers.
    """

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        # One slot per bound plus the +Inf slot.
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """
        Count C{value} in the first bucket whose bound is at least C{value}.
        """
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> Iterator[tuple[str, int]]:
        """
        The C{le} label and cumulative count of each bucket, ending at +Inf.
        """
        running = 0
        for bound, hits in zip(self.bounds, self.counts, strict=False):
            running += hits
            yield _float_label(bound), running
        yield "+Inf", self.count


def _float_label(value: float) -> str:
    """
    Format a bucket bound as prometheus_client does (C{1.0}, C{0.005}).
    """
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class AppMetrics:
    """
    The counts for one app, bound once and kept on the hot paths.

    Callers keep the object (the WebSocket glue holds one per connection)
    and call its methods; each is a few integer additions.
    """

    __slots__ = (
        "adapter_received_requests",
        "adapter_received_responses",
        "adapter_resolve_time",
        "adapter_resolved_promises",
        "adapter_sent_requests",
        "adapter_uncomplete_promises",
        "app_id",
        "broadcast_fanout_duration",
        "broadcast_fanout_size",
        "broadcast_latency",
        "connection_errors",
        "http_calls",
        "http_duration",
        "http_received_bytes",
        "http_transmitted_bytes",
        "new_connections",
        "new_disconnections",
        "outbound_buffer_closes",
        "rate_limit_checks",
        "rate_limit_triggered",
        "socket_received_bytes",
        "socket_transmitted_bytes",
        "subscriptions",
        "unsubscriptions",
        "webhook_retries",
        "webhooks_failed",
        "webhooks_sent",
        "ws_messages_received",
        "ws_messages_sent",
    )

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.new_connections = 0
        self.new_disconnections = 0
        self.connection_errors: dict[str, int] = {}
        self.socket_received_bytes = 0
        self.socket_transmitted_bytes = 0
        self.ws_messages_received = 0
        self.ws_messages_sent = 0
        self.http_received_bytes = 0
        self.http_transmitted_bytes = 0
        self.http_calls = 0
        self.http_duration = _Histogram(_LATENCY_MS_BUCKETS)
        self.adapter_resolve_time = _Histogram(_RESOLVE_TIME_BUCKETS)
        self.adapter_resolved_promises = 0
        self.adapter_uncomplete_promises = 0
        self.adapter_sent_requests = 0
        self.adapter_received_requests = 0
        self.adapter_received_responses = 0
        self.rate_limit_checks: dict[tuple[str, str], int] = {}
        self.rate_limit_triggered: dict[tuple[str, str], int] = {}
        self.subscriptions: dict[str, int] = {}
        self.unsubscriptions: dict[str, int] = {}
        self.broadcast_latency: dict[tuple[str, str], _Histogram] = {}
        self.broadcast_fanout_size = _Histogram(_FANOUT_SIZE_BUCKETS)
        self.broadcast_fanout_duration = _Histogram(_FANOUT_DURATION_BUCKETS)
        self.outbound_buffer_closes = 0
        self.webhooks_sent = 0
        self.webhooks_failed = 0
        self.webhook_retries = 0

    # WebSocket connections and messages

    def connection_opened(self) -> None:
        """
        A socket was accepted for this app (C{new_connections_total}).
        """
        self.new_connections += 1

    def connection_closed(self) -> None:
        """
        An accepted socket went away (C{new_disconnections_total}).
        """
        self.new_disconnections += 1

    def connection_error(self, error_type: str) -> None:
        """
        A connection failed for one of L{CONNECTION_ERROR_TYPES}.
        """
        errors = self.connection_errors
        errors[error_type] = errors.get(error_type, 0) + 1

    def message_received(self, size: int) -> None:
        """
        One WebSocket message of C{size} bytes came in.
        """
        self.ws_messages_received += 1
        self.socket_received_bytes += size

    def messages_sent(self, size: int, count: int = 1) -> None:
        """
        C{count} WebSocket messages of C{size} bytes each went out (a
        broadcast counts size times recipients, as in Sockudo).
        """
        self.ws_messages_sent += count
        self.socket_transmitted_bytes += size * count

    def outbound_buffer_closed(self) -> None:
        """
        A slow consumer was closed because its outbound buffer was full.
        """
        self.outbound_buffer_closes += 1

    # Channels

    def subscribed(self, channel_type: str) -> None:
        """
        A socket joined a channel of C{channel_type} (see
        L{channel_type_label}).
        """
        subs = self.subscriptions
        subs[channel_type] = subs.get(channel_type, 0) + 1

    def unsubscribed(self, channel_type: str) -> None:
        """
        A socket left a channel of C{channel_type}, by request or on close.
        """
        unsubs = self.unsubscriptions
        unsubs[channel_type] = unsubs.get(channel_type, 0) + 1

    def broadcast(
        self,
        channel_type: str,
        recipients: int,
        fanout_ms: float | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """
        One event was handed to C{recipients} local sockets, taking
        C{fanout_ms} if measured.

        C{latency_ms}, when the publish time is known, is Sockudo's
        C{broadcast_latency_ms}: from the HTTP publish to the local fan-out.
        The bytes and messages sent are counted by L{messages_sent}.
        """
        self.broadcast_fanout_size.observe(recipients)
        if fanout_ms is not None:
            self.broadcast_fanout_duration.observe(fanout_ms)
        if latency_ms is not None:
            self.broadcast_latency_observed(channel_type, recipients, latency_ms)

    def broadcast_latency_observed(self, channel_type: str, recipients: int, ms: float) -> None:
        """
        Observe Sockudo's C{broadcast_latency_ms} for one broadcast.
        """
        key = (channel_type, recipient_count_bucket(recipients))
        histogram = self.broadcast_latency.get(key)
        if histogram is None:
            histogram = self.broadcast_latency[key] = _Histogram(_BROADCAST_LATENCY_BUCKETS)
        histogram.observe(ms)

    # HTTP API and rate limits

    def http_call(self, received: int, transmitted: int, duration_ms: float | None = None) -> None:
        """
        One REST call (C{/up} included) read C{received} and wrote
        C{transmitted} bytes, taking C{duration_ms} if measured.
        """
        self.http_calls += 1
        self.http_received_bytes += received
        self.http_transmitted_bytes += transmitted
        if duration_ms is not None:
            self.http_duration.observe(duration_ms)

    def rate_limit_check(self, limiter_type: str, request_context: str, triggered: bool) -> None:
        """
        A rate limiter was consulted and, if C{triggered}, said no.
        """
        key = (limiter_type, request_context)
        checks = self.rate_limit_checks
        checks[key] = checks.get(key, 0) + 1
        if triggered:
            hits = self.rate_limit_triggered
            hits[key] = hits.get(key, 0) + 1

    # Horizontal adapter (cluster requests)

    def adapter_request_sent(self) -> None:
        """
        This node asked the other nodes a question.
        """
        self.adapter_sent_requests += 1

    def adapter_request_received(self) -> None:
        """
        Another node asked this node a question.
        """
        self.adapter_received_requests += 1

    def adapter_response_received(self) -> None:
        """
        Another node answered one of this node's questions.
        """
        self.adapter_received_responses += 1

    def adapter_request_resolved(self, elapsed_ms: float, complete: bool) -> None:
        """
        A cluster question finished after C{elapsed_ms}, with every node's
        answer (C{complete}) or not.
        """
        self.adapter_resolve_time.observe(elapsed_ms)
        if complete:
            self.adapter_resolved_promises += 1
        else:
            self.adapter_uncomplete_promises += 1

    # Webhooks

    def webhook_sent(self) -> None:
        """
        A webhook request was delivered (2xx).
        """
        self.webhooks_sent += 1

    def webhook_failed(self) -> None:
        """
        A webhook request was given up on.
        """
        self.webhooks_failed += 1

    def webhook_retried(self) -> None:
        """
        A failed webhook request was scheduled again.
        """
        self.webhook_retries += 1


class _BareCounter(Metric):
    """
    A counter family whose series have no C{_total} suffix, as some of
    Sockudo's do. L{generate_text} fixes its C{HELP}/C{TYPE} lines.
    """


def _no_counts() -> Mapping[str, int]:
    """
    The default source for per-app counts: nothing.
    """
    return {}


def _no_channels() -> Mapping[str, Mapping[str, int]]:
    """
    The default source for active channels: none.
    """
    return {}


def _no_links() -> Mapping[str, bool]:
    """
    The default source for cluster links: none (a single node).
    """
    return {}


def _no_queue() -> int | None:
    """
    The default source for the webhook queue depth: no queue.
    """
    return None


class PusherMetrics:
    """
    Every Sockudo metric plus ours, as one collector on an injected registry.

    @ivar registry: The registry this collector is on (serve it with
        L{metrics_site}).
    @ivar port: The C{port} label value: the metrics listener's port.
    """

    _log = Logger()

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        port: int = 9601,
        prefix: str = DEFAULT_PREFIX,
        connections: Callable[[], Mapping[str, int]] = _no_counts,
        active_channels: Callable[[], Mapping[str, Mapping[str, int]]] = _no_channels,
        cluster_links: Callable[[], Mapping[str, bool]] = _no_links,
        webhook_queue_depth: Callable[[], int | None] = _no_queue,
    ) -> None:
        """
        Register on C{registry}.

        @param connections: Open sockets per app id on this node, read at
            scrape time for C{connected}.
        @param active_channels: Occupied channels per app id and channel type
            label on this node, read at scrape time.
        @param cluster_links: Each cluster backend link (e.g. C{publisher},
            C{subscriber}) and whether it is up, read at scrape time.
        @param webhook_queue_depth: Webhook jobs waiting, or L{None} without
            a queue, read at scrape time.
        """
        self.registry = registry
        self.port = port
        self._port = str(port)
        self._prefix = prefix
        self._connections = connections
        self._active_channels = active_channels
        self._cluster_links = cluster_links
        self._webhook_queue_depth = webhook_queue_depth
        self._apps: dict[str, AppMetrics] = {}
        registry.register(self)

    def watch(
        self,
        *,
        connections: Callable[[], Mapping[str, int]] | None = None,
        active_channels: Callable[[], Mapping[str, Mapping[str, int]]] | None = None,
        cluster_links: Callable[[], Mapping[str, bool]] | None = None,
        webhook_queue_depth: Callable[[], int | None] | None = None,
    ) -> None:
        """
        Set scrape-time sources that exist only after the metrics do (the
        composition root builds the observer before the WebSocket factory
        whose connections it then counts). L{None} keeps a source as is.
        """
        if connections is not None:
            self._connections = connections
        if active_channels is not None:
            self._active_channels = active_channels
        if cluster_links is not None:
            self._cluster_links = cluster_links
        if webhook_queue_depth is not None:
            self._webhook_queue_depth = webhook_queue_depth

    def app(self, app_id: str) -> AppMetrics:
        """
        The counts of C{app_id}, created on first use. Keep the result on
        hot paths rather than calling this per event.
        """
        found = self._apps.get(app_id)
        if found is None:
            found = self._apps[app_id] = AppMetrics(app_id)
        return found

    # The collector protocol

    def describe(self) -> Iterator[Metric]:
        """
        The families this collector exports, without samples, so that the
        registry rejects a second L{PusherMetrics} under the same prefix.
        """
        for name, kind in self._families():
            yield self._family(name, "", kind)

    def collect(self) -> Iterator[Metric]:
        """
        Build every family from the counts and the scrape-time sources.
        """
        apps = list(self._apps.values())
        yield from self._gauges(apps)
        for family in self._counters(apps):
            if family.samples:
                yield family
        for family in self._histograms(apps):
            if family.samples:
                yield family

    # Internals

    def _families(self) -> Iterator[tuple[str, str]]:
        """
        Each exported family's name (without prefix) and type.
        """
        yield from (
            ("connected", "gauge"),
            ("active_channels", "gauge"),
            ("cluster_link_up", "gauge"),
            ("webhook_queue_depth", "gauge"),
        )
        for counter in _COUNTERS:
            yield counter[0], "counter"
        for labelled in _LABELLED_COUNTERS:
            yield labelled[0], "counter"
        for histogram in _HISTOGRAMS:
            yield histogram[0], "histogram"
        yield "broadcast_latency_ms", "histogram"

    def _family(self, name: str, doc: str, kind: str) -> Metric:
        """
        An empty family named as Sockudo names it, prefix included.
        """
        full = self._prefix + name
        if kind != "counter":
            return Metric(full, doc, kind)
        if full.endswith("_total"):
            # prometheus_client adds "_total" back when it writes the text.
            return Metric(full[: -len("_total")], doc, kind)
        return _BareCounter(full, doc, kind)

    def _labels(self, app_id: str, **extra: str) -> dict[str, str]:
        """
        The C{app_id} and C{port} labels plus C{extra}.
        """
        return {"app_id": app_id, "port": self._port, **extra}

    def _read(self, source: Callable[[], Any], what: str) -> Any:
        """
        Call a scrape-time source; a failing source drops its family from
        this scrape instead of failing the whole scrape.
        """
        try:
            return source()
        except Exception:
            self._log.failure("Metrics source {what} failed", what=what)
            return None

    def _gauges(self, apps: list[AppMetrics]) -> Iterator[Metric]:
        """
        The current-state gauges, read from their sources now.
        """
        counts = self._read(self._connections, "connections")
        if counts is not None:
            family = self._family("connected", "The number of currently connected sockets", "gauge")
            ids = dict.fromkeys(app.app_id for app in apps if app.app_id not in _PSEUDO_APPS)
            ids.update(dict.fromkeys(counts))
            for app_id in ids:
                family.add_sample(family.name, self._labels(app_id), float(counts.get(app_id, 0)))
            yield family

        channels = self._read(self._active_channels, "active_channels")
        if channels is not None:
            family = self._family("active_channels", "Number of currently active channels", "gauge")
            ids = dict.fromkeys(app.app_id for app in apps if app.app_id not in _PSEUDO_APPS)
            ids.update(dict.fromkeys(channels))
            for app_id in ids:
                by_type = channels.get(app_id, {})
                kinds = dict.fromkeys(_CHANNEL_TYPES)
                kinds.update(dict.fromkeys(by_type))
                for kind in kinds:
                    family.add_sample(
                        family.name,
                        self._labels(app_id, channel_type=kind),
                        float(by_type.get(kind, 0)),
                    )
            yield family

        links = self._read(self._cluster_links, "cluster_links")
        if links:
            family = self._family(
                "cluster_link_up",
                "Whether each link to the cluster backend is up (1) or down (0)",
                "gauge",
            )
            for link, up in links.items():
                family.add_sample(
                    family.name, {"port": self._port, "link": link}, 1.0 if up else 0.0
                )
            yield family

        depth = self._read(self._webhook_queue_depth, "webhook_queue_depth")
        if depth is not None:
            family = self._family(
                "webhook_queue_depth", "Webhook requests waiting to be sent", "gauge"
            )
            family.add_sample(family.name, {"port": self._port}, float(depth))
            yield family

    def _counters(self, apps: list[AppMetrics]) -> Iterator[Metric]:
        """
        Every counter family, one series per app (and per extra label).
        """
        for name, doc, read in _COUNTERS:
            family = self._family(name, doc, "counter")
            series = self._prefix + name
            for app in apps:
                # Zero included: a series that appears at its first event
                # would hide that event from rate().
                family.add_sample(series, self._labels(app.app_id), float(read(app)))
            yield family
        for name, doc, label_names in _LABELLED_COUNTERS:
            family = self._family(name, doc, "counter")
            series = self._prefix + name
            for app in apps:
                table: Mapping[Any, int] = getattr(app, _LABELLED_FIELDS[name])
                for key, value in table.items():
                    values = key if isinstance(key, tuple) else (key,)
                    extra = dict(zip(label_names, values, strict=True))
                    family.add_sample(series, self._labels(app.app_id, **extra), float(value))
            yield family

    def _histograms(self, apps: list[AppMetrics]) -> Iterator[Metric]:
        """
        Every histogram family as C{_bucket}, C{_count} and C{_sum} series.
        """
        for name, doc, read in _HISTOGRAMS:
            family = self._family(name, doc, "histogram")
            for app in apps:
                self._add_histogram(family, read(app), self._labels(app.app_id))
            yield family
        family = self._family(
            "broadcast_latency_ms",
            "Milliseconds from the HTTP publish to the local fan-out",
            "histogram",
        )
        for app in apps:
            for (kind, bucket), histogram in app.broadcast_latency.items():
                labels = self._labels(app.app_id, channel_type=kind, recipient_count_bucket=bucket)
                self._add_histogram(family, histogram, labels)
        yield family

    @staticmethod
    def _add_histogram(family: Metric, histogram: _Histogram, labels: dict[str, str]) -> None:
        """
        Add one labelled histogram's series to C{family}.
        """
        for le, running in histogram.cumulative():
            family.add_sample(family.name + "_bucket", {**labels, "le": le}, float(running))
        family.add_sample(family.name + "_count", labels, float(histogram.count))
        family.add_sample(family.name + "_sum", labels, histogram.total)


# name (without prefix), help text, reader. Names and help texts follow
# Sockudo's src/metrics/prometheus.rs; the last four are ours.
_COUNTERS: tuple[tuple[str, str, Callable[[AppMetrics], int]], ...] = (
    (
        "new_connections_total",
        "Total amount of sockudo connection requests",
        lambda app: app.new_connections,
    ),
    (
        "new_disconnections_total",
        "Total amount of sockudo disconnections",
        lambda app: app.new_disconnections,
    ),
    (
        "socket_received_bytes",
        "Total amount of bytes that sockudo received",
        lambda app: app.socket_received_bytes,
    ),
    (
        "socket_transmitted_bytes",
        "Total amount of bytes that sockudo transmitted",
        lambda app: app.socket_transmitted_bytes,
    ),
    (
        "ws_messages_received_total",
        "The total amount of WS messages received from connections by the server",
        lambda app: app.ws_messages_received,
    ),
    (
        "ws_messages_sent_total",
        "The total amount of WS messages sent to the connections from the server",
        lambda app: app.ws_messages_sent,
    ),
    (
        "http_received_bytes",
        "Total amount of bytes that sockudo's REST API received",
        lambda app: app.http_received_bytes,
    ),
    (
        "http_transmitted_bytes",
        "Total amount of bytes that sockudo's REST API sent back",
        lambda app: app.http_transmitted_bytes,
    ),
    (
        "http_calls_received_total",
        "Total amount of received REST API calls",
        lambda app: app.http_calls,
    ),
    (
        "horizontal_adapter_resolved_promises",
        "The total amount of promises that were fulfilled by other nodes",
        lambda app: app.adapter_resolved_promises,
    ),
    (
        "horizontal_adapter_uncomplete_promises",
        "The total amount of promises that were not fulfilled entirely by other nodes",
        lambda app: app.adapter_uncomplete_promises,
    ),
    (
        "horizontal_adapter_sent_requests",
        "The total amount of sent requests to other nodes",
        lambda app: app.adapter_sent_requests,
    ),
    (
        "horizontal_adapter_received_requests",
        "The total amount of received requests from other nodes",
        lambda app: app.adapter_received_requests,
    ),
    (
        "horizontal_adapter_received_responses",
        "The total amount of received responses from other nodes",
        lambda app: app.adapter_received_responses,
    ),
    (
        "outbound_buffer_closes_total",
        "Sockets closed because their outbound buffer was full (slow consumers)",
        lambda app: app.outbound_buffer_closes,
    ),
    (
        "webhooks_sent_total",
        "Webhook requests delivered",
        lambda app: app.webhooks_sent,
    ),
    (
        "webhooks_failed_total",
        "Webhook requests given up on",
        lambda app: app.webhooks_failed,
    ),
    (
        "webhook_retries_total",
        "Webhook requests sent again after a failure",
        lambda app: app.webhook_retries,
    ),
)

# name (without prefix), help text, extra label names.
_LABELLED_COUNTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "connection_errors_total",
        "Total amount of connection errors by type",
        ("error_type",),
    ),
    (
        "rate_limit_checks_total",
        "Total number of rate limit checks performed",
        ("limiter_type", "request_context"),
    ),
    (
        "rate_limit_triggered_total",
        "Total number of times rate limit was triggered",
        ("limiter_type", "request_context"),
    ),
    (
        "channel_subscriptions_total",
        "Total number of channel subscriptions",
        ("channel_type",),
    ),
    (
        "channel_unsubscriptions_total",
        "Total number of channel unsubscriptions",
        ("channel_type",),
    ),
)

_LABELLED_FIELDS = {
    "connection_errors_total": "connection_errors",
    "rate_limit_checks_total": "rate_limit_checks",
    "rate_limit_triggered_total": "rate_limit_triggered",
    "channel_subscriptions_total": "subscriptions",
    "channel_unsubscriptions_total": "unsubscriptions",
}

_HISTOGRAMS: tuple[tuple[str, str, Callable[[AppMetrics], _Histogram]], ...] = (
    (
        "horizontal_adapter_resolve_time",
        "The average resolve time for requests to other nodes",
        lambda app: app.adapter_resolve_time,
    ),
    (
        "broadcast_fanout_size",
        "Local recipients per broadcast",
        lambda app: app.broadcast_fanout_size,
    ),
    (
        "broadcast_fanout_duration_ms",
        "Milliseconds to hand one broadcast to every local recipient",
        lambda app: app.broadcast_fanout_duration,
    ),
    (
        "http_request_duration_ms",
        "Milliseconds to answer a REST API call",
        lambda app: app.http_duration,
    ),
)


_REJECTION_ERROR_TYPES: dict[int, str] = {
    PusherErrorCode.APP_NOT_FOUND: "app_not_found",
    PusherErrorCode.APP_DISABLED: "app_disabled",
    PusherErrorCode.UNAUTHORIZED: "origin_not_allowed",
}


@implementer(IPusherEvents)
class MetricsObserver(NoPusherEvents):
    """
    The WebSocket glue's observer, counting into a L{PusherMetrics}.

    Only counters: C{connected} and C{active_channels} are read from the
    registry at scrape time, so a missed event cannot make them drift.
    """

    def __init__(self, metrics: PusherMetrics) -> None:
        self._app = metrics.app

    def connection_opened(self, app_id: str, socket_id: str) -> None:
        """
        Count an accepted connection.
        """
        self._app(app_id).connection_opened()

    def connection_closed(self, app_id: str, socket_id: str) -> None:
        """
        Count the end of an accepted connection.
        """
        self._app(app_id).connection_closed()

    def connection_rejected(self, app_id: str | None, code: int) -> None:
        """
        Count a refused connection under Sockudo's C{error_type}: unknown
        key, disabled app and origin have their own; anything else (over
        quota included) is C{socket_handling_failed}, as in Sockudo. An
        unknown key is counted under L{UNKNOWN_APP}.
        """
        error_type = _REJECTION_ERROR_TYPES.get(code, "socket_handling_failed")
        self._app(UNKNOWN_APP if app_id is None else app_id).connection_error(error_type)

    def subscribed(self, app_id: str, channel: str, socket_id: str) -> None:
        """
        Count a subscription by channel type.
        """
        self._app(app_id).subscribed(channel_type_label(channel_type(channel)))

    def unsubscribed(self, app_id: str, channel: str, socket_id: str) -> None:
        """
        Count an unsubscription by channel type.
        """
        self._app(app_id).unsubscribed(channel_type_label(channel_type(channel)))

    def message_received(self, app_id: str, size: int) -> None:
        """
        Count one inbound message and its bytes.
        """
        self._app(app_id).message_received(size)

    def message_sent(self, app_id: str, size: int) -> None:
        """
        Count one frame sent to one client.
        """
        self._app(app_id).messages_sent(size)

    def broadcast_timed(self, app_id: str, channel: str, recipients: int, seconds: float) -> None:
        """
        Observe how long the local fan-out of one broadcast took, which is
        also Sockudo's C{broadcast_latency_ms}: the adapter fans out as soon
        as the publish is accepted, so this is publish to delivered on this
        node (for events from other nodes it leaves out the Redis hop).
        """
        ms = seconds * 1000.0
        app = self._app(app_id)
        app.broadcast_fanout_duration.observe(ms)
        app.broadcast_latency_observed(channel_type_label(channel_type(channel)), recipients, ms)

    def slow_consumer_closed(self, app_id: str, socket_id: str) -> None:
        """
        Count a connection closed for a full outbound buffer.
        """
        self._app(app_id).outbound_buffer_closed()

    def broadcast_delivered(self, app_id: str, channel: str, size: int, recipients: int) -> None:
        """
        Count a broadcast as C{recipients} messages of C{size} bytes, and
        its fan-out size.
        """
        app = self._app(app_id)
        app.messages_sent(size, recipients)
        app.broadcast(channel_type_label(channel_type(channel)), recipients)


@implementer(IWebhookMetrics)
class WebhookMetrics:
    """
    Webhook delivery counts for L{sockudo_tw.webhooks.WebhookSender}:
    C{webhooks_sent_total} per request delivered, C{webhooks_failed_total}
    per request given up, C{webhook_retries_total} per failed attempt (each
    is retried with back-off unless the request is then given up).
    """

    def __init__(self, metrics: PusherMetrics) -> None:
        self._app = metrics.app

    def delivered(self, app_id: str, events: int, attempts: int) -> None:
        """
        Count a delivered request.
        """
        self._app(app_id or UNKNOWN_APP).webhook_sent()

    def attempt_failed(self, app_id: str, reason: str) -> None:
        """
        Count a failed attempt.
        """
        self._app(app_id or UNKNOWN_APP).webhook_retried()

    def dropped(self, app_id: str, events: int, reason: str) -> None:
        """
        Count a request given up on.
        """
        self._app(app_id or UNKNOWN_APP).webhook_failed()


@implementer(IRateLimiter)
class MeteredRateLimiter:
    """
    A rate limiter counting Sockudo's C{rate_limit_checks_total} and
    C{rate_limit_triggered_total} for one C{limiter_type} and
    C{request_context} (e.g. C{api_rate_limit}/C{http_api} under app id
    C{global}, as Sockudo labels its IP limiter).
    """

    def __init__(
        self,
        limiter: IRateLimiter,
        counts: AppMetrics,
        limiter_type: str,
        request_context: str,
    ) -> None:
        self._limiter = limiter
        self._counts = counts
        self._limiter_type = limiter_type
        self._request_context = request_context

    def hit(
        self, key: str, max_requests: int, window_seconds: float, cost: int = 1
    ) -> Deferred[RateLimitResult]:
        """
        Ask the wrapped limiter, then count the check and its outcome.
        """

        def count(result: RateLimitResult) -> RateLimitResult:
            self._counts.rate_limit_check(
                self._limiter_type, self._request_context, not result.allowed
            )
            return result

        d: Deferred[RateLimitResult] = self._limiter.hit(key, max_requests, window_seconds, cost)
        return d.addCallback(count)


class _BareCounterSpy:
    """
    A collector passing a registry's families through while noting the
    names of L{_BareCounter} families.
    """

    def __init__(self, registry: CollectorRegistry, bare: list[str]) -> None:
        self._registry = registry
        self._bare = bare

    def collect(self) -> Iterable[Metric]:
        """
        Every family of the registry, unchanged.
        """
        for family in self._registry.collect():
            if isinstance(family, _BareCounter):
                self._bare.append(family.name)
            yield family


def generate_text(registry: CollectorRegistry) -> bytes:
    """
    The Prometheus text format (0.0.4) for C{registry}, with Sockudo's names.

    prometheus_client writes C{# TYPE x_total counter} for every counter;
    for Sockudo's counters without the suffix the series is C{x}, so the
    C{HELP} and C{TYPE} lines are renamed to match it.
    """
    bare: list[str] = []
    text: bytes = generate_latest(_BareCounterSpy(registry, bare))
    for name in bare:
        text = re.sub(
            rb"^# (HELP|TYPE) " + re.escape(name.encode()) + rb"_total ",
            rb"# \1 " + name.encode().replace(b"\\", b"\\\\") + b" ",
            text,
            count=2,
            flags=re.MULTILINE,
        )
    return text


class MetricsResource(Resource):
    """
    A leaf resource serving a registry in the Prometheus text format.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """
        The registry's current values; gauges are computed now.
        """
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))  # type: ignore[no-untyped-call]
        return generate_text(self._registry)


@implementer(IResource)
class MeteredResource:
    """
    Count every REST call through a wrapped resource: Sockudo's
    C{http_calls_received_total}, C{http_received_bytes} (request body) and
    C{http_transmitted_bytes} (response body), plus our
    C{http_request_duration_ms}.

    The C{app_id} label is the app named by the path (C{/apps/{id}/...},
    C{/up/{id}}) or by C{auth_key} (C{/users/...}) only if the app store
    knows it, otherwise L{UNKNOWN_APP}: random ids in URLs cannot grow the
    series set.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)
    _log = Logger()

    def __init__(
        self,
        wrapped: IResource,
        metrics: PusherMetrics,
        clock: IReactorTime,
        app_store: IAppStore,
    ) -> None:
        self._wrapped = wrapped
        self._metrics = metrics
        self._clock = clock
        self._app_store = app_store

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:  # noqa: N802
        """
        Never consulted (a leaf); the wrapped tree is walked in L{render}.
        """
        return self

    def putChild(self, path: bytes, child: IResource) -> None:  # noqa: N802
        """
        Children belong to the wrapped resource.
        """
        raise NotImplementedError("add children to the wrapped resource")

    def render(self, request: IRequest) -> bytes | int:
        """
        Find the wrapped resource for the rest of the path as C{Site} would,
        render it, and count the call when the response is finished.
        """
        started = self._clock.seconds()
        # The body is whole before rendering starts, and gone after finish.
        received = _body_size(request)
        finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
        finished.addBoth(lambda _: self.count_call(request, started, received))
        resource: IResource = getChildForRequest(self._wrapped, request)  # type: ignore[no-untyped-call]
        rendered: bytes | int = resource.render(request)  # type: ignore[no-untyped-call]
        return rendered

    def count_call(self, request: IRequest, started: float, received: int) -> None:
        """
        Record one call served, here or on another path to the same API
        (L{sockudo_tw.triggerchannel}), once its app is known; a client
        that went away still counts: C{received} body bytes, the response's
        C{sentLength}, and the time since C{started}.
        """
        elapsed_ms = (self._clock.seconds() - started) * 1000.0
        transmitted: int = getattr(request, "sentLength", 0)
        d = Deferred.fromCoroutine(self._app_id(request))

        def record(app_id: str) -> None:
            self._metrics.app(app_id).http_call(received, transmitted, elapsed_ms)

        d.addCallback(record)
        d.addErrback(lambda failure: self._log.failure("Counting an API call failed", failure))

    async def _app_id(self, request: IRequest) -> str:
        """
        The app the request is for, if the app store knows it.
        """
        parts = bytes(request.path).split(b"/")
        try:
            if len(parts) > 2 and parts[1] in (b"apps", b"up") and parts[2]:
                app = await self._app_store.find_by_id(unquote(parts[2].decode("utf-8")))
            elif len(parts) > 1 and parts[1] == b"users":
                keys = (request.args or {}).get(b"auth_key") or [b""]
                app = await self._app_store.find_by_key(keys[0].decode("utf-8"))
            else:
                app = None
        except UnicodeDecodeError:
            app = None
        return UNKNOWN_APP if app is None else app.id


def _body_size(request: IRequest) -> int:
    """
    The request body's length in bytes.
    """
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    size = content.seek(0, 2)
    content.seek(position)
    return int(size)


class MetricsSite(Site):
    """
    The metrics listener's Site: no access log line per scrape, and a plain
    name in the listener's start and stop lines.
    """

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        """
        The name in the listener's start and stop lines.
        """
        return "sockudo-tw metrics"

    def log(self, request: HTTPRequest) -> None:
        """
        Log nothing: Prometheus scrapes every few seconds.
        """


def metrics_site(registry: CollectorRegistry) -> Site:
    """
    The metrics listener's Site: C{/metrics} and nothing else (404).
    """
    root = Resource()  # type: ignore[no-untyped-call]
    root.putChild(b"metrics", MetricsResource(registry))
    site = MetricsSite(root)  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    site.noisy = False
    return site


def metrics_endpoint(reactor: Any, host: str, port: int) -> IStreamServerEndpoint:
    """
    The TCP endpoint for C{metrics.host:metrics.port} (IPv4 or IPv6 host).
    """
    if isIPv6Address(host):
        return TCP6ServerEndpoint(reactor, port, interface=host)  # type: ignore[no-untyped-call]
    return TCP4ServerEndpoint(reactor, port, interface=host)  # type: ignore[no-untyped-call]


def metrics_service(
    reactor: Any, registry: CollectorRegistry, host: str = "0.0.0.0", port: int = 9601
) -> StreamServerEndpointService:
    """
    A service listening on C{host:port} with L{metrics_site}; start it only
    when C{metrics.enabled} (Sockudo starts no listener otherwise).
    """
    service = StreamServerEndpointService(  # type: ignore[no-untyped-call]
        metrics_endpoint(reactor, host, port), metrics_site(registry)
    )
    service.setName("metrics")  # type: ignore[no-untyped-call]
    return service
