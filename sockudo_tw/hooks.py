# -*- test-case-name: tests.test_websocket -*-
"""
The observer the WebSocket glue tells about Pusher transitions and traffic.

Webhooks (channel_occupied, member_added, client_event, cache_miss,
subscription_count, ...) and metrics plug in here without touching the
protocol code: implement L{IPusherEvents} (subclass L{NoPusherEvents} to get
no-op defaults) and pass it to the WebSocket factory.
"""

from __future__ import annotations

from zope.interface import Interface, implementer

__all__ = ["IPusherEvents", "NoPusherEvents"]


class IPusherEvents(Interface):
    """
    Transitions and counters of the WebSocket side. Calls happen on the
    reactor thread and must return quickly (queue work, do not wait).
    """

    def connection_opened(app_id: str, socket_id: str) -> None:
        """
        A connection was accepted (after C{connection_established}).
        """

    def connection_closed(app_id: str, socket_id: str) -> None:
        """
        An accepted connection ended.
        """

    def connection_rejected(app_id: str | None, code: int) -> None:
        """
        A connection was refused at connect time with this Pusher code.
        """

    def channel_occupied(app_id: str, channel: str) -> None:
        """
        A channel got its first subscriber.
        """

    def channel_vacated(app_id: str, channel: str) -> None:
        """
        A channel lost its last subscriber.
        """

    def member_added(app_id: str, channel: str, user_id: str) -> None:
        """
        A user joined a presence channel (first socket).
        """

    def member_removed(app_id: str, channel: str, user_id: str) -> None:
        """
        A user left a presence channel (last socket).
        """

    def subscribed(app_id: str, channel: str, socket_id: str) -> None:
        """
        A socket's subscription succeeded.
        """

    def unsubscribed(app_id: str, channel: str, socket_id: str) -> None:
        """
        A socket left a channel (unsubscribe or disconnect).
        """

    def subscription_count(app_id: str, channel: str, count: int) -> None:
        """
        A non-presence channel's socket count changed (coalesced per turn).
        """

    def client_event(
        app_id: str, channel: str, event: str, data: str | None, socket_id: str, user_id: str | None
    ) -> None:
        """
        A client event was relayed.
        """

    def cache_miss(app_id: str, channel: str) -> None:
        """
        A cache channel subscriber found nothing cached.
        """

    def message_received(app_id: str, size: int) -> None:
        """
        A WebSocket message of C{size} bytes arrived from a client.
        """

    def message_sent(app_id: str, size: int) -> None:
        """
        A frame of C{size} bytes was sent to one client (not counting
        broadcasts, which the adapter reports with L{broadcast_delivered}).
        """

    def broadcast_delivered(app_id: str, channel: str, size: int, recipients: int) -> None:
        """
        The adapter wrote one broadcast frame of C{size} bytes to
        C{recipients} local sockets.
        """

    def broadcast_timed(app_id: str, channel: str, recipients: int, seconds: float) -> None:
        """
        The adapter's local fan-out of one broadcast (framing and writing
        to C{recipients} sockets) took C{seconds}.
        """

    def slow_consumer_closed(app_id: str, socket_id: str) -> None:
        """
        A connection was closed (4100) because its outbound buffer was full.
        """


@implementer(IPusherEvents)
class NoPusherEvents:
    """
    An observer that ignores everything; subclass it and override what you
    need.
    """

    def connection_opened(self, app_id: str, socket_id: str) -> None:
        pass

    def connection_closed(self, app_id: str, socket_id: str) -> None:
        pass

    def connection_rejected(self, app_id: str | None, code: int) -> None:
        pass

    def channel_occupied(self, app_id: str, channel: str) -> None:
        pass

    def channel_vacated(self, app_id: str, channel: str) -> None:
        pass

    def member_added(self, app_id: str, channel: str, user_id: str) -> None:
        pass

    def member_removed(self, app_id: str, channel: str, user_id: str) -> None:
        pass

    def subscribed(self, app_id: str, channel: str, socket_id: str) -> None:
        pass

    def unsubscribed(self, app_id: str, channel: str, socket_id: str) -> None:
        pass

    def subscription_count(self, app_id: str, channel: str, count: int) -> None:
        pass

    def client_event(
        self,
        app_id: str,
        channel: str,
        event: str,
        data: str | None,
        socket_id: str,
        user_id: str | None,
    ) -> None:
        pass

    def cache_miss(self, app_id: str, channel: str) -> None:
        pass

    def message_received(self, app_id: str, size: int) -> None:
        pass

    def message_sent(self, app_id: str, size: int) -> None:
        pass

    def broadcast_delivered(self, app_id: str, channel: str, size: int, recipients: int) -> None:
        pass

    def broadcast_timed(self, app_id: str, channel: str, recipients: int, seconds: float) -> None:
        pass

    def slow_consumer_closed(self, app_id: str, socket_id: str) -> None:
        pass
