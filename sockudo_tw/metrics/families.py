# -*- test-case-name: tests.test_metrics -*-
"""
The exported families: Sockudo's names, help texts and which count of
L{AppMetrics} each reads (Sockudo's src/metrics/prometheus.rs; the last
few are ours).
"""

from __future__ import annotations

from collections.abc import Callable

from sockudo_tw.metrics.counts import AppMetrics, Histogram

# name (without prefix), help text, reader. Names and help texts follow
# Sockudo's src/metrics/prometheus.rs; the last four are ours.
COUNTERS: tuple[tuple[str, str, Callable[[AppMetrics], int]], ...] = (
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
LABELLED_COUNTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
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

LABELLED_FIELDS = {
    "connection_errors_total": "connection_errors",
    "rate_limit_checks_total": "rate_limit_checks",
    "rate_limit_triggered_total": "rate_limit_triggered",
    "channel_subscriptions_total": "subscriptions",
    "channel_unsubscriptions_total": "unsubscriptions",
}

HISTOGRAMS: tuple[tuple[str, str, Callable[[AppMetrics], Histogram]], ...] = (
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
