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

Layout (one module per concern):

  - L{sockudo_tw.metrics.counts}: the per-app counts (L{AppMetrics}) the hot
    paths increment, and the label rules;
  - L{sockudo_tw.metrics.families}: Sockudo's family names, help texts and
    which count each reads;
  - L{sockudo_tw.metrics.collector}: L{PusherMetrics}, the collector;
  - L{sockudo_tw.metrics.observers}: the observers that count
    (L{MetricsObserver}, L{WebhookMetrics}, L{MeteredRateLimiter});
  - L{sockudo_tw.metrics.metering}: L{MeteredResource}, REST call counts;
  - L{sockudo_tw.metrics.listener}: the text exposition and the metrics
    listener (L{metrics_site}, L{metrics_service});
  - L{sockudo_tw.metrics.workers}: one view of every worker process
    (L{merge_exposition}, L{workers_metrics_site}).
"""

from sockudo_tw.metrics.collector import PusherMetrics
from sockudo_tw.metrics.counts import (
    CONNECTION_ERROR_TYPES,
    CONTENT_TYPE,
    DEFAULT_PREFIX,
    GLOBAL_APP,
    UNKNOWN_APP,
    AppMetrics,
    channel_type_label,
    channels_by_type,
    open_connections,
    recipient_count_bucket,
)
from sockudo_tw.metrics.listener import (
    MetricsResource,
    generate_text,
    metrics_endpoint,
    metrics_service,
    metrics_site,
)
from sockudo_tw.metrics.metering import MeteredResource
from sockudo_tw.metrics.observers import MeteredRateLimiter, MetricsObserver, WebhookMetrics
from sockudo_tw.metrics.workers import (
    WorkersMetricsResource,
    merge_exposition,
    workers_metrics_site,
)

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
    "WorkersMetricsResource",
    "channel_type_label",
    "channels_by_type",
    "generate_text",
    "merge_exposition",
    "metrics_endpoint",
    "metrics_service",
    "metrics_site",
    "open_connections",
    "recipient_count_bucket",
    "workers_metrics_site",
]
