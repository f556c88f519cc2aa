"""
Tests for L{sockudo_tw.pusher.httpapi}: the HTTP API without I/O, driven by
hand (no reactor, no sockets, no Deferreds).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher import httpapi
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.httpapi import (
    ApiConfig,
    CountRate,
    FindApp,
    HttpRequest,
    HttpResponse,
    Need,
    OccupiedChannels,
    PresenceMembers,
    Publish,
    SubscriptionCount,
    Terminate,
    handle,
)
from sockudo_tw.pusher.signing import sign_api_query

NOW = 1353088179
APP = App(id="3", key="k", secret="s", max_backend_events_per_second=5)


class _Rate:
    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.limit = 5
        self.remaining = 0
        self.reset_after = 1


def signed(
    method: bytes, path: str, body: bytes = b"", params: list[tuple[str, str]] | None = None
) -> HttpRequest:
    """
    A request signed for L{APP}.
    """
    query = urlencode(sign_api_query("k", "s", method.decode(), path, params or [], body, NOW))
    return HttpRequest(method, path.encode(), query.encode(), {}, body, "127.0.0.1")


def run(
    request: HttpRequest, answers: dict[type, Any] | None = None, config: ApiConfig | None = None
) -> tuple[HttpResponse, list[Need]]:
    """
    Drive L{handle} to its response, answering needs from C{answers} (by
    type; L{FindApp} finds L{APP}), and return the needs it yielded.
    """
    table: dict[type, Any] = {FindApp: APP, Publish: None, Terminate: None}
    table.update(answers or {})
    flow = handle(request, config or ApiConfig(), NOW)
    needs: list[Need] = []
    answer = None
    while True:
        try:
            need = flow.send(answer)
        except StopIteration as done:
            return done.value, needs
        needs.append(need)
        answer = table[type(need)]


def payload(response: HttpResponse) -> Any:
    return json.loads(response.body)


class RoutingTests(SynchronousTestCase):
    """
    Routes, methods and paths, answered without asking for anything.
    """

    def test_not_found(self) -> None:
        response, needs = run(HttpRequest(b"GET", b"/nope"))
        self.assertEqual((response.status, payload(response)), (404, {"error": "Not found"}))
        self.assertEqual(needs, [])

    def test_method_not_allowed(self) -> None:
        """
        A route's path with another method: 405, C{Allow} naming the methods.
        """
        response, _ = run(HttpRequest(b"GET", b"/apps/3/events"))
        self.assertEqual(response.status, 405)
        self.assertIn((b"Allow", b"OPTIONS, POST"), response.headers)

    def test_head_is_get(self) -> None:
        """
        HEAD is served wherever GET is.
        """
        response, _ = run(signed(b"HEAD", "/apps/3/channels"), {OccupiedChannels: {}})
        self.assertEqual(response.status, 200)

    def test_not_utf8(self) -> None:
        response, _ = run(HttpRequest(b"POST", b"/apps/%ff/events"))
        self.assertEqual(response.status, 400)
        self.assertIsNotNone(response.log)

    def test_preflight(self) -> None:
        response, needs = run(HttpRequest(b"OPTIONS", b"/apps/3/events", headers={b"origin": b"x"}))
        self.assertEqual(response.status, 204)
        self.assertIn((b"Access-Control-Allow-Origin", b"*"), response.headers)
        self.assertEqual(needs, [])


class TriggerTests(SynchronousTestCase):
    """
    A trigger asks for its app, then publishes: the frames are the effect.
    """

    def test_publish_effect(self) -> None:
        body = json.dumps({"name": "e", "channels": ["a", "b"], "data": "d"}).encode()
        response, needs = run(signed(b"POST", "/apps/3/events", body), {CountRate: _Rate(True)})
        self.assertEqual((response.status, response.body), (200, b"{}"))
        find, count, publish = needs
        assert isinstance(find, FindApp) and isinstance(publish, Publish)
        self.assertEqual(find.app_id, "3")
        self.assertEqual((count.key, count.cost), ("app:3:backend_events", 1))  # type: ignore[union-attr]
        self.assertEqual([c for c, _, _ in publish.frames], ["a", "b"])
        self.assertEqual(json.loads(publish.frames[0][1])["data"], "d")

    def test_bad_signature_publishes_nothing(self) -> None:
        body = b'{"name":"e","channel":"a","data":"d"}'
        request = signed(b"POST", "/apps/3/events", body)
        request.body = body.replace(b"d", b"x")
        response, needs = run(request)
        self.assertEqual(response.status, 401)
        self.assertFalse(any(isinstance(n, Publish) for n in needs))

    def test_rate_limited(self) -> None:
        body = b'{"name":"e","channel":"a","data":"d"}'
        response, needs = run(signed(b"POST", "/apps/3/events", body), {CountRate: _Rate(False)})
        self.assertEqual(response.status, 429)
        self.assertIn((b"Retry-After", b"1"), response.headers)
        self.assertFalse(any(isinstance(n, Publish) for n in needs))

    def test_body_limit(self) -> None:
        response, needs = run(
            signed(b"POST", "/apps/3/events", b"x" * 11), config=ApiConfig(body_limit=10)
        )
        self.assertEqual(response.status, 413)
        self.assertEqual(needs, [])

    def test_info_after_publish(self) -> None:
        body = json.dumps(
            {"name": "e", "channel": "presence-a", "data": "d", "info": "user_count"}
        ).encode()
        response, needs = run(
            signed(b"POST", "/apps/3/events", body),
            {CountRate: _Rate(True), PresenceMembers: ["u1", "u2"], SubscriptionCount: 3},
        )
        self.assertEqual(payload(response), {"channels": {"presence-a": {"user_count": 2}}})
        self.assertIsInstance(needs[2], Publish)
        self.assertIsInstance(needs[3], PresenceMembers)


class TerminateTests(SynchronousTestCase):
    def test_terminate_effect(self) -> None:
        response, needs = run(signed(b"POST", "/apps/3/users/u%401/terminate_connections"))
        self.assertEqual(response.status, 200)
        terminate = needs[-1]
        assert isinstance(terminate, Terminate)
        self.assertEqual((terminate.app_id, terminate.user_id), ("3", "u@1"))


class SansIOTests(SynchronousTestCase):
    """
    The core imports nothing that does I/O.
    """

    def test_no_twisted(self) -> None:
        tree = ast.parse(Path(httpapi.__file__).read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        for name in imported:
            self.assertFalse(name.startswith(("twisted", "autobahn", "klein")), name)
            if name.startswith("sockudo_tw"):
                self.assertTrue(name.startswith("sockudo_tw.pusher"), name)
