"""
Tests for L{sockudo_tw.pusher.subscriptions} and the subscribe/unsubscribe
answers of L{sockudo_tw.pusher.session.Session}: what joining and leaving a
channel means (member_added/removed, subscription counts, cache replay or
miss, occupied/vacated), decided without sockets or a reactor.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher import events
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.session import Effect, Send, Session, Subscribe, Unsubscribe
from sockudo_tw.pusher.subscriptions import (
    Broadcast,
    CacheMissed,
    CountChanged,
    FetchCache,
    MemberAdded,
    MemberRemoved,
    Occupied,
    Subscribed,
    SubscribeOutcome,
    SubscriptionCount,
    Unsubscribed,
    UnsubscribeOutcome,
    Vacated,
    channel_left,
    count_known,
)
from tests.test_session import auth, subscribe

KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
SOCKET = "1234.1234"


def make(**fields: Any) -> Session:
    """
    A session for an app with the documented test credentials.
    """
    return Session(App(id="1", key=KEY, secret=SECRET, **fields), SOCKET, 1000.0)


def requested(session: Session, text: str) -> Subscribe:
    """
    The L{Subscribe} that a subscribe frame asks for.
    """
    [effect] = session.receive(text, 1000.0)
    assert isinstance(effect, Subscribe), effect
    return effect


def without_frames(effects: list[Effect]) -> list[Effect]:
    """
    C{effects} but the frames sent to this client.
    """
    return [effect for effect in effects if not isinstance(effect, Send)]


def frames(effects: list[Effect]) -> list[Any]:
    """
    The decoded frames sent to this client.
    """
    return [json.loads(effect.frame) for effect in effects if isinstance(effect, Send)]


PRESENCE_DATA = json.dumps({"user_id": "u1", "user_info": {"name": "A"}})


class SubscribedTests(SynchronousTestCase):
    """
    L{Session.subscribed}: the adapter's answer to a subscribe.
    """

    def test_public_first(self) -> None:
        """
        The first subscriber of a public channel: occupied, succeeded, then
        the subscribed notice; no count unless the app enables it.
        """
        s = make()
        effects = s.subscribed(requested(s, subscribe("news")), SubscribeOutcome(True, True))
        self.assertEqual(without_frames(effects), [Occupied("news"), Subscribed("news")])
        [ok] = frames(effects)
        self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")
        self.assertIsInstance(effects[1], Send)
        self.assertTrue(s.is_subscribed("news"))

    def test_not_first(self) -> None:
        """
        A later subscriber occupies nothing.
        """
        s = make()
        effects = s.subscribed(requested(s, subscribe("news")), SubscribeOutcome(True))
        self.assertEqual(without_frames(effects), [Subscribed("news")])

    def test_count(self) -> None:
        """
        With subscription counts on, a non-presence subscribe changes the
        count; a presence one does not (it has member events).
        """
        s = make(enable_subscription_count=True)
        effects = s.subscribed(requested(s, subscribe("news")), SubscribeOutcome(True))
        self.assertEqual(without_frames(effects), [Subscribed("news"), CountChanged("news")])
        channel = "presence-room"
        text = subscribe(channel, auth=auth(channel, PRESENCE_DATA), channel_data=PRESENCE_DATA)
        effects = s.subscribed(requested(s, text), SubscribeOutcome(True, members={"u1": {}}))
        self.assertEqual(without_frames(effects), [Subscribed(channel)])

    def test_member_added(self) -> None:
        """
        A user new to a presence channel: member_added to the others (not
        this connection), its notice, then succeeded with the members.
        """
        s = make()
        channel = "presence-room"
        text = subscribe(channel, auth=auth(channel, PRESENCE_DATA), channel_data=PRESENCE_DATA)
        members = {"u0": None, "u1": {"name": "A"}}
        effects = s.subscribed(
            requested(s, text), SubscribeOutcome(True, True, True, members, count=2)
        )
        self.assertEqual(
            without_frames(effects),
            [
                Occupied(channel),
                Broadcast(
                    channel, events.member_added(channel, "u1", {"name": "A"}), exclude_self=True
                ),
                MemberAdded(channel, "u1"),
                Subscribed(channel),
            ],
        )
        [ok] = frames(effects)
        self.assertEqual(json.loads(ok["data"])["presence"]["count"], 2)

    def test_same_user_again(self) -> None:
        """
        A second connection of a user already on the channel adds no member.
        """
        s = make()
        channel = "presence-room"
        text = subscribe(channel, auth=auth(channel, PRESENCE_DATA), channel_data=PRESENCE_DATA)
        effects = s.subscribed(requested(s, text), SubscribeOutcome(True, members={"u1": {}}))
        self.assertEqual(without_frames(effects), [Subscribed(channel)])

    def test_full(self) -> None:
        """
        A full presence channel: a 4100 error, nothing subscribed, no notice.
        """
        s = make(max_presence_members_per_channel=1)
        channel = "presence-room"
        text = subscribe(channel, auth=auth(channel, PRESENCE_DATA), channel_data=PRESENCE_DATA)
        effects = s.subscribed(requested(s, text), SubscribeOutcome(False))
        [error] = frames(effects)
        self.assertEqual(error["data"]["code"], 4100)
        self.assertIn("limit of 1 members", error["data"]["message"])
        self.assertEqual(without_frames(effects), [])
        self.assertEqual(s.channels, [])

    def test_left_meanwhile(self) -> None:
        """
        The client unsubscribed before the adapter answered: the occupant
        notice stands, then the socket is removed again; nothing else.
        """
        s = make(enable_subscription_count=True)
        request = requested(s, subscribe("cache-news"))
        s.receive(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": "cache-news"}}), 1)
        effects = s.subscribed(request, SubscribeOutcome(True, True))
        self.assertEqual(effects, [Occupied("cache-news"), Unsubscribe("cache-news")])

    def test_cache_channel(self) -> None:
        """
        A cache channel asks for its cached event after the subscription.
        """
        s = make()
        effects = s.subscribed(requested(s, subscribe("cache-news")), SubscribeOutcome(True))
        self.assertEqual(
            without_frames(effects), [Subscribed("cache-news"), FetchCache("cache-news")]
        )


class CacheFetchedTests(SynchronousTestCase):
    """
    L{Session.cache_fetched}: replay or cache_miss.
    """

    def _subscribed(self) -> Session:
        s = make()
        s.subscribed(requested(s, subscribe("cache-news")), SubscribeOutcome(True))
        return s

    def test_replay(self) -> None:
        """
        A cached frame is sent as it is.
        """
        s = self._subscribed()
        self.assertEqual(s.cache_fetched("cache-news", b"{}"), [Send(b"{}")])

    def test_miss(self) -> None:
        """
        Nothing cached: the notice and C{pusher:cache_miss}.
        """
        s = self._subscribed()
        effects = s.cache_fetched("cache-news", None)
        self.assertEqual(without_frames(effects), [CacheMissed("cache-news")])
        [miss] = frames(effects)
        self.assertEqual(
            miss, {"event": "pusher:cache_miss", "channel": "cache-news", "data": "{}"}
        )

    def test_gone(self) -> None:
        """
        Nothing once the client left the channel or is closing.
        """
        s = self._subscribed()
        s.receive(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": "cache-news"}}), 1)
        self.assertEqual(s.cache_fetched("cache-news", None), [])
        s = self._subscribed()
        s.close(4200, "bye")
        self.assertEqual(s.cache_fetched("cache-news", b"{}"), [])


class ChannelLeftTests(SynchronousTestCase):
    """
    L{channel_left}: what leaving a channel changed.
    """

    def test_not_subscribed(self) -> None:
        """
        Nothing when the socket was not in the channel.
        """
        self.assertEqual(channel_left(make().app, UnsubscribeOutcome("a", False)), [])

    def test_last_occupant(self) -> None:
        """
        The last subscriber leaving vacates the channel (and no count).
        """
        app = make(enable_subscription_count=True).app
        self.assertEqual(
            channel_left(app, UnsubscribeOutcome("a", True, vacated=True)),
            [Unsubscribed("a"), Vacated("a")],
        )

    def test_count(self) -> None:
        """
        Others remain: a new count when the app has counts, else nothing more.
        """
        outcome = UnsubscribeOutcome("a", True, count=3)
        app = make(enable_subscription_count=True).app
        self.assertEqual(channel_left(app, outcome), [Unsubscribed("a"), CountChanged("a")])
        self.assertEqual(channel_left(make().app, outcome), [Unsubscribed("a")])

    def test_member_removed(self) -> None:
        """
        A user's last connection leaving a presence channel: member_removed
        to everyone left, and the notice; no count on presence channels.
        """
        app = make(enable_subscription_count=True).app
        outcome = UnsubscribeOutcome("presence-r", True, member_removed="u1", count=1)
        self.assertEqual(
            channel_left(app, outcome),
            [
                Unsubscribed("presence-r"),
                Broadcast("presence-r", events.member_removed("presence-r", "u1")),
                MemberRemoved("presence-r", "u1"),
            ],
        )


class CountKnownTests(SynchronousTestCase):
    """
    L{count_known}: the subscription_count event.
    """

    def test_count(self) -> None:
        """
        A positive count is broadcast to every subscriber, and noticed.
        """
        self.assertEqual(
            count_known("a", 2),
            [Broadcast("a", events.subscription_count("a", 2)), SubscriptionCount("a", 2)],
        )

    def test_emptied(self) -> None:
        """
        A channel emptied meanwhile (vacated) gets no count.
        """
        self.assertEqual(count_known("a", 0), [])


class GlueDecidesNothingTests(SynchronousTestCase):
    """
    The WebSocket glue carries the channel effects out; it builds none of
    the frames nor classifies channels itself.
    """

    def test_no_decisions_in_glue(self) -> None:
        """
        No module of C{sockudo_tw.websocket} builds member, count or cache
        frames or looks at a channel's kind.
        """
        import pathlib

        import sockudo_tw.websocket

        package = pathlib.Path(sockudo_tw.websocket.__file__).parent
        decisions = (
            "events.member_added",
            "events.member_removed",
            "events.subscription_count",
            "events.cache_miss",
            "channel_type(",
            "ChannelKind",
            ".member_added and",
            ".occupied",
            ".vacated",
        )
        found = [
            (module.name, decision)
            for module in sorted(package.glob("*.py"))
            for decision in decisions
            if decision in module.read_text()
        ]
        self.assertEqual(found, [])
