"""
Tests for L{sockudo_tw.websocket}: the Autobahn glue, socket-free (a
L{StringTransport} per client and a L{Clock}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from sockudo_tw.adapters import ILocalSocket
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.signing import token
from sockudo_tw.websocket import CLEANUP_CHUNK, PusherFactory
from tests.wsclient import KEY, SECRET, Harness, WSClient, client_frame


def sub(client: WSClient, channel: str, channel_data: str | None = None) -> list[Any]:
    """
    Subscribe C{client} with a valid signature where one is needed.
    """
    data: dict[str, Any] = {"channel": channel, "auth": ""}
    if channel.startswith(("private-", "presence-")):
        s = f"{client.socket_id}:{channel}"
        if channel_data is not None:
            s += f":{channel_data}"
            data["channel_data"] = channel_data
        data["auth"] = token(KEY, SECRET, s)
    return client.send({"event": "pusher:subscribe", "data": data})


def signin(client: WSClient, user_data: str) -> list[Any]:
    """
    Sign C{client} in.
    """
    sig = token(KEY, SECRET, f"{client.socket_id}::user::{user_data}")
    return client.send({"event": "pusher:signin", "data": {"auth": sig, "user_data": user_data}})


class Recorder(NoPusherEvents):
    """
    Records the transitions the glue reports.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def channel_occupied(self, app_id: str, channel: str) -> None:
        self.calls.append(("occupied", channel))

    def channel_vacated(self, app_id: str, channel: str) -> None:
        self.calls.append(("vacated", channel))

    def member_added(self, app_id: str, channel: str, user_id: str) -> None:
        self.calls.append(("member_added", channel, user_id))

    def member_removed(self, app_id: str, channel: str, user_id: str) -> None:
        self.calls.append(("member_removed", channel, user_id))

    def cache_miss(self, app_id: str, channel: str) -> None:
        self.calls.append(("cache_miss", channel))

    def client_event(
        self,
        app_id: str,
        channel: str,
        event: str,
        data: str | None,
        socket_id: str,
        user_id: str | None,
    ) -> None:
        self.calls.append(("client_event", channel, event, data, user_id))

    def connection_rejected(self, app_id: str | None, code: int) -> None:
        self.calls.append(("rejected", code))


class ConnectTests(SynchronousTestCase):
    """
    Accepting and refusing connections.
    """

    def test_established(self) -> None:
        """
        The upgrade completes (no permessage-deflate, our Server header) and
        connection_established is the first frame.
        """
        h = Harness()
        c = h.connect()
        self.assertTrue(c.status.startswith(b"HTTP/1.1 101"))
        self.assertNotIn(b"permessage-deflate", c.status.lower())
        self.assertIn(b"Server: sockudo-tw", c.status)
        [f] = c.frames
        self.assertEqual(f["event"], "pusher:connection_established")
        self.assertRegex(json.loads(f["data"])["socket_id"], r"^\d+\.\d+$")
        self.assertIn(c.protocol, h.factory.protocols)

    def test_handshake_state_dropped(self) -> None:
        """
        Once open, a connection keeps none of the opening handshake (headers,
        raw request and response, parsed query) and a compact C{__dict__},
        and still works: a subscription and a ping are answered.
        """
        h = Harness()
        c = h.connect()
        attributes = vars(c.protocol)
        for name in ("http_headers", "http_request_data", "http_response_data", "_wskey"):
            self.assertNotIn(name, attributes)
        self.assertIsNone(c.protocol._handshake)
        self.assertLessEqual(len(attributes), 85)
        self.assertEqual(list(c.protocol.send_queue), [])
        [ok] = c.send({"event": "pusher:subscribe", "data": {"channel": "a"}})
        self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
        [pong] = c.send({"event": "pusher:ping", "data": {}})
        self.assertEqual(pong["event"], "pusher:pong")

    def test_protocols(self) -> None:
        """
        Protocols 4 to 7 are accepted.
        """
        h = Harness()
        for n in (4, 5, 6, 7):
            c = h.connect(f"/app/{KEY}?protocol={n}&client=java-client")
            self.assertEqual(c.frames[0]["event"], "pusher:connection_established")

    def assert_refused(self, c: WSClient, code: int) -> None:
        """
        The first frame is pusher:error with C{code}, then a close with it.
        """
        self.assertEqual(c.frames[0]["event"], "pusher:error")
        self.assertEqual(c.frames[0]["data"]["code"], code)
        self.assertEqual(c.close_code, code)

    def test_rejections(self) -> None:
        """
        Bad path 4005, no protocol 4008, bad protocol 4007, unknown key
        4001, disabled app 4003, origin 4009, connection quota 4004.
        """
        h = Harness(allowed_origins=("https://ok.example",), max_connections=2)
        h.store.add(App(id="2", key="off", secret="s", enabled=False))
        observer = Recorder()
        h.factory.observer = observer
        self.assert_refused(h.connect("/nope?protocol=7"), 4005)
        self.assert_refused(h.connect(f"/app/{KEY}"), 4008)
        self.assert_refused(h.connect(f"/app/{KEY}?protocol=3"), 4007)
        self.assert_refused(h.connect(f"/app/{KEY}?protocol=x"), 4007)
        unknown = h.connect("/app/unknown?protocol=7")
        self.assert_refused(unknown, 4001)
        self.assertIn("not in this cluster", unknown.frames[0]["data"]["message"])
        self.assert_refused(h.connect("/app/off?protocol=7"), 4003)
        self.assert_refused(h.connect(origin="https://evil.example"), 4009)
        self.assert_refused(h.connect(), 4009)
        h.connect(origin="https://ok.example")
        h.connect(origin="https://OK.example")
        self.assert_refused(h.connect(origin="https://ok.example"), 4004)
        self.assertEqual(
            [c[1] for c in observer.calls if c[0] == "rejected"],
            [4005, 4008, 4007, 4007, 4001, 4003, 4009, 4009, 4004],
        )

    def test_early_messages(self) -> None:
        """
        Frames that arrive while the app lookup is pending are handled once
        the connection is accepted, after connection_established.
        """
        h = Harness()
        pending: Deferred[App | None] = Deferred()

        class SlowStore(MemoryAppStore):
            def find_by_key(self, key: str) -> Deferred[App | None]:
                return pending

        h.factory.app_store = SlowStore()
        c = WSClient(h.factory, f"/app/{KEY}?protocol=7")
        c.send({"event": "pusher:ping"})
        self.assertEqual(c.frames, [])
        pending.callback(h.app)
        c.pump()
        self.assertEqual(
            [f["event"] for f in c.frames], ["pusher:connection_established", "pusher:pong"]
        )

    def test_lookup_failure(self) -> None:
        """
        An app store failure is logged and the client told to reconnect
        (4200), never left hanging.
        """
        h = Harness()

        class BrokenStore(MemoryAppStore):
            def find_by_key(self, key: str) -> Deferred[App | None]:
                raise RuntimeError("db down")

        h.factory.app_store = BrokenStore()
        c = h.connect()
        self.assertEqual(c.close_code, 4200)
        self.assertEqual(c.frames[0]["data"]["code"], 4200)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ChannelTests(SynchronousTestCase):
    """
    Subscriptions, broadcasts, presence, client events, cache channels.
    """

    def test_broadcast_and_unsubscribe(self) -> None:
        """
        Broadcasts reach subscribers except the excluded socket; after
        unsubscribe nothing more arrives.
        """
        h = Harness()
        a, b = h.connect(), h.connect()
        self.assertEqual(sub(a, "news")[0]["event"], "pusher_internal:subscription_succeeded")
        sub(b, "news")
        frame = b'{"event":"e","channel":"news","data":"{\\"x\\":1}"}'
        h.adapter.broadcast("1", "news", frame, b.socket_id)
        self.assertEqual(a.pump(), [json.loads(frame)])
        self.assertEqual(b.pump(), [])
        a.send({"event": "pusher:unsubscribe", "data": {"channel": "news"}})
        h.adapter.broadcast("1", "news", frame, None)
        self.assertEqual(a.pump(), [])
        self.assertEqual(b.pump(), [json.loads(frame)])

    def test_presence(self) -> None:
        """
        member_added and member_removed go to others, once per user;
        subscription_succeeded lists everyone including the joiner.
        """
        h = Harness()
        observer = Recorder()
        h.factory.observer = observer
        a, b1, b2 = h.connect(), h.connect(), h.connect()
        sub(a, "presence-room", '{"user_id":"a","user_info":{"n":"A"}}')
        sub(b1, "presence-room", '{"user_id":"b"}')
        [added] = a.pump()
        self.assertEqual(added["event"], "pusher_internal:member_added")
        self.assertEqual(json.loads(added["data"]), {"user_id": "b", "user_info": {}})
        [ok] = sub(b2, "presence-room", '{"user_id":"b"}')
        self.assertEqual(json.loads(ok["data"])["presence"]["count"], 2)
        self.assertEqual(a.pump(), [])
        self.assertEqual(b1.pump(), [])
        b1.disconnect()
        h.flush(a)
        self.assertEqual(a.frames[-1]["event"], "pusher_internal:member_added")
        b2.disconnect()
        h.flush(a)
        self.assertEqual(
            a.frames[-1],
            {
                "event": "pusher_internal:member_removed",
                "channel": "presence-room",
                "data": '{"user_id":"b"}',
            },
        )
        a.disconnect()
        h.flush()
        self.assertEqual(
            observer.calls,
            [
                ("occupied", "presence-room"),
                ("member_added", "presence-room", "a"),
                ("member_added", "presence-room", "b"),
                ("member_removed", "presence-room", "b"),
                ("member_removed", "presence-room", "a"),
                ("vacated", "presence-room"),
            ],
        )

    def test_presence_limit(self) -> None:
        """
        A full presence channel answers 4100 without closing.
        """
        h = Harness(max_presence_members_per_channel=1)
        a, b = h.connect(), h.connect()
        sub(a, "presence-x", '{"user_id":"1"}')
        [err] = sub(b, "presence-x", '{"user_id":"2"}')
        self.assertEqual(err["data"]["code"], 4100)
        self.assertIsNone(b.close_code)
        self.assertEqual(b.send({"event": "pusher:ping"})[0]["event"], "pusher:pong")

    def test_client_events(self) -> None:
        """
        Client events reach the others on the channel with user_id, not the
        sender; the observer hears about them.
        """
        h = Harness(enable_client_messages=True)
        observer = Recorder()
        h.factory.observer = observer
        a, b = h.connect(), h.connect()
        sub(a, "presence-c", '{"user_id":1}')
        sub(b, "presence-c", '{"user_id":2}')
        a.pump()
        self.assertEqual(b.send({"event": "client-t", "channel": "presence-c", "data": {}}), [])
        self.assertEqual(
            a.pump(),
            [{"event": "client-t", "channel": "presence-c", "data": "{}", "user_id": "2"}],
        )
        self.assertIn(("client_event", "presence-c", "client-t", "{}", "2"), observer.calls)

    def test_rate_limit(self) -> None:
        """
        Over max_client_events_per_second: 4301 and the connection stays.
        """
        h = Harness(enable_client_messages=True, max_client_events_per_second=2)
        a = h.connect()
        sub(a, "private-c")
        ev = {"event": "client-t", "channel": "private-c"}
        self.assertEqual(a.send(ev), [])
        self.assertEqual(a.send(ev), [])
        self.assertEqual(a.send(ev)[0]["data"]["code"], 4301)
        h.clock.advance(1)
        self.assertEqual(a.send(ev), [])
        self.assertIsNone(a.close_code)

    def test_cache_channels(self) -> None:
        """
        A cache channel subscriber gets pusher:cache_miss, or the last event,
        right after subscription_succeeded.
        """
        h = Harness()
        observer = Recorder()
        h.factory.observer = observer
        a = h.connect()
        ok, miss = sub(a, "cache-x")
        self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
        self.assertEqual(miss, {"event": "pusher:cache_miss", "channel": "cache-x", "data": "{}"})
        self.assertIn(("cache_miss", "cache-x"), observer.calls)
        stored = b'{"event":"e","channel":"private-cache-y","data":"1"}'
        h.cache.store("1", "private-cache-y", stored)
        ok, replay = sub(a, "private-cache-y")
        self.assertEqual(replay, json.loads(stored))
        h.clock.advance(h.cache.ttl + 1)
        b = h.connect()
        self.assertEqual(sub(b, "private-cache-y")[1]["event"], "pusher:cache_miss")

    def test_subscription_count(self) -> None:
        """
        With the feature on, subscribers get the new count (coalesced per
        turn); presence channels never do.
        """
        h = Harness(enable_subscription_count=True)
        a, b, c = h.connect(), h.connect(), h.connect()
        sub(a, "ch")
        sub(b, "ch")
        sub(c, "ch")
        h.flush(a, b, c)
        counts = [f for f in a.frames if f["event"] == "pusher_internal:subscription_count"]
        self.assertEqual(
            counts,
            [
                {
                    "event": "pusher_internal:subscription_count",
                    "channel": "ch",
                    "data": '{"subscription_count":3}',
                }
            ],
        )
        c.disconnect()
        h.flush(a, b)
        self.assertEqual(json.loads(b.frames[-1]["data"]), {"subscription_count": 2})
        sub(a, "presence-p", '{"user_id":"1"}')
        h.flush(a)
        self.assertNotIn(
            "pusher_internal:subscription_count",
            [f["event"] for f in a.frames if f.get("channel") == "presence-p"],
        )

    def test_subscription_count_off(self) -> None:
        """
        Off by default.
        """
        h = Harness()
        a = h.connect()
        sub(a, "ch")
        h.flush(a)
        self.assertEqual(a.events("pusher_internal:subscription_count"), [])


class UserTests(SynchronousTestCase):
    """
    Sign-in, server-to-user channels, termination, watchlists.
    """

    def test_server_to_user(self) -> None:
        """
        After sign-in the client joins its #server-to-user channel and gets
        events sent to it.
        """
        h = Harness()
        a = h.connect()
        [ok] = signin(a, '{"id":"42"}')
        self.assertEqual(json.loads(ok["data"]), {"user_data": '{"id":"42"}'})
        self.assertEqual(
            sub(a, "#server-to-user-42")[0]["event"], "pusher_internal:subscription_succeeded"
        )
        h.adapter.broadcast(
            "1",
            "#server-to-user-42",
            b'{"event":"hi","channel":"#server-to-user-42","data":"{}"}',
            None,
        )
        self.assertEqual(a.pump()[0]["event"], "hi")

    def test_bad_signin(self) -> None:
        """
        A bad sign-in signature closes 4009.
        """
        h = Harness()
        a = h.connect()
        a.send({"event": "pusher:signin", "data": {"auth": "x:y", "user_data": '{"id":"1"}'}})
        self.assertEqual(a.frames[-1]["data"]["code"], 4009)
        self.assertEqual(a.close_code, 4009)

    def test_terminate(self) -> None:
        """
        terminate_user_connections closes the user's sockets with 4009.
        """
        h = Harness()
        a, b = h.connect(), h.connect()
        signin(a, '{"id":"7"}')
        h.adapter.terminate_user_connections("1", "7")
        a.pump()
        self.assertEqual(a.close_code, 4009)
        self.assertIsNone(b.close_code)

    def test_watchlist(self) -> None:
        """
        Watchers get online/offline in pusher-js's format.
        """
        h = Harness(enable_watchlist_events=True)
        w, u = h.connect(), h.connect()
        frames = signin(w, '{"id":"w","watchlist":["u"]}')
        self.assertEqual(
            json.loads(frames[1]["data"]), {"events": [{"name": "offline", "user_ids": ["u"]}]}
        )
        signin(u, '{"id":"u"}')
        self.assertEqual(
            json.loads(w.pump()[0]["data"]), {"events": [{"name": "online", "user_ids": ["u"]}]}
        )
        u.disconnect()
        h.flush(w)
        self.assertEqual(
            json.loads(w.frames[-1]["data"]), {"events": [{"name": "offline", "user_ids": ["u"]}]}
        )

    def test_user_auth_timeout(self) -> None:
        """
        With user authentication on, an idle anonymous connection is closed
        4009 after user_authentication_timeout; a signed-in one is not.
        """
        h = Harness(enable_user_authentication=True)
        h.factory.user_authentication_timeout = 30
        a, b = h.connect(), h.connect()
        signin(b, '{"id":"1"}')
        h.clock.advance(30)
        a.pump()
        b.pump()
        self.assertEqual(a.close_code, 4009)
        self.assertEqual(
            a.frames[-1]["data"]["message"], "Connection not authorized within timeout."
        )
        self.assertIsNone(b.close_code)


class LivenessTests(SynchronousTestCase):
    """
    Lazy activity timers.
    """

    def test_ping_then_close(self) -> None:
        """
        Silence gets pusher:ping (and a control ping) after activity_timeout
        and a 4201 close 30 s later.
        """
        h = Harness()
        a = h.connect()
        h.clock.advance(119)
        self.assertEqual(a.pump(), [])
        h.clock.advance(1)
        self.assertEqual(a.pump(), [{"event": "pusher:ping", "data": "{}"}])
        self.assertIn(9, [op for op, _ in a.raw])
        h.clock.advance(30)
        a.pump()
        self.assertEqual(a.close_code, 4201)

    def test_pong_keeps_alive(self) -> None:
        """
        Answering the ping keeps the connection open.
        """
        h = Harness()
        a = h.connect()
        h.clock.advance(120)
        a.send({"event": "pusher:pong", "data": {}})
        h.clock.advance(30)
        a.pump()
        self.assertIsNone(a.close_code)

    def test_one_timer_for_all_connections(self) -> None:
        """
        Many connections share one reactor call for their deadlines; each
        still gets its activity ping on time, and once all are closed no
        call is left.
        """
        h = Harness()
        clients = [h.connect() for _ in range(20)]
        h.clock.advance(1)
        later = [h.connect() for _ in range(5)]
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.clock.advance(119)
        for c in clients:
            self.assertEqual([f["event"] for f in c.pump()], ["pusher:ping"])
        for c in later:
            self.assertEqual(c.pump(), [])
        h.clock.advance(1)
        for c in later:
            self.assertEqual([f["event"] for f in c.pump()], ["pusher:ping"])
        for c in clients + later:
            c.disconnect()
        h.flush()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_lazy_timer(self) -> None:
        """
        Messages do not create or reset timers: one pending call per
        connection however busy it is.
        """
        h = Harness()
        a = h.connect()
        before = len(h.clock.getDelayedCalls())
        for _ in range(50):
            a.send({"event": "pusher:ping"})
            h.clock.advance(1)
        self.assertEqual(len(h.clock.getDelayedCalls()), before)
        h.clock.advance(100)
        self.assertEqual(a.pump(), [])
        self.assertIsNone(a.close_code)


class BadInputTests(SynchronousTestCase):
    """
    Bad frames never break the connection.
    """

    def test_binary(self) -> None:
        """
        A binary frame gets a pusher:error; the connection stays.
        """
        h = Harness()
        a = h.connect()
        [err] = a.send_raw(client_frame(b"\x00\x01", opcode=2))
        self.assertEqual(err["event"], "pusher:error")
        self.assertIsNone(a.close_code)

    def test_oversized(self) -> None:
        """
        A message over websocket_max_payload_kb is closed with 1009.
        """
        h = Harness()
        a = h.connect()
        a.send_raw(client_frame(b"x" * (64 * 1024 + 1)))
        self.assertEqual(a.close_code, 1009)

    def test_garbage(self) -> None:
        """
        Assorted bad frames each get an error frame and nothing breaks.
        """
        h = Harness(enable_client_messages=True)
        a = h.connect()
        for text in (
            "nope",
            "[]",
            '{"event":1}',
            '{"event":"pusher:subscribe","data":3}',
            '{"event":"client-x","channel":[]}',
            '{"event":"pusher:signin","data":"x"}',
        ):
            [err] = a.send(text)
            self.assertEqual(err["event"], "pusher:error")
        self.assertIsNone(a.close_code)


class CapacityTests(SynchronousTestCase):
    """
    Back-pressure, shutdown and mass disconnects.
    """

    def test_slow_client(self) -> None:
        """
        A client whose transport paused us and that piles up more than
        max_buffer_bytes is closed with 4100; others are unaffected.
        """
        h = Harness()
        h.factory.max_buffer_bytes = 10_000
        slow, fast = h.connect(), h.connect()
        sub(slow, "ch")
        sub(fast, "ch")
        slow.transport.producer.pauseProducing()
        frame = b'{"event":"e","channel":"ch","data":"' + b"x" * 1000 + b'"}'
        for _ in range(12):
            h.adapter.broadcast("1", "ch", frame, None)
        slow.pump()
        fast.pump()
        self.assertEqual(slow.close_code, 4100)
        self.assertEqual(slow.close_reason, "Over capacity")
        self.assertEqual(len(fast.events("e")), 12)
        self.assertIsNone(fast.close_code)

    def test_resume(self) -> None:
        """
        Resuming resets the count, so a client that keeps up stays.
        """
        h = Harness()
        h.factory.max_buffer_bytes = 5_000
        a = h.connect()
        sub(a, "ch")
        producer = a.transport.producer
        frame = b'{"event":"e","channel":"ch","data":"' + b"x" * 1000 + b'"}'
        for _ in range(10):
            producer.pauseProducing()
            h.adapter.broadcast("1", "ch", frame, None)
            h.adapter.broadcast("1", "ch", frame, None)
            producer.resumeProducing()
        a.pump()
        self.assertIsNone(a.close_code)
        self.assertEqual(len(a.events("e")), 20)

    def test_close_connections(self) -> None:
        """
        Shutdown closes every client with 4200 and fires once they are gone.
        """
        h = Harness()
        clients = [h.connect() for _ in range(3)]
        d = h.factory.close_connections(4200, "Server shutting down")
        for c in clients:
            c.pump()
            self.assertEqual(c.frames[-1]["data"]["code"], 4200)
            self.assertEqual(c.close_code, 4200)
        self.assertNoResult(d)
        for c in clients:
            c.disconnect()
        h.flush()
        self.successResultOf(d)
        self.successResultOf(h.factory.close_connections(4200, "again"))

    def test_mass_disconnect_chunked(self) -> None:
        """
        Cleanup of many dropped sockets runs CLEANUP_CHUNK per reactor turn
        and finishes with an empty index.
        """
        h = Harness()
        n = CLEANUP_CHUNK * 2 + 10
        clients = [h.connect() for _ in range(n)]
        for c in clients:
            sub(c, "big")
        for c in clients:
            c.disconnect()
        self.assertEqual(len(h.adapter.registry.subscribers("1", "big")), n)
        remaining = []
        for _ in range(3):
            # One reactor turn: only the calls due before it started.
            due = [c for c in h.clock.getDelayedCalls() if c.getTime() <= h.clock.seconds()]
            for call in due:
                h.clock.calls.remove(call)
                call.func(*call.args, **call.kw)
            remaining.append(len(h.adapter.registry.subscribers("1", "big")))
        self.assertEqual(remaining, [n - CLEANUP_CHUNK, n - 2 * CLEANUP_CHUNK, 0])
        self.assertEqual(h.adapter.registry.socket_count("1"), 0)
        self.assertEqual(h.factory.protocols, set())


class FactoryTests(SynchronousTestCase):
    """
    Construction.
    """

    def test_options(self) -> None:
        """
        The factory sets the payload limit, no web status page, no auto ping,
        and serves a WebSocketResource.
        """
        h = Harness()
        f: PusherFactory = h.factory
        self.assertEqual(f.maxMessagePayloadSize, 64 * 1024)
        self.assertFalse(f.webStatus)
        self.assertEqual(f.autoPingInterval, 0)
        self.assertIs(f.websocket_resource()._factory, f)

    def test_interfaces(self) -> None:
        """
        Protocols are the adapter's L{ILocalSocket}s; the default observer
        provides L{IPusherEvents}.
        """
        h = Harness()
        c = h.connect()
        self.assertTrue(verifyObject(ILocalSocket, c.protocol))
        self.assertTrue(verifyObject(IPusherEvents, NoPusherEvents()))
        self.assertTrue(verifyObject(IPusherEvents, h.factory.observer))
