"""
Adapters (Sockudo's word): the fan-out backend that delivers events to
subscribers and answers cluster-wide questions about channels and users.

Not a zope adapter. L{IAdapter} is what the HTTP API and the WebSocket glue
talk to; the local adapter serves one process, the Redis adapter a cluster.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from sockudo_tw.pusher.presence import PresenceMember
from sockudo_tw.registry import SignInOutcome, SocketRemoval, SubscribeOutcome, UnsubscribeOutcome

__all__ = ["SUPPORTED_ADAPTER_DRIVERS", "IAdapter", "ILocalSocket", "validate_adapter_driver"]


class ILocalSocket(Interface):
    """
    A client connection on this node, as the adapter sees it: somewhere to
    deliver frames to.
    """

    socket_id = Attribute("The connection's Pusher socket id (C{str}).")

    def send_frame(frame: bytes) -> None:
        """
        Send one serialised Pusher frame (framed for this connection).
        """

    def send_wire(wire: bytes) -> None:
        """
        Send a message already framed as a WebSocket text frame (the
        broadcast path frames once for every subscriber).
        """

    def close(code: int, reason: str) -> None:
        """
        Close the connection with C{pusher:error} and this close code.
        """


class IAdapter(Interface):
    """
    Delivery and cluster-wide queries for every app.

    A backend fault (Redis down, stalled, restarted empty) never escapes
    into the protocol: no method raises for it and no returned Deferred
    fails for it. Delivery to other nodes is dropped instead, queries and
    membership decisions fall back to this node's state, and a cluster
    adapter repairs what it could not announce once the backend is back.
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

    # -- membership: the transitions the WebSocket glue needs decided ------
    # In a cluster these are cluster-wide facts (first socket of a user
    # anywhere, last socket of a channel anywhere), so the adapter, not the
    # glue, decides them and says so in its outcomes.

    def add_socket(app_id: str, socket: ILocalSocket) -> None:
        """
        Register an accepted connection on this node.
        """

    def has_socket(socket_id: str) -> bool:
        """
        Whether this node already has a connection with C{socket_id}.
        """

    def remove_socket(app_id: str, socket_id: str) -> Deferred[SocketRemoval[ILocalSocket]]:
        """
        Forget a connection: leave its channels, sign it out, drop its
        watchlist; watchers of a user who went offline are told by the
        adapter. The outcome lists the channel transitions.
        """

    def subscribe(
        app_id: str,
        channel: str,
        socket_id: str,
        member: PresenceMember | None,
        max_members: int,
    ) -> Deferred[SubscribeOutcome]:
        """
        Add the socket to C{channel}; presence channels refuse a new user
        once C{max_members} users are in (0 is unlimited).
        """

    def unsubscribe(app_id: str, channel: str, socket_id: str) -> Deferred[UnsubscribeOutcome]:
        """
        Remove the socket from C{channel}.
        """

    def sign_in(
        app_id: str, socket_id: str, user_id: str, watchlist: tuple[str, ...]
    ) -> Deferred[SignInOutcome[ILocalSocket]]:
        """
        Record the socket's signed-in user and watchlist; watchers of a user
        who came online are told by the adapter. The outcome has the
        watched ids' online state.
        """


SUPPORTED_ADAPTER_DRIVERS = ("local", "redis")


def validate_adapter_driver(driver: str) -> None:
    """
    Refuse, at config load, an C{adapter.driver} Sockudo has and we do not:
    running such a node on the local adapter instead would leave it cut off
    from the rest of its cluster without a word.

    @raise ValueError: naming the key and what to use instead.
    """
    if driver not in SUPPORTED_ADAPTER_DRIVERS:
        raise ValueError(
            f"adapter.driver: {driver!r} is not supported by sockudo-tw yet; "
            'use "redis" to join nodes into a cluster, or "local" for one node'
        )
