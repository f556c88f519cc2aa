# -*- test-case-name: tests.test_metrics -*-
"""
The metrics listener: the text exposition with Sockudo's names
(L{generate_text}), the C{/metrics} resource, its quiet Site and the
service that listens on C{metrics.host:metrics.port}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from sockudo_tw.metrics.collector import BareCounter
from sockudo_tw.metrics.counts import CONTENT_TYPE


class _BareCounterSpy:
    """
    A collector passing a registry's families through while noting the
    names of L{BareCounter} families.
    """

    def __init__(self, registry: CollectorRegistry, bare: list[str]) -> None:
        self._registry = registry
        self._bare = bare

    def collect(self) -> Iterable[Metric]:
        """
        Every family of the registry, unchanged.
        """
        for family in self._registry.collect():
            if isinstance(family, BareCounter):
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
