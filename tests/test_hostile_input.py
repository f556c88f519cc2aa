"""
Tests for hostile and malformed input (issue 13, points 3 to 5): text that is
not Unicode, JSON nested too deep, identifiers with trailing newlines or
non-ASCII digits, and the per-connection bounds (subscriptions and the
inbound message rate), over WebSocket and over the HTTP API.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher import events
from sockudo_tw.pusher.app import valid_app_id
from sockudo_tw.pusher.channels import valid_user_id, validate_channel_name
from sockudo_tw.pusher.errors import PusherErrorCode
from sockudo_tw.pusher.presence import parse_channel_data, parse_user_data
from sockudo_tw.pusher.session import MAX_SUBSCRIPTIONS, Refused, Send, Session
from sockudo_tw.pusher.signing import ApiAuthError, verify_api_request
from sockudo_tw.websocket import PusherFactory
from tests.test_api import KEY as API_KEY
from tests.test_api import NOW, ApiTestMixin
from tests.test_api import SECRET as API_SECRET
from tests.test_session import make, sent
from tests.wsclient import Harness, WSClient, client_frame

SURROGATE = "\\ud800"  # the six characters of a JSON escape, not the code point
DEEP = 65  # one level over events.MAX_JSON_DEPTH


def nested(depth: int) -> str:
    """
    JSON arrays nested C{depth} levels deep.
    """
    return "[" * depth + "]" * depth


def harness(**options: Any) -> Harness:
    """
    A L{Harness} whose factory takes C{options} (the per-connection limits).
    """
    h = Harness(enable_client_messages=True)
    h.factory = PusherFactory(
        reactor=h.clock, app_store=h.store, adapter=h.adapter, cache=h.cache, **options
    )
    return h


def capture_logs(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    Every log event emitted until the end of the test.
    """
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    case.addCleanup(globalLogPublisher.removeObserver, logged.append)
    return logged


def refusals(logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The "Refused a message" log events among C{logged}.
    """
    return [e for e in logged if "reason" in e and e.get("socket_id") is not None]


class ParseJsonTests(SynchronousTestCase):
    """
    L{events.parse_json} refuses what would otherwise fail later.
    """

    def test_lone_surrogates(self) -> None:
        """
        A lone high or low surrogate escape, in a value or a key, is refused;
        a proper pair, and an escaped backslash before C{u}, are not.
        """
        for text in (
            '"\\ud800"',
            '"\\udc00"',
            '"\\udc00\\ud800"',
            '{"\\ud800":1}',
            '["ok", {"a": ["\\uDBFF"]}]',
        ):
            with self.assertRaises(events.MalformedJSONError, msg=text) as caught:
                events.parse_json(text)
            self.assertIn("not valid Unicode", caught.exception.reason)
        self.assertEqual(events.parse_json('"\\ud83d\\ude00"'), "\U0001f600")
        self.assertEqual(events.parse_json('"\\\\ud800"'), "\\ud800")

    def test_depth(self) -> None:
        """
        64 levels are accepted, 65 are refused without decoding, whatever
        the size; brackets inside strings do not count.
        """
        self.assertEqual(events.MAX_JSON_DEPTH, 64)
        events.parse_json(nested(64))
        events.parse_json('{"a":' * 63 + "1" + "}" * 63)
        events.parse_json(json.dumps(["[" * 1000, "{" * 1000]))
        for text in (nested(DEEP), "[" * 200000, '{"a":' * 65 + "1" + "}" * 65):
            with self.assertRaises(events.MalformedJSONError) as caught:
                events.parse_json(text)
            self.assertIn("nested deeper than 64", caught.exception.reason)

    def test_depth_ignores_strings(self) -> None:
        """
        Brackets in strings, behind escaped quotes and backslashes or
        written as escapes, never count; the depth found matches the real
        one for random documents and every limit.
        """
        for text in (
            json.dumps(['\\"' + "[" * 100]),
            json.dumps(["\\", "[" * 100, '"']),
            '["' + "\\u005b" * 70 + '"]',
            json.dumps({'k"[[[[': ["]]]]" * 50]}),
        ):
            events.parse_json(text)
        rng = random.Random(13)

        def document(depth: int) -> Any:
            if depth == 0 or rng.random() < 0.15:
                return rng.choice([1, "x[{", '\\"]', None, "\\", "}}"])
            children = [document(depth - 1) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.5:
                return children
            return {f'k{i}"[': child for i, child in enumerate(children)}

        def depth_of(value: Any) -> int:
            if isinstance(value, dict):
                value = list(value.values())
            if isinstance(value, list):
                return 1 + max((depth_of(v) for v in value), default=0)
            return 0

        for _ in range(300):
            value = document(rng.randint(1, 12))
            text = json.dumps(value)
            for limit in (1, 2, 5, 9, 12):
                if depth_of(value) <= limit:
                    events.parse_json(text, limit)
                else:
                    self.assertRaises(events.MalformedJSONError, events.parse_json, text, limit)

    def test_numbers(self) -> None:
        """
        C{NaN}, C{Infinity} and overflowing numbers are refused: no client
        could parse them back.
        """
        for text in ("NaN", "[Infinity]", "[-Infinity]", "1e999", '{"a":-1e400}'):
            with self.assertRaises(events.MalformedJSONError, msg=text):
                events.parse_json(text)
        self.assertEqual(events.parse_json("[1.5e3, -2, 10]"), [1500.0, -2, 10])

    def test_presence_data(self) -> None:
        """
        C{channel_data} and C{user_data} strings get the same rules, so a
        surrogate never becomes a member's user id.
        """
        self.assertIsInstance(parse_channel_data('{"user_id":"' + SURROGATE + '"}'), str)
        self.assertIsInstance(parse_channel_data('{"user_id":"1","user_info":' + nested(70)), str)
        self.assertIsInstance(parse_user_data('{"id":"a","user_info":"' + SURROGATE + '"}'), str)


class IdentifierTests(SynchronousTestCase):
    """
    Identifiers match whole strings with ASCII-only classes.
    """

    def test_channel_names(self) -> None:
        """
        A trailing newline, other whitespace or non-ASCII letters and digits
        make a channel name invalid.
        """
        for name in ("c\n", "c\r\n", "\nc", "c d", "ch\u00e9", "\u0661\u0662", "c\x00"):
            self.assertIsNotNone(validate_channel_name(name, 200), repr(name))
        self.assertIsNotNone(validate_channel_name("#server-to-user-1\n", 200))
        for name in ("private-App.User.1", "presence-a@b,c;d=e", "#server-to-user-u_1"):
            self.assertIsNone(validate_channel_name(name, 200), name)

    def test_user_ids(self) -> None:
        """
        User ids: the channel-name set, 1 to 128 characters, whole string;
        integers still accepted (Laravel) and emitted as strings.
        """
        for user_id in ("u\n", "", "a b", "\u0661", "x" * 129):
            self.assertFalse(valid_user_id(user_id), repr(user_id))
        self.assertTrue(valid_user_id("x" * 128))
        self.assertIsInstance(parse_channel_data('{"user_id":"u\\n"}'), str)
        self.assertIsInstance(parse_user_data('{"id":"u\\n"}'), str)
        self.assertIsInstance(parse_user_data('{"id":"a","watchlist":["b\\n"]}'), str)
        member = parse_channel_data('{"user_id":42}')
        assert not isinstance(member, str)
        self.assertEqual(member.user_id, "42")

    def test_app_ids(self) -> None:
        """
        App ids: ASCII letters, digits and C{_ - . :}, whole string.
        """
        for app_id in ("app\n", "", "a/b", "\u0661", "a b", "x" * 129):
            self.assertFalse(valid_app_id(app_id), repr(app_id))
        for app_id in ("app-id", "123456", "3f2c_a.b:c"):
            self.assertTrue(valid_app_id(app_id), app_id)

    def test_event_names(self) -> None:
        """
        Event names keep Pusher's open charset but refuse control characters.
        """
        for name in ("App\\Events\\OrderShipped", "client-typing", "caf\u00e9"):
            self.assertTrue(events.valid_event_name(name), name)
        for name in ("", "x\n", "x\r", "\x00", "a\x7f"):
            self.assertFalse(events.valid_event_name(name), repr(name))

    def test_app_path(self) -> None:
        """
        The WebSocket path C{/app/<key>} matches whole: no newline after it.
        """
        from sockudo_tw.pusher.session import check_protocol, parse_app_key

        self.assertEqual(parse_app_key("/app/key"), "key")
        self.assertIsNone(parse_app_key("/app/key\n"))
        self.assertIsNotNone(check_protocol({"protocol": ["7\n"]}))
        self.assertIsNotNone(check_protocol({"protocol": ["\u0667"]}))
        self.assertIsNone(check_protocol({"protocol": ["7"]}))


class TimestampTests(SynchronousTestCase):
    """
    C{auth_timestamp} must be a plain ASCII integer in the window.
    """

    def verify(self, timestamp: str) -> ApiAuthError:
        with self.assertRaises(ApiAuthError) as caught:
            verify_api_request(
                key=API_KEY,
                secret=API_SECRET,
                method="GET",
                paths=["/apps/3/channels"],
                query=[
                    ("auth_key", API_KEY),
                    ("auth_timestamp", timestamp),
                    ("auth_version", "1.0"),
                    ("auth_signature", "x"),
                ],
                body=b"",
                now=NOW,
            )
        return caught.exception

    def test_refused_with_pusher_message(self) -> None:
        """
        Huge, float, NaN, signed, padded or non-ASCII timestamps all get 401
        "Timestamp expired" (never an OverflowError).
        """
        for value in (
            "99999999999999999999999999",
            "1e999",
            "NaN",
            "inf",
            "-1",
            f"+{NOW}",
            f" {NOW}",
            f"{NOW}\n",
            "1_353_088_179",
            "\u0661\u0663\u0665\u0663",
            "999999999999",
        ):
            error = self.verify(value)
            self.assertEqual(error.status, 401, value)
            self.assertTrue(error.message.startswith("Timestamp expired: "), error.message)
        self.assertIn("(99999999999999999999999999)", self.verify("9" * 26).message)

    def test_in_window_reaches_signature(self) -> None:
        """
        A good timestamp passes on to the signature check.
        """
        self.assertTrue(self.verify(str(NOW)).message.startswith("Invalid signature"))


class WebSocketMalformedTests(SynchronousTestCase):
    """
    Malformed text over WebSocket: a pusher:error 4300, the connection
    stays, one debug log line and no traceback.
    """

    def test_lone_surrogates(self) -> None:
        """
        A lone surrogate anywhere in a frame is refused like invalid JSON:
        in the event name, a channel, client event data, channel_data,
        user_data; nothing is relayed.
        """
        h = harness()
        logged = capture_logs(self)
        a, b = h.connect(), h.connect()
        channel = "private-c"
        for client in (a, b):
            [ok] = client.send(
                {
                    "event": "pusher:subscribe",
                    "data": {"channel": channel, "auth": _auth(client, channel)},
                }
            )
            self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
        texts = [
            '{"event":"x' + SURROGATE + '"}',
            '{"event":"pusher:subscribe","data":{"channel":"c' + SURROGATE + '"}}',
            '{"event":"client-x","channel":"private-c","data":"' + SURROGATE + '"}',
            '{"event":"client-x","channel":"private-c","data":{"k":["' + SURROGATE + '"]}}',
            '{"event":"client-' + SURROGATE + '","channel":"private-c","data":"x"}',
            '{"event":"pusher:subscribe","data":"{\\"channel\\":\\"' + SURROGATE + '\\"}"}',
        ]
        for text in texts:
            [error] = a.send(text)
            self.assertEqual(error["event"], "pusher:error", text)
            self.assertEqual(error["data"]["code"], 4300, text)
            self.assertIn("Unicode", error["data"]["message"])
        presence = "presence-p"
        channel_data = '{"user_id":"' + SURROGATE + '"}'
        [error] = a.send(
            {
                "event": "pusher:subscribe",
                "data": {
                    "channel": presence,
                    "auth": _auth(a, presence, channel_data),
                    "channel_data": channel_data,
                },
            }
        )
        self.assertEqual(error["data"]["code"], 4300)
        self.assertEqual(self.successResultOf(h.adapter.presence_members(h.app.id, presence)), {})
        h.flush(a, b)
        self.assertEqual(b.frames[2:], [])
        self.assertIsNone(a.close_code)
        self.assertEqual(len(refusals(logged)), len(texts) + 1)
        for event in refusals(logged):
            self.assertEqual(event["log_level"], LogLevel.debug)
            self.assertNotIn("log_failure", event)
        self.assertEqual([e for e in logged if "log_failure" in e], [])

    def test_deep_nesting(self) -> None:
        """
        A frame nested deeper than 64 levels gets 4300, not a RecursionError;
        64 levels still work.
        """
        h = harness()
        a = h.connect()
        [error] = a.send('{"event":"pusher:ping","data":' + nested(DEEP - 1) + "}")
        self.assertEqual(error["data"]["code"], 4300)
        self.assertIn("nested deeper than 64 levels", error["data"]["message"])
        [error] = a.send('{"event":"pusher:ping","data":' + "[" * 60000 + "}")
        self.assertEqual(error["data"]["code"], 4300)
        [pong] = a.send('{"event":"pusher:ping","data":' + nested(63) + "}")
        self.assertEqual(pong["event"], "pusher:pong")

    def test_nan(self) -> None:
        """
        C{NaN} in client event data is refused (it would be relayed as text
        no client can parse).
        """
        h = harness()
        a = h.connect()
        [error] = a.send('{"event":"client-x","channel":"private-c","data":{"n":NaN}}')
        self.assertEqual(error["data"]["code"], 4300)

    def test_invalid_utf8_closes_1007(self) -> None:
        """
        A text frame that is not UTF-8 (including UTF-8-encoded surrogates, a
        truncated sequence, or a fragmented message split mid-character
        whose whole is invalid) is closed with 1007 (RFC 6455 section 8.1),
        logged once at info level, without a traceback; nothing is handled.
        """
        for frames in (
            [client_frame(b'{"event":"\xff"}')],
            [client_frame(b'{"event":"\xed\xa0\x80"}')],
            [client_frame(b"\xc3")],
            [client_frame(b'{"event":"\xc3', fin=False), client_frame(b'("}', opcode=0)],
        ):
            h = harness()
            logged = capture_logs(self)
            a = h.connect()
            for frame in frames:
                a.send_raw(frame)
            self.assertEqual(a.close_code, 1007, frames)
            self.assertEqual(a.events("pusher:error"), [])
            self.assertEqual([e for e in logged if "log_failure" in e], [])
            mine = [e for e in logged if "1007" in e.get("log_format", "")]
            self.assertEqual(len(mine), 1)
            self.assertEqual(mine[0]["log_level"], LogLevel.info)
            self.assertEqual(
                [e for e in logged if e["log_level"] >= LogLevel.warn and "log_trace" not in e],
                [],
            )
            # Valid UTF-8 split across fragments still works.
        h = harness()
        a = h.connect()
        ping = '{"event":"pusher:ping","data":"\u00e9"}'.encode()
        cut = ping.index(b"\xc3") + 1
        a.send_raw(client_frame(ping[:cut], fin=False))
        [pong] = a.send_raw(client_frame(ping[cut:], opcode=0))
        self.assertEqual(pong["event"], "pusher:pong")

    def test_event_name_control_characters(self) -> None:
        """
        A client event name with a newline is refused with 4300.
        """
        h = harness()
        a = h.connect()
        [error] = a.send({"event": "client-x\n", "channel": "private-c", "data": "x"})
        self.assertEqual(error["data"]["code"], 4300)

    def test_channel_with_newline(self) -> None:
        """
        C{"c\\n"} is not a channel.
        """
        h = harness()
        a = h.connect()
        [error] = a.send({"event": "pusher:subscribe", "data": {"channel": "c\n"}})
        self.assertEqual(error["data"]["code"], 4300)
        self.assertEqual(
            self.successResultOf(h.adapter.channel_subscription_count(h.app.id, "c\n")), 0
        )


def _auth(client: WSClient, channel: str, channel_data: str | None = None) -> str:
    from sockudo_tw.pusher.signing import token
    from tests.wsclient import KEY, SECRET

    to_sign = f"{client.socket_id}:{channel}"
    if channel_data is not None:
        to_sign += f":{channel_data}"
    return token(KEY, SECRET, to_sign)


class SubscriptionLimitTests(SynchronousTestCase):
    """
    C{max_subscriptions} per connection.
    """

    def test_session(self) -> None:
        """
        The subscription over the cap gets pusher:error 4304 and no
        L{Subscribe}; after an unsubscribe there is room again.
        """
        s = make()
        s.max_subscriptions = 2
        s.receive(json.dumps({"event": "pusher:subscribe", "data": {"channel": "a"}}), 1000.0)
        s.receive(json.dumps({"event": "pusher:subscribe", "data": {"channel": "b"}}), 1000.0)
        effects = s.receive(
            json.dumps({"event": "pusher:subscribe", "data": {"channel": "c"}}), 1000.0
        )
        [error] = sent(effects)
        self.assertEqual(error["data"]["code"], PusherErrorCode.SUBSCRIPTION_LIMIT)
        self.assertEqual(error["data"]["code"], 4304)
        self.assertEqual(s.channels, ["a", "b"])
        s.receive(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": "a"}}), 1000.0)
        effects = s.receive(
            json.dumps({"event": "pusher:subscribe", "data": {"channel": "c"}}), 1000.0
        )
        self.assertEqual(s.channels, ["b", "c"])

    def test_websocket(self) -> None:
        """
        Over WebSocket: 4304, the connection stays, the others still work.
        """
        h = harness(max_subscriptions=3)
        a = h.connect()
        for name in ("a", "b", "c"):
            [ok] = a.send({"event": "pusher:subscribe", "data": {"channel": name}})
            self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
        [error] = a.send({"event": "pusher:subscribe", "data": {"channel": "d"}})
        self.assertEqual(error["event"], "pusher:error")
        self.assertEqual(error["data"]["code"], 4304)
        self.assertIn("limit of 3 channels", error["data"]["message"])
        self.assertEqual(
            self.successResultOf(h.adapter.channel_subscription_count(h.app.id, "d")), 0
        )
        self.assertIsNone(a.close_code)

    def test_default_allows_pusher_js_resubscribe(self) -> None:
        """
        With the defaults, a client that re-subscribes 1000 channels at once
        (pusher-js after a reconnect), then signs in and pings, is never
        limited.
        """
        h = harness()
        a = h.connect()
        for i in range(MAX_SUBSCRIPTIONS):
            a.protocol.dataReceived(
                client_frame(
                    json.dumps(
                        {"event": "pusher:subscribe", "data": {"auth": "", "channel": f"ch-{i}"}}
                    ).encode()
                )
            )
        h.flush(a)
        a.send({"event": "pusher:ping", "data": {}})
        self.assertEqual(len(a.events("pusher_internal:subscription_succeeded")), MAX_SUBSCRIPTIONS)
        self.assertEqual(a.events("pusher:error"), [])
        self.assertEqual(len(a.events("pusher:pong")), 1)


class MessageRateTests(SynchronousTestCase):
    """
    The token bucket over every inbound message, driven by a L{Clock}.
    """

    def ping(self, client: WSClient) -> list[Any]:
        return client.send({"event": "pusher:ping", "data": {}})

    def test_burst_then_rate(self) -> None:
        """
        C{message_burst} messages pass at once; the next is dropped with one
        4305; then messages pass again at C{messages_per_second}.
        """
        h = harness(messages_per_second=10, message_burst=20)
        a = h.connect()
        for _ in range(20):
            [pong] = self.ping(a)
            self.assertEqual(pong["event"], "pusher:pong")
        [error] = self.ping(a)
        self.assertEqual(error["event"], "pusher:error")
        self.assertEqual(error["data"]["code"], 4305)
        self.assertEqual(self.ping(a), [])
        self.assertEqual(self.ping(a), [])
        h.clock.advance(0.5)
        pongs = [self.ping(a) for _ in range(6)]
        self.assertEqual([len(p) for p in pongs], [1, 1, 1, 1, 1, 0])
        self.assertIsNone(a.close_code)

    def test_sustained_flood_closes_4101(self) -> None:
        """
        More than C{message_burst} messages dropped before the bucket fills
        again closes with 4101 (pusher-js backs off, then reconnects; a 43xx
        close would stop it for good), after a pusher:error with the code.
        """
        h = harness(messages_per_second=10, message_burst=20)
        logged = capture_logs(self)
        a = h.connect()
        for _ in range(20 + 20):  # the burst, then 20 dropped
            self.ping(a)
        self.assertIsNone(a.close_code)
        h.clock.advance(0.05)  # half a token: still empty
        self.ping(a)
        self.assertEqual(a.close_code, 4101)
        self.assertEqual(a.close_reason, "Message rate limit exceeded")
        self.assertEqual(a.events("pusher:error")[-1]["data"]["code"], 4101)
        self.assertFalse(PusherErrorCode.MESSAGE_RATE_LIMIT >= 4300)
        [closing] = [e for e in refusals(logged) if e["log_level"] == LogLevel.info]
        self.assertEqual(closing["reason"], "Message rate limit exceeded")
        # Nothing more is read from it, and it is dropped once Autobahn's
        # close handshake times out.
        self.assertEqual(a.transport.producerState, "paused")
        self.assertFalse(a.transport.disconnecting)
        h.clock.advance(2)
        self.assertTrue(a.transport.disconnecting)

    def test_quiet_spell_forgives(self) -> None:
        """
        Once the bucket is full again the dropped count starts over: bursts
        separated by quiet spells are never closed.
        """
        h = harness(messages_per_second=10, message_burst=20)
        a = h.connect()
        for _ in range(5):
            for _ in range(35):
                self.ping(a)
            h.clock.advance(2.0)
        self.assertIsNone(a.close_code)
        self.assertEqual(len(a.events("pusher:error")), 5)

    def test_every_kind_counts(self) -> None:
        """
        WebSocket ping control frames, binary frames and malformed text all
        take a token; a dropped WebSocket ping gets no pong.
        """
        h = harness(messages_per_second=1, message_burst=4)
        a = h.connect()
        a.send_raw(client_frame(b"p", opcode=9))
        self.assertEqual(a.raw[-1], (10, b"p"))
        a.send_raw(client_frame(b"\x00", opcode=2))
        a.send("nope")
        a.send_raw(client_frame(b"", opcode=10))  # an unsolicited pong
        count = len(a.raw)
        [error] = a.send_raw(client_frame(b"q", opcode=9))
        self.assertEqual(error["data"]["code"], 4305)
        self.assertNotIn((10, b"q"), a.raw[count:])

    def test_large_messages_cost_more(self) -> None:
        """
        A message takes one token plus one per full 4 KiB: with a bucket of
        10, three 8 KiB pings pass (3 tokens each) and the fourth is dropped,
        while small pings would still fit.
        """
        h = harness(messages_per_second=1, message_burst=10)
        a = h.connect()
        big = {"event": "pusher:ping", "data": {"pad": "x" * 8192}}
        for _ in range(3):
            [pong] = a.send(big)
            self.assertEqual(pong["event"], "pusher:pong")
        [error] = a.send(big)
        self.assertEqual(error["data"]["code"], 4305)
        h.clock.advance(3)
        [pong] = a.send(big)
        self.assertEqual(pong["event"], "pusher:pong")

    def test_off(self) -> None:
        """
        C{messages_per_second=0} turns the limit off.
        """
        h = harness(messages_per_second=0, message_burst=0)
        a = h.connect()
        for _ in range(3000):
            a.protocol.dataReceived(client_frame(b'{"event":"pusher:ping"}'))
        h.flush(a)
        self.assertEqual(len(a.events("pusher:pong")), 3000)

    def test_never_below_the_apps_client_event_rate(self) -> None:
        """
        Client events take tokens too, so an app allowing more of them per
        second than C{messages_per_second} gets its own rate instead; 0
        still turns the limit off.
        """

        def rate(app_rate: int, messages_per_second: float) -> float:
            app = make(max_client_events_per_second=app_rate).app
            session = Session(app, "1.1", 0.0, messages_per_second=messages_per_second)
            return session.messages_per_second

        self.assertEqual(rate(500, 100), 500)
        self.assertEqual(rate(10, 100), 100)
        self.assertEqual(rate(500, 0), 0)

    def test_session_clock_goes_back(self) -> None:
        """
        A clock that steps back never adds tokens (nor takes them).
        """
        s = Session(make().app, "1.1", 1000.0, messages_per_second=1, message_burst=1)
        ping = '{"event":"pusher:ping"}'
        self.assertEqual(len(sent(s.receive(ping, 1000.0))), 1)
        effects = s.receive(ping, 900.0)
        self.assertEqual(sent(effects)[0]["data"]["code"], 4305)
        self.assertTrue(any(isinstance(e, Refused) for e in effects))
        self.assertEqual(sent(s.receive(ping, 901.0))[0]["event"], "pusher:pong")

    def test_cheap(self) -> None:
        """
        100,000 pings from one connection cost little: all but the burst
        are dropped before decoding.
        """
        s = Session(make().app, "1.1", 1000.0)
        ping = '{"event":"pusher:ping","data":{}}'
        answered = sum(
            1 for _ in range(100_000) if any(isinstance(e, Send) for e in s.receive(ping, 1000.0))
        )
        # The burst's pongs and one 4305 error; then the close, after which
        # input is ignored.
        self.assertEqual(answered, 1100 + 1 + 1)
        self.assertTrue(s.closing)


class HttpMalformedTests(ApiTestMixin, SynchronousTestCase):
    """
    Malformed bodies and identifiers over the HTTP API: 400 (401 for the
    timestamp) with a JSON error, never a 500; batches all or nothing.
    """

    def test_lone_surrogate_body(self) -> None:
        """
        A lone surrogate in the event name, data, channel or socket id is a
        400 with a JSON error, logged once at info level, nothing published.
        """
        logged = capture_logs(self)
        for body in (
            '{"name":"e' + SURROGATE + '","data":"x","channel":"c"}',
            '{"name":"e","data":"' + SURROGATE + '","channel":"c"}',
            '{"name":"e","data":{"a":"' + SURROGATE + '"},"channel":"c"}',
            '{"name":"e","data":"x","channel":"c' + SURROGATE + '"}',
            '{"name":"e","data":"x","channels":["c","' + SURROGATE + '"]}',
        ):
            response = self.trigger(body.encode())
            self.assertEqual(response.code, 400, body)
            self.assertIn("not valid Unicode", response.json["error"])
        self.assertEqual(self.adapter.broadcasts, [])
        info = [e for e in logged if e.get("log_namespace") == "sockudo_tw.api"]
        self.assertEqual(len(info), 5)
        self.assertTrue(all(e["log_level"] == LogLevel.info for e in info))
        self.assertEqual([e for e in logged if "log_failure" in e], [])

    def test_invalid_utf8_and_utf16(self) -> None:
        """
        A body that is not UTF-8 (or is UTF-16, which json.loads would take)
        is a 400.
        """
        for body in (
            b'{"name":"e","data":"\xff","channel":"c"}',
            b'{"name":"e","data":"\xed\xa0\x80","channel":"c"}',
            '{"name":"e","data":"x","channel":"c"}'.encode("utf-16"),
        ):
            response = self.trigger(body)
            self.assertEqual(response.code, 400)
            self.assertIn("not UTF-8", response.json["error"])
        self.assertEqual(self.adapter.broadcasts, [])

    def test_deep_nesting(self) -> None:
        """
        Nesting deeper than 64 levels is a 400, not a RecursionError 500.
        """
        for body in (
            '{"name":"e","data":' + nested(DEEP) + ',"channel":"c"}',
            "[" * 100000,
        ):
            response = self.trigger(body.encode())
            self.assertEqual(response.code, 400)
            self.assertIn("nested deeper than 64 levels", response.json["error"])

    def test_nan(self) -> None:
        """
        Non-string data holding NaN would be published as invalid JSON: 400.
        """
        response = self.trigger(b'{"name":"e","data":{"x":NaN},"channel":"c"}')
        self.assertEqual(response.code, 400)

    def test_batch_all_or_nothing(self) -> None:
        """
        A batch whose last event is malformed publishes nothing, so an SDK
        retry does not duplicate the first.
        """
        body = (
            '{"batch":[{"name":"a","data":"1","channel":"c"},'
            '{"name":"b' + SURROGATE + '","data":"2","channel":"c"}]}'
        )
        response = self.signed("POST", "/apps/3/batch_events", body.encode())
        self.assertEqual(response.code, 400)
        self.assertEqual(self.adapter.broadcasts, [])
        response = self.batch(
            [
                {"name": "a", "data": "1", "channel": "c"},
                {"name": "b\n", "data": "2", "channel": "c"},
            ]
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(self.adapter.broadcasts, [])
        response = self.batch(
            [{"name": "a", "data": "1", "channel": "c"}, {"name": "b", "data": "2", "channel": "d"}]
        )
        self.assertEqual(response.code, 200)
        self.assertEqual([b.channel for b in self.adapter.broadcasts], ["c", "d"])

    def test_timestamps(self) -> None:
        """
        Huge, float and NaN timestamps get 401 with Pusher's message.
        """
        for value in ("99999999999999999999999999", "1e999", "NaN", "1353088179.0"):
            response = self.raw(
                "GET",
                f"/apps/3/channels?auth_key={API_KEY}&auth_timestamp={value}"
                "&auth_version=1.0&auth_signature=x",
            )
            self.assertEqual(response.code, 401, value)
            self.assertTrue(response.json["error"].startswith("Timestamp expired"))

    def test_identifiers(self) -> None:
        """
        Channels, socket ids, event names, user ids and app ids with a
        trailing newline, and socket ids in other scripts' digits, are
        refused.
        """
        for event in (
            {"name": "e", "data": "x", "channel": "c\n"},
            {"name": "e", "data": "x", "channel": "c", "socket_id": "1.2\n"},
            {"name": "e", "data": "x", "channel": "c", "socket_id": "\u0661\u0662.\u0663"},
            {"name": "e\n", "data": "x", "channel": "c"},
        ):
            response = self.trigger(event)
            self.assertEqual(response.code, 400, event)
        self.assertEqual(self.adapter.broadcasts, [])
        self.assertEqual(
            self.trigger({"name": "e", "data": "x", "channel": "c", "socket_id": "1.2"}).code, 200
        )
        response = self.signed("POST", "/apps/3/users/u%0A/terminate_connections", b"{}")
        self.assertEqual(response.code, 400)
        self.assertEqual(self.adapter.terminated, [])
        response = self.signed("GET", "/apps/3%0A/channels")
        self.assertEqual(response.code, 404)


class HttpUrlTests(ApiTestMixin, SynchronousTestCase):
    """
    Percent-encoded bytes that are not UTF-8 in an API path.
    """

    def test_non_utf8_path(self) -> None:
        """
        A 400 with a JSON error, logged once at info level, no traceback
        (Klein's own answer is plain text and logs one).
        """
        logged = capture_logs(self)
        for method, path in (
            ("GET", "/apps/3/channels/%ff"),
            ("GET", "/apps/3/channels/%ed%a0%80"),
            ("GET", "/apps/%ff/channels"),
            ("GET", "/apps/3/channels/presence-%ff/users"),
            ("POST", "/apps/3/users/%ff/terminate_connections"),
            ("POST", "/apps/%ff/events"),
        ):
            response = self.raw(method, path + "?auth_key=x")
            self.assertEqual(response.code, 400, path)
            self.assertEqual(response.json, {"error": "Request URL must be UTF-8"})
        self.assertEqual([e for e in logged if "log_failure" in e], [])
        info = [e for e in logged if e.get("log_namespace") == "sockudo_tw.api"]
        self.assertEqual(len(info), 6)


class FastTriggerPathTests(SynchronousTestCase):
    """
    The HTTP fast trigger path (L{sockudo_tw.triggerchannel}) calls the same
    handler, so it gets the same answers: a 400, not a TCP reset.
    """

    def test_malformed_bodies(self) -> None:
        """
        A lone surrogate, invalid UTF-8 and deep nesting each get a 400 with
        a JSON error on a connection that stays open.
        """
        from tests.test_triggerchannel import ChannelMixin, responses, signed_trigger

        mixin = ChannelMixin()
        mixin.make()
        for body in (
            b'{"name":"e","data":"\\ud800","channel":"c"}',
            b'{"name":"e","data":"\xff","channel":"c"}',
            b'{"name":"e","data":' + nested(DEEP).encode() + b',"channel":"c"}',
        ):
            channel, transport = mixin.connect()
            channel.dataReceived(signed_trigger(body))
            ((code, headers, answer),) = responses(transport.value())
            self.assertEqual(code, 400, body)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertIn("Request body must be valid JSON", json.loads(answer)["error"])
            self.assertFalse(transport.disconnecting)
        self.assertEqual(mixin.adapter.broadcasts, [])
