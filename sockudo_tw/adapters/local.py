# -*- test-case-name: tests.test_local_adapter -*-
"""
The local adapter: one process, no cluster.

Every question is answered from this node's L{Registry}; every answer is
already fired. Broadcasts frame the Pusher frame once and write the same
bytes to each subscriber.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from sockudo_tw.adapters import IAdapter, ILocalSocket
from sockudo_tw.framing import text_frame
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.pusher import events
from sockudo_tw.pusher.errors import PusherErrorCode
from sockudo_tw.pusher.presence import PresenceMember
from sockudo_tw.registry import (
    Registry,
    SignInOutcome,
    SocketRemoval,
    SubscribeOutcome,
    UnsubscribeOutcome,
)

__all__ = ["LocalAdapter"]


@implementer(IAdapter)
class LocalAdapter:
    """
    L{IAdapter} for a single node.

    @ivar registry: the node's index (shared with nothing else).
    @ivar observer: told about every broadcast delivery (metrics).
    """

    def __init__(
        self,
        observer: IPusherEvents | None = None,
        framer: Callable[[bytes], bytes] = text_frame,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        """
        @param timer: measures each broadcast's local fan-out (seconds).
        """
        self.registry: Registry[ILocalSocket] = Registry()
        self.observer: IPusherEvents = observer if observer is not None else NoPusherEvents()
        self._framer = framer
        self._timer = timer

    # -- delivery ------------------------------------------------------------

    def broadcast(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        subscribers = self.registry.subscribers(app_id, channel)
        if not subscribers:
            return
        started = self._timer()
        wire = self._framer(frame)
        sent = 0
        for socket_id, socket in tuple(subscribers.items()):
            if socket_id != except_socket_id:
                socket.send_wire(wire)
                sent += 1
        if sent:
            self.observer.broadcast_delivered(app_id, channel, len(wire), sent)
            self.observer.broadcast_timed(app_id, channel, sent, self._timer() - started)

    def terminate_user_connections(self, app_id: str, user_id: str) -> None:
        for socket in self.registry.user_sockets(app_id, user_id):
            socket.close(PusherErrorCode.UNAUTHORIZED, "User terminated by app.")

    # -- queries -------------------------------------------------------------

    def channels(self, app_id: str) -> Deferred[dict[str, int]]:
        return succeed(self.registry.channel_counts(app_id))

    def channel_subscription_count(self, app_id: str, channel: str) -> Deferred[int]:
        return succeed(len(self.registry.subscribers(app_id, channel)))

    def presence_members(self, app_id: str, channel: str) -> Deferred[dict[str, Any]]:
        return succeed(self.registry.members(app_id, channel))

    def app_connection_count(self, app_id: str) -> Deferred[int]:
        return succeed(self.registry.socket_count(app_id))

    # -- membership ----------------------------------------------------------

    def add_socket(self, app_id: str, socket: ILocalSocket) -> None:
        self.registry.add_socket(app_id, socket.socket_id, socket)

    def has_socket(self, socket_id: str) -> bool:
        return self.registry.has_socket(socket_id)

    def remove_socket(self, app_id: str, socket_id: str) -> Deferred[SocketRemoval[ILocalSocket]]:
        removal = self.registry.remove_socket(socket_id)
        if removal is None:
            return succeed(SocketRemoval(app_id))
        if removal.went_offline is not None and removal.watchers:
            frame = events.watchlist_events([("offline", [removal.went_offline])])
            for watcher in removal.watchers:
                watcher.send_frame(frame)
        return succeed(removal)

    def subscribe(
        self,
        app_id: str,
        channel: str,
        socket_id: str,
        member: PresenceMember | None,
        max_members: int,
    ) -> Deferred[SubscribeOutcome]:
        return succeed(self.registry.subscribe(app_id, channel, socket_id, member, max_members))

    def unsubscribe(
        self, app_id: str, channel: str, socket_id: str
    ) -> Deferred[UnsubscribeOutcome]:
        return succeed(self.registry.unsubscribe(app_id, channel, socket_id))

    def sign_in(
        self, app_id: str, socket_id: str, user_id: str, watchlist: tuple[str, ...]
    ) -> Deferred[SignInOutcome[ILocalSocket]]:
        outcome = self.registry.sign_in(app_id, socket_id, user_id, watchlist)
        if outcome.came_online and outcome.watchers:
            frame = events.watchlist_events([("online", [user_id])])
            for watcher in outcome.watchers:
                watcher.send_frame(frame)
        return succeed(outcome)
