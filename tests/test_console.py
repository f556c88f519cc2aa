"""
Tests for L{sockudo_tw.console}: the config's refusals, the Basic
authentication, the bounded per-viewer queues (a slow viewer skips, then is
dropped), the filters, the trigger form's path through the HTTP API, and
that nothing is recorded (nor parsed) while nobody watches.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from sockudo_tw.adapters import IAdapter
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.api import PusherApi
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.caches.memory import MemoryChannelCache
from sockudo_tw.config import ConfigError, ServerConfig, parse_config
from sockudo_tw.config.schema import ConsoleConfig, SslConfig
from sockudo_tw.config.sections import parse_tree
from sockudo_tw.console import (
    ApiTriggerWatch,
    BasicAuthGuard,
    ConsoleFeed,
    ConsoleObserver,
    ConsoleRelay,
    ConsoleTee,
    ConsoleTrigger,
    ViewerFilter,
    WebhookPostWatch,
    build_console,
    console_listener,
    console_root,
)
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.pusher.app import App

APP = App(id="42", key="key42", secret="secret42", enable_client_messages=True)
OTHER = App(id="43", key="key43", secret="secret43")


def _basic(user: str, password: str) -> dict[bytes, list[bytes]]:
    token = base64.b64encode(f"{user}:{password}".encode())
    return {b"Authorization": [b"Basic " + token]}


def _config(**console: Any) -> dict[str, Any]:
    return {"console": console}


class ConfigTests(SynchronousTestCase):
    """
    C{console.*}: off by default, never enabled without credentials.
    """

    def test_off_by_default(self) -> None:
        """
        Without a C{console} section the console is off, on loopback 9602.
        """
        config = parse_tree({}, [])
        self.assertEqual(config.console, ConsoleConfig())
        self.assertFalse(config.console.enabled)
        self.assertEqual((config.console.host, config.console.port), ("127.0.0.1", 9602))

    def test_enabled_without_credentials_refused(self) -> None:
        """
        Enabling it without a username or without a password stops the
        start, naming the keys.
        """
        for section in (
            {"enabled": True},
            {"enabled": True, "username": "op"},
            {"enabled": True, "password": "pw"},
            {"enabled": True, "username": "", "password": "pw"},
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_tree(_config(**section), [])
            self.assertIn("console.username and console.password", str(caught.exception))

    def test_colon_in_username_refused(self) -> None:
        """
        A username with a colon cannot be sent with HTTP Basic.
        """
        with self.assertRaises(ConfigError):
            parse_tree(_config(enabled=True, username="a:b", password="pw"), [])

    def test_off_loopback_without_tls_warned(self) -> None:
        """
        A console listening off loopback without TLS is warned about by key.
        """
        warnings: list[str] = []
        parse_tree(_config(enabled=True, username="op", password="pw", host="0.0.0.0"), warnings)
        self.assertEqual(len(warnings), 1)
        self.assertTrue(warnings[0].startswith("console.host:"))
        quiet: list[str] = []
        parse_tree(_config(enabled=True, username="op", password="pw"), quiet)
        self.assertEqual(quiet, [])

    def test_password_not_in_repr(self) -> None:
        """
        The password does not appear in the config's repr (logs, tracebacks).
        """
        config = ConsoleConfig(enabled=True, username="op", password="hunter2")
        self.assertNotIn("hunter2", repr(config))

    def test_disabled_parts_are_identities(self) -> None:
        """
        With the console off, its hooks hand back what they are given and
        it adds no listener: the daemon is exactly as without it.
        """
        parts = build_console(
            ServerConfig(), Clock(), MemoryAppStore(), LocalAdapter(), MemoryChannelCache(Clock())
        )
        observer = NoPusherEvents()
        adapter = LocalAdapter()
        self.assertIs(parts.observe(observer), observer)
        self.assertIs(parts.watch_api(adapter), adapter)
        self.assertIsNone(parts.watch_posts)
        self.assertEqual(tuple(parts.listeners), ())

    def test_enabled_parts(self) -> None:
        """
        With the console on, it adds one listener on C{console.host:port}.
        """
        config = attrs.evolve(
            ServerConfig(), console=ConsoleConfig(enabled=True, username="op", password="pw")
        )
        parts = build_console(
            config, Clock(), MemoryAppStore(), LocalAdapter(), MemoryChannelCache(Clock())
        )
        self.assertEqual(len(parts.listeners), 1)
        self.assertEqual(parts.listeners[0][1], "tcp:9602:interface=127.0.0.1")
        self.assertEqual(console_listener(config), "tcp:9602:interface=127.0.0.1")

    def test_daemon_listens(self) -> None:
        """
        The daemon built from a config with the console on listens on the
        console port beside the main one; with it off it does not, and
        nothing of the console is wired in.
        """
        from twisted.internet.testing import MemoryReactorClock

        from sockudo_tw.service import make_service

        for enabled, ports in ((True, [6001, 9602]), (False, [6001])):
            config = parse_config(
                {
                    "metrics": {"enabled": False},
                    "console": {"enabled": enabled, "username": "op", "password": "pw"},
                },
                {},
            )
            reactor = MemoryReactorClock()
            make_service(config, reactor).startService()
            self.assertEqual([s[0] for s in reactor.tcpServers], ports)
            interfaces = {s[0]: s[3] for s in reactor.tcpServers}
            if enabled:
                self.assertEqual(interfaces[9602], "127.0.0.1")

    def test_tls_listener(self) -> None:
        """
        With C{ssl.enabled} the console is served over TLS with the main
        listener's files.
        """
        config = attrs.evolve(
            ServerConfig(),
            ssl=SslConfig(enabled=True, cert_path="/etc/tls/a:b.pem", key_path="/etc/tls/k.pem"),
            console=ConsoleConfig(enabled=True, username="op", password="pw", port=9700),
        )
        self.assertEqual(
            console_listener(config),
            "ssl:9700:interface=127.0.0.1:privateKey=/etc/tls/k.pem:certKey=/etc/tls/a\\:b.pem",
        )

    def test_workers_refused(self) -> None:
        """
        With several workers the console is refused, not half served.
        """
        config = attrs.evolve(
            ServerConfig(),
            workers=2,
            console=ConsoleConfig(enabled=True, username="op", password="pw"),
        )
        self.assertRaises(
            ConfigError,
            build_console,
            config,
            Clock(),
            MemoryAppStore(),
            LocalAdapter(),
            MemoryChannelCache(Clock()),
        )


class _RecordingAdapter(LocalAdapter):
    """
    A local adapter that also remembers each broadcast.
    """

    def __init__(self) -> None:
        super().__init__()
        self.broadcasts: list[tuple[str, str, bytes, str | None]] = []

    def broadcast(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        self.broadcasts.append((app_id, channel, frame, except_socket_id))
        super().broadcast(app_id, channel, frame, except_socket_id)


class _Site:
    """
    The console's resource tree with an in-memory app store and a
    recording adapter, served through StubTreq.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.apps = MemoryAppStore([APP, OTHER])
        self.adapter = _RecordingAdapter()
        self.feed = ConsoleFeed(self.clock)
        api = PusherApi(
            clock=self.clock,
            app_store=self.apps,
            adapter=ApiTriggerWatch(self.adapter, self.feed),
            cache=MemoryChannelCache(self.clock),
        )
        self.trigger = ConsoleTrigger(api, self.apps, self.clock)
        self.root = console_root(
            self.feed, self.apps, self.adapter, self.trigger, ["42", "43"], "op", "pw"
        )
        self.treq = StubTreq(self.root)


class AuthTests(SynchronousTestCase):
    """
    Every console path answers 401 without the configured credentials.
    """

    def test_guard_needs_credentials(self) -> None:
        """
        The guard cannot be built without a username and a password.
        """
        self.assertRaises(ValueError, BasicAuthGuard, _Site(self).root, "", "pw")
        self.assertRaises(ValueError, BasicAuthGuard, _Site(self).root, "op", "")

    def test_refused_without_or_with_wrong_credentials(self) -> None:
        """
        No credentials, a wrong password, a wrong user or another scheme:
        401 with a Basic challenge, on every path.
        """
        site = _Site(self)
        for path in ("/", "/feed?app=42", "/stats?app=42", "/apps", "/trigger", "/nope"):
            for headers in (
                {},
                _basic("op", "wrong"),
                _basic("other", "pw"),
                {b"Authorization": [b"Bearer pw"]},
                {b"Authorization": [b"Basic !!!"]},
            ):
                response = self.successResultOf(
                    site.treq.get("http://console" + path, headers=headers)
                )
                self.assertEqual(response.code, 401, (path, headers))
                challenge = response.headers.getRawHeaders(b"www-authenticate")
                self.assertIn(b"Basic", challenge[0])

    def test_page_with_credentials(self) -> None:
        """
        The right credentials get the page, with a strict content policy
        and no caching.
        """
        site = _Site(self)
        response = self.successResultOf(
            site.treq.get("http://console/", headers=_basic("op", "pw"))
        )
        self.assertEqual(response.code, 200)
        body = self.successResultOf(response.content())
        self.assertIn(b"sockudo-tw debug console", body)
        self.assertNotIn(b"https://", body)  # self-contained: no CDN
        policy = response.headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"frame-ancestors 'none'", policy)
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_apps_and_stats(self) -> None:
        """
        C{/apps} lists the configured ids; C{/stats} the app's counts.
        """
        site = _Site(self)
        apps = self.successResultOf(
            site.treq.get("http://console/apps", headers=_basic("op", "pw"))
        )
        self.assertEqual(self.successResultOf(apps.json()), {"apps": ["42", "43"]})
        stats = self.successResultOf(
            site.treq.get("http://console/stats?app=42", headers=_basic("op", "pw"))
        )
        self.assertEqual(
            self.successResultOf(stats.json()), {"connections": 0, "channels": 0, "busiest": []}
        )


class _Sink:
    """
    Where a viewer's writes go.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        self.closed = True

    def records(self) -> list[dict[str, Any]]:
        out = []
        for chunk in self.chunks:
            for message in chunk.split(b"\n\n"):
                if message.startswith(b"data: "):
                    out.append(json.loads(message[6:]))
        return out


def _record(app: str = "42", channel: str = "c", event: str = "e", **more: Any) -> dict[str, Any]:
    return {"kind": "api", "t": 0, "app": app, "channel": channel, "event": event, **more}


class FeedTests(SynchronousTestCase):
    """
    L{ConsoleFeed}: per-viewer queues are bounded; a slow viewer skips
    events and is dropped when it stays stuck.
    """

    def test_watching_flag(self) -> None:
        """
        C{watching} is true exactly while a viewer is connected.
        """
        feed = ConsoleFeed(Clock())
        self.assertFalse(feed.watching)
        sink = _Sink()
        viewer = feed.add(ViewerFilter("42", None), sink.write, sink.close)
        assert viewer is not None
        self.assertTrue(feed.watching)
        feed.remove(viewer)
        self.assertFalse(feed.watching)

    def test_written_once_per_turn(self) -> None:
        """
        Records are written together at the end of the reactor turn, each
        encoded once for every viewer.
        """
        clock = Clock()
        feed = ConsoleFeed(clock)
        sinks = [_Sink(), _Sink()]
        for sink in sinks:
            feed.add(ViewerFilter("42", None), sink.write, sink.close)
        for i in range(3):
            feed.publish(_record(event=f"e{i}"))
        self.assertEqual(sinks[0].chunks, [])
        clock.advance(0)
        for sink in sinks:
            self.assertEqual(len(sink.chunks), 1)
            self.assertEqual([r["event"] for r in sink.records()], ["e0", "e1", "e2"])

    def test_slow_viewer_bounded(self) -> None:
        """
        A viewer whose connection pushed back keeps at most C{limit}
        records (the newest); the rest are counted and announced as skipped
        when it resumes.
        """
        clock = Clock()
        feed = ConsoleFeed(clock, limit=100)
        slow, fast = _Sink(), _Sink()
        slow_viewer = feed.add(ViewerFilter("42", None), slow.write, slow.close)
        feed.add(ViewerFilter("42", None), fast.write, fast.close)
        assert slow_viewer is not None
        slow_viewer.pauseProducing()
        for i in range(10_000):
            feed.publish(_record(event=f"e{i}"))
            if i % 50 == 49:
                clock.advance(0)  # the end of a reactor turn
        clock.advance(0)
        self.assertEqual(slow.chunks, [])
        self.assertEqual(len(slow_viewer.pending), 100)
        self.assertEqual(slow_viewer.skipped, 9_900)
        self.assertEqual(len(fast.records()), 10_000)
        slow_viewer.resumeProducing()
        self.assertIn(b"event: skipped\ndata: 9900\n\n", slow.chunks[0])
        events = [r["event"] for r in slow.records()]
        self.assertEqual(events, [f"e{i}" for i in range(9_900, 10_000)])
        self.assertEqual(slow_viewer.skipped, 0)

    def test_stuck_viewer_dropped(self) -> None:
        """
        A viewer paused longer than C{max_paused} is closed and forgotten;
        the others are pinged.
        """
        clock = Clock()
        feed = ConsoleFeed(clock, max_paused=30.0, heartbeat=15.0)
        stuck, live = _Sink(), _Sink()
        stuck_viewer = feed.add(ViewerFilter("42", None), stuck.write, stuck.close)
        feed.add(ViewerFilter("42", None), live.write, live.close)
        assert stuck_viewer is not None
        stuck_viewer.pauseProducing()
        clock.advance(15)
        self.assertFalse(stuck.closed)
        self.assertEqual(live.chunks, [b": ping\n\n"])
        clock.advance(15)
        clock.advance(15)
        self.assertTrue(stuck.closed)
        self.assertNotIn(stuck_viewer, feed.viewers)
        self.assertTrue(feed.watching)

    def test_viewer_limit(self) -> None:
        """
        Beyond C{max_viewers}, a new viewer is refused.
        """
        feed = ConsoleFeed(Clock(), max_viewers=2)
        sink = _Sink()
        self.assertIsNotNone(feed.add(ViewerFilter("42", None), sink.write, sink.close))
        self.assertIsNotNone(feed.add(ViewerFilter("42", None), sink.write, sink.close))
        self.assertIsNone(feed.add(ViewerFilter("42", None), sink.write, sink.close))

    def test_heartbeat_stops_without_viewers(self) -> None:
        """
        With no viewer left, no timer is pending.
        """
        clock = Clock()
        feed = ConsoleFeed(clock)
        sink = _Sink()
        viewer = feed.add(ViewerFilter("42", None), sink.write, sink.close)
        assert viewer is not None
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        feed.remove(viewer)
        self.assertEqual(clock.getDelayedCalls(), [])


class FilterTests(SynchronousTestCase):
    """
    L{ViewerFilter}: by app, channel text and event text.
    """

    def test_app(self) -> None:
        """
        Only the viewer's app passes; a record that knows only the key
        (webhooks) passes when the key is the app's.
        """
        selection = ViewerFilter("42", "key42")
        self.assertTrue(selection.wants(_record()))
        self.assertFalse(selection.wants(_record(app="43")))
        self.assertTrue(selection.wants({"kind": "webhook", "app": None, "key": "key42"}))
        self.assertFalse(selection.wants({"kind": "webhook", "app": None, "key": "key43"}))
        self.assertFalse(ViewerFilter("42", None).wants({"app": None, "key": "key42"}))

    def test_channel_and_event(self) -> None:
        """
        Channel and event filters match text anywhere in the name; a
        record without one fails a filter that is set.
        """
        selection = ViewerFilter("42", None, channel="chat", event="msg")
        self.assertTrue(selection.wants(_record(channel="private-chat-1", event="new-msg")))
        self.assertFalse(selection.wants(_record(channel="news", event="new-msg")))
        self.assertFalse(selection.wants(_record(channel="chat", event="typing")))
        self.assertFalse(selection.wants({"kind": "connection_opened", "app": "42"}))
        self.assertTrue(ViewerFilter("42", None).wants({"kind": "connection_opened", "app": "42"}))

    def test_feed_filters_per_viewer(self) -> None:
        """
        Each viewer gets what its own filter wants.
        """
        clock = Clock()
        feed = ConsoleFeed(clock)
        chat, everything = _Sink(), _Sink()
        feed.add(ViewerFilter("42", None, channel="chat"), chat.write, chat.close)
        feed.add(ViewerFilter("42", None), everything.write, everything.close)
        feed.publish(_record(channel="chat"))
        feed.publish(_record(channel="news"))
        feed.publish(_record(app="43", channel="chat"))
        clock.advance(0)
        self.assertEqual([r["channel"] for r in chat.records()], ["chat"])
        self.assertEqual([r["channel"] for r in everything.records()], ["chat", "news"])


class TriggerTests(SynchronousTestCase):
    """
    The trigger form goes through the HTTP API's own path.
    """

    def _post(self, site: _Site, form: Any, csrf: bool = True) -> tuple[int, Any]:
        headers = _basic("op", "pw")
        if csrf:
            headers[b"X-Sockudo-Console"] = [b"1"]
        response = self.successResultOf(
            site.treq.post(
                "http://console/trigger", data=json.dumps(form).encode(), headers=headers
            )
        )
        return response.code, self.successResultOf(response.json())

    def test_publish(self) -> None:
        """
        A form becomes a signed publish: the adapter broadcasts the event.
        """
        site = _Site(self)
        code, answer = self._post(
            site, {"app": "42", "channel": "c1, c2", "event": "hello", "data": '{"a":1}'}
        )
        self.assertEqual((code, answer), (200, {"status": 200, "body": {}}))
        self.assertEqual([b[:2] for b in site.adapter.broadcasts], [("42", "c1"), ("42", "c2")])
        frame = json.loads(site.adapter.broadcasts[0][2])
        self.assertEqual((frame["event"], frame["data"]), ("hello", '{"a":1}'))

    def test_api_refusals_pass_through(self) -> None:
        """
        What the HTTP API refuses (a bad channel name) comes back with its
        status; an unknown app is a 404.
        """
        site = _Site(self)
        _, answer = self._post(site, {"app": "42", "channel": "bad name!", "event": "e"})
        self.assertEqual(answer["status"], 400)
        _, answer = self._post(site, {"app": "nope", "channel": "c", "event": "e"})
        self.assertEqual(answer["status"], 404)
        self.assertEqual(site.adapter.broadcasts, [])

    def test_needs_console_header(self) -> None:
        """
        Without the page's own header (a cross-site form cannot send it),
        nothing is published.
        """
        site = _Site(self)
        code, _ = self._post(site, {"app": "42", "channel": "c", "event": "e"}, csrf=False)
        self.assertEqual(code, 403)
        self.assertEqual(site.adapter.broadcasts, [])

    def test_trigger_shown_in_tail(self) -> None:
        """
        A viewer of the app sees the triggered event as an API publish.
        """
        site = _Site(self)
        sink = _Sink()
        site.feed.add(ViewerFilter("42", "key42"), sink.write, sink.close)
        self._post(site, {"app": "42", "channel": "c1", "event": "hello", "data": "x"})
        site.clock.advance(0)
        [record] = sink.records()
        self.assertEqual(
            (record["kind"], record["channel"], record["event"], record["data"]),
            ("api", "c1", "hello", "x"),
        )


class _Raising(ConsoleFeed):
    """
    A feed that fails the test if anything is published to it.
    """

    def publish(self, record: dict[str, Any]) -> None:
        raise AssertionError(f"published while nobody watches: {record}")


class _Response:
    code = 204


class _Poster:
    def __init__(self) -> None:
        self.posted: list[Deferred[Any]] = []

    def post(self, url: str, /, *, data: bytes, headers: Headers) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.posted.append(d)
        return d


class NoViewerCostTests(SynchronousTestCase):
    """
    While nobody watches, the hooks record nothing and the per-delivery
    notices do not pass through the console at all.
    """

    def test_tee_hot_path_untouched(self) -> None:
        """
        L{ConsoleTee} provides the interface; the per-delivery notices are
        the inner observer's own bound methods (no extra call).
        """
        inner = NoPusherEvents()
        tee = ConsoleTee(inner, ConsoleObserver(ConsoleFeed(Clock())))
        self.assertTrue(verifyObject(IPusherEvents, tee))
        for name in (
            "message_sent",
            "message_received",
            "broadcast_delivered",
            "broadcast_timed",
            "subscription_count",
        ):
            self.assertEqual(getattr(tee, name), getattr(inner, name), name)

    def test_observer_silent(self) -> None:
        """
        Every watched notice returns without publishing.
        """
        observer = ConsoleObserver(_Raising(Clock()))
        tee = ConsoleTee(NoPusherEvents(), observer)
        tee.connection_opened("42", "1.1")
        tee.connection_closed("42", "1.1")
        tee.subscribed("42", "c", "1.1")
        tee.unsubscribed("42", "c", "1.1")
        tee.channel_occupied("42", "c")
        tee.channel_vacated("42", "c")
        tee.member_added("42", "presence-c", "u")
        tee.member_removed("42", "presence-c", "u")
        tee.client_event("42", "private-c", "client-e", "{}", "1.1", None)

    def test_api_watch_silent(self) -> None:
        """
        The API's adapter hands the frame on without reading it.
        """
        adapter = _RecordingAdapter()
        watch = ApiTriggerWatch(adapter, _Raising(Clock()))
        self.assertTrue(verifyObject(IAdapter, watch))
        watch.broadcast("42", "c", b"not json", None)
        self.assertEqual(adapter.broadcasts, [("42", "c", b"not json", None)])

    def test_webhook_watch_silent(self) -> None:
        """
        The webhook client's Deferred is handed back as it is.
        """
        poster = _Poster()
        watch = WebhookPostWatch(poster, _Raising(Clock()), Clock())
        d = watch.post("http://hook", data=b"{}", headers=Headers())
        self.assertIs(d, poster.posted[0])
        self.assertFalse(d.callbacks)

    def test_observer_records_when_watched(self) -> None:
        """
        With a viewer, the same notices become records.
        """
        clock = Clock()
        feed = ConsoleFeed(clock)
        sink = _Sink()
        feed.add(ViewerFilter("42", None), sink.write, sink.close)
        tee = ConsoleTee(NoPusherEvents(), ConsoleObserver(feed))
        tee.connection_opened("42", "1.1")
        tee.subscribed("42", "private-c", "1.1")
        tee.client_event("42", "private-c", "client-e", '{"x":1}', "1.1", "u1")
        tee.unsubscribed("42", "private-c", "1.1")
        tee.connection_closed("42", "1.1")
        tee.connection_opened("43", "2.2")
        clock.advance(0)
        kinds = [r["kind"] for r in sink.records()]
        self.assertEqual(
            kinds,
            [
                "connection_opened",
                "subscribed",
                "client_event",
                "unsubscribed",
                "connection_closed",
            ],
        )
        client = sink.records()[2]
        self.assertEqual(
            (client["event"], client["data"], client["user_id"]), ("client-e", '{"x":1}', "u1")
        )


class WebhookWatchTests(SynchronousTestCase):
    """
    L{WebhookPostWatch}: status and latency of each webhook request.
    """

    def _watched(self) -> tuple[Clock, _Poster, WebhookPostWatch, _Sink]:
        clock = Clock()
        feed = ConsoleFeed(clock)
        sink = _Sink()
        feed.add(ViewerFilter("42", "key42"), sink.write, sink.close)
        poster = _Poster()
        return clock, poster, WebhookPostWatch(poster, feed, clock), sink

    def test_status_and_latency(self) -> None:
        """
        A delivered request is shown with its status code, latency, URL and
        the events it carried, under the app of its key.
        """
        clock, poster, watch, sink = self._watched()
        body = json.dumps(
            {"time_ms": 1, "events": [{"name": "channel_occupied", "channel": "c1"}]}
        ).encode()
        headers = Headers({b"X-Pusher-Key": [b"key42"]})
        d = watch.post("http://hook/x", data=body, headers=headers)
        clock.advance(0.25)
        poster.posted[0].callback(_Response())
        self.assertIsInstance(self.successResultOf(d), _Response)
        clock.advance(0)
        [record] = sink.records()
        self.assertEqual(
            (record["kind"], record["status"], record["ms"], record["event"], record["channel"]),
            ("webhook", "204", 250.0, "channel_occupied", "c1"),
        )
        self.assertEqual(record["url"], "http://hook/x")

    def test_timeout(self) -> None:
        """
        A request cancelled by the sender's timeout is shown as C{timeout};
        the failure still reaches the sender.
        """
        clock, _, watch, sink = self._watched()
        headers = Headers({b"X-Pusher-Key": [b"key42"]})
        d = watch.post("http://hook/x", data=b"{}", headers=headers)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        clock.advance(0)
        self.assertEqual(sink.records()[0]["status"], "timeout")


class _FakeRedis:
    """
    The few Redis commands the relay sends, and PUBLISH to every link.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.zsets: dict[str, dict[str, int]] = {}
        self.links: list[_FakeLink] = []
        self.up = True

    def command(self, *args: Any) -> Deferred[Any]:
        if not self.up:
            from twisted.internet.defer import fail

            return fail(ConnectionError("down"))
        name, key, *rest = args
        zset = self.zsets.setdefault(key, {})
        if name == "ZADD":
            zset[rest[1]] = int(rest[0])
            return succeed(1)
        if name == "ZREM":
            return succeed(1 if zset.pop(rest[0], None) is not None else 0)
        if name == "PEXPIRE":
            return succeed(1)
        if name == "ZRANGEBYSCORE":
            low = int(rest[0])
            return succeed([m.encode() for m, score in zset.items() if score >= low])
        raise AssertionError(name)


class _FakeLink:
    """
    A L{RelayLink} on a L{_FakeRedis}.
    """

    def __init__(self, redis: _FakeRedis, on_message: Any) -> None:
        self.redis = redis
        self.on_message = on_message
        self.published: list[bytes] = []
        redis.links.append(self)

    def publish(self, payload: bytes) -> bool:
        self.published.append(payload)
        for link in self.redis.links:
            link.on_message(payload)
        return True

    def command(self, *args: Any, timeout: float = 5.0) -> Deferred[Any]:
        return self.redis.command(*args)

    def startService(self) -> None:
        pass

    def stopService(self) -> None:
        pass


class RelayTests(SynchronousTestCase):
    """
    L{ConsoleRelay}: records cross nodes only while some node has a viewer.
    """

    def _node(self, clock: Clock, redis: _FakeRedis, name: str) -> tuple[ConsoleFeed, ConsoleRelay]:
        feed = ConsoleFeed(clock)
        relay = ConsoleRelay(clock, feed, "p:", name)
        link = _FakeLink(redis, relay.received)
        relay.link = link
        relay.startService()
        self.addCleanup(relay.stopService)
        return feed, relay

    def test_relayed_only_while_watched(self) -> None:
        """
        Node B publishes nothing until node A has a viewer; then B's
        records reach A's viewer, marked with B's id; once A's viewer left,
        B stops within one poll.
        """
        clock = Clock()
        clock.advance(1000)
        redis = _FakeRedis(clock)
        feed_a, _ = self._node(clock, redis, "node-a")
        feed_b, _ = self._node(clock, redis, "node-b")
        observer_b = ConsoleObserver(feed_b)
        clock.advance(2)
        self.assertFalse(feed_b.watching)
        observer_b.connection_opened("42", "1.1")
        clock.advance(0)
        self.assertEqual(redis.links[1].published, [])

        sink = _Sink()
        viewer = feed_a.add(ViewerFilter("42", None), sink.write, sink.close)
        assert viewer is not None
        clock.advance(2)  # B polls and learns A watches
        self.assertTrue(feed_b.watching)
        self.assertFalse(feed_a.remote)  # nobody else watches: A sends nothing
        observer_b.subscribed("42", "chat", "1.1")
        clock.advance(0)
        clock.advance(0)
        [record] = sink.records()
        self.assertEqual((record["kind"], record["node"]), ("subscribed", "node-b"))
        self.assertEqual(redis.links[0].published, [])

        feed_a.remove(viewer)
        clock.advance(2)
        self.assertFalse(feed_b.watching)
        self.assertEqual(redis.zsets["p:console_viewers"], {})

    def test_dead_node_expires(self) -> None:
        """
        A viewer's node that stops renewing counts no more after C{ttl}.
        """
        clock = Clock()
        clock.advance(1000)
        redis = _FakeRedis(clock)
        redis.zsets["p:console_viewers"] = {"gone": int((clock.seconds() + 6) * 1000)}
        feed, _ = self._node(clock, redis, "node-b")
        clock.advance(2)
        self.assertTrue(feed.watching)
        clock.advance(6)
        self.assertFalse(feed.watching)

    def test_redis_down(self) -> None:
        """
        While Redis does not answer, the node relays nothing (and says so
        once in the log).
        """
        clock = Clock()
        clock.advance(1000)
        redis = _FakeRedis(clock)
        redis.zsets["p:console_viewers"] = {"other": int((clock.seconds() + 60) * 1000)}
        feed, _ = self._node(clock, redis, "node-b")
        clock.advance(2)
        self.assertTrue(feed.watching)
        redis.up = False
        with capturedLogs() as events:
            clock.advance(2)
            clock.advance(2)
        self.assertFalse(feed.watching)
        warned = [e for e in events if "console relay" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)

    def test_batch_bounded(self) -> None:
        """
        At most C{max_batch} records go out per turn; the rest are counted.
        """
        clock = Clock()
        redis = _FakeRedis(clock)
        feed = ConsoleFeed(clock)
        relay = ConsoleRelay(clock, feed, "p:", "node-b", max_batch=10)
        relay.link = _FakeLink(redis, lambda payload: None)
        for i in range(25):
            relay.queue(_record(event=f"e{i}"))
        clock.advance(0)
        [payload] = relay.link.published  # type: ignore[attr-defined]
        message = json.loads(payload)
        self.assertEqual((len(message["records"]), message["skipped"]), (10, 15))
