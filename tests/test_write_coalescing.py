"""
Tests for the corked writes of L{sockudo_tw.websocket}: frames for an idle
TCP connection wait for the end of the reactor turn and leave in one
C{send()} on its socket, without registering the socket for writing.

Most tests run a real Twisted L{tcp.Connection} over one end of a real
C{socketpair} with a L{MemoryReactorClock} (so writes Twisted buffers are
visible and the test plays the reactor's writable events); the last runs
over real loopback TCP with the global reactor.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.directwrite import idle_socket
from sockudo_tw.pusher.app import App
from sockudo_tw.websocket import PusherFactory, PusherProtocol
from tests.wsclient import KEY, SECRET, Harness, WSClient, client_frame, serve_and_connect

_HANDSHAKE = (
    f"GET /app/{KEY}?protocol=7 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
).encode()
"""
The opening handshake the raw loopback client sends.
"""


class _CountingSocket(socket.socket):
    """
    A real socket that records each C{send()} and can be told to take only
    part of the data or to fail.
    """

    sends: list[bytes]
    limit: int | None
    error: OSError | None

    def send(self, data: Any, flags: int = 0) -> int:
        """
        Record C{data}, then send at most C{limit} bytes, or raise C{error}.
        """
        self.sends.append(bytes(data))
        if self.error is not None:
            raise self.error
        if self.limit is not None:
            data = bytes(data)[: self.limit]
        return super().send(data, flags)


class _Connection(tcp.Connection):
    """
    Twisted's TCP connection class over a socketpair end, with addresses.
    """

    def getPeer(self) -> IPv4Address:  # noqa: N802 (Twisted's name)
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:  # noqa: N802 (Twisted's name)
        return IPv4Address("TCP", "127.0.0.1", 6001)


class _Wire:
    """
    The client's view of one connection: plays the reactor's writable
    events for the server's transport and reads the peer end of the pair.
    """

    def __init__(self, connection: _Connection, reactor: MemoryReactorClock, peer: Any) -> None:
        self.connection = connection
        self.reactor = reactor
        self.peer = peer

    def value(self) -> bytes:
        """
        Everything the server has written so far, by either path.
        """
        received = b""
        while True:
            if self.connection in self.reactor.getWriters():
                outcome = self.connection.doWrite()
                if outcome is not None:
                    self.connection.connectionLost(Failure(outcome))
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                chunk = b""
            if not chunk:
                return received
            received += chunk

    def clear(self) -> None:
        """
        L{value} already consumed the bytes.
        """


class _SocketClient(WSClient):
    """
    L{WSClient} over a real socketpair and L{tcp.Connection}.
    """

    def __init__(self, factory: PusherFactory, reactor: MemoryReactorClock) -> None:
        ours, peer = socket.socketpair()
        sock = _CountingSocket(ours.family, ours.type, fileno=ours.detach())
        sock.sends, sock.limit, sock.error = [], None, None
        sock.setblocking(False)
        peer.setblocking(False)
        self.sock = sock
        self.peer = peer
        self._reactor = reactor
        super().__init__(factory, f"/app/{KEY}?protocol=7")

    def make_transport(self, protocol: PusherProtocol) -> tuple[Any, Any]:
        """
        A real L{tcp.Connection} on our end of the socketpair for the
        server; L{pump} reads the peer end.
        """
        self.connection = _Connection(self.sock, protocol, self._reactor)
        self.connection.connected = 1
        self.wire = _Wire(self.connection, self._reactor, self.peer)
        return self.connection, self.wire

    def close_sockets(self) -> None:
        """
        Close both ends.
        """
        self.sock.close()
        self.peer.close()


class CorkTests(SynchronousTestCase):
    """
    Frames for one connection in one reactor turn leave in one C{send()}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.adapter = LocalAdapter()
        self.factory = PusherFactory(
            reactor=self.reactor,
            app_store=MemoryAppStore([App(id="1", key=KEY, secret=SECRET)]),
            adapter=self.adapter,
            cache=MemoryChannelCache(self.reactor),
        )

    def connect(self) -> _SocketClient:
        """
        An accepted connection subscribed to C{ch}, with nothing pending.
        """
        client = _SocketClient(self.factory, self.reactor)
        self.addCleanup(client.close_sockets)
        self.reactor.advance(0)
        client.pump()
        self.assertEqual(client.frames[0]["event"], "pusher:connection_established")
        client.send({"event": "pusher:subscribe", "data": {"channel": "ch"}})
        self.reactor.advance(0)
        client.pump()
        self.assertEqual(client.frames[-1]["event"], "pusher_internal:subscription_succeeded")
        client.sock.sends.clear()
        return client

    def broadcast(self, name: str, size: int = 10) -> None:
        """
        Broadcast event C{name} on C{ch} with C{size} bytes of data.
        """
        frame = json.dumps({"event": name, "channel": "ch", "data": "x" * size}).encode()
        self.adapter.broadcast("1", "ch", frame, None)

    def names(self, client: WSClient) -> list[str]:
        """
        The names of the events C{client} got after subscribing.
        """
        return [f["event"] for f in client.frames[2:]]

    def test_one_send_per_turn(self) -> None:
        """
        Three broadcasts and a per-socket frame in one turn reach each client
        in order with one C{send()} at the end of the turn; the socket is
        never registered for writing.
        """
        a, b = self.connect(), self.connect()
        self.broadcast("e1")
        self.broadcast("e2")
        a.protocol.send_frame(b'{"event":"mine","data":"{}"}')
        self.broadcast("e3")
        self.assertEqual((a.sock.sends, b.sock.sends), ([], []))
        self.assertEqual(a.pump(), [])
        self.reactor.advance(0)
        self.assertEqual(len(a.sock.sends), 1)
        self.assertEqual(len(b.sock.sends), 1)
        self.assertNotIn(a.connection, self.reactor.getWriters())
        self.assertEqual(self.factory._corked, {})
        a.pump()
        b.pump()
        self.assertEqual(self.names(a), ["e1", "e2", "mine", "e3"])
        self.assertEqual(self.names(b), ["e1", "e2", "e3"])

    def test_control_frames_keep_order(self) -> None:
        """
        A ping or close written between broadcasts (through Autobahn's
        C{sendData}) goes out after the frames corked before it.
        """
        a = self.connect()
        self.broadcast("e1")
        a.protocol.sendPing(b"p")
        self.broadcast("e2")
        self.reactor.advance(0)
        a.pump()
        self.broadcast("e3")
        a.protocol.close(4009, "Bye")
        self.broadcast("after-close")
        self.reactor.advance(0)
        a.pump()
        self.assertEqual(
            [op for op, _ in a.raw[2:]],
            [1, 9, 1, 1, 1, 8],
        )
        self.assertEqual(self.names(a), ["e1", "e2", "e3", "pusher:error"])
        self.assertEqual(a.close_code, 4009)

    def test_partial_send(self) -> None:
        """
        What the socket does not take goes to Twisted's buffer and arrives
        after the part sent; while Twisted holds bytes, frames are not corked.
        """
        a = self.connect()
        a.sock.limit = 7
        self.broadcast("e1", 100)
        self.broadcast("e2", 100)
        self.reactor.advance(0)
        self.assertEqual(len(a.sock.sends), 1)
        self.assertTrue(a.connection._tempDataBuffer)
        self.assertIn(a.connection, self.reactor.getWriters())
        self.broadcast("e3", 100)
        self.assertEqual(self.factory._corked, {})
        a.sock.limit = None
        a.pump()
        self.assertEqual(self.names(a), ["e1", "e2", "e3"])
        self.assertNotIn(a.connection, self.reactor.getWriters())

    def test_corks_again_once_drained(self) -> None:
        """
        After Twisted held bytes (a partial send, an Autobahn ping), the next
        frame does not skip them; once they are written, frames are corked
        into one C{send()} a turn again.
        """
        a = self.connect()
        a.sock.limit = 7
        self.broadcast("e1", 100)
        self.reactor.advance(0)
        a.sock.limit = None
        a.protocol.sendPing(b"p")
        self.broadcast("e2")
        self.assertEqual(self.factory._corked, {})
        a.pump()
        a.sock.sends.clear()
        self.broadcast("e3")
        self.broadcast("e4")
        self.assertEqual(a.sock.sends, [])
        self.reactor.advance(0)
        self.assertEqual(len(a.sock.sends), 1)
        a.pump()
        self.assertEqual([op for op, _ in a.raw[2:]], [1, 9, 1, 1, 1])
        self.assertEqual(self.names(a), ["e1", "e2", "e3", "e4"])
        self.assertNotIn(a.connection, self.reactor.getWriters())

    def test_send_errors(self) -> None:
        """
        C{EAGAIN} or another socket error hands the whole chunk to Twisted,
        which delivers it (or reports the error in its own time).
        """
        a = self.connect()
        for error in (BlockingIOError(11, "again"), ConnectionResetError(104, "reset")):
            a.sock.error = error
            self.broadcast("e")
            self.reactor.advance(0)
            self.assertIn(a.connection, self.reactor.getWriters())
            a.sock.error = None
            a.pump()
        self.assertEqual(self.names(a), ["e", "e"])

    def test_lost_with_pending(self) -> None:
        """
        A connection lost with corked frames leaves nothing behind, and the
        end of the turn writes nothing for it.
        """
        a, b = self.connect(), self.connect()
        self.broadcast("e1")
        self.assertEqual(set(self.factory._corked), {a.protocol, b.protocol})
        a.connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(set(self.factory._corked), {b.protocol})
        b.protocol.dropConnection(abort=True)
        self.assertEqual(self.factory._corked, {})
        self.reactor.advance(0)
        self.assertEqual(a.sock.sends, [])

    def test_graceful_drop_sends_pending(self) -> None:
        """
        Dropping a connection gracefully sends its corked frames first.
        """
        a = self.connect()
        self.broadcast("e1")
        a.protocol.dropConnection()
        self.assertEqual(self.factory._corked, {})
        a.pump()
        self.assertEqual(self.names(a), ["e1"])

    def test_slow_client(self) -> None:
        """
        A client that stops reading fills Twisted's buffer, which pauses the
        connection; past max_buffer_bytes it is closed with 4100, after
        every frame written before.
        """
        self.factory.max_buffer_bytes = 10_000
        a = self.connect()
        a.sock.error = BlockingIOError(11, "again")
        sent = 0
        while a.protocol.state == a.protocol.STATE_OPEN and sent < 500:
            for _ in range(10):
                self.broadcast("e", 1000)
                sent += 1
            self.reactor.advance(0)
        self.assertLess(sent, 500)
        a.sock.error = None
        a.pump()
        self.assertEqual(a.close_code, 4100)
        self.assertEqual(a.close_reason, "Over capacity")
        self.assertGreater(len(a.events("e")), 64)
        self.assertEqual(a.frames[-1]["event"], "pusher:error")

    def test_not_tcp(self) -> None:
        """
        Transports other than a plain TCP or UNIX connection (TLS, or a test
        double) are written to at once, never corked.
        """
        h = Harness()
        c = h.connect()
        c.send({"event": "pusher:subscribe", "data": {"channel": "ch"}})
        h.adapter.broadcast("1", "ch", b'{"event":"e","channel":"ch","data":"{}"}', None)
        self.assertEqual(h.factory._corked, {})
        self.assertEqual([f["event"] for f in c.pump()], ["e"])
        a = self.connect()
        self.assertTrue(idle_socket(a.connection))
        a.connection.TLS = True
        self.assertFalse(idle_socket(a.connection))


class TwistedInternalsTests(SynchronousTestCase):
    """
    L{idle_socket} reads C{FileDescriptor} internals: fail here, not in
    production, if a Twisted upgrade changes them.
    """

    def test_write_buffers(self) -> None:
        """
        C{write} keeps bytes in C{_tempDataBuffer} and registers for writing;
        C{doWrite} moves them to C{dataBuffer}, and once all are sent both are
        empty and the descriptor is unregistered. C{getHandle} is the socket.
        """
        reactor = MemoryReactorClock()
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        ours.setblocking(False)
        connection = _Connection(ours, Protocol(), reactor)
        connection.connected = 1
        self.assertIsInstance(connection, FileDescriptor)
        self.assertIs(connection.getHandle(), ours)
        self.assertEqual((connection.dataBuffer, connection._tempDataBuffer), (b"", []))
        self.assertFalse(connection.TLS)
        self.assertFalse(connection._writeDisconnected)
        self.assertFalse(connection.disconnecting)
        self.assertTrue(idle_socket(connection))
        connection.write(b"hello")
        self.assertEqual(connection._tempDataBuffer, [b"hello"])
        self.assertIn(connection, reactor.getWriters())
        self.assertFalse(idle_socket(connection))
        connection.SEND_LIMIT = 2
        self.assertIsNone(connection.doWrite())
        self.assertEqual(connection._tempDataBuffer, [])
        self.assertEqual((connection.dataBuffer, connection.offset), (b"hello", 2))
        self.assertFalse(idle_socket(connection))
        connection.SEND_LIMIT = FileDescriptor.SEND_LIMIT
        self.assertIsNone(connection.doWrite())
        self.assertEqual((connection.dataBuffer, connection._tempDataBuffer), (b"", []))
        self.assertNotIn(connection, reactor.getWriters())
        self.assertTrue(idle_socket(connection))
        self.assertEqual(peer.recv(100), b"hello")


def _text_frames(data: bytes) -> list[bytes]:
    """
    The payloads of the complete unmasked text frames after the HTTP
    response in C{data}.
    """
    data = data[data.index(b"\r\n\r\n") + 4 :] if b"\r\n\r\n" in data else b""
    payloads = []
    while len(data) >= 2:
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(data[2:4], "big"), 4
        if len(data) < offset + length:
            break
        if data[0] & 0x0F == 1:
            payloads.append(data[offset : offset + length])
        data = data[offset + length :]
    return payloads


class _Reader(Protocol):
    """
    Handshakes, subscribes to C{ch}, and collects what the server sends.
    """

    def __init__(self) -> None:
        self.received = b""
        self.subscribed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_HANDSHAKE)

    def dataReceived(self, data: bytes) -> None:
        asked = b"connection_established" in self.received
        self.received += data
        if not asked and b"connection_established" in self.received:
            frame = {"event": "pusher:subscribe", "data": {"channel": "ch"}}
            assert self.transport is not None
            self.transport.write(client_frame(json.dumps(frame).encode()))
        if not self.subscribed.called and b"subscription_succeeded" in self.received:
            self.subscribed.callback(None)

    def names(self) -> list[str]:
        """
        The names of the events received after subscribing.
        """
        return [str(json.loads(p)["event"]) for p in _text_frames(self.received)[2:]]


class LoopbackTests(TestCase):
    """
    Over real loopback TCP behind the Site, as in production.
    """

    async def test_no_write_registration(self) -> None:
        """
        Broadcasts to an idle connection reach the client in order without
        the reactor ever registering the socket for writing (the two
        C{epoll_ctl} calls per delivery that plain C{transport.write} costs).
        """
        adapter = LocalAdapter()
        factory = PusherFactory(
            reactor=global_reactor,
            app_store=MemoryAppStore([App(id="1", key=KEY, secret=SECRET)]),
            adapter=adapter,
            cache=MemoryChannelCache(global_reactor),
        )
        client = _Reader()
        server = await serve_and_connect(self, factory, client, client.subscribed)
        self.assertIsInstance(server.transport, tcp.Connection)
        registered: list[object] = []
        add_writer = global_reactor.addWriter  # type: ignore[attr-defined]

        def watching(writer: Any) -> None:
            registered.append(writer)
            add_writer(writer)

        self.patch(global_reactor, "addWriter", watching)
        for n in range(5):
            frame = json.dumps({"event": f"e{n}", "channel": "ch", "data": "{}"}).encode()
            adapter.broadcast("1", "ch", frame, None)
        for _ in range(100):
            if len(client.names()) == 5:
                break
            await deferLater(global_reactor, 0.01, lambda: None)
        self.assertEqual(client.names(), [f"e{n}" for n in range(5)])
        self.assertNotIn(server.transport, registered)
        self.assertEqual(factory._corked, {})
