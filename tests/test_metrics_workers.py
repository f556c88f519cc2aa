# -*- test-case-name: tests.test_metrics_workers -*-
"""
Tests for L{sockudo_tw.metrics.workers}: merging several workers' text
expositions into one, and worker 0's C{/metrics} that fetches its children's
texts over Unix sockets.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from sockudo_tw.metrics import (
    CONTENT_TYPE,
    MetricsObserver,
    PusherMetrics,
    generate_text,
    metrics_site,
)
from sockudo_tw.metrics.workers import (
    GAUGE_EXCEPTIONS,
    MetricsFetchError,
    WorkersMetricsResource,
    fetch_unix_metrics,
    merge_exposition,
    workers_metrics_site,
)

reactor: Any = _global_reactor


def worker_text(
    connected: int,
    received_bytes: int,
    *,
    app_store_up: bool | None = None,
    links: Mapping[str, bool] | None = None,
    errors: Mapping[str, int] | None = None,
    fanout: Sequence[int] = (),
    apps: Sequence[str] = ("app-1",),
) -> bytes:
    """
    One worker's exposition as L{generate_text} writes it: C{connected}
    sockets and C{received_bytes} bytes in for each of C{apps}.
    """
    return generate_text(
        worker_registry(
            connected,
            received_bytes,
            app_store_up=app_store_up,
            links=links,
            errors=errors,
            fanout=fanout,
            apps=apps,
        )
    )


def worker_registry(
    connected: int,
    received_bytes: int,
    *,
    app_store_up: bool | None = None,
    links: Mapping[str, bool] | None = None,
    errors: Mapping[str, int] | None = None,
    fanout: Sequence[int] = (),
    apps: Sequence[str] = ("app-1",),
    prefix: str = "sockudo_",
) -> CollectorRegistry:
    """
    A registry with one L{PusherMetrics} counting as L{worker_text} says,
    through L{MetricsObserver} where it can.
    """
    registry = CollectorRegistry()
    metrics = PusherMetrics(
        registry,
        prefix=prefix,
        connections=lambda: dict.fromkeys(apps, connected),
        app_store_up=lambda: app_store_up,
        cluster_links=lambda: dict(links or {}),
    )
    observer = MetricsObserver(metrics)
    for app_id in apps:
        observer.message_received(app_id, received_bytes)
        for error_type, count in (errors or {}).items():
            metrics.app(app_id).connection_errors[error_type] = count
        for size in fanout:
            metrics.app(app_id).broadcast_fanout_size.observe(size)
    return registry


class Scrape:
    """
    A parsed exposition: each series' value by name and labels, and the
    raw lines.
    """

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.lines = text.decode("utf-8").splitlines()
        self.families = list(text_string_to_metric_families(text.decode("utf-8")))
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families:
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                if key in self.values:
                    raise AssertionError(f"series twice: {key}")
                self.values[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """
        The value of the series C{name} with exactly C{labels}.
        """
        return self.values[(name, frozenset(labels.items()))]

    def has(self, name: str, **labels: str) -> bool:
        """
        Whether the series C{name} with exactly C{labels} is there.
        """
        return (name, frozenset(labels.items())) in self.values

    def type_lines(self) -> list[str]:
        """
        Every C{# TYPE} line, in order.
        """
        return [line for line in self.lines if line.startswith("# TYPE ")]


def merged(*texts: bytes) -> Scrape:
    """
    L{merge_exposition} of C{texts}, parsed.
    """
    return Scrape(merge_exposition(texts))


APP = {"app_id": "app-1", "port": "9601"}

#: The series C{sockudo_socket_received_bytes} as prometheus_client's parser
#: names it (it adds C{_total} to a counter's series).
BARE_BYTES = "sockudo_socket_received_bytes_total"


class MergeExpositionTests(SynchronousTestCase):
    """
    L{merge_exposition} sums what adds up across processes and keeps the
    single-process names.
    """

    def test_one_text_unchanged(self) -> None:
        """
        Merging one process's text gives that text back, byte for byte.
        """
        text = worker_text(
            3, 10, app_store_up=True, links={"publisher": True}, errors={"app_not_found": 2}
        )
        self.assertEqual(merge_exposition([text]), text)

    def test_nothing(self) -> None:
        """
        No texts merge to an empty exposition.
        """
        self.assertEqual(merge_exposition([]), b"")

    def test_gauges_summed(self) -> None:
        """
        C{sockudo_connected} is the sum of the workers' sockets.
        """
        scrape = merged(worker_text(3, 0), worker_text(4, 0))
        self.assertEqual(scrape.value("sockudo_connected", **APP), 7)
        self.assertEqual(
            scrape.value("sockudo_active_channels", channel_type="public", **APP),
            0,
        )

    def test_many_workers(self) -> None:
        """
        Four workers of 25,000 sockets read 100,000.
        """
        scrape = merged(*(worker_text(25_000, 0) for _ in range(4)))
        self.assertEqual(scrape.value("sockudo_connected", **APP), 100_000)

    def test_counters_summed(self) -> None:
        """
        Counters with C{_total} are summed under their name.
        """
        scrape = merged(worker_text(0, 5), worker_text(0, 6))
        self.assertEqual(scrape.value("sockudo_ws_messages_received_total", **APP), 2)
        self.assertIn("# TYPE sockudo_ws_messages_received_total counter", scrape.lines)

    def test_bare_counters_keep_their_names(self) -> None:
        """
        Sockudo's counters without C{_total} are summed and written under
        their own name, as the single-process output writes them (the
        parser would call them C{..._total}).
        """
        scrape = merged(worker_text(0, 5), worker_text(0, 6))
        self.assertIn("# TYPE sockudo_socket_received_bytes counter", scrape.lines)
        self.assertIn(
            'sockudo_socket_received_bytes{app_id="app-1",port="9601"} 11.0', scrape.lines
        )
        self.assertFalse(
            any("sockudo_socket_received_bytes_total" in line for line in scrape.lines)
        )

    def test_type_lines_as_single_process(self) -> None:
        """
        The merged text declares exactly the families, names and types of
        one process's text, in the same order.
        """
        one = worker_text(1, 1, app_store_up=True, errors={"app_disabled": 1}, fanout=(3,))
        scrape = merged(one, worker_text(2, 2, app_store_up=True, errors={"app_disabled": 1}))
        self.assertEqual(scrape.type_lines(), Scrape(one).type_lines())

    def test_labelled_series(self) -> None:
        """
        Series are merged by name and labels: each app and each error type
        on its own, and a series only one worker has is copied.
        """
        scrape = merged(
            worker_text(1, 0, errors={"app_not_found": 2}, apps=("a", "b")),
            worker_text(2, 0, errors={"app_not_found": 3, "app_disabled": 1}, apps=("b", "c")),
        )
        self.assertEqual(scrape.value("sockudo_connected", app_id="a", port="9601"), 1)
        self.assertEqual(scrape.value("sockudo_connected", app_id="b", port="9601"), 3)
        self.assertEqual(scrape.value("sockudo_connected", app_id="c", port="9601"), 2)
        errors = "sockudo_connection_errors_total"
        port = "9601"
        self.assertEqual(scrape.value(errors, error_type="app_not_found", app_id="b", port=port), 5)
        self.assertEqual(scrape.value(errors, error_type="app_disabled", app_id="c", port=port), 1)
        self.assertFalse(scrape.has(errors, error_type="app_disabled", app_id="a", port=port))

    def test_histograms_summed(self) -> None:
        """
        Histogram buckets, C{_count} and C{_sum} are summed per series.
        """
        scrape = merged(worker_text(0, 0, fanout=(1, 3)), worker_text(0, 0, fanout=(3, 1000)))
        name = "sockudo_broadcast_fanout_size"
        self.assertEqual(scrape.value(name + "_count", **APP), 4)
        self.assertEqual(scrape.value(name + "_sum", **APP), 1007)
        self.assertEqual(scrape.value(name + "_bucket", le="+Inf", **APP), 4)
        one = Scrape(worker_text(0, 0, fanout=(1, 3)))
        two = Scrape(worker_text(0, 0, fanout=(3, 1000)))
        buckets = [key for key in one.values if key[0] == name + "_bucket"]
        self.assertGreater(len(buckets), 2)
        for key in buckets:
            self.assertEqual(scrape.values[key], one.values[key] + two.values[key], key)
        self.assertIn(f"# TYPE {name} histogram", scrape.lines)

    def test_flags_take_the_minimum(self) -> None:
        """
        C{*_up} gauges read 1 only when every worker's reads 1.
        """
        up = merged(worker_text(0, 0, app_store_up=True), worker_text(0, 0, app_store_up=True))
        self.assertEqual(up.value("sockudo_app_store_up", port="9601"), 1)
        down = merged(
            worker_text(0, 0, app_store_up=True, links={"publisher": True, "subscriber": True}),
            worker_text(0, 0, app_store_up=False, links={"publisher": True, "subscriber": False}),
        )
        self.assertEqual(down.value("sockudo_app_store_up", port="9601"), 0)
        link = "sockudo_cluster_link_up"
        self.assertEqual(down.value(link, link="publisher", port="9601"), 1)
        self.assertEqual(down.value(link, link="subscriber", port="9601"), 0)

    def test_process_collectors(self) -> None:
        """
        Gauges of prometheus_client's process and platform collectors
        follow the exceptions table: start time and descriptor limit the
        minimum, C{python_info} one copy, other process gauges the sum.
        """
        template = (
            "# HELP process_start_time_seconds Start time.\n"
            "# TYPE process_start_time_seconds gauge\n"
            "process_start_time_seconds {start}\n"
            "# HELP process_max_fds Maximum number of open file descriptors.\n"
            "# TYPE process_max_fds gauge\n"
            "process_max_fds {limit}\n"
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
            "# TYPE process_resident_memory_bytes gauge\n"
            "process_resident_memory_bytes {memory}\n"
            "# HELP process_cpu_seconds_total Total user and system CPU time.\n"
            "# TYPE process_cpu_seconds_total counter\n"
            "process_cpu_seconds_total {cpu}\n"
            "# HELP python_info Python platform information\n"
            "# TYPE python_info gauge\n"
            'python_info{{implementation="CPython",version="3.11.2"}} 1.0\n'
            "# HELP x_created Created.\n"
            "# TYPE x_created gauge\n"
            "x_created {start}\n"
        )
        scrape = merged(
            template.format(start=200.0, limit=1024, memory=10, cpu=1.5).encode(),
            template.format(start=100.0, limit=4096, memory=20, cpu=2.0).encode(),
            template.format(start=300.0, limit=2048, memory=30, cpu=0.5).encode(),
        )
        self.assertEqual(scrape.value("process_start_time_seconds"), 100)
        self.assertEqual(scrape.value("x_created"), 100)
        self.assertEqual(scrape.value("process_max_fds"), 1024)
        self.assertEqual(scrape.value("process_resident_memory_bytes"), 60)
        self.assertEqual(scrape.value("process_cpu_seconds_total"), 4)
        self.assertEqual(scrape.value("python_info", implementation="CPython", version="3.11.2"), 1)

    def test_summaries(self) -> None:
        """
        A summary's C{_sum} and C{_count} are summed; its quantiles, which
        no arithmetic merges, are left out.
        """
        template = (
            "# HELP rtt Round trips.\n"
            "# TYPE rtt summary\n"
            'rtt{{quantile="0.5"}} {median}\n'
            "rtt_sum {total}\n"
            "rtt_count {count}\n"
        )
        scrape = merged(
            template.format(median=1, total=10, count=4).encode(),
            template.format(median=9, total=30, count=6).encode(),
        )
        self.assertEqual(scrape.value("rtt_sum"), 40)
        self.assertEqual(scrape.value("rtt_count"), 10)
        self.assertFalse(scrape.has("rtt", quantile="0.5"))
        self.assertIn("# TYPE rtt summary", scrape.lines)

    def test_untyped_summed(self) -> None:
        """
        Series without a C{TYPE} line are summed like gauges.
        """
        scrape = merged(b'loose{a="x"} 2\n', b'loose{a="x"} 3\nloose{a="y"} 1\n')
        self.assertEqual(scrape.value("loose", a="x"), 5)
        self.assertEqual(scrape.value("loose", a="y"), 1)

    def test_family_order(self) -> None:
        """
        Families come in the first text's order; families only a later text
        has follow, in that text's order.
        """
        first = b"# TYPE b gauge\nb 1\n# TYPE a gauge\na 1\n"
        second = b"# TYPE c gauge\nc 1\n# TYPE a gauge\na 1\n# TYPE d gauge\nd 1\n"
        self.assertEqual(
            merged(first, second).type_lines(),
            ["# TYPE b gauge", "# TYPE a gauge", "# TYPE c gauge", "# TYPE d gauge"],
        )

    def test_type_mismatch_skipped(self) -> None:
        """
        A family another text declared with a different type is left out
        rather than mixed in.
        """
        scrape = merged(b"# TYPE x gauge\nx 1\n", b"# TYPE x histogram\nx_count 5\nx_sum 1\n")
        self.assertEqual(scrape.value("x"), 1)
        self.assertFalse(scrape.has("x_count"))

    def test_escaping(self) -> None:
        """
        Label values and help texts with quotes, backslashes and newlines
        survive the round trip.
        """
        text = b'# HELP g A "quoted" \\\\ help\\nline\n# TYPE g gauge\ng{v="a\\"b\\\\c\\nd"} 2.0\n'
        self.assertEqual(merge_exposition([text]), text)
        scrape = merged(text, text)
        self.assertEqual(scrape.value("g", v='a"b\\c\nd'), 4)
        self.assertEqual(scrape.families[0].documentation, 'A "quoted" \\ help\nline')

    def test_invalid_text(self) -> None:
        """
        A text that is not in the exposition format raises L{ValueError}.
        """
        self.assertRaises(ValueError, merge_exposition, [b"<html>oops</html>"])

    def test_extra_families(self) -> None:
        """
        C{extra} families are appended as they are.
        """
        extra = Metric("sockudo_extra", "Extra.", "gauge")
        extra.add_sample("sockudo_extra", {}, 2.0)
        scrape = Scrape(merge_exposition([worker_text(1, 0)], [extra]))
        self.assertEqual(scrape.value("sockudo_extra"), 2)
        self.assertEqual(scrape.type_lines()[-1], "# TYPE sockudo_extra gauge")

    def test_exceptions_explained(self) -> None:
        """
        Every entry of the exceptions table gives its reason.
        """
        self.assertTrue(GAUGE_EXCEPTIONS)
        for exception in GAUGE_EXCEPTIONS:
            self.assertGreater(len(exception.reason), 20, exception.pattern)


class _FakeFetch:
    """
    Children by socket path: a text, a failure, or an answer held back
    until the test gives it.
    """

    def __init__(self) -> None:
        self.answers: dict[str, Callable[[], Deferred[bytes]]] = {}
        self.held: dict[str, Deferred[bytes]] = {}
        self.fetched: list[str] = []
        self.cancelled: list[str] = []

    def text(self, path: str, text: bytes) -> None:
        """
        The child at C{path} answers C{text} at once.
        """
        self.answers[path] = lambda: succeed(text)

    def refuse(self, path: str) -> None:
        """
        The child at C{path} cannot be reached.
        """
        self.answers[path] = lambda: fail(ConnectionRefusedError())

    def hold(self, path: str) -> None:
        """
        The child at C{path} answers only when the test fires
        C{self.held[path]}.
        """

        def held() -> Deferred[bytes]:
            self.held[path] = Deferred(lambda _: self.cancelled.append(path))
            return self.held[path]

        self.answers[path] = held

    def __call__(self, path: str) -> Deferred[bytes]:
        """
        Fetch from the child at C{path}.
        """
        self.fetched.append(path)
        return self.answers[path]()


class WorkersMetricsResourceTests(SynchronousTestCase):
    """
    L{WorkersMetricsResource} merges its own registry with the children's
    texts, leaving out children that fail or are slow.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.fetch = _FakeFetch()
        self.paths = ["/run/sockudo/metrics-1.sock", "/run/sockudo/metrics-2.sock"]
        self.registry = worker_registry(3, 1)
        self.resource = WorkersMetricsResource(
            self.registry, self.clock, lambda: self.paths, 2.0, fetch=self.fetch
        )
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def render(self) -> DummyRequest:
        """
        GET the resource; the request is answered later.
        """
        request = DummyRequest([b""])
        self.assertEqual(self.resource.render(request), NOT_DONE_YET)
        return request

    def body(self, request: DummyRequest) -> Scrape:
        """
        The finished request's body, parsed.
        """
        self.assertEqual(request.finished, 1)
        return Scrape(b"".join(request.written))

    def warnings(self) -> list[dict[str, Any]]:
        """
        The warnings logged so far.
        """
        return [event for event in self.logged if event["log_level"].name == "warn"]

    def test_merged(self) -> None:
        """
        Its own and every child's metrics are summed, with the number of
        processes reporting and configured, as text format 0.0.4.
        """
        self.fetch.text(self.paths[0], worker_text(4, 1))
        self.fetch.text(self.paths[1], worker_text(5, 1))
        request = self.render()
        scrape = self.body(request)
        self.assertEqual(scrape.value("sockudo_connected", **APP), 12)
        self.assertEqual(scrape.value(BARE_BYTES, **APP), 3)
        self.assertEqual(scrape.value("sockudo_workers_reporting"), 3)
        self.assertEqual(scrape.value("sockudo_workers_configured"), 3)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [CONTENT_TYPE.encode()]
        )
        self.assertEqual(self.fetch.fetched, self.paths)

    def test_no_children(self) -> None:
        """
        Without children it serves its own metrics and one worker.
        """
        self.paths.clear()
        scrape = self.body(self.render())
        self.assertEqual(scrape.value("sockudo_connected", **APP), 3)
        self.assertEqual(scrape.value("sockudo_workers_reporting"), 1)
        self.assertEqual(scrape.value("sockudo_workers_configured"), 1)

    def test_waits_for_children(self) -> None:
        """
        The answer waits for every child.
        """
        self.fetch.text(self.paths[0], worker_text(4, 1))
        self.fetch.hold(self.paths[1])
        request = self.render()
        self.assertEqual(request.finished, 0)
        self.fetch.held[self.paths[1]].callback(worker_text(5, 1))
        self.assertEqual(self.body(request).value("sockudo_connected", **APP), 12)

    def test_sources_read_per_scrape(self) -> None:
        """
        The socket paths are asked for at each scrape.
        """
        self.paths.clear()
        self.body(self.render())
        self.paths.append("/run/sockudo/metrics-3.sock")
        self.fetch.text(self.paths[0], worker_text(4, 1))
        scrape = self.body(self.render())
        self.assertEqual(scrape.value("sockudo_connected", **APP), 7)
        self.assertEqual(scrape.value("sockudo_workers_configured"), 2)

    def test_slow_child(self) -> None:
        """
        A child that has not answered after C{timeout} seconds is left out
        and its fetch cancelled; the others are answered.
        """
        self.fetch.text(self.paths[0], worker_text(4, 1))
        self.fetch.hold(self.paths[1])
        request = self.render()
        self.clock.advance(1.9)
        self.assertEqual(request.finished, 0)
        self.clock.advance(0.1)
        scrape = self.body(request)
        self.assertEqual(self.fetch.cancelled, [self.paths[1]])
        self.assertEqual(scrape.value("sockudo_connected", **APP), 7)
        self.assertEqual(scrape.value("sockudo_workers_reporting"), 2)
        self.assertEqual(scrape.value("sockudo_workers_configured"), 3)
        [warning] = self.warnings()
        self.assertEqual(warning["path"], self.paths[1])
        self.assertEqual(warning["error_type"], "TimeoutError")
        self.assertFalse(self.clock.getDelayedCalls())

    def test_failing_child(self) -> None:
        """
        A child that cannot be reached is left out.
        """
        self.fetch.refuse(self.paths[0])
        self.fetch.text(self.paths[1], worker_text(5, 1))
        scrape = self.body(self.render())
        self.assertEqual(scrape.value("sockudo_connected", **APP), 8)
        self.assertEqual(scrape.value("sockudo_workers_reporting"), 2)
        [warning] = self.warnings()
        self.assertEqual(warning["path"], self.paths[0])
        self.assertEqual(warning["error_type"], "ConnectionRefusedError")

    def test_unparsable_child(self) -> None:
        """
        A child whose answer is not in the exposition format is left out.
        """
        self.fetch.text(self.paths[0], b"<html>502 Bad Gateway</html>")
        self.fetch.text(self.paths[1], worker_text(5, 1))
        scrape = self.body(self.render())
        self.assertEqual(scrape.value("sockudo_connected", **APP), 8)
        self.assertEqual(scrape.value("sockudo_workers_reporting"), 2)
        self.assertEqual(self.warnings()[0]["error_type"], "ValueError")

    def test_logged_once_per_streak(self) -> None:
        """
        A failing child is logged when it starts failing, not at every
        scrape; once it answers again that is logged, and a new failure is
        logged again.
        """
        self.fetch.refuse(self.paths[0])
        self.fetch.text(self.paths[1], worker_text(5, 1))
        for _ in range(3):
            self.body(self.render())
        self.assertEqual(len(self.warnings()), 1)
        self.fetch.text(self.paths[0], worker_text(4, 1))
        self.body(self.render())
        self.body(self.render())
        answering = [event for event in self.logged if event["log_level"].name == "info"]
        self.assertEqual([event["path"] for event in answering], [self.paths[0]])
        self.fetch.refuse(self.paths[0])
        self.body(self.render())
        self.assertEqual(len(self.warnings()), 2)

    def test_prefix(self) -> None:
        """
        The two worker gauges take C{metrics.prefix}.
        """
        registry = worker_registry(1, 0, prefix="pusher_")
        resource = WorkersMetricsResource(
            registry, self.clock, lambda: [], prefix="pusher_", fetch=self.fetch
        )
        request = DummyRequest([b""])
        resource.render(request)
        scrape = self.body(request)
        self.assertEqual(scrape.value("pusher_workers_reporting"), 1)
        self.assertEqual(scrape.value("pusher_connected", **APP), 1)

    def test_client_gone(self) -> None:
        """
        Nothing is written to a request whose client went away while the
        children were asked.
        """
        self.fetch.text(self.paths[0], worker_text(4, 1))
        self.fetch.hold(self.paths[1])
        channel = DummyChannel()
        request = Request(channel)
        request.method = b"GET"
        request.uri = request.path = b"/metrics"
        request.clientproto = b"HTTP/1.1"
        self.assertEqual(self.resource.render(request), NOT_DONE_YET)
        request.connectionLost(ConnectionRefusedError())
        self.fetch.held[self.paths[1]].callback(worker_text(5, 1))
        self.assertEqual(channel.transport.written.getvalue(), b"")
        self.assertFalse(request.responseHeaders.hasHeader(b"content-type"))

    def test_own_metrics_fail(self) -> None:
        """
        If its own registry cannot be collected, the scrape answers 500 and
        the failure is logged.
        """

        class Broken:
            def collect(self) -> list[Metric]:
                raise RuntimeError("broken collector")

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Broken())  # type: ignore[arg-type]
        resource = WorkersMetricsResource(registry, self.clock, lambda: [], fetch=self.fetch)
        request = DummyRequest([b""])
        resource.render(request)
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_site(self) -> None:
        """
        L{workers_metrics_site} serves the merged metrics at C{/metrics},
        404 elsewhere, and logs no access line.
        """
        self.fetch.text(self.paths[0], worker_text(4, 1))
        self.fetch.text(self.paths[1], worker_text(5, 1))
        site = workers_metrics_site(self.registry, self.clock, lambda: self.paths, fetch=self.fetch)
        treq = StubTreq(site.resource)
        response = self.successResultOf(treq.get("http://metrics.test/metrics"))
        self.assertEqual(response.code, 200)
        scrape = Scrape(self.successResultOf(treq.content(response)))
        self.assertEqual(scrape.value("sockudo_connected", **APP), 12)
        missing = self.successResultOf(treq.get("http://metrics.test/"))
        self.assertEqual(missing.code, 404)
        self.assertIsNone(site.log(DummyRequest([b"metrics"])))  # type: ignore[func-returns-value]
        self.assertFalse(site.displayTracebacks)


class _SilentProtocol(Protocol):
    """
    Accepts a connection and never answers.
    """

    factory: _Silent

    def connectionMade(self) -> None:
        """
        Tell the test the request is waiting.
        """
        self.factory.connected.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Tell the test the connection is closed.
        """
        self.factory.disconnected.callback(None)


class _Silent(Factory):
    """
    A listener that never answers, noting its one connection's start and
    end.
    """

    protocol = _SilentProtocol

    def __init__(self) -> None:
        self.connected: Deferred[None] = Deferred()
        self.disconnected: Deferred[None] = Deferred()


class UnixSocketTests(TestCase):
    """
    End to end over real Unix sockets: children serving L{metrics_site},
    worker 0 fetching them with L{fetch_unix_metrics}.
    """

    def directory(self) -> str:
        """
        A short directory for socket files (AF_UNIX paths are limited to
        about 108 bytes).
        """
        directory = tempfile.mkdtemp(prefix="sockudo-mw-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    async def serve(self, path: str, site: IProtocolFactory) -> IListeningPort:
        """
        Serve C{site} (any factory) on the Unix socket C{path} until the test ends.
        """
        port: IListeningPort = await UNIXServerEndpoint(reactor, path).listen(site)
        self.addCleanup(port.stopListening)
        return port

    async def test_end_to_end(self) -> None:
        """
        Two children's real registries over two Unix sockets and worker 0's
        own are summed; a socket nobody listens on is left out.
        """
        directory = self.directory()
        paths = [os.path.join(directory, f"metrics-{n}.sock") for n in (1, 2, 3)]
        await self.serve(paths[0], metrics_site(worker_registry(3, 10, app_store_up=True)))
        await self.serve(paths[1], metrics_site(worker_registry(4, 20, app_store_up=False)))
        resource = WorkersMetricsResource(
            worker_registry(5, 30, app_store_up=True), reactor, lambda: paths, 5.0
        )
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        scrape = Scrape(await resource.scrape())
        self.assertEqual(scrape.value("sockudo_connected", **APP), 12)
        self.assertEqual(scrape.value(BARE_BYTES, **APP), 60)
        self.assertEqual(scrape.value("sockudo_ws_messages_received_total", **APP), 3)
        self.assertEqual(scrape.value("sockudo_app_store_up", port="9601"), 0)
        self.assertEqual(scrape.value("sockudo_workers_reporting"), 3)
        self.assertEqual(scrape.value("sockudo_workers_configured"), 4)
        self.assertEqual(
            [event["path"] for event in logged if event["log_level"].name == "warn"], [paths[2]]
        )

    async def test_silent_child(self) -> None:
        """
        A child that accepts but never answers is left out after the
        timeout (on an injected clock), and its connection is closed.
        """
        path = os.path.join(self.directory(), "silent.sock")
        silent = _Silent()
        await self.serve(path, silent)
        clock = Clock()
        resource = WorkersMetricsResource(
            worker_registry(5, 30),
            clock,
            lambda: [path],
            2.0,
            fetch=lambda source: fetch_unix_metrics(reactor, source),
        )
        EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        scraping = Deferred.fromCoroutine(resource.scrape())
        await silent.connected
        self.assertNoResult(scraping)
        clock.advance(2.0)
        scrape = Scrape(await scraping)
        self.assertEqual(scrape.value("sockudo_connected", **APP), 5)
        self.assertEqual(scrape.value("sockudo_workers_reporting"), 1)
        await silent.disconnected

    async def test_not_found(self) -> None:
        """
        A listener answering anything but 200 fails the fetch with
        L{MetricsFetchError}.
        """
        path = os.path.join(self.directory(), "other.sock")
        await self.serve(path, Site(Resource()))  # type: ignore[no-untyped-call]
        with self.assertRaises(MetricsFetchError):
            await fetch_unix_metrics(reactor, path)
