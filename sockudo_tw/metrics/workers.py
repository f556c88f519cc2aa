# -*- test-case-name: tests.test_metrics_workers -*-
"""
One metrics view of every worker process (C{workers: N}).

Each child worker serves its own L{metrics_site} on a Unix socket; worker 0
serves L{WorkersMetricsResource} on the configured metrics port. At scrape
time it fetches every child's text, adds its own, and answers with one
exposition in which each series (same name, same labels) appears once,
merged by L{merge_exposition} under these rules:

  - Counters, histograms (C{_bucket}, C{_count}, C{_sum}), summaries'
    C{_sum} and C{_count}, and gauges: the B{sum}. The daemon's gauges
    C{sockudo_connected}, C{sockudo_active_channels} and
    C{sockudo_webhook_queue_depth} count what each process holds (its
    sockets, its channels, its own memory queue; the Redis queue exports no
    depth), so the machine's value is the sum of the workers' values.
  - Gauges listed in L{GAUGE_EXCEPTIONS}, each with its reason: flags
    (C{*_up}, e.g. C{sockudo_app_store_up}, C{sockudo_cluster_link_up}) and
    timestamps (C{process_start_time_seconds}, C{*_created}) take the
    B{minimum}; info-style gauges (C{*_info}, e.g. C{python_info}) take
    B{one copy}.
  - Info and stateset families: one copy. (These are OpenMetrics types:
    the text format writes an info family as a C{*_info} gauge, covered
    above, and a stateset as a plain gauge, which is summed; the daemon
    has neither.)
  - Summary quantiles: B{dropped}. No arithmetic on per-process quantiles
    gives the machine's quantile, and a wrong number on a dashboard is
    worse than none. (The daemon exports no summaries.)

The daemon's registry holds only L{PusherMetrics} (no prometheus_client
process or platform collectors), so today the sum covers everything but
C{sockudo_app_store_up} and C{sockudo_cluster_link_up}; the other entries
keep the rules right should those collectors be registered.

Series merge only when name and labels match exactly, so every worker
must label as worker 0 does (in particular the same C{port} label, the
configured C{metrics.port}); otherwise each worker's series is kept apart.

Names stay those of the single-process output: prometheus_client's parser
renames the series of a counter declared without C{_total} (Sockudo's
C{sockudo_socket_received_bytes}) to C{..._total}; such "bare" counters
are noticed from their C{# TYPE} lines and written back under their own
name by L{generate_text}. Merging one text gives that text back.

Two gauges are appended: C{<prefix>workers_reporting} (how many processes'
metrics are in the sums, worker 0 included) and
C{<prefix>workers_configured} (worker 0 plus every child socket), so a
scrape that missed a worker says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from fnmatch import fnmatchcase
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from sockudo_tw.compat.twisted import request_gone
from sockudo_tw.metrics.collector import BareCounter
from sockudo_tw.metrics.counts import CONTENT_TYPE, DEFAULT_PREFIX
from sockudo_tw.metrics.listener import MetricsSite, generate_text

__all__ = [
    "GAUGE_EXCEPTIONS",
    "GaugeException",
    "MetricsFetchError",
    "WorkersMetricsResource",
    "fetch_unix_metrics",
    "merge_exposition",
    "workers_metrics_site",
]

_Merge = Callable[[float, float], float]


def _sum(first: float, second: float) -> float:
    """
    Add two workers' values.
    """
    return first + second


def _min(first: float, second: float) -> float:
    """
    The smaller of two workers' values.
    """
    return min(first, second)


def _first(first: float, second: float) -> float:
    """
    The value already merged (the first worker's).
    """
    return first


@attrs.frozen
class GaugeException:
    """
    A gauge family whose workers' values are not summed.

    @ivar pattern: The family name, or a shell pattern such as C{*_up}.
    @ivar merge: How two workers' values become one.
    @ivar reason: Why the sum would be wrong.
    """

    pattern: str
    merge: _Merge
    reason: str


#: The gauges not summed, first match wins (see the module docstring).
GAUGE_EXCEPTIONS: tuple[GaugeException, ...] = (
    GaugeException(
        "*_up",
        _min,
        "A flag: 1 only when it is 1 in every worker (a summed flag would read N).",
    ),
    GaugeException(
        "process_start_time_seconds",
        _min,
        "A timestamp: the oldest worker's start (a summed time is meaningless).",
    ),
    GaugeException(
        "*_created",
        _min,
        "A timestamp (prometheus_client writes them as gauges): the earliest.",
    ),
    GaugeException(
        "process_max_fds",
        _min,
        "A per-process limit: the tightest (a sum promises descriptors no process has).",
    ),
    GaugeException(
        "*_info",
        _first,
        "Info-style, always 1 with descriptive labels: one copy (python_info).",
    ),
)

# Families kept as one copy whatever their name.
_ONE_COPY_TYPES = frozenset({"info", "stateset"})
# Families whose values add up, unless GAUGE_EXCEPTIONS says otherwise.
_GAUGE_TYPES = frozenset({"gauge", "unknown", "untyped"})

_COUNTER_TYPE_LINE = re.compile(r"^# TYPE (\S+) counter\s*$", re.MULTILINE)

_SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def _merge_rule(name: str, kind: str) -> _Merge:
    """
    How the values of family C{name} of type C{kind} combine.
    """
    if kind in _ONE_COPY_TYPES:
        return _first
    if kind in _GAUGE_TYPES:
        for exception in GAUGE_EXCEPTIONS:
            if fnmatchcase(name, exception.pattern):
                return exception.merge
    return _sum


@attrs.frozen
class _Exposition:
    """
    One process's parsed text.

    @ivar families: Its families as prometheus_client's parser gives them.
    @ivar bare: The names of its counters declared without C{_total}.
    """

    families: list[Metric]
    bare: frozenset[str]


def _parse(text: bytes) -> _Exposition:
    """
    Parse one text exposition (format 0.0.4).

    @raise ValueError: C{text} is not in that format.
    """
    decoded = text.decode("utf-8")
    bare = frozenset(
        name for name in _COUNTER_TYPE_LINE.findall(decoded) if not name.endswith("_total")
    )
    return _Exposition(list(text_string_to_metric_families(decoded)), bare)


@attrs.define
class _MergedFamily:
    """
    A family being merged: the first text's name, help and type, and each
    series' value so far in first-seen order.
    """

    name: str
    documentation: str
    kind: str
    bare: bool
    merge: _Merge
    series: dict[_SeriesKey, float] = attrs.field(factory=dict)

    def add(self, sample: Sample) -> None:
        """
        Merge one worker's sample into its series.
        """
        if self.kind == "summary" and "quantile" in sample.labels:
            return
        name = sample.name
        if self.bare and name == self.name + "_total":
            name = self.name
        key = (name, tuple(sorted(sample.labels.items())))
        value = float(sample.value)
        seen = self.series.get(key)
        self.series[key] = value if seen is None else self.merge(seen, value)

    def metric(self) -> Metric:
        """
        The merged family, ready for L{generate_text}.
        """
        family = (BareCounter if self.bare else Metric)(self.name, self.documentation, self.kind)
        for (name, labels), value in self.series.items():
            family.add_sample(name, dict(labels), value)
        return family


def _merge(expositions: Iterable[_Exposition]) -> list[Metric]:
    """
    Merge the families of several processes, in first-seen order.

    A family whose type differs from the first text's is skipped.
    """
    merged: dict[str, _MergedFamily] = {}
    for exposition in expositions:
        for family in exposition.families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = _MergedFamily(
                    family.name,
                    family.documentation,
                    family.type,
                    family.type == "counter" and family.name in exposition.bare,
                    _merge_rule(family.name, family.type),
                )
            elif into.kind != family.type:
                continue
            for sample in family.samples:
                into.add(sample)
    return [family.metric() for family in merged.values()]


class _Families:
    """
    A collector yielding fixed families, for L{generate_text}.
    """

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """
        The families, as given.
        """
        yield from self._families


def _render(families: Sequence[Metric]) -> bytes:
    """
    The text exposition of C{families}, written as the single-process
    listener writes its own.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_text(registry)


def merge_exposition(texts: Sequence[bytes], extra: Sequence[Metric] = ()) -> bytes:
    """
    Merge several processes' text expositions (format 0.0.4) into one, each
    series once, under the rules of this module's docstring.

    @param extra: Families appended as they are.
    @raise ValueError: A text is not in that format.
    """
    return _render([*_merge(_parse(text) for text in texts), *extra])


@implementer(IAgentEndpointFactory)
class _UnixEndpoints:
    """
    Connect every request of an L{Agent} to one Unix socket.
    """

    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:  # noqa: N802 (Twisted's name)
        """
        The Unix socket, whatever the URI.
        """
        return UNIXClientEndpoint(self._reactor, self._path)  # type: ignore[no-untyped-call]


class MetricsFetchError(Exception):
    """
    A worker's metrics listener answered with a status other than 200.
    """


def fetch_unix_metrics(reactor: Any, path: str) -> Deferred[bytes]:
    """
    GET C{http://localhost/metrics} over the Unix socket at C{path}: the body
    of a 200 answer, or a failure (L{MetricsFetchError} for another status).
    Cancelling aborts the connection.
    """
    agent = Agent.usingEndpointFactory(reactor, _UnixEndpoints(reactor, path))  # type: ignore[no-untyped-call]

    async def fetch() -> bytes:
        response = await agent.request(b"GET", b"http://localhost/metrics")
        body = await readBody(response)
        if response.code != 200:
            raise MetricsFetchError(f"HTTP {response.code}")
        return body

    return Deferred.fromCoroutine(fetch())


class WorkersMetricsResource(Resource):
    """
    A leaf resource serving the merged metrics of this process and of every
    child worker (see the module docstring).

    A child that fails, answers anything but a parsable 200, or takes longer
    than C{timeout} is left out of that scrape, and logged once until it
    answers again.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)
    _log = Logger()

    def __init__(
        self,
        registry: CollectorRegistry,
        reactor: Any,
        sources: Callable[[], Sequence[str]],
        timeout: float = 2.0,
        *,
        prefix: str = DEFAULT_PREFIX,
        fetch: Callable[[str], Deferred[bytes]] | None = None,
    ) -> None:
        """
        @param registry: This process's own metrics.
        @param reactor: Provides the timeouts and, by default, the sockets.
        @param sources: The children's Unix socket paths, read per scrape.
        @param timeout: Seconds each child has to answer.
        @param prefix: C{metrics.prefix}, for the two C{workers_*} gauges.
        @param fetch: A child's text by path (default:
            L{fetch_unix_metrics}); cancelled on timeout.
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self._registry = registry
        self._reactor = reactor
        self._sources = sources
        self._timeout = timeout
        self._prefix = prefix
        self._fetch = fetch if fetch is not None else self._fetch_unix
        self._failing: set[str] = set()

    def _fetch_unix(self, path: str) -> Deferred[bytes]:
        """
        The default fetch: HTTP over the Unix socket at C{path}.
        """
        return fetch_unix_metrics(self._reactor, path)

    def render_GET(self, request: Request) -> int:
        """
        Answer once every child has answered or timed out.
        """
        scrape = Deferred.fromCoroutine(self.scrape())
        scrape.addCallback(lambda text: self._write(request, text))
        scrape.addErrback(lambda failure: self._failed(request, failure))
        return NOT_DONE_YET

    async def scrape(self) -> bytes:
        """
        The merged text of this process and the children that answer.
        """
        paths = list(self._sources())
        own = _parse(generate_text(self._registry))
        children = await gatherResults([Deferred.fromCoroutine(self._child(p)) for p in paths])
        reporting = [own, *(child for child in children if child is not None)]
        return _render([*_merge(reporting), *self._worker_gauges(len(reporting), 1 + len(paths))])

    async def _child(self, path: str) -> _Exposition | None:
        """
        The parsed text of the child at C{path}, or L{None} if it did not
        give one in time.
        """
        try:
            fetching = self._fetch(path)
            fetching.addTimeout(self._timeout, self._reactor)
            exposition = _parse(await fetching)
        except Exception as error:
            if path not in self._failing:
                self._failing.add(path)
                self._log.warn(
                    "Worker metrics at {path} left out until they answer: {error}",
                    path=path,
                    error=str(error) or repr(error),
                    error_type=type(error).__name__,
                )
            return None
        if path in self._failing:
            self._failing.discard(path)
            self._log.info("Worker metrics at {path} answer again", path=path)
        return exposition

    def _worker_gauges(self, reporting: int, configured: int) -> list[Metric]:
        """
        The C{workers_reporting} and C{workers_configured} gauges.
        """
        families = []
        for name, doc, value in (
            (
                "workers_reporting",
                "Worker processes whose metrics are in this scrape's sums",
                reporting,
            ),
            ("workers_configured", "Worker processes configured", configured),
        ):
            family = Metric(self._prefix + name, doc, "gauge")
            family.add_sample(family.name, {}, float(value))
            families.append(family)
        return families

    def _write(self, request: Request, text: bytes) -> None:
        """
        Send the merged text, unless the client has gone.
        """
        if request_gone(request):
            return
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))  # type: ignore[no-untyped-call]
        request.write(text)  # type: ignore[no-untyped-call]
        request.finish()  # type: ignore[no-untyped-call]

    def _failed(self, request: Request, failure: Failure) -> None:
        """
        Log a scrape that could not be built and answer 500.
        """
        self._log.failure("Merging worker metrics failed", failure)
        if request_gone(request):
            return
        request.setResponseCode(500)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        request.write(b"metrics unavailable\n")  # type: ignore[no-untyped-call]
        request.finish()  # type: ignore[no-untyped-call]


def workers_metrics_site(
    registry: CollectorRegistry,
    reactor: Any,
    sources: Callable[[], Sequence[str]],
    timeout: float = 2.0,
    *,
    prefix: str = DEFAULT_PREFIX,
    fetch: Callable[[str], Deferred[bytes]] | None = None,
) -> Site:
    """
    Worker 0's metrics listener Site: C{/metrics} (L{WorkersMetricsResource})
    and nothing else (404), with no access log line per scrape.
    """
    root = Resource()  # type: ignore[no-untyped-call]
    root.putChild(
        b"metrics",
        WorkersMetricsResource(registry, reactor, sources, timeout, prefix=prefix, fetch=fetch),
    )
    site = MetricsSite(root)  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    site.noisy = False
    return site
