"""
Tests for L{sockudo_tw.adapters.local.LocalAdapter} and the framing it uses.
"""

from __future__ import annotations

import json
import struct

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sockudo_tw.adapters import IAdapter, ILocalSocket
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.framing import text_frame
from sockudo_tw.hooks import NoPusherEvents
from sockudo_tw.pusher.presence import PresenceMember


@implementer(ILocalSocket)
class FakeSocket:
    """
    Records what the adapter delivers.
    """

    def __init__(self, socket_id: str) -> None:
        self.socket_id = socket_id
        self.wire: list[bytes] = []
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send_wire(self, wire: bytes) -> None:
        self.wire.append(wire)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Counting(NoPusherEvents):
    """
    Counts broadcast deliveries.
    """

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str, int, int]] = []

    def broadcast_delivered(self, app_id: str, channel: str, size: int, recipients: int) -> None:
        self.deliveries.append((app_id, channel, size, recipients))


class FramingTests(SynchronousTestCase):
    """
    RFC 6455 server text frames.
    """

    def test_lengths(self) -> None:
        """
        7-bit, 16-bit and 64-bit lengths, unmasked, FIN + text opcode.
        """
        self.assertEqual(text_frame(b"hi"), b"\x81\x02hi")
        self.assertEqual(text_frame(b"x" * 126)[:4], b"\x81\x7e" + struct.pack("!H", 126))
        big = text_frame(b"x" * 70000)
        self.assertEqual(big[:10], b"\x81\x7f" + struct.pack("!Q", 70000))
        self.assertEqual(len(big), 70010)


class LocalAdapterTests(SynchronousTestCase):
    """
    Delivery, queries and membership.
    """

    def setUp(self) -> None:
        self.observer = Counting()
        self.adapter = LocalAdapter(self.observer)
        self.a, self.b, self.c = FakeSocket("1.1"), FakeSocket("2.2"), FakeSocket("3.3")
        for s in (self.a, self.b, self.c):
            self.adapter.add_socket("app", s)

    def test_interface(self) -> None:
        """
        It provides L{IAdapter}.
        """
        self.assertTrue(verifyObject(IAdapter, self.adapter))

    def test_broadcast_framed_once(self) -> None:
        """
        Every subscriber but the excluded one gets the same framed bytes,
        built once.
        """
        calls: list[bytes] = []

        def framer(frame: bytes) -> bytes:
            calls.append(frame)
            return text_frame(frame)

        adapter = LocalAdapter(framer=framer)
        sockets = [FakeSocket(f"{i}.0") for i in range(5)]
        for s in sockets:
            adapter.add_socket("app", s)
            adapter.subscribe("app", "ch", s.socket_id, None, 0)
        adapter.broadcast("app", "ch", b'{"event":"e"}', "0.0")
        self.assertEqual(calls, [b'{"event":"e"}'])
        self.assertEqual(sockets[0].wire, [])
        for s in sockets[1:]:
            self.assertEqual(s.wire, [text_frame(b'{"event":"e"}')])
            self.assertIs(s.wire[0], sockets[1].wire[0])
        adapter.broadcast("app", "nobody", b"x", None)
        self.assertEqual(calls, [b'{"event":"e"}'])

    def test_observer(self) -> None:
        """
        Deliveries are reported with size and recipient count.
        """
        self.adapter.subscribe("app", "ch", "1.1", None, 0)
        self.adapter.subscribe("app", "ch", "2.2", None, 0)
        self.adapter.broadcast("app", "ch", b"abc", None)
        self.assertEqual(self.observer.deliveries, [("app", "ch", 5, 2)])

    def test_queries(self) -> None:
        """
        Channels, counts, members and connection counts from the registry.
        """
        self.adapter.subscribe("app", "presence-x", "1.1", PresenceMember("u", {"a": 1}), 0)
        self.adapter.subscribe("app", "c", "2.2", None, 0)
        self.assertEqual(
            self.successResultOf(self.adapter.channels("app")), {"presence-x": 1, "c": 1}
        )
        self.assertEqual(
            self.successResultOf(self.adapter.channel_subscription_count("app", "c")), 1
        )
        self.assertEqual(
            self.successResultOf(self.adapter.presence_members("app", "presence-x")),
            {"u": {"a": 1}},
        )
        self.assertEqual(self.successResultOf(self.adapter.app_connection_count("app")), 3)

    def test_terminate(self) -> None:
        """
        terminate_user_connections closes the user's signed-in sockets, 4009.
        """
        self.adapter.sign_in("app", "1.1", "u", ())
        self.adapter.sign_in("app", "2.2", "u", ())
        self.adapter.terminate_user_connections("app", "u")
        self.assertEqual(self.a.closed, (4009, "User terminated by app."))
        self.assertEqual(self.b.closed, (4009, "User terminated by app."))
        self.assertIsNone(self.c.closed)

    def test_watchlist_delivery(self) -> None:
        """
        Watchers hear online when a user's first socket signs in and offline
        when its last one goes, in pusher-js's format.
        """
        out = self.successResultOf(self.adapter.sign_in("app", "1.1", "w", ("u",)))
        self.assertEqual(out.offline, ("u",))
        self.adapter.sign_in("app", "2.2", "u", ())
        [frame] = self.a.frames
        self.assertEqual(
            json.loads(json.loads(frame)["data"]),
            {"events": [{"name": "online", "user_ids": ["u"]}]},
        )
        removal = self.successResultOf(self.adapter.remove_socket("app", "2.2"))
        self.assertEqual(removal.went_offline, "u")
        self.assertEqual(
            json.loads(json.loads(self.a.frames[1])["data"])["events"][0]["name"], "offline"
        )

    def test_remove_unknown(self) -> None:
        """
        Removing an unknown socket is a no-op outcome.
        """
        removal = self.successResultOf(self.adapter.remove_socket("app", "9.9"))
        self.assertEqual(removal.unsubscribed, ())
