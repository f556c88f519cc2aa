# -*- test-case-name: tests.test_subscriptions -*-
"""
What a subscribe or an unsubscribe means on the wire and to the observer.

The adapter reports what joining or leaving a channel changed (a
L{SubscribeOutcome} or an L{UnsubscribeOutcome}); the functions here turn
that into effects: C{pusher_internal:member_added} / C{member_removed} to
the other subscribers, a new C{subscription_count}, the cache replay or
C{pusher:cache_miss}, and the notices (occupied, vacated, subscribed, ...)
that webhooks and metrics hear. The glue only carries these effects out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from sockudo_tw.pusher import events
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.channels import ChannelKind, channel_type

__all__ = [
    "Broadcast",
    "CacheMissed",
    "ChannelEffect",
    "CountChanged",
    "FetchCache",
    "MemberAdded",
    "MemberRemoved",
    "Occupied",
    "SubscribeOutcome",
    "Subscribed",
    "SubscriptionCount",
    "UnsubscribeOutcome",
    "Unsubscribed",
    "Vacated",
    "after_confirm",
    "channel_left",
    "count_known",
    "counts_subscriptions",
    "member_joined",
]


@attrs.frozen
class SubscribeOutcome:
    """
    What adding a socket to a channel changed.

    @ivar accepted: L{False} when a presence channel is full.
    @ivar occupied: the channel went from no subscriber to one.
    @ivar member_added: the presence member is a new user on the channel.
    @ivar members: presence channels: user id -> user_info, this one included.
    @ivar count: sockets subscribed afterwards.
    """

    accepted: bool
    occupied: bool = False
    member_added: bool = False
    members: Mapping[str, Any] | None = None
    count: int = 0


@attrs.frozen
class UnsubscribeOutcome:
    """
    What removing a socket from a channel changed.

    @ivar removed: the socket was subscribed.
    @ivar vacated: the channel has no subscriber left.
    @ivar member_removed: the user id whose last socket left, if any.
    @ivar count: sockets still subscribed.
    """

    channel: str
    removed: bool
    vacated: bool = False
    member_removed: str | None = None
    count: int = 0


@attrs.frozen
class Broadcast:
    """
    Send C{frame} to every subscriber of C{channel}, but the connection the
    effect came from when C{exclude_self}.
    """

    channel: str
    frame: bytes
    exclude_self: bool = False


@attrs.frozen
class Occupied:
    """
    Notice: C{channel} got its first subscriber.
    """

    channel: str


@attrs.frozen
class Vacated:
    """
    Notice: C{channel} lost its last subscriber.
    """

    channel: str


@attrs.frozen
class MemberAdded:
    """
    Notice: a new user joined the presence channel C{channel}.
    """

    channel: str
    user_id: str


@attrs.frozen
class MemberRemoved:
    """
    Notice: the last connection of a user left the presence channel.
    """

    channel: str
    user_id: str


@attrs.frozen
class Subscribed:
    """
    Notice: the connection is now subscribed to C{channel}.
    """

    channel: str


@attrs.frozen
class Unsubscribed:
    """
    Notice: the connection left C{channel}.
    """

    channel: str


@attrs.frozen
class CountChanged:
    """
    The number of subscribers of C{channel} changed: ask the adapter for the
    count (coalesced per reactor turn by the glue) and answer with
    L{count_known}.
    """

    channel: str


@attrs.frozen
class SubscriptionCount:
    """
    Notice: C{channel} has C{count} subscribers (the event was broadcast).
    """

    channel: str
    count: int


@attrs.frozen
class FetchCache:
    """
    Look up the last cached event of the cache channel C{channel}; answer
    with L{sockudo_tw.pusher.session.Session.cache_fetched}.
    """

    channel: str


@attrs.frozen
class CacheMissed:
    """
    Notice: a cache channel had nothing to replay.
    """

    channel: str


ChannelEffect = (
    Broadcast
    | Occupied
    | Vacated
    | MemberAdded
    | MemberRemoved
    | Subscribed
    | Unsubscribed
    | CountChanged
    | SubscriptionCount
    | FetchCache
    | CacheMissed
)


def counts_subscriptions(app: App, channel: str) -> bool:
    """
    Whether C{channel} gets C{pusher_internal:subscription_count} events:
    the app enables them, and presence channels have member events instead.
    """
    return app.enable_subscription_count and channel_type(channel).kind is not ChannelKind.PRESENCE


def member_joined(channel: str, user_id: str, user_info: Any) -> list[ChannelEffect]:
    """
    A new user on a presence channel: C{member_added} to the other
    subscribers, and the notice.
    """
    return [
        Broadcast(channel, events.member_added(channel, user_id, user_info), exclude_self=True),
        MemberAdded(channel, user_id),
    ]


def after_confirm(app: App, channel: str) -> list[ChannelEffect]:
    """
    The effects that follow a confirmed subscription: the notice, a new
    subscription count, and the cache lookup on cache channels.
    """
    effects: list[ChannelEffect] = [Subscribed(channel)]
    if counts_subscriptions(app, channel):
        effects.append(CountChanged(channel))
    if channel_type(channel).cache:
        effects.append(FetchCache(channel))
    return effects


def channel_left(app: App, outcome: UnsubscribeOutcome) -> list[ChannelEffect]:
    """
    What leaving a channel changed: C{member_removed} to the others, the
    channel vacated, or a new subscription count.
    """
    if not outcome.removed:
        return []
    channel = outcome.channel
    effects: list[ChannelEffect] = [Unsubscribed(channel)]
    if outcome.member_removed is not None:
        effects.append(Broadcast(channel, events.member_removed(channel, outcome.member_removed)))
        effects.append(MemberRemoved(channel, outcome.member_removed))
    if outcome.vacated:
        effects.append(Vacated(channel))
    elif counts_subscriptions(app, channel):
        effects.append(CountChanged(channel))
    return effects


def count_known(channel: str, count: int) -> list[ChannelEffect]:
    """
    The adapter counted C{channel}'s subscribers: broadcast
    C{pusher_internal:subscription_count} (nothing when the channel emptied
    meanwhile: it was vacated).
    """
    if count <= 0:
        return []
    return [
        Broadcast(channel, events.subscription_count(channel, count)),
        SubscriptionCount(channel, count),
    ]
