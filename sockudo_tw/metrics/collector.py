# -*- test-case-name: tests.test_metrics -*-
"""
L{PusherMetrics}: the one collector that turns the per-app counts and the
scrape-time sources into Prometheus families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from twisted.logger import Logger

from sockudo_tw.metrics.counts import (
    CHANNEL_TYPES,
    DEFAULT_PREFIX,
    PSEUDO_APPS,
    AppMetrics,
    Histogram,
)
from sockudo_tw.metrics.families import COUNTERS, HISTOGRAMS, LABELLED_COUNTERS, LABELLED_FIELDS


class BareCounter(Metric):
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


def _gauge_app_ids(apps: Iterable[AppMetrics], source: Mapping[str, object]) -> list[str]:
    """
    The apps a per-app gauge has a series for: every real app counted so
    far (so a gauge reads 0 rather than vanishing), then any other app the
    scrape-time C{source} names, in first-seen order.
    """
    ids = dict.fromkeys(app.app_id for app in apps if app.app_id not in PSEUDO_APPS)
    ids.update(dict.fromkeys(source))
    return list(ids)


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
        app_store_up: Callable[[], bool | None] = lambda: None,
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
        @param app_store_up: Whether the database of apps answers, or
            L{None} for apps held in memory, read at scrape time.
        """
        self.registry = registry
        self.port = port
        self._port = str(port)
        self._prefix = prefix
        self._connections = connections
        self._active_channels = active_channels
        self._cluster_links = cluster_links
        self._webhook_queue_depth = webhook_queue_depth
        self._app_store_up = app_store_up
        self._apps: dict[str, AppMetrics] = {}
        registry.register(self)

    def watch(
        self,
        *,
        connections: Callable[[], Mapping[str, int]] | None = None,
        active_channels: Callable[[], Mapping[str, Mapping[str, int]]] | None = None,
        cluster_links: Callable[[], Mapping[str, bool]] | None = None,
        webhook_queue_depth: Callable[[], int | None] | None = None,
        app_store_up: Callable[[], bool | None] | None = None,
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
        if app_store_up is not None:
            self._app_store_up = app_store_up

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
            ("app_store_up", "gauge"),
        )
        for counter in COUNTERS:
            yield counter[0], "counter"
        for labelled in LABELLED_COUNTERS:
            yield labelled[0], "counter"
        for histogram in HISTOGRAMS:
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
        return BareCounter(full, doc, kind)

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
            for app_id in _gauge_app_ids(apps, counts):
                family.add_sample(family.name, self._labels(app_id), float(counts.get(app_id, 0)))
            yield family

        channels = self._read(self._active_channels, "active_channels")
        if channels is not None:
            family = self._family("active_channels", "Number of currently active channels", "gauge")
            for app_id in _gauge_app_ids(apps, channels):
                by_type = channels.get(app_id, {})
                kinds = dict.fromkeys(CHANNEL_TYPES)
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

        store_up = self._read(self._app_store_up, "app_store_up")
        if store_up is not None:
            family = self._family(
                "app_store_up", "Whether the database of apps answers (1) or not (0)", "gauge"
            )
            family.add_sample(family.name, {"port": self._port}, 1.0 if store_up else 0.0)
            yield family

    def _counters(self, apps: list[AppMetrics]) -> Iterator[Metric]:
        """
        Every counter family, one series per app (and per extra label).
        """
        for name, doc, read in COUNTERS:
            family = self._family(name, doc, "counter")
            series = self._prefix + name
            for app in apps:
                # Zero included: a series that appears at its first event
                # would hide that event from rate().
                family.add_sample(series, self._labels(app.app_id), float(read(app)))
            yield family
        for name, doc, label_names in LABELLED_COUNTERS:
            family = self._family(name, doc, "counter")
            series = self._prefix + name
            for app in apps:
                table: Mapping[Any, int] = getattr(app, LABELLED_FIELDS[name])
                for key, value in table.items():
                    values = key if isinstance(key, tuple) else (key,)
                    extra = dict(zip(label_names, values, strict=True))
                    family.add_sample(series, self._labels(app.app_id, **extra), float(value))
            yield family

    def _histograms(self, apps: list[AppMetrics]) -> Iterator[Metric]:
        """
        Every histogram family as C{_bucket}, C{_count} and C{_sum} series.
        """
        for name, doc, read in HISTOGRAMS:
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
    def _add_histogram(family: Metric, histogram: Histogram, labels: dict[str, str]) -> None:
        """
        Add one labelled histogram's series to C{family}.
        """
        for le, running in histogram.cumulative():
            family.add_sample(family.name + "_bucket", {**labels, "le": le}, float(running))
        family.add_sample(family.name + "_count", labels, float(histogram.count))
        family.add_sample(family.name + "_sum", labels, histogram.total)
