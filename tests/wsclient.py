"""
A minimal in-memory WebSocket client for driving L{PusherProtocol} over a
L{StringTransport}: handshake bytes in, masked client frames in, server
frames parsed out. No sockets, no reactor.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.pusher.app import App
from sockudo_tw.websocket import PusherFactory, PusherProtocol

__all__ = ["Harness", "WSClient", "client_frame"]

KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """
    A masked client-to-server frame.
    """
    mask = os.urandom(4)
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class WSClient:
    """
    One fake client connection to the factory.

    @ivar frames: the decoded server text frames so far (JSON objects).
    @ivar close_code: the server's close code, once it sent one.
    """

    def __init__(self, factory: PusherFactory, path: str, origin: str | None = None) -> None:
        self.factory = factory
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(proto, PusherProtocol)
        self.protocol = proto
        connection, self.transport = self.make_transport(proto)
        self.frames: list[Any] = []
        self.raw: list[tuple[int, bytes]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.status = b""
        self._buffer = b""
        proto.makeConnection(connection)
        headers = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        ]
        if origin is not None:
            headers.append(f"Origin: {origin}")
        proto.dataReceived(("\r\n".join(headers) + "\r\n\r\n").encode())
        self.pump()

    def make_transport(self, protocol: PusherProtocol) -> tuple[Any, StringTransport]:
        """
        The transport C{protocol} writes to, and the one L{pump} reads the
        server's bytes from (here the same C{StringTransport}).
        """
        transport = StringTransport()
        return transport, transport

    def pump(self) -> list[Any]:
        """
        Parse what the server wrote since the last call; return new frames.
        """
        self._buffer += self.transport.value()
        self.transport.clear()
        if not self.status:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return []
            self.status, self._buffer = self._buffer[: end + 4], self._buffer[end + 4 :]
        new: list[Any] = []
        while len(self._buffer) >= 2:
            b0, b1 = self._buffer[0], self._buffer[1]
            length = b1 & 0x7F
            offset = 2
            if length == 126:
                if len(self._buffer) < 4:
                    break
                (length,) = struct.unpack("!H", self._buffer[2:4])
                offset = 4
            elif length == 127:
                if len(self._buffer) < 10:
                    break
                (length,) = struct.unpack("!Q", self._buffer[2:10])
                offset = 10
            if len(self._buffer) < offset + length:
                break
            payload = self._buffer[offset : offset + length]
            self._buffer = self._buffer[offset + length :]
            opcode = b0 & 0x0F
            self.raw.append((opcode, payload))
            if opcode == 1:
                frame = json.loads(payload)
                self.frames.append(frame)
                new.append(frame)
            elif opcode == 8:
                if len(payload) >= 2:
                    (self.close_code,) = struct.unpack("!H", payload[:2])
                    self.close_reason = payload[2:].decode()
        return new

    def send(self, frame: Any) -> list[Any]:
        """
        Send a JSON frame (or raw text); return the server's new frames.
        """
        text = frame if isinstance(frame, str) else json.dumps(frame)
        return self.send_raw(client_frame(text.encode()))

    def send_raw(self, data: bytes) -> list[Any]:
        """
        Send raw bytes; return the server's new frames.
        """
        self.protocol.dataReceived(data)
        return self.pump()

    def disconnect(self) -> None:
        """
        Drop the TCP connection.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def socket_id(self) -> str:
        """
        The socket id from C{connection_established}.
        """
        return str(json.loads(self.frames[0]["data"])["socket_id"])

    def events(self, name: str) -> list[Any]:
        """
        Frames received with this event name.
        """
        return [f for f in self.frames if f.get("event") == name]


class Harness:
    """
    A factory wired to in-memory collaborators on a L{Clock}.
    """

    def __init__(self, **app_fields: Any) -> None:
        self.clock = Clock()
        self.app = App(id="1", key=KEY, secret=SECRET, **app_fields)
        self.store = MemoryAppStore([self.app])
        self.adapter = LocalAdapter()
        self.cache = MemoryChannelCache(self.clock)
        self.factory = PusherFactory(
            reactor=self.clock,
            app_store=self.store,
            adapter=self.adapter,
            cache=self.cache,
        )

    def connect(self, path: str | None = None, origin: str | None = None) -> WSClient:
        """
        Open a client connection (to the app's key, protocol 7, by default).
        """
        client = WSClient(self.factory, path or f"/app/{KEY}?protocol=7", origin)
        self.clock.advance(0)
        client.pump()
        return client

    def flush(self, *clients: WSClient) -> None:
        """
        Run zero-delay calls (cleanup, subscription counts) and pump clients.
        """
        self.clock.advance(0)
        for client in clients:
            client.pump()


async def serve_and_connect(
    test: TestCase, factory: PusherFactory, client: Protocol, subscribed: Deferred[None]
) -> PusherProtocol:
    """
    Serve C{factory}'s WebSocket resource on a loopback port of the real
    reactor and connect C{client} (a raw protocol that upgrades and
    subscribes by itself); once C{subscribed} fires, the server side of the
    connection. Port and connection are cleaned up with the test.
    """
    from twisted.internet import reactor

    root = Resource()
    root.putChild(b"app", factory.websocket_resource())
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    test.addCleanup(port.stopListening)
    client_factory = ClientFactory()
    client_factory.protocol = lambda: client  # type: ignore[assignment]
    connector = reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)  # type: ignore[attr-defined]
    test.addCleanup(connector.disconnect)
    await subscribed
    [server] = factory.protocols
    return server
