"""
Adapters (Sockudo's word): the fan-out backend that delivers events to
subscribers and answers cluster-wide questions about channels and users.

Not a zope adapter. L{IAdapter} is what the HTTP API and the WebSocket glue
talk to; the local adapter serves one process, the Redis adapter a cluster.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = ["IAdapter"]


class IAdapter(Interface):
    """
    Delivery and cluster-wide queries for every app.
    """

    def broadcast(app_id: str, channel: str, frame: bytes, except_socket_id: str | None) -> None:
        """
        Deliver the serialised Pusher C{frame} to every subscriber of
        C{channel} on every node, except the socket C{except_socket_id}.
        Returns at once: it never waits for the fan-out or the cluster.
        """

    def channels(app_id: str) -> Deferred[dict[str, int]]:
        """
        The app's occupied channels with their subscription (socket) counts,
        cluster-wide.
        """

    def channel_subscription_count(app_id: str, channel: str) -> Deferred[int]:
        """
        How many sockets are subscribed to C{channel}, cluster-wide.
        """

    def presence_members(app_id: str, channel: str) -> Deferred[dict[str, Any]]:
        """
        The members of a presence channel, user id to C{user_info},
        cluster-wide.
        """

    def app_connection_count(app_id: str) -> Deferred[int]:
        """
        How many sockets the app has open, cluster-wide.
        """

    def terminate_user_connections(app_id: str, user_id: str) -> None:
        """
        Close (4009) every socket signed in as C{user_id}, on every node.
        """
