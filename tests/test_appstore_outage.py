"""
What clients, the HTTP API, C{/up} and the metrics see while a database app
store cannot answer: known apps keep working, unknown ones are refused
clearly (4102 for a connection, 503 for a request), the health check says
so in a header, and the C{app_store_up} gauge drops to 0.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from sockudo_tw.api import PusherApi
from sockudo_tw.appstores import IAppSource
from sockudo_tw.appstores.caching import CachedAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.metrics import PusherMetrics
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.errors import PusherErrorCode
from sockudo_tw.pusher.httpapi import HttpRequest, HttpResponse
from sockudo_tw.pusher.signing import sign_api_query
from sockudo_tw.web import HealthResource, Lifecycle
from sockudo_tw.websocket.admission import admit
from tests.fakes import RecordingAdapter

KNOWN = App(id="1", key="known-key", secret="s1")
NOW = 1353088179


@implementer(IAppSource)
class SwitchableSource:
    """
    An L{IAppSource} holding L{KNOWN} that can be switched off.
    """

    description = "test apps"

    def __init__(self) -> None:
        self.up = True

    def _answer(self, value: Any) -> Deferred[Any]:
        if not self.up:
            return fail(ConnectionRefusedError("database down"))
        return succeed(value)

    def prepare(self) -> Deferred[None]:
        return self._answer(None)

    def fetch_by_id(self, app_id: str) -> Deferred[App | None]:
        return self._answer(KNOWN if app_id == KNOWN.id else None)

    def fetch_by_key(self, key: str) -> Deferred[App | None]:
        return self._answer(KNOWN if key == KNOWN.key else None)

    def fetch_all(self) -> Deferred[list[App]]:
        return self._answer([KNOWN])

    def close(self) -> Deferred[None]:
        return succeed(None)


def result_of(d: Any) -> Any:
    """
    What C{d} (a Deferred or a coroutine) has already given.
    """
    got: list[Any] = []
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    d.addBoth(got.append)
    assert got, "not fired"
    return got[0]


class OutageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.source = SwitchableSource()
        self.store = CachedAppStore(self.source, self.clock, ttl=60, retry_seconds=5)
        self.adapter = RecordingAdapter()
        # Read the known app once, then lose the database past the TTL.
        result_of(self.store.find_by_key(KNOWN.key))
        result_of(self.store.all_apps())
        self.source.up = False
        self.clock.advance(120)

    def trigger(self, app_id: str, secret: str, key: str) -> HttpResponse:
        api = PusherApi(
            clock=self.clock,
            app_store=self.store,
            adapter=self.adapter,
            cache=MemoryChannelCache(self.clock),
        )
        body = json.dumps({"name": "e", "channel": "c", "data": "d"}).encode()
        path = f"/apps/{app_id}/events"
        query = sign_api_query(key, secret, "POST", path, [], body, NOW + 120)
        answer = api.serve(HttpRequest(b"POST", path.encode(), urlencode(query).encode(), {}, body))
        response = answer if isinstance(answer, HttpResponse) else result_of(answer)
        assert isinstance(response, HttpResponse)
        return response

    def test_api(self) -> None:
        """
        A trigger for the known app is published; one for an app the store
        cannot look up is a 503 with C{Retry-After}, not a 500.
        """
        self.assertEqual(self.trigger("1", "s1", KNOWN.key).status, 200)
        self.assertEqual(len(self.adapter.broadcasts), 1)
        refused = self.trigger("2", "s2", "other-key")
        self.assertEqual(refused.status, 503)
        self.assertIn((b"Retry-After", b"5"), refused.headers)
        self.assertIn(b"app store is unavailable", refused.body)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_connections(self) -> None:
        """
        A connection to the known app is admitted; one with another key is
        refused with 4102 (back off, then reconnect).
        """
        app, error = result_of(
            admit(f"/app/{KNOWN.key}", {"protocol": ["7"]}, None, self.store, self.adapter)
        )
        self.assertEqual((app, error), (KNOWN, None))
        app, error = result_of(
            admit("/app/other", {"protocol": ["7"]}, None, self.store, self.adapter)
        )
        self.assertIsNone(app)
        self.assertEqual(error.code, PusherErrorCode.APP_STORE_UNAVAILABLE)
        self.assertEqual(int(PusherErrorCode.APP_STORE_UNAVAILABLE), 4102)

    def test_health(self) -> None:
        """
        C{/up} stays OK (known apps work) and says the store is unreachable
        in C{X-App-Store}; C{/up/{id}} of an app it cannot look up is ERROR.
        """
        resource = HealthResource(self.store, lambda: succeed(True), Lifecycle(), self.clock)
        request = DummyRequest([b""])
        resource.render_GET(request)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-app-store"), [b"unreachable"])
        request = DummyRequest([b""])
        resource.getChild(b"2", request).render_GET(request)
        self.assertEqual(b"".join(request.written), b"ERROR")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_metrics(self) -> None:
        """
        The C{app_store_up} gauge follows the store's reachability.
        """
        registry = CollectorRegistry()
        PusherMetrics(registry, app_store_up=lambda: self.store.reachable)
        self.assertIsInstance(result_of(self.store.find_by_key("other")).value, Exception)
        self.assertIn(b'sockudo_app_store_up{port="9601"} 0.0', generate_latest(registry))
        self.source.up = True
        self.clock.advance(10)
        self.store.find_by_key("other")
        self.assertIn(b'sockudo_app_store_up{port="9601"} 1.0', generate_latest(registry))
