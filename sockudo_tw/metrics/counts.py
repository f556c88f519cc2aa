# -*- test-case-name: tests.test_metrics -*-
"""
Per-app counts and the label rules: what the hot paths increment.

L{AppMetrics} holds plain integers and small histograms, one object per
app, so that counting costs an attribute increment (see L{sockudo_tw.metrics}).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client.utils import floatToGoString

from sockudo_tw.pusher.channels import ChannelType, channel_type

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
PSEUDO_APPS = frozenset({UNKNOWN_APP, GLOBAL_APP})

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

CHANNEL_TYPES = ("public", "private", "presence", "private_encrypted", "cache")

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


class Histogram:
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
        self.http_duration = Histogram(_LATENCY_MS_BUCKETS)
        self.adapter_resolve_time = Histogram(_RESOLVE_TIME_BUCKETS)
        self.adapter_resolved_promises = 0
        self.adapter_uncomplete_promises = 0
        self.adapter_sent_requests = 0
        self.adapter_received_requests = 0
        self.adapter_received_responses = 0
        self.rate_limit_checks: dict[tuple[str, str], int] = {}
        self.rate_limit_triggered: dict[tuple[str, str], int] = {}
        self.subscriptions: dict[str, int] = {}
        self.unsubscriptions: dict[str, int] = {}
        self.broadcast_latency: dict[tuple[str, str], Histogram] = {}
        self.broadcast_fanout_size = Histogram(_FANOUT_SIZE_BUCKETS)
        self.broadcast_fanout_duration = Histogram(_FANOUT_DURATION_BUCKETS)
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
            histogram = self.broadcast_latency[key] = Histogram(_BROADCAST_LATENCY_BUCKETS)
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
