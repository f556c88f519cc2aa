# -*- test-case-name: tests.test_grafana -*-
"""
Tests for C{etc/grafana/sockudo-tw.json}: every metric the dashboard queries
exists in a live scrape of the metrics listener.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import treq
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockudo_tw.metrics import CONTENT_TYPE, metrics_endpoint, metrics_site
from tests.test_metrics import Scrape, busy_metrics

DASHBOARD = Path(__file__).parent.parent / "etc" / "grafana" / "sockudo-tw.json"

_METRIC = re.compile(r"\bsockudo_[a-zA-Z0-9_:]*")


def load_dashboard() -> dict[str, Any]:
    """
    The dashboard as committed.
    """
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def queries(node: Any) -> Iterator[str]:
    """
    Every PromQL string in the dashboard: panel C{expr} fields and the
    template variables' C{query}/C{definition} strings.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str) and "(" in value:
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def metric_names(node: Any) -> set[str]:
    """
    The metric names the dashboard's queries use.
    """
    return {name for query in queries(node) for name in _METRIC.findall(query)}


class DashboardTests(SynchronousTestCase):
    """
    The dashboard's shape and coverage.
    """

    def test_every_query_names_a_metric(self) -> None:
        """
        Each panel target has a C{refId} and an C{expr} over at least one
        of our metrics.
        """
        dashboard = load_dashboard()
        targets = [target for panel in dashboard["panels"] for target in panel.get("targets", [])]
        self.assertGreater(len(targets), 20)
        for target in targets:
            self.assertTrue(target["refId"])
            self.assertTrue(_METRIC.search(target["expr"]), target)

    def test_panel_ids_unique(self) -> None:
        """
        Grafana needs distinct panel ids.
        """
        ids = [panel["id"] for panel in load_dashboard()["panels"]]
        self.assertEqual(len(ids), len(set(ids)))

    def test_coverage(self) -> None:
        """
        The dashboard shows connections, message rates, API latency, webhook
        health and the cluster link (issue 7 point 5).
        """
        names = metric_names(load_dashboard())
        for needed in (
            "sockudo_connected",
            "sockudo_connection_errors_total",
            "sockudo_ws_messages_received_total",
            "sockudo_ws_messages_sent_total",
            "sockudo_http_request_duration_ms_bucket",
            "sockudo_http_calls_received_total",
            "sockudo_webhooks_failed_total",
            "sockudo_webhook_queue_depth",
            "sockudo_cluster_link_up",
        ):
            self.assertIn(needed, names)

    def test_extraction(self) -> None:
        """
        The name extraction finds names in C{expr} and template queries and
        ignores functions and labels.
        """
        node = {
            "targets": [{"expr": 'histogram_quantile(0.9, rate(sockudo_a_bucket{le="1"}[5m]))'}],
            "templating": {"list": [{"query": {"query": "label_values(sockudo_b, app_id)"}}]},
        }
        self.assertEqual(metric_names(node), {"sockudo_a_bucket", "sockudo_b"})


class LiveScrapeTests(TestCase):
    """
    The dashboard against a real metrics listener on 127.0.0.1.
    """

    def test_dashboard_metrics_exist(self) -> Deferred[None]:
        """
        Every metric name the dashboard queries is a series in a live scrape
        of a busy L{sockudo_tw.metrics.PusherMetrics} over HTTP.
        """
        return Deferred.fromCoroutine(self._dashboard_metrics_exist())

    async def _dashboard_metrics_exist(self) -> None:
        """
        Listen, scrape over TCP, compare.
        """
        from twisted.internet import reactor

        registry = CollectorRegistry()
        busy_metrics(registry)
        port = await metrics_endpoint(reactor, "127.0.0.1", 0).listen(metrics_site(registry))
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/metrics"
        response = await treq.get(url, persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), [CONTENT_TYPE])
        body = await response.content()
        exposed = {sample.name for sample in Scrape.parse(body).samples}
        wanted = metric_names(load_dashboard())
        self.assertTrue(wanted)
        self.assertEqual(wanted - exposed, set())
