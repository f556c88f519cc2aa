"""
The WebSocket glue over real loopback TCP: the transport's producer
back-pressure really bounds a slow client's buffer.
"""

from __future__ import annotations

import json

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.caches import MemoryChannelCache
from sockudo_tw.pusher.app import App
from sockudo_tw.websocket import PusherFactory
from tests.wsclient import client_frame, serve_and_connect

_HANDSHAKE = (
    b"GET /app/key?protocol=7 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class _SlowClient(Protocol):
    """
    Handshakes, subscribes, then stops reading.
    """

    def __init__(self) -> None:
        self.received = b""
        self.subscribed: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_HANDSHAKE)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"subscription_succeeded" in self.received and not self.subscribed.called:
            assert self.transport is not None
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            self.subscribed.callback(None)
        elif b"connection_established" in self.received and b"subscribe" not in self.received:
            assert self.transport is not None
            frame = {"event": "pusher:subscribe", "data": {"channel": "ch"}}
            self.transport.write(client_frame(json.dumps(frame).encode()))
            self.received += b"subscribe"

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class SlowClientTCPTests(TestCase):
    """
    A client that stops reading is closed with 4100 once the buffer limit is
    passed, and its state is cleaned up.
    """

    async def test_slow_client_closed(self) -> None:
        """
        Broadcast to a paused real TCP client until the server gives up on
        it; the registry is empty afterwards.
        """
        adapter = LocalAdapter()
        factory = PusherFactory(
            reactor=global_reactor,
            app_store=MemoryAppStore([App(id="1", key="key", secret="s")]),
            adapter=adapter,
            cache=MemoryChannelCache(global_reactor),
            max_buffer_bytes=500_000,
        )
        client = _SlowClient()
        server = await serve_and_connect(self, factory, client, client.subscribed)
        frame = b'{"event":"e","channel":"ch","data":"' + b"x" * 10_000 + b'"}'
        sent = 0
        while server.state == server.STATE_OPEN and sent < 2000:
            adapter.broadcast("1", "ch", frame, None)
            sent += 1
            if sent % 20 == 0:
                await deferLater(global_reactor, 0, lambda: None)
        self.assertEqual(server.state, server.STATE_CLOSING)
        self.assertTrue(server._backpressure.paused or server.state != server.STATE_OPEN)
        self.assertLess(sent, 2000)
        # Read again so the client notices the close (or the drop after the
        # close handshake timeout).
        assert client.transport is not None
        client.transport.resumeProducing()  # type: ignore[attr-defined]
        await client.lost
        self.assertIn(b"Over capacity", client.received)
        for _ in range(5):
            await deferLater(global_reactor, 0.01, lambda: None)
        self.assertEqual(adapter.registry.socket_count("1"), 0)
        self.assertEqual(factory.protocols, set())
