# -*- test-case-name: tests.test_triggerchannel -*-
"""
Tests for L{sockudo_tw.triggerchannel}: the lean HTTP/1.1 path for
C{POST /apps/{id}/events} answers as twisted.web does, and hands every other
request to twisted.web.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlencode

from hypothesis import example, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface import implementer_only

from sockudo_tw.api import PusherApi
from sockudo_tw.appstores import IAppStore, MemoryAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.config import HttpLimits, parse_config
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.signing import sign_api_query
from sockudo_tw.service import make_service
from sockudo_tw.triggerchannel import (
    MAX_BODY,
    MAX_HEAD,
    Served,
    TriggerChannel,
    TriggerChannelFactory,
    frame_answer,
)
from sockudo_tw.web import RootResource, make_site
from tests.fakes import RecordingAdapter
from tests.test_metrics import Scrape

NOW = 1353088179
KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
ADDRESS = IPv4Address("TCP", "127.0.0.1", 50000)


def signed_trigger(
    body: bytes,
    app_id: str = "3",
    key: str = KEY,
    secret: str = SECRET,
    headers: tuple[bytes, ...] = (),
    timestamp: int = NOW,
) -> bytes:
    """
    A complete, signed C{POST /apps/{app_id}/events} request.
    """
    path = f"/apps/{app_id}/events"
    query = urlencode(sign_api_query(key, secret, "POST", path, [], body, timestamp))
    head = [
        f"POST {path}?{query} HTTP/1.1".encode(),
        b"Host: 127.0.0.1:6001",
        b"Content-Type: application/json",
        b"Content-Length: %d" % (len(body),),
        *headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def event(channel: str = "my-channel", name: str = "my-event", data: str = "hi") -> bytes:
    """
    A trigger body.
    """
    return json.dumps({"name": name, "channel": channel, "data": data}).encode()


def responses(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """
    Split C{data} into HTTP/1.1 responses (status, lower-cased headers,
    body), de-chunking chunked bodies.
    """
    found = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        code = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            body, data = data[:length], data[length:]
        else:
            assert headers.get(b"transfer-encoding") == b"chunked", headers
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2 :]
                if size == 0:
                    break
        found.append((code, headers, body))
    return found


@implementer_only(IAppStore)
class SlowAppStore(MemoryAppStore):
    """
    A memory store whose lookups wait until the test releases them.
    """

    def __init__(self, apps: list[App]) -> None:
        super().__init__(apps)
        self.waiting: list[Deferred[None]] = []

    def find_by_id(self, app_id: str) -> Deferred[App | None]:
        gate: Deferred[None] = Deferred()
        self.waiting.append(gate)
        found = super().find_by_id
        return gate.addCallback(lambda _: found(app_id))

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for gate in waiting:
            gate.callback(None)


class ChannelMixin:
    """
    A L{TriggerChannelFactory} in front of a C{Site} with the API at
    C{/apps} and a static C{/up}, on a clock at the example timestamp.
    """

    def make(
        self,
        apps: MemoryAppStore | None = None,
        limits: HttpLimits | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.clock.advance(NOW)
        self.apps = apps or MemoryAppStore(
            [
                App(id="3", key=KEY, secret=SECRET),
                App(id="5", key="key5", secret="secret5", enabled=False),
            ]
        )
        self.adapter = RecordingAdapter()
        self.api = PusherApi(
            clock=self.clock,
            app_store=self.apps,
            adapter=self.adapter,
            cache=MemoryChannelCache(self.clock),
        )
        self.site = make_site(
            RootResource(Resource(), self.api.resource(), Data(b"OK", "text/plain")),
            limits=limits,
            clock=self.clock,
        )
        self.recorded: list[tuple[Served, float, int]] = []
        self.factory = TriggerChannelFactory(
            self.site,
            self.api.serve,
            self.clock,
            lambda *call: self.recorded.append(call),
        )

    def connect(self) -> tuple[TriggerChannel, StringTransport]:
        """
        A channel connected to a fresh transport.
        """
        channel = self.factory.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=ADDRESS)
        transport.protocol = channel  # type: ignore[attr-defined]
        channel.makeConnection(transport)
        return channel, transport

    def through_site(self, request: bytes) -> bytes:
        """
        What twisted.web alone answers to C{request}.
        """
        channel = self.site.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=ADDRESS)
        channel.makeConnection(transport)
        channel.dataReceived(request)
        # The Site's channels time out on the global reactor: end this one,
        # or its timer outlives the test.
        channel.connectionLost(Failure(ConnectionDone()))
        return transport.value()


def answers(data: bytes) -> list[tuple[int, bytes]]:
    """
    The status and body of each response in C{data}; twisted.web's bare
    C{400} (no length, connection closed) as it is.
    """
    if data.endswith(b"400 Bad Request\r\n\r\n"):
        return [*answers(data[: data.rindex(b"HTTP/1.1 400")]), (400, b"")]
    return [(code, body) for code, _, body in responses(data)]


class FrontTests(ChannelMixin, SynchronousTestCase):
    """
    What the fast front serves itself, what it hands to twisted.web, and
    that the answers are twisted.web's either way.
    """

    def setUp(self) -> None:
        self.make()

    def handed_over(self, request: bytes) -> bool:
        """
        Whether the front gave the connection to twisted.web for C{request}.
        """
        channel, transport = self.connect()
        channel.dataReceived(request)
        protocol = transport.protocol  # type: ignore[attr-defined]
        handed = not isinstance(protocol, TriggerChannel)
        protocol.connectionLost(Failure(ConnectionDone()))
        return handed

    def test_served(self) -> None:
        """
        A plain trigger, with odd but valid header spacing and case, is
        served by the front.
        """
        request = signed_trigger(
            event(), headers=(b"X-Thing:  spaced  ", b"CONNECTION: keep-alive")
        )
        self.assertFalse(self.handed_over(request))
        self.assertEqual(len(self.adapter.broadcasts), 1)

    def test_declined(self) -> None:
        """
        Anything but a plain HTTP/1.1 trigger with a Content-Length body is
        left to twisted.web, which gives the same answer it gives alone.
        """
        good = signed_trigger(event())
        declined = {
            "GET": good.replace(b"POST", b"GET", 1),
            "HTTP/1.0": good.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
            "other route": good.replace(b"/events", b"/batch_events", 1),
            "deeper path": good.replace(b"/apps/3/", b"/apps/3/x/", 1),
            "not UTF-8 id": good.replace(b"/apps/3/", b"/apps/\xff/", 1),
            "chunked": good.replace(b"Host:", b"Transfer-Encoding: chunked\r\nHost:", 1),
            "expect": good.replace(b"Host:", b"Expect: 100-continue\r\nHost:", 1),
            "upgrade": good.replace(b"Host:", b"Upgrade: websocket\r\nHost:", 1),
            "no length": good.replace(b"Content-Length: ", b"X-Length: ", 1),
            "two lengths": good.replace(b"Host:", b"Content-Length: 2\r\nHost:", 1),
            "signed length": good.replace(b"Content-Length: ", b"Content-Length: +", 1),
            "space before colon": good.replace(b"Host:", b"Host :", 1),
            "folded header": good.replace(b"Host: 127", b"Host:\r\n 127", 1),
            "extra space in line": good.replace(b" HTTP/1.1", b"  HTTP/1.1", 1),
            "WebSocket": b"GET /app/key?protocol=7 HTTP/1.1\r\n",
            "health": b"GET /up HTTP/1.1\r\n\r\n",
        }
        for why, request in declined.items():
            self.assertTrue(self.handed_over(request), why)

    def test_same_answer_when_served(self) -> None:
        """
        Odd paths the front serves itself get twisted.web's answers.
        """
        good = signed_trigger(event())
        for request in (
            good.replace(b"/apps/3/", b"/apps//", 1),
            good.replace(b"/apps/3/", b"/apps/%33/", 1),
            good.replace(b"/apps/3/", b"/apps/a%2Fb/", 1),
        ):
            channel, transport = self.connect()
            channel.dataReceived(request)
            self.assertEqual(answers(transport.value()), answers(self.through_site(request)))

    def test_limits(self) -> None:
        """
        A body over L{MAX_BODY} is handed over once its head is read, a head
        over L{MAX_HEAD} before it ends.
        """
        big = signed_trigger(b"x" * (MAX_BODY + 1))
        self.assertTrue(self.handed_over(big[: big.index(b"\r\n\r\n") + 4]))
        self.assertFalse(self.handed_over(signed_trigger(b"x" * MAX_BODY)))
        long_head = b"POST /apps/3/events HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD
        self.assertTrue(self.handed_over(long_head))

    @settings(max_examples=200, deadline=None)
    @given(
        headers=st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        b"Host",
                        b"content-length",
                        b"Content-Length",
                        b"Connection",
                        b"X-A",
                        b"Transfer-Encoding",
                        b"Content-Type",
                        b" Host",
                        b"Host ",
                        b"",
                    ]
                ),
                st.sampled_from([b"", b" ", b"\t"]),
                st.sampled_from([b"2", b"3", b"close", b"keep-alive", b"chunked", b"x y", b"02"]),
                st.sampled_from([b"", b" ", b"\t"]),
            ),
            max_size=6,
        ),
        body=st.sampled_from([b"{}", b'{"a":1}', b""]),
    )
    @example(
        headers=[(b"Host", b" ", b"x y", b""), (b"Content-Length", b"\t", b"02", b" ")],
        body=b"{}",
    ).via("served by the front: keeps the comparison honest")
    def test_agrees_with_twisted_web(
        self, headers: list[tuple[bytes, bytes, bytes, bytes]], body: bytes
    ) -> None:
        """
        Whatever the request's header fields, the front and twisted.web
        give the same answers.
        """
        self.make()
        path = "/apps/3/events"
        query = urlencode(sign_api_query(KEY, SECRET, "POST", path, [], body, NOW))
        lines = [f"POST {path}?{query} HTTP/1.1".encode()]
        lines += [name + b":" + before + value + after for name, before, value, after in headers]
        request = b"\r\n".join(lines) + b"\r\n\r\n" + body
        channel, transport = self.connect()
        channel.dataReceived(request)
        fast = answers(transport.value())
        protocol = transport.protocol  # type: ignore[attr-defined]
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(fast, answers(self.through_site(request)))


class TriggerChannelTests(ChannelMixin, SynchronousTestCase):
    """
    L{TriggerChannel} serves triggers as the API does under twisted.web.
    """

    def setUp(self) -> None:
        self.make()

    def test_trigger(self) -> None:
        """
        A signed trigger is published and answered C{200 {}} with a length,
        a date and the JSON content type; the connection stays open.
        """
        channel, transport = self.connect()
        channel.dataReceived(signed_trigger(event()))
        ((code, headers, body),) = responses(transport.value())
        self.assertEqual((code, body), (200, b"{}"))
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"content-length"], b"2")
        self.assertEqual(headers[b"date"], b"Fri, 16 Nov 2012 17:49:39 GMT")
        self.assertNotIn(b"connection", headers)
        self.assertFalse(transport.disconnecting)
        (broadcast,) = self.adapter.broadcasts
        self.assertEqual((broadcast.app_id, broadcast.channel), ("3", "my-channel"))
        self.assertIsInstance(transport.protocol, TriggerChannel)  # type: ignore[attr-defined]

    def test_answers_match_twisted_web(self) -> None:
        """
        Status and body are those twisted.web's route gives, for successes
        and for every kind of refusal.
        """
        cases = [
            signed_trigger(event()),
            signed_trigger(event(), app_id="9", key="k9", secret="s9"),
            signed_trigger(event(), secret="wrong"),
            signed_trigger(event(), timestamp=NOW - 3600),
            signed_trigger(b"not json"),
            signed_trigger(b"[]"),
            signed_trigger(event(name="pusher:x")),
            signed_trigger(event(channel="bad channel")),
            signed_trigger(event(data="x" * 20000)),
            signed_trigger(event(), app_id="5", key="key5", secret="secret5"),
            signed_trigger(
                json.dumps(
                    {"name": "e", "channel": "c", "data": "d", "info": "subscription_count"}
                ).encode()
            ),
        ]
        for request in cases:
            channel, transport = self.connect()
            channel.dataReceived(request)
            ((code, headers, body),) = responses(transport.value())
            ((site_code, site_headers, site_body),) = responses(self.through_site(request))
            self.assertEqual((code, json.loads(body)), (site_code, json.loads(site_body)))
            self.assertEqual(headers[b"content-type"], site_headers[b"content-type"])

    def test_pipelined_and_split(self) -> None:
        """
        Requests arriving together are answered in order; a request
        arriving a byte at a time is answered once whole.
        """
        channel, transport = self.connect()
        first = signed_trigger(event(channel="a"))
        second = signed_trigger(event(channel="b"), secret="wrong")
        channel.dataReceived(first + second)
        self.assertEqual([r[0] for r in responses(transport.value())], [200, 401])
        transport.clear()
        third = signed_trigger(event(channel="c"))
        for i in range(len(third)):
            channel.dataReceived(third[i : i + 1])
        self.assertEqual([r[0] for r in responses(transport.value())], [200])
        self.assertEqual([b.channel for b in self.adapter.broadcasts], ["a", "c"])

    def test_connection_close(self) -> None:
        """
        A request asking to close is answered with C{Connection: close} and
        the connection closed; nothing after it is served.
        """
        channel, transport = self.connect()
        request = signed_trigger(event(), headers=(b"Connection: close",))
        channel.dataReceived(request + signed_trigger(event(channel="late")))
        ((code, headers, _),) = responses(transport.value())
        self.assertEqual((code, headers[b"connection"]), (200, b"close"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.adapter.broadcasts), 1)

    def test_hand_over(self) -> None:
        """
        The first other request hands the connection to twisted.web, which
        answers it and everything after it, triggers included.
        """
        channel, transport = self.connect()
        channel.dataReceived(signed_trigger(event(channel="a")))
        channel.dataReceived(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n" + signed_trigger(event()))
        site_channel = transport.protocol  # type: ignore[attr-defined]
        self.assertNotIsInstance(site_channel, TriggerChannel)
        found = responses(transport.value())
        self.assertEqual(
            [(code, body) for code, _, body in found][:2], [(200, b"{}"), (200, b"OK")]
        )
        self.assertEqual(found[2][:1], (200,))
        self.assertEqual(len(self.adapter.broadcasts), 2)
        site_channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        site_channel.connectionLost(Failure(ConnectionDone()))

    def test_metrics_recorded(self) -> None:
        """
        Every served trigger is counted with its body size and time.
        """
        channel, _ = self.connect()
        body = event()
        channel.dataReceived(signed_trigger(body))
        ((request, started, received),) = self.recorded
        self.assertEqual((started, received, request.sentLength), (NOW, len(body), 2))
        self.assertEqual(request.path, b"/apps/3/events")

    def test_idle_timeout(self) -> None:
        """
        A connection idle for the whole timeout after its last answer is
        closed without a word; requests do not re-arm the timer, which only
        looks again when it fires.
        """
        self.make(limits=HttpLimits(idle_timeout_seconds=60))
        channel, transport = self.connect()
        self.clock.advance(5)
        channel.dataReceived(signed_trigger(event(), timestamp=NOW + 5))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        transport.clear()
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_default_limits_are_the_sites(self) -> None:
        """
        The channel applies the C{Site}'s limits, and the C{Site}'s idle
        timeout is C{idle_timeout_seconds}, not twisted.web's 12 hours.
        """
        self.assertIs(self.factory.limits, self.site.limits)
        self.assertEqual(self.site.timeOut, 60)

    def test_date_cached_per_second(self) -> None:
        """
        The C{Date} value follows the clock.
        """
        first = self.factory.date()
        self.assertIs(self.factory.date(), first)
        self.clock.advance(1)
        self.assertEqual(self.factory.date(), b"Fri, 16 Nov 2012 17:49:40 GMT")


class SlowStoreTests(ChannelMixin, SynchronousTestCase):
    """
    With an app store that answers later, the channel reads nothing more
    until the answer is written, so answers keep the order of requests.
    """

    def setUp(self) -> None:
        self.store = SlowAppStore([App(id="3", key=KEY, secret=SECRET)])
        self.make(self.store)

    def test_waits_in_order(self) -> None:
        """
        The second request waits, unread, until the first is answered.
        """
        channel, transport = self.connect()
        channel.dataReceived(
            signed_trigger(event(channel="a")) + signed_trigger(event(channel="b"))
        )
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        self.store.release()
        self.assertEqual(len(responses(transport.value())), 1)
        self.store.release()
        self.assertEqual([r[0] for r in responses(transport.value())], [200, 200])
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([b.channel for b in self.adapter.broadcasts], ["a", "b"])

    def test_client_gone(self) -> None:
        """
        A client that goes while its request waits gets nothing written and
        nothing published; the lookup is cancelled as under twisted.web.
        """
        channel, transport = self.connect()
        channel.dataReceived(signed_trigger(event()))
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.adapter.broadcasts, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.recorded), 1)


class _CountingSocket(socket.socket):
    """
    A real socket that records each C{send()}.
    """

    sends: list[bytes]

    def send(self, data: Any, flags: int = 0) -> int:
        """
        Record C{data}, then send it.
        """
        self.sends.append(bytes(data))
        return super().send(data, flags)


class _Connection(tcp.Connection):
    """
    Twisted's TCP connection class over a socketpair end, with addresses.
    """

    def getPeer(self) -> IPv4Address:  # noqa: N802 (Twisted's name)
        return ADDRESS

    def getHost(self) -> IPv4Address:  # noqa: N802 (Twisted's name)
        return IPv4Address("TCP", "127.0.0.1", 6001)

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 (Twisted's name)
        """
        A UNIX socketpair has no Nagle algorithm to turn off.
        """


class CorkTests(ChannelMixin, SynchronousTestCase):
    """
    Answers on a plain TCP socket wait for the end of the reactor turn and
    leave with one C{send()} per connection, in the order of requests and
    before anything else written or a close. Each test runs a real Twisted
    L{tcp.Connection} over one end of a real C{socketpair}, with a
    L{MemoryReactorClock} standing in for the reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.make(clock=self.reactor)  # at NOW

    def open(self) -> tuple[TriggerChannel, _Connection, socket.socket]:
        """
        A channel on a real connection; the peer's end of the socketpair.
        """
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)
        sock = _CountingSocket(ours.family, ours.type, fileno=ours.detach())
        sock.sends = []
        self.addCleanup(sock.close)
        peer.setblocking(False)
        channel = self.factory.buildProtocol(ADDRESS)
        connection = _Connection(sock, channel, self.reactor)
        connection.sends = sock.sends  # type: ignore[attr-defined]
        connection.connected = 1
        channel.makeConnection(connection)
        return channel, connection, peer

    def pending(self) -> list[Any]:
        """
        What the reactor's pending calls would call.
        """
        return [call.func for call in self.reactor.getDelayedCalls()]

    def received(self, peer: socket.socket) -> bytes:
        """
        Everything the peer can read now.
        """
        data = b""
        while True:
            try:
                chunk = peer.recv(65536)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def test_corked_until_turn_end(self) -> None:
        """
        Answers to two connections are sent only at the end of the turn,
        one C{send()} each, and nothing is registered for writing.
        """
        a, a_connection, a_peer = self.open()
        b, b_connection, b_peer = self.open()
        a.dataReceived(signed_trigger(event()))
        b.dataReceived(signed_trigger(event(channel="other")))
        self.assertEqual(len(self.adapter.broadcasts), 2)
        self.assertEqual((self.received(a_peer), self.received(b_peer)), (b"", b""))
        self.reactor.advance(0)
        for connection, peer in ((a_connection, a_peer), (b_connection, b_peer)):
            self.assertEqual(answers(self.received(peer)), [(200, b"{}")])
            self.assertEqual(len(connection.sends), 1)  # type: ignore[attr-defined]
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertNotIn(self.factory._flush_turn, self.pending())

    def test_pipelined_one_send(self) -> None:
        """
        Requests arriving together are answered with one C{send()}, in order.
        """
        channel, connection, peer = self.open()
        channel.dataReceived(signed_trigger(event()) + signed_trigger(b"not json"))
        self.reactor.advance(0)
        self.assertEqual([code for code, _ in answers(self.received(peer))], [200, 400])
        self.assertEqual(len(connection.sends), 1)  # type: ignore[attr-defined]

    def test_close_after_corked(self) -> None:
        """
        An answer that closes the connection goes out after those corked
        before it, and the connection closes after all of them.
        """
        channel, connection, peer = self.open()
        channel.dataReceived(
            signed_trigger(event())
            + signed_trigger(event(channel="last"), headers=(b"Connection: close",))
        )
        self.assertEqual([code for code, _ in answers(self.received(peer))], [200, 200])
        self.assertTrue(connection.disconnecting)
        self.reactor.advance(0)
        self.assertEqual(self.received(peer), b"")

    def test_hand_over_after_corked(self) -> None:
        """
        A request twisted.web serves, after a trigger in the same read, is
        answered after the trigger's corked answer.
        """
        channel, connection, peer = self.open()
        channel.dataReceived(signed_trigger(event()) + b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n")
        self.reactor.advance(0)
        found = self.received(peer)
        if not found.endswith(b"OK"):
            # twisted.web wrote through the transport: the reactor's turn.
            connection.doWrite()
            found += self.received(peer)
        self.assertEqual(answers(found), [(200, b"{}"), (200, b"OK")])
        connection.connectionLost(Failure(ConnectionDone()))

    def test_lost_before_turn_end(self) -> None:
        """
        A connection lost with answers corked drops them quietly.
        """
        channel, connection, _peer = self.open()
        channel.dataReceived(signed_trigger(event()))
        connection.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(0)
        self.assertEqual(connection.sends, [])  # type: ignore[attr-defined]

    def test_stop_writes_corked(self) -> None:
        """
        Stopping the factory writes what is corked and leaves no call behind.
        """
        self.factory.doStart()
        channel, _connection, peer = self.open()
        channel.dataReceived(signed_trigger(event()))
        self.factory.doStop()
        self.assertEqual(answers(self.received(peer)), [(200, b"{}")])
        self.assertNotIn(self.factory._flush_turn, self.pending())

    def test_canned_answer(self) -> None:
        """
        The prepared answer to a plain success is byte for byte what the
        general framing gives for it.
        """
        self.assertEqual(
            self.factory.ok_answer(NOW + 0.5),
            frame_answer(200, [(b"Content-Type", b"application/json")], b"{}", self.factory.date()),
        )
        self.reactor.advance(1)
        self.assertIn(b"Date: Fri, 16 Nov 2012 17:49:40 GMT\r\n", self.factory.ok_answer(NOW + 1))


class TwistedInternalsTests(SynchronousTestCase):
    """
    L{sockudo_tw.directwrite.write_now} reads Twisted's write buffers;
    an upgrade that renames them must be noticed here.
    """

    def test_file_descriptor_buffers(self) -> None:
        """
        C{FileDescriptor} keeps C{dataBuffer} and C{_tempDataBuffer}, empty
        until written to.
        """
        descriptor = FileDescriptor()
        self.assertEqual(descriptor.dataBuffer, b"")
        self.assertEqual(descriptor._tempDataBuffer, [])


class ServiceWiringTests(SynchronousTestCase):
    """
    L{sockudo_tw.service.make_service} puts the trigger channel in front of
    the Site only where it answers exactly as the Site would.
    """

    def listening(self, config: dict[str, Any]) -> tuple[Any, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        make_service(parse_config(config, {}), reactor).startService()
        return reactor.tcpServers[0][1], reactor

    def test_default(self) -> None:
        """
        By default the main listener serves triggers itself and counts them
        in the API metrics as the Site does.
        """
        app = {"id": "app-id", "key": "app-key", "secret": "app-secret"}
        factory, reactor = self.listening(
            {"metrics": {"port": 9615}, "app_manager": {"array": {"apps": [app]}}}
        )
        self.assertIsInstance(factory, TriggerChannelFactory)
        channel = factory.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=ADDRESS)
        channel.makeConnection(transport)
        channel.dataReceived(
            signed_trigger(event(), "app-id", "app-key", "app-secret", timestamp=0)
        )
        self.assertEqual(responses(transport.value())[0][0], 200)
        metrics = StubTreq(next(s[1] for s in reactor.tcpServers if s[0] == 9615).resource)
        response = self.successResultOf(metrics.get("http://m/metrics"))
        scrape = Scrape.parse(self.successResultOf(metrics.content(response)))
        self.assertEqual(scrape.value("sockudo_http_calls_received_total", app_id="app-id"), 1)
        self.assertEqual(scrape.value("sockudo_http_transmitted_bytes", app_id="app-id"), 2)

    def test_site_alone(self) -> None:
        """
        With the per-IP API limiter, or with debug's access log, every
        request goes through the Site.
        """
        limited, _ = self.listening({"rate_limiter": {"enabled": True}})
        debug, _ = self.listening({"debug": True})
        self.assertIsInstance(limited, Site)
        self.assertIsInstance(debug, Site)
