"""
Tests for L{sockudo_tw.pusher.session}: the connection state machine,
driven with explicit times and no sockets.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.errors import PusherError
from sockudo_tw.pusher.presence import PresenceMember
from sockudo_tw.pusher.session import (
    ClientEvent,
    Close,
    Effect,
    Ping,
    Send,
    Session,
    SignIn,
    Subscribe,
    Unsubscribe,
    check_protocol,
    new_socket_id,
    origin_allowed,
    parse_app_key,
    rejection,
)
from sockudo_tw.pusher.signing import token

KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
SOCKET = "1234.1234"


def make(now: float = 1000.0, **fields: Any) -> Session:
    """
    A session for an app with the documented test credentials.
    """
    return Session(App(id="1", key=KEY, secret=SECRET, **fields), SOCKET, now)


def sent(effects: list[Effect]) -> list[Any]:
    """
    The decoded frames among C{effects}.
    """
    return [json.loads(e.frame) for e in effects if isinstance(e, Send)]


def frame(event: str, **fields: Any) -> str:
    """
    A client frame as JSON text.
    """
    return json.dumps({"event": event, **fields})


def subscribe(channel: str, **data: Any) -> str:
    """
    A C{pusher:subscribe} frame.
    """
    return frame("pusher:subscribe", data={"channel": channel, **data})


def auth(channel: str, channel_data: str | None = None) -> str:
    """
    A valid channel token for L{SOCKET}.
    """
    s = f"{SOCKET}:{channel}" + (f":{channel_data}" if channel_data is not None else "")
    return token(KEY, SECRET, s)


def signin(user_data: str) -> str:
    """
    A valid C{pusher:signin} frame.
    """
    sig = token(KEY, SECRET, f"{SOCKET}::user::{user_data}")
    return frame("pusher:signin", data={"auth": sig, "user_data": user_data})


class ConnectTests(SynchronousTestCase):
    """
    The connect-time helpers: path, protocol, origin, socket ids.
    """

    def test_established(self) -> None:
        """
        The first frame carries a string C{data} with socket_id and
        activity_timeout.
        """
        [f] = sent(make().open())
        self.assertEqual(f["event"], "pusher:connection_established")
        self.assertIsInstance(f["data"], str)
        self.assertEqual(json.loads(f["data"]), {"socket_id": SOCKET, "activity_timeout": 120})

    def test_app_key(self) -> None:
        """
        The key is the last segment of C{/app/{key}}; any prefix is refused.
        """
        self.assertEqual(parse_app_key("/app/abc"), "abc")
        self.assertEqual(parse_app_key("/app/abc/"), "abc")
        self.assertIsNone(parse_app_key("/ws/app/abc"))
        self.assertIsNone(parse_app_key("/apps/abc"))
        self.assertIsNone(parse_app_key("/app/"))
        self.assertIsNone(parse_app_key("/app/a/b"))

    def test_protocol(self) -> None:
        """
        4 to 7 pass; missing is 4008; anything else 4007.
        """
        for n in "4567":
            self.assertIsNone(check_protocol({"protocol": [n]}))
        missing = check_protocol({})
        assert missing is not None
        self.assertEqual(missing.code, 4008)
        for bad in ("3", "8", "abc", "-5", "7.0"):
            error = check_protocol({"protocol": [bad]})
            assert error is not None
            self.assertEqual(error.code, 4007)

    def test_rejection(self) -> None:
        """
        A refusal is pusher:error with the code, then a close with it.
        """
        effects = rejection(PusherError(4001, "nope"))
        self.assertEqual(
            sent(effects), [{"event": "pusher:error", "data": {"code": 4001, "message": "nope"}}]
        )
        self.assertEqual(effects[1], Close(4001, "nope"))
        self.assertIs(type(effects[1].code), int)  # type: ignore[union-attr]

    def test_origins(self) -> None:
        """
        Sockudo's origin rules: exact, host-only, wildcard subdomain,
        prefix/suffix, case-insensitive; missing origin fails a non-empty
        list.
        """
        self.assertTrue(origin_allowed(None, ()))
        self.assertTrue(origin_allowed(None, ("*",)))
        self.assertFalse(origin_allowed(None, ("https://a.com",)))
        self.assertTrue(origin_allowed("https://A.com", ("https://a.com",)))
        self.assertTrue(origin_allowed("http://a.com:8080", ("a.com",)))
        self.assertTrue(origin_allowed("https://x.a.com", ("*.a.com",)))
        self.assertTrue(origin_allowed("https://a.com", ("*.a.com",)))
        self.assertFalse(origin_allowed("https://evila.com", ("*.a.com",)))
        self.assertTrue(origin_allowed("https://x.a.com", ("https://*.a.com",)))
        self.assertFalse(origin_allowed("http://x.a.com", ("https://*.a.com",)))
        self.assertFalse(origin_allowed("https://b.com", ("https://a.com", "a.org")))

    def test_socket_id(self) -> None:
        """
        Socket ids are two random integers joined by a dot.
        """
        self.assertRegex(new_socket_id(), r"^\d+\.\d+$")
        self.assertEqual(new_socket_id(lambda n: 7), "7.7")
        self.assertNotEqual(new_socket_id(), new_socket_id())


class InputTests(SynchronousTestCase):
    """
    Bad and basic input.
    """

    def test_ping(self) -> None:
        """
        Every ping shape gets a pong with string data.
        """
        s = make()
        for f in (
            frame("pusher:ping", data={}),
            frame("pusher:ping", data="{}"),
            frame("pusher:ping", data=""),
            frame("pusher:ping"),
        ):
            self.assertEqual(sent(s.receive(f, 1001)), [{"event": "pusher:pong", "data": "{}"}])

    def test_pong(self) -> None:
        """
        A pusher:pong is silent.
        """
        self.assertEqual(make().receive(frame("pusher:pong", data={}), 1001), [])

    def test_unsupported(self) -> None:
        """
        Unknown events get Pusher's null-coded message; the connection stays.
        """
        s = make()
        effects = s.receive(frame("pusher:nope"), 1001)
        self.assertEqual(
            sent(effects),
            [
                {
                    "event": "pusher:error",
                    "data": {
                        "code": None,
                        "message": "Unsupported event received on socket: pusher:nope",
                    },
                }
            ],
        )
        self.assertFalse(s.closing)

    def test_malformed(self) -> None:
        """
        Non-JSON, non-objects and missing events are 4300 errors, no close.
        """
        s = make()
        for text in ("{", "[]", "1", '{"data":{}}', '{"event":5}', '{"event":""}', "\x00"):
            effects = s.receive(text, 1001)
            [f] = sent(effects)
            self.assertEqual(f["data"]["code"], 4300)
            self.assertFalse(any(isinstance(e, Close) for e in effects))

    def test_bad_subscribe_data(self) -> None:
        """
        Subscribe without an object, without a channel, or with a bad name is
        a 4300 error.
        """
        s = make()
        for text in (
            frame("pusher:subscribe"),
            frame("pusher:subscribe", data=[]),
            frame("pusher:subscribe", data={}),
            frame("pusher:subscribe", data={"channel": 5}),
            subscribe("bad channel"),
            subscribe("x" * 201),
            subscribe("#nope"),
            subscribe("private-x", auth=auth("private-x"), channel_data=5),
        ):
            [f] = sent(s.receive(text, 1001))
            self.assertEqual(f["data"]["code"], 4300, text)
        self.assertEqual(s.channels, [])

    def test_binary(self) -> None:
        """
        Binary frames get an error.
        """
        [f] = sent(make().receive_binary(1001))
        self.assertEqual(f["data"]["code"], 4300)

    def test_closed_ignores(self) -> None:
        """
        After a close nothing is answered.
        """
        s = make()
        s.close(4200, "Server shutting down")
        self.assertEqual(s.receive(frame("pusher:ping"), 1001), [])
        self.assertEqual(s.close(4200, "again"), [])


class SubscribeTests(SynchronousTestCase):
    """
    Subscriptions of every channel kind.
    """

    def test_public(self) -> None:
        """
        Public channels need no auth (C{""} or absent), then confirm.
        """
        s = make()
        self.assertEqual(s.receive(subscribe("a", auth=""), 1001), [Subscribe("a", None, 100)])
        self.assertEqual(s.receive(subscribe("b"), 1001), [Subscribe("b", None, 100)])
        self.assertFalse(s.is_subscribed("a"))
        self.assertEqual(
            sent(s.confirm("a", None)),
            [{"event": "pusher_internal:subscription_succeeded", "channel": "a", "data": "{}"}],
        )
        self.assertTrue(s.is_subscribed("a"))

    def test_string_data(self) -> None:
        """
        A subscribe whose data is a JSON string is accepted.
        """
        s = make()
        text = frame("pusher:subscribe", data=json.dumps({"channel": "a"}))
        self.assertEqual(s.receive(text, 1001), [Subscribe("a", None, 100)])

    def test_private_kinds(self) -> None:
        """
        Every non-public kind, the cache ones included, checks the signature.
        """
        for name in (
            "private-a",
            "private-encrypted-a",
            "private-cache-a",
            "private-encrypted-cache-a",
        ):
            s = make()
            [effect] = s.receive(subscribe(name, auth=auth(name)), 1001)
            self.assertEqual(effect, Subscribe(name, None, 100))
            s = make()
            effects = s.receive(subscribe(name, auth="x:y"), 1001)
            self.assertFalse(any(isinstance(e, (Subscribe, Close)) for e in effects))
            error, scoped = sent(effects)
            self.assertEqual(
                error,
                {
                    "event": "pusher:error",
                    "data": {
                        "code": None,
                        "message": f"Invalid signature: Expected HMAC SHA256 hex digest of "
                        f"{SOCKET}:{name}, but got x:y",
                    },
                },
            )
            self.assertEqual(scoped["event"], "pusher:subscription_error")
            self.assertEqual(scoped["channel"], name)
            self.assertEqual(json.loads(scoped["data"])["status"], 401)
            self.assertEqual(json.loads(scoped["data"])["type"], "AuthError")
            self.assertFalse(s.closing)

    def test_missing_auth(self) -> None:
        """
        A private subscribe without auth fails like a bad signature.
        """
        s = make()
        effects = s.receive(subscribe("private-a"), 1001)
        self.assertIn("but got ", sent(effects)[0]["data"]["message"])
        self.assertFalse(any(isinstance(e, Subscribe) for e in effects))

    def test_other_socket_token(self) -> None:
        """
        A token made for another socket id is refused.
        """
        s = make()
        other = token(KEY, SECRET, "1.1:private-a")
        self.assertFalse(
            any(isinstance(e, Subscribe) for e in s.receive(subscribe("private-a", auth=other), 1))
        )

    def test_existing(self) -> None:
        """
        Subscribing twice gets Pusher's message.
        """
        s = make()
        s.receive(subscribe("a"), 1001)
        [f] = sent(s.receive(subscribe("a"), 1001))
        self.assertEqual(f["data"], {"code": None, "message": "Existing subscription to channel a"})

    def test_presence(self) -> None:
        """
        Presence subscribes carry the member (numeric ids become strings);
        confirm sends ids, hash and count.
        """
        for name in ("presence-a", "presence-cache-a"):
            s = make()
            cd = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
            [effect] = s.receive(subscribe(name, auth=auth(name, cd), channel_data=cd), 1001)
            assert isinstance(effect, Subscribe)
            self.assertEqual(effect.member, PresenceMember("10"))
            self.assertEqual(effect.member.user_info, {"name": "Mr. Channels"})
            [f] = sent(s.confirm(name, {"10": {"name": "Mr. Channels"}, "7": {}}))
            self.assertEqual(f["event"], "pusher_internal:subscription_succeeded")
            self.assertEqual(
                json.loads(f["data"]),
                {
                    "presence": {
                        "ids": ["10", "7"],
                        "hash": {"10": {"name": "Mr. Channels"}, "7": {}},
                        "count": 2,
                    }
                },
            )

    def test_presence_vector(self) -> None:
        """
        The documented presence vector verifies.
        """
        s = make()
        cd = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
        sig = "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        effects = s.receive(
            subscribe("presence-foobar", auth=f"{KEY}:{sig}", channel_data=cd), 1001
        )
        self.assertIsInstance(effects[0], Subscribe)

    def test_presence_bad_channel_data(self) -> None:
        """
        channel_data that is not an object with a user id is a 4300 error.
        """
        for cd in ("nope", "[]", '{"user_info":{}}', '{"user_id":""}', '{"user_id":true}'):
            s = make()
            [f] = sent(
                s.receive(subscribe("presence-a", auth=auth("presence-a", cd), channel_data=cd), 1)
            )
            self.assertEqual(f["data"]["code"], 4300)

    def test_presence_member_size(self) -> None:
        """
        user_info over max_presence_member_size_in_kb is refused with 4300.
        """
        s = make()
        cd = json.dumps({"user_id": "1", "user_info": {"x": "y" * 1100}})
        [f] = sent(
            s.receive(subscribe("presence-a", auth=auth("presence-a", cd), channel_data=cd), 1)
        )
        self.assertEqual(f["data"]["code"], 4300)
        self.assertEqual(s.channels, [])

    def test_presence_signed_in(self) -> None:
        """
        Without channel_data a signed-in connection joins as its user
        (signature over socket_id:channel).
        """
        s = make()
        s.receive(signin('{"id":"42","user_info":{"n":1}}'), 1001)
        [effect] = s.receive(subscribe("presence-a", auth=auth("presence-a")), 1002)
        assert isinstance(effect, Subscribe)
        self.assertEqual(effect.member, PresenceMember("42"))
        self.assertEqual(effect.member.user_info, {"n": 1})

    def test_presence_anonymous(self) -> None:
        """
        Without channel_data and without sign-in, presence fails with 4300.
        """
        [f] = sent(make().receive(subscribe("presence-a", auth=auth("presence-a")), 1))
        self.assertEqual(f["data"]["code"], 4300)

    def test_refuse(self) -> None:
        """
        A full presence channel is an error; the connection stays and the
        channel can be tried again.
        """
        s = make()
        cd = '{"user_id":"1"}'
        s.receive(subscribe("presence-a", auth=auth("presence-a", cd), channel_data=cd), 1)
        [f] = sent(s.refuse("presence-a", 4100, "full"))
        self.assertEqual(f["data"], {"code": 4100, "message": "full"})
        self.assertEqual(s.channels, [])
        self.assertFalse(s.closing)

    def test_server_to_user(self) -> None:
        """
        #server-to-user-<id> only for the connection signed in as <id>.
        """
        s = make()
        effects = s.receive(subscribe("#server-to-user-42", auth=""), 1)
        self.assertFalse(any(isinstance(e, Subscribe) for e in effects))
        s.receive(signin('{"id":"42"}'), 2)
        self.assertEqual(
            s.receive(subscribe("#server-to-user-42", auth=""), 3),
            [Subscribe("#server-to-user-42", None, 100)],
        )
        effects = s.receive(subscribe("#server-to-user-43", auth=""), 4)
        self.assertFalse(any(isinstance(e, Subscribe) for e in effects))

    def test_unsubscribe(self) -> None:
        """
        Unsubscribe removes a channel (object or string data); unknown
        channels are ignored; a late confirm undoes the subscription.
        """
        s = make()
        s.receive(subscribe("a"), 1)
        s.confirm("a", None)
        self.assertEqual(
            s.receive(frame("pusher:unsubscribe", data={"channel": "a"}), 2), [Unsubscribe("a")]
        )
        self.assertFalse(s.is_subscribed("a"))
        self.assertEqual(s.receive(frame("pusher:unsubscribe", data={"channel": "a"}), 3), [])
        s.receive(subscribe("b"), 4)
        self.assertEqual(s.receive(frame("pusher:unsubscribe", data="b"), 5), [Unsubscribe("b")])
        self.assertEqual(s.confirm("b", None), [Unsubscribe("b")])
        [f] = sent(s.receive(frame("pusher:unsubscribe", data={}), 6))
        self.assertEqual(f["data"]["code"], 4300)


class ClientEventTests(SynchronousTestCase):
    """
    client-* events.
    """

    def joined(self, channel: str = "private-a", **fields: Any) -> Session:
        """
        A session with client events enabled, subscribed to C{channel}.
        """
        fields.setdefault("enable_client_messages", True)
        s = make(**fields)
        if channel.startswith("presence-"):
            cd = '{"user_id":7}'
            s.receive(subscribe(channel, auth=auth(channel, cd), channel_data=cd), 1000)
        else:
            s.receive(subscribe(channel, auth=auth(channel)), 1000)
        s.confirm(channel, {"7": {}} if channel.startswith("presence-") else None)
        return s

    def test_relay(self) -> None:
        """
        Object data is serialised, strings pass through, absent stays absent.
        """
        s = self.joined()
        [e] = s.receive(frame("client-x", channel="private-a", data={"a": 1}), 1001)
        assert isinstance(e, ClientEvent)
        self.assertEqual(
            json.loads(e.frame), {"event": "client-x", "channel": "private-a", "data": '{"a":1}'}
        )
        [e] = s.receive(frame("client-x", channel="private-a", data="raw"), 1001)
        assert isinstance(e, ClientEvent)
        self.assertEqual(json.loads(e.frame)["data"], "raw")
        [e] = s.receive(frame("client-x", channel="private-a"), 1001)
        assert isinstance(e, ClientEvent)
        self.assertEqual(json.loads(e.frame), {"event": "client-x", "channel": "private-a"})

    def test_presence_user_id(self) -> None:
        """
        On presence channels the sender's user id is added at the top level.
        """
        s = self.joined("presence-a")
        [e] = s.receive(frame("client-x", channel="presence-a", data={}), 1001)
        assert isinstance(e, ClientEvent)
        self.assertEqual(json.loads(e.frame)["user_id"], "7")
        self.assertEqual(e.user_id, "7")

    def test_disabled(self) -> None:
        """
        Without enable_client_messages, Pusher's message.
        """
        s = self.joined(enable_client_messages=False)
        [f] = sent(s.receive(frame("client-x", channel="private-a", data={}), 1001))
        self.assertIn("enable this feature", f["data"]["message"])

    def test_wrong_channels(self) -> None:
        """
        Public and encrypted channels refuse client events; so does a channel
        the sender has not (yet) joined.
        """
        for channel in ("a", "private-encrypted-a"):
            s = self.joined(channel)
            [f] = sent(s.receive(frame("client-x", channel=channel, data={}), 1001))
            self.assertEqual(f["event"], "pusher:error")
        s = self.joined()
        [f] = sent(s.receive(frame("client-x", channel="private-b", data={}), 1001))
        self.assertEqual(f["data"]["code"], 4301)
        s = make(enable_client_messages=True)
        s.receive(subscribe("private-a", auth=auth("private-a")), 1000)
        [f] = sent(s.receive(frame("client-x", channel="private-a", data={}), 1001))
        self.assertEqual(f["data"]["code"], 4301)
        [f] = sent(s.receive(frame("client-x", data={}), 1001))
        self.assertEqual(f["data"]["code"], 4300)

    def test_limits(self) -> None:
        """
        Name length and payload size limits give 4301.
        """
        s = self.joined(max_event_name_length=10, max_event_payload_in_kb=1)
        [f] = sent(s.receive(frame("client-" + "x" * 10, channel="private-a"), 1001))
        self.assertEqual(f["data"]["code"], 4301)
        [f] = sent(s.receive(frame("client-x", channel="private-a", data="y" * 1025), 1002))
        self.assertEqual(f["data"]["code"], 4301)
        [e] = s.receive(frame("client-x", channel="private-a", data="y" * 1024), 1003)
        self.assertIsInstance(e, ClientEvent)

    def test_rate_limit(self) -> None:
        """
        Exactly max_client_events_per_second pass in a 1 s window; the next
        gets 4301 without a close; a new window starts afresh.
        """
        s = self.joined(max_client_events_per_second=10)
        f = frame("client-x", channel="private-a", data={})
        for i in range(10):
            [e] = s.receive(f, 1001 + i * 0.05)
            self.assertIsInstance(e, ClientEvent)
        effects = s.receive(f, 1001.9)
        self.assertEqual(sent(effects)[0]["data"]["code"], 4301)
        self.assertFalse(any(isinstance(e, Close) for e in effects))
        [e] = s.receive(f, 1002.0)
        self.assertIsInstance(e, ClientEvent)

    def test_unlimited(self) -> None:
        """
        A limit of 0 is unlimited.
        """
        s = self.joined(max_client_events_per_second=0)
        for _ in range(50):
            [e] = s.receive(frame("client-x", channel="private-a"), 1001)
            self.assertIsInstance(e, ClientEvent)


class SignInTests(SynchronousTestCase):
    """
    pusher:signin and watchlists.
    """

    def test_success(self) -> None:
        """
        A valid signin echoes the exact user_data string, string-encoded.
        """
        s = make()
        user_data = '{"id":"12345"}'
        effects = s.receive(signin(user_data), 1001)
        [f] = sent(effects)
        self.assertEqual(f["event"], "pusher:signin_success")
        self.assertEqual(json.loads(f["data"]), {"user_data": user_data})
        self.assertIsInstance(effects[1], SignIn)
        assert s.user is not None
        self.assertEqual(s.user.user_id, "12345")

    def test_vector(self) -> None:
        """
        The documented sign-in vector verifies.
        """
        s = make()
        sig = "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        effects = s.receive(
            frame("pusher:signin", data={"auth": f"{KEY}:{sig}", "user_data": '{"id":"12345"}'}),
            1,
        )
        self.assertEqual(sent(effects)[0]["event"], "pusher:signin_success")

    def test_bad(self) -> None:
        """
        A bad signature, missing user_data or an id-less user closes 4009.
        """
        for data in (
            {"auth": "x:y", "user_data": '{"id":"1"}'},
            {"auth": "x:y"},
        ):
            s = make()
            effects = s.receive(frame("pusher:signin", data=data), 1)
            self.assertEqual(sent(effects)[0]["data"]["code"], 4009)
            self.assertEqual(effects[-1], Close(4009, effects[-1].reason))  # type: ignore[union-attr]
        s = make()
        effects = s.receive(signin('{"name":"x"}'), 1)
        self.assertIsInstance(effects[-1], Close)

    def test_other_user(self) -> None:
        """
        Signing in again as someone else is refused without closing.
        """
        s = make()
        s.receive(signin('{"id":"1"}'), 1)
        effects = s.receive(signin('{"id":"2"}'), 2)
        self.assertEqual(sent(effects)[0]["event"], "pusher:error")
        assert s.user is not None
        self.assertEqual(s.user.user_id, "1")

    def test_watchlist(self) -> None:
        """
        With watchlist events on, the initial state goes out in pusher-js's
        format; more than 100 ids keep the first 100 and send 4302.
        """
        s = make(enable_watchlist_events=True)
        ids = [str(i) for i in range(150)]
        effects = s.receive(signin(json.dumps({"id": "me", "watchlist": ids})), 1)
        frames = sent(effects)
        self.assertEqual(frames[0]["event"], "pusher:signin_success")
        self.assertEqual(frames[1]["data"]["code"], 4302)
        signin_effect = effects[-1]
        assert isinstance(signin_effect, SignIn)
        self.assertEqual(signin_effect.user.watchlist, tuple(ids[:100]))
        [f] = sent(s.signed_in(["1"], ["2"]))
        self.assertEqual(f["event"], "pusher_internal:watchlist_events")
        self.assertEqual(
            json.loads(f["data"]),
            {
                "events": [
                    {"name": "online", "user_ids": ["1"]},
                    {"name": "offline", "user_ids": ["2"]},
                ]
            },
        )

    def test_watchlist_off(self) -> None:
        """
        Without enable_watchlist_events the watchlist is ignored.
        """
        s = make()
        effects = s.receive(signin(json.dumps({"id": "me", "watchlist": ["1"]})), 1)
        signin_effect = effects[-1]
        assert isinstance(signin_effect, SignIn)
        self.assertEqual(signin_effect.user.watchlist, ())
        self.assertEqual(s.signed_in(["1"], []), [])


class TimerTests(SynchronousTestCase):
    """
    Lazy liveness and user authentication timers.
    """

    def test_ping_then_4201(self) -> None:
        """
        Silence for activity_timeout gets a ping; 30 s more closes 4201.
        """
        s = make(now=0)
        self.assertEqual(s.next_deadline(), 120)
        self.assertEqual(s.tick(119), [])
        effects = s.tick(120)
        self.assertEqual(sent(effects), [{"event": "pusher:ping", "data": "{}"}])
        self.assertIn(Ping(), effects)
        self.assertEqual(s.next_deadline(), 150)
        self.assertEqual(s.tick(149), [])
        effects = s.tick(150)
        self.assertEqual(sent(effects)[0]["data"]["code"], 4201)
        self.assertEqual(effects[-1], Close(4201, "Pong reply not received in time"))

    def test_activity(self) -> None:
        """
        Any frame (or control ping/pong) resets liveness; the deadline moves.
        """
        s = make(now=0)
        s.receive(frame("pusher:ping"), 100)
        self.assertEqual(s.tick(120), [])
        self.assertEqual(s.next_deadline(), 220)
        s.tick(220)
        s.touch(230)
        self.assertEqual(s.tick(250), [])
        self.assertEqual(s.next_deadline(), 350)

    def test_user_auth_timeout(self) -> None:
        """
        With user authentication on, a connection neither signed in nor on a
        private channel is closed 4009 after the timeout.
        """
        s = Session(
            App(id="1", key=KEY, secret=SECRET, enable_user_authentication=True),
            SOCKET,
            0,
            user_authentication_timeout=60,
        )
        self.assertEqual(s.next_deadline(), 60)
        effects = s.tick(60)
        self.assertEqual(effects[-1], Close(4009, "Connection not authorized within timeout."))

    def test_user_auth_satisfied(self) -> None:
        """
        Signing in, or a confirmed private subscription, stops that timer;
        without the app flag it never runs.
        """
        app = App(id="1", key=KEY, secret=SECRET, enable_user_authentication=True)
        s = Session(app, SOCKET, 0, user_authentication_timeout=60)
        s.receive(signin('{"id":"1"}'), 1)
        self.assertEqual(s.tick(61), [])
        s = Session(app, SOCKET, 0, user_authentication_timeout=60)
        s.receive(subscribe("private-a", auth=auth("private-a")), 1)
        s.confirm("private-a", None)
        self.assertEqual(s.tick(61), [])
        s = make(now=0)
        self.assertEqual(s.next_deadline(), 120)
