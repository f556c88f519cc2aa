"""
In-memory test doubles shared by the test modules.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from sockudo_tw.adapters import IAdapter

__all__ = ["Broadcast", "RecordingAdapter"]


@attrs.frozen
class Broadcast:
    """
    One call to L{IAdapter.broadcast}.
    """

    app_id: str
    channel: str
    frame: bytes
    except_socket_id: str | None


@implementer(IAdapter)
class RecordingAdapter:
    """
    An adapter that records what it is asked to deliver and answers queries
    from dicts the test fills in.

    @ivar broadcasts: every broadcast, in order.
    @ivar terminated: every C{(app_id, user_id)} asked to be terminated.
    @ivar subscriptions: C{(app_id, channel)} -> subscription (socket) count.
    @ivar members: C{(app_id, channel)} -> presence members (user id -> info).
    @ivar connections: app id -> open socket count.
    @ivar queries: every query made, as C{(method name, args...)}, so tests
        can check what the caller asked and in which order.
    """

    def __init__(self) -> None:
        self.broadcasts: list[Broadcast] = []
        self.terminated: list[tuple[str, str]] = []
        self.subscriptions: dict[tuple[str, str], int] = {}
        self.members: dict[tuple[str, str], dict[str, Any]] = {}
        self.connections: dict[str, int] = {}
        self.queries: list[tuple[str, ...]] = []

    def subscribe(self, app_id: str, channel: str, count: int = 1) -> None:
        """
        Pretend C{count} more sockets subscribed to C{channel}.
        """
        key = (app_id, channel)
        self.subscriptions[key] = self.subscriptions.get(key, 0) + count

    def join(self, app_id: str, channel: str, user_id: str, info: Any = None) -> None:
        """
        Pretend C{user_id} joined the presence C{channel} with one socket.
        """
        self.members.setdefault((app_id, channel), {})[user_id] = info
        self.subscribe(app_id, channel)

    def broadcast(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        self.broadcasts.append(Broadcast(app_id, channel, frame, except_socket_id))

    def channels(self, app_id: str) -> Deferred[dict[str, int]]:
        self.queries.append(("channels", app_id))
        return succeed(
            {ch: n for (app, ch), n in self.subscriptions.items() if app == app_id and n > 0}
        )

    def channel_subscription_count(self, app_id: str, channel: str) -> Deferred[int]:
        self.queries.append(("channel_subscription_count", app_id, channel))
        return succeed(self.subscriptions.get((app_id, channel), 0))

    def presence_members(self, app_id: str, channel: str) -> Deferred[dict[str, Any]]:
        self.queries.append(("presence_members", app_id, channel))
        return succeed(dict(self.members.get((app_id, channel), {})))

    def app_connection_count(self, app_id: str) -> Deferred[int]:
        self.queries.append(("app_connection_count", app_id))
        return succeed(self.connections.get(app_id, 0))

    def terminate_user_connections(self, app_id: str, user_id: str) -> None:
        self.terminated.append((app_id, user_id))
