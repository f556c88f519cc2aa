"""
Frame serialisation and inbound parsing in L{sockudo_tw.pusher.events}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher import events
from sockudo_tw.pusher.errors import PusherError


class ServerFrameTests(SynchronousTestCase):
    """
    Exact shapes of pusher-protocol.md section 2.3: data is a string except
    on pusher:error.
    """

    def test_shapes(self) -> None:
        """
        Each builder's frame, decoded.
        """
        cases = [
            (events.ping(), {"event": "pusher:ping", "data": "{}"}),
            (events.pong(), {"event": "pusher:pong", "data": "{}"}),
            (
                events.cache_miss("cache-a"),
                {"event": "pusher:cache_miss", "channel": "cache-a", "data": "{}"},
            ),
            (
                events.member_removed("presence-a", "3"),
                {
                    "event": "pusher_internal:member_removed",
                    "channel": "presence-a",
                    "data": '{"user_id":"3"}',
                },
            ),
            (
                events.member_added("presence-a", "3", {"n": 1}),
                {
                    "event": "pusher_internal:member_added",
                    "channel": "presence-a",
                    "data": '{"user_id":"3","user_info":{"n":1}}',
                },
            ),
            (
                events.subscription_count("a", 7),
                {
                    "event": "pusher_internal:subscription_count",
                    "channel": "a",
                    "data": '{"subscription_count":7}',
                },
            ),
            (
                events.signin_success('{"id":"1"}'),
                {"event": "pusher:signin_success", "data": '{"user_data":"{\\"id\\":\\"1\\"}"}'},
            ),
            (
                events.error_frame(None, "x"),
                {"event": "pusher:error", "data": {"code": None, "message": "x"}},
            ),
        ]
        for raw, expected in cases:
            self.assertEqual(json.loads(raw), expected)
            self.assertNotIn(b" ", raw.replace(b'"x"', b""))

    def test_client_event(self) -> None:
        """
        Relayed client events leave out absent data and add user_id.
        """
        self.assertEqual(
            json.loads(events.client_event("client-a", "presence-b", None, "1")),
            {"event": "client-a", "channel": "presence-b", "user_id": "1"},
        )


class DecodeTests(SynchronousTestCase):
    """
    Inbound parsing.
    """

    def test_decode(self) -> None:
        """
        Fields come out as sent; data may be missing.
        """
        f = events.decode('{"event":"e","channel":1}')
        self.assertEqual((f.event, f.channel, f.data), ("e", 1, events.MISSING))

    def test_reject(self) -> None:
        """
        Not an object with a string event: 4300.
        """
        for text in ("", "x", "[]", '{"event":null}', "[" * 100000):
            e = self.assertRaises(PusherError, events.decode, text)
            self.assertEqual(e.code, 4300)

    def test_command_data(self) -> None:
        """
        Object or JSON-object string; anything else is 4300.
        """
        ok = events.decode('{"event":"e","data":"{\\"a\\":1}"}')
        self.assertEqual(events.command_data(ok), {"a": 1})
        for data in ("1", "[]", '"x"', "null"):
            f = events.decode('{"event":"e","data":' + data + "}")
            self.assertRaises(PusherError, events.command_data, f)

    def test_relay_data(self) -> None:
        """
        Strings pass through; other values are compact JSON.
        """
        self.assertEqual(events.relay_data("a b"), "a b")
        self.assertEqual(events.relay_data({"a": [1, None]}), '{"a":[1,null]}')
        self.assertEqual(events.relay_data(None), "null")
        self.assertIsNone(events.relay_data(events.MISSING))


class ChannelEventTests(SynchronousTestCase):
    """
    L{events.channel_event} joins its frame from quoted strings: the bytes
    must be those of L{events.encode} of the frame's dict.
    """

    def test_same_as_encoder(self) -> None:
        """
        Quotes, backslashes, control characters, non-ASCII, the line and
        paragraph separators and astral characters are escaped (or not)
        exactly as the encoder does; with and without a user id.
        """
        samples = ["", "a", 'q"uote\\back', "\n\t\x00\x1f\x7f", "é日本\u2028\u2029", "😀", "</s>"]
        for text in samples:
            for user_id in (None, "u1", text):
                frame: dict[str, str] = {"event": text, "channel": "c" + text, "data": text}
                if user_id is not None:
                    frame["user_id"] = user_id
                self.assertEqual(
                    events.channel_event(text, "c" + text, text, user_id), events.encode(frame)
                )
                self.assertEqual(
                    json.loads(events.channel_event(text, "c", text, user_id)),
                    {**frame, "channel": "c"},
                )

    def test_lone_surrogate(self) -> None:
        """
        A lone surrogate cannot be UTF-8 encoded, by either way.
        """
        self.assertRaises(UnicodeEncodeError, events.encode, {"data": "\ud800"})
        self.assertRaises(UnicodeEncodeError, events.channel_event, "e", "c", "\ud800")
