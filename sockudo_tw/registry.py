# -*- test-case-name: tests.test_registry -*-
"""
This node's index of who is where: app -> channel -> sockets, presence
members per channel (by user id, counting each user's sockets), signed-in
users and their sockets, and watchlists.

Pure data structures (no Twisted): every mutation returns an outcome saying
which Pusher-visible transition it caused (channel occupied or vacated,
member added or removed, user online or offline), so that the adapter can
report those decisions to the glue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

import attrs

from sockudo_tw.pusher.presence import PresenceMember
from sockudo_tw.pusher.subscriptions import SubscribeOutcome, UnsubscribeOutcome

__all__ = [
    "Registry",
    "SignInOutcome",
    "SocketRemoval",
    "SubscribeOutcome",
    "UnsubscribeOutcome",
]

S = TypeVar("S")


@attrs.frozen
class SignInOutcome(Generic[S]):
    """
    What a sign-in changed.

    @ivar came_online: this is the user's first signed-in socket.
    @ivar online: watched ids that are online now.
    @ivar offline: watched ids that are not.
    @ivar watchers: sockets watching this user, to tell it came online.
    """

    came_online: bool
    online: tuple[str, ...] = ()
    offline: tuple[str, ...] = ()
    watchers: tuple[S, ...] = ()


@attrs.frozen
class SocketRemoval(Generic[S]):
    """
    Everything a disconnect changed.

    @ivar unsubscribed: one outcome per channel the socket was in.
    @ivar went_offline: the user id whose last signed-in socket left.
    @ivar watchers: sockets watching that user, to tell it went offline.
    @ivar user_id: the user the socket was signed in as, if any (a cluster
        adapter takes the socket's share of that user out of the cluster).
    @ivar watchlist: the ids the socket watched.
    """

    app_id: str
    unsubscribed: tuple[UnsubscribeOutcome, ...] = ()
    went_offline: str | None = None
    watchers: tuple[S, ...] = ()
    user_id: str | None = None
    watchlist: tuple[str, ...] = ()


@attrs.define
class _Member:
    user_info: Any
    sockets: int


@attrs.define
class _App(Generic[S]):
    sockets: dict[str, S] = attrs.Factory(dict)
    channels: dict[str, dict[str, S]] = attrs.Factory(dict)
    presence: dict[str, dict[str, _Member]] = attrs.Factory(dict)
    users: dict[str, dict[str, S]] = attrs.Factory(dict)
    watchers: dict[str, dict[str, S]] = attrs.Factory(dict)


@attrs.define
class _SocketState:
    app_id: str
    channels: dict[str, str | None] = attrs.Factory(dict)
    user_id: str | None = None
    watchlist: tuple[str, ...] = ()


class Registry(Generic[S]):
    """
    The local index, generic over what a socket is (the glue's protocol
    object; the tests use anything).
    """

    def __init__(self) -> None:
        self._apps: dict[str, _App[S]] = {}
        self._sockets: dict[str, _SocketState] = {}

    def _app(self, app_id: str) -> _App[S]:
        app = self._apps.get(app_id)
        if app is None:
            app = self._apps[app_id] = _App()
        return app

    # -- sockets -------------------------------------------------------------

    def add_socket(self, app_id: str, socket_id: str, socket: S) -> None:
        """
        Register a newly accepted socket.
        """
        self._app(app_id).sockets[socket_id] = socket
        self._sockets[socket_id] = _SocketState(app_id)

    def has_socket(self, socket_id: str) -> bool:
        """
        Whether C{socket_id} is registered (socket ids must be unique).
        """
        return socket_id in self._sockets

    def socket(self, app_id: str, socket_id: str) -> S | None:
        """
        The socket with this id in this app, if any.
        """
        app = self._apps.get(app_id)
        return app.sockets.get(socket_id) if app is not None else None

    def socket_count(self, app_id: str) -> int:
        """
        How many sockets the app has on this node.
        """
        app = self._apps.get(app_id)
        return len(app.sockets) if app is not None else 0

    def app_ids(self) -> list[str]:
        """
        The apps with at least one socket on this node (metrics read their
        channels at scrape time).
        """
        return list(self._apps)

    def remove_socket(self, socket_id: str) -> SocketRemoval[S] | None:
        """
        Forget a socket: leave every channel, sign out, drop its watchlist.
        """
        state = self._sockets.get(socket_id)
        if state is None:
            return None
        unsubscribed = tuple(
            self.unsubscribe(state.app_id, channel, socket_id) for channel in list(state.channels)
        )
        app = self._app(state.app_id)
        went_offline: str | None = None
        watchers: tuple[S, ...] = ()
        for watched in state.watchlist:
            table = app.watchers.get(watched)
            if table is not None:
                table.pop(socket_id, None)
                if not table:
                    del app.watchers[watched]
        if state.user_id is not None:
            sockets = app.users.get(state.user_id)
            if sockets is not None:
                sockets.pop(socket_id, None)
                if not sockets:
                    del app.users[state.user_id]
                    went_offline = state.user_id
                    watchers = tuple(app.watchers.get(state.user_id, {}).values())
        app.sockets.pop(socket_id, None)
        del self._sockets[socket_id]
        if not app.sockets:
            del self._apps[state.app_id]
        return SocketRemoval(
            state.app_id, unsubscribed, went_offline, watchers, state.user_id, state.watchlist
        )

    # -- channels ------------------------------------------------------------

    def subscribe(
        self,
        app_id: str,
        channel: str,
        socket_id: str,
        member: PresenceMember | None = None,
        max_members: int = 0,
    ) -> SubscribeOutcome:
        """
        Add a registered socket to a channel (idempotent), with its presence
        member on presence channels; refuse a new user when the channel
        already has C{max_members} users (0 is unlimited).
        """
        state = self._sockets.get(socket_id)
        if state is None or state.app_id != app_id:
            return SubscribeOutcome(accepted=False)
        app = self._app(app_id)
        subscribers = app.channels.get(channel)
        members: dict[str, _Member] | None = None
        added = False
        if member is not None:
            members = app.presence.get(channel)
            known = members is not None and member.user_id in members
            already = channel in state.channels
            if (
                not known
                and not already
                and max_members
                and members is not None
                and len(members) >= max_members
            ):
                return SubscribeOutcome(accepted=False, count=len(subscribers or ()))
        if subscribers is None:
            subscribers = app.channels[channel] = {}
        occupied = not subscribers
        socket = app.sockets[socket_id]
        if socket_id not in subscribers:
            subscribers[socket_id] = socket
            if member is not None:
                if members is None:
                    members = app.presence[channel] = {}
                entry = members.get(member.user_id)
                if entry is None:
                    members[member.user_id] = _Member(member.user_info, 1)
                    added = True
                else:
                    entry.sockets += 1
                    entry.user_info = member.user_info
            state.channels[channel] = member.user_id if member is not None else None
        view = None
        if member is not None:
            view = self.members(app_id, channel)
        return SubscribeOutcome(
            accepted=True,
            occupied=occupied,
            member_added=added,
            members=view,
            count=len(subscribers),
        )

    def unsubscribe(self, app_id: str, channel: str, socket_id: str) -> UnsubscribeOutcome:
        """
        Remove a socket from a channel (a no-op outcome if it was not in it).
        """
        state = self._sockets.get(socket_id)
        app = self._apps.get(app_id)
        if state is None or app is None or channel not in state.channels:
            subs = app.channels.get(channel) if app is not None else None
            return UnsubscribeOutcome(channel, removed=False, count=len(subs or ()))
        user_id = state.channels.pop(channel)
        subscribers = app.channels[channel]
        subscribers.pop(socket_id, None)
        removed_user: str | None = None
        if user_id is not None:
            members = app.presence[channel]
            entry = members[user_id]
            entry.sockets -= 1
            if entry.sockets <= 0:
                del members[user_id]
                removed_user = user_id
            if not members:
                del app.presence[channel]
        count = len(subscribers)
        if not count:
            del app.channels[channel]
        return UnsubscribeOutcome(
            channel, removed=True, vacated=not count, member_removed=removed_user, count=count
        )

    def subscribers(self, app_id: str, channel: str) -> Mapping[str, S]:
        """
        The sockets subscribed to a channel, by socket id (a live view: copy
        it before doing anything that may unsubscribe).
        """
        app = self._apps.get(app_id)
        if app is None:
            return {}
        return app.channels.get(channel, {})

    def channel_counts(self, app_id: str) -> dict[str, int]:
        """
        The app's occupied channels and their socket counts.
        """
        app = self._apps.get(app_id)
        if app is None:
            return {}
        return {name: len(subs) for name, subs in app.channels.items()}

    def members(self, app_id: str, channel: str) -> dict[str, Any]:
        """
        A presence channel's members: user id -> user_info.
        """
        app = self._apps.get(app_id)
        if app is None:
            return {}
        return {uid: m.user_info for uid, m in app.presence.get(channel, {}).items()}

    def socket_channels(self, socket_id: str) -> list[str]:
        """
        The channels a socket is in.
        """
        state = self._sockets.get(socket_id)
        return list(state.channels) if state is not None else []

    # -- users ---------------------------------------------------------------

    def sign_in(
        self, app_id: str, socket_id: str, user_id: str, watchlist: Iterable[str] = ()
    ) -> SignInOutcome[S]:
        """
        Record a socket's signed-in user and its watchlist; report whether
        the user just came online and the online state of the watched ids.
        """
        state = self._sockets.get(socket_id)
        if state is None or state.app_id != app_id or state.user_id is not None:
            return SignInOutcome(came_online=False)
        app = self._app(app_id)
        sockets = app.users.get(user_id)
        came_online = sockets is None
        if sockets is None:
            sockets = app.users[user_id] = {}
        sockets[socket_id] = app.sockets[socket_id]
        state.user_id = user_id
        watched = tuple(watchlist)
        state.watchlist = watched
        for uid in watched:
            app.watchers.setdefault(uid, {})[socket_id] = app.sockets[socket_id]
        online = tuple(uid for uid in watched if uid in app.users)
        offline = tuple(uid for uid in watched if uid not in app.users)
        watchers: tuple[S, ...] = ()
        if came_online:
            watchers = tuple(
                s for sid, s in app.watchers.get(user_id, {}).items() if sid != socket_id
            )
        return SignInOutcome(came_online, online, offline, watchers)

    def app_of(self, socket_id: str) -> str | None:
        """
        The app C{socket_id} belongs to, if it is registered.
        """
        state = self._sockets.get(socket_id)
        return state.app_id if state is not None else None

    def user_of(self, socket_id: str) -> str | None:
        """
        The user C{socket_id} is signed in as, if any.
        """
        state = self._sockets.get(socket_id)
        return state.user_id if state is not None else None

    def watchers(self, app_id: str, user_id: str) -> dict[str, S]:
        """
        The sockets watching C{user_id}, by socket id (a copy: a cluster
        adapter tells them about transitions decided on other nodes).
        """
        app = self._apps.get(app_id)
        if app is None:
            return {}
        return dict(app.watchers.get(user_id, {}))

    def user_sockets(self, app_id: str, user_id: str) -> list[S]:
        """
        The sockets signed in as C{user_id}.
        """
        app = self._apps.get(app_id)
        if app is None:
            return []
        return list(app.users.get(user_id, {}).values())
