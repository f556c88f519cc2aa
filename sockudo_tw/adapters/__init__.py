"""
Adapters (Sockudo's word): the fan-out backend that delivers events to
subscribers and answers cluster-wide questions about channels and users.

Not a zope adapter. L{IAdapter} is what the HTTP API and the WebSocket glue
talk to; one module per driver, chosen by name in L{DRIVERS}: the local
adapter (C{local.py}) serves one process, the Redis adapter (C{redis.py},
its connections in C{_redis_link.py}, its Lua scripts in
C{redis_scripts/}) a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface

from sockudo_tw.pusher.presence import PresenceMember
from sockudo_tw.registry import SignInOutcome, SocketRemoval, SubscribeOutcome, UnsubscribeOutcome

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig
    from sockudo_tw.hooks import IPusherEvents
    from sockudo_tw.queues import RedisCommands

__all__ = [
    "DRIVERS",
    "SUPPORTED_ADAPTER_DRIVERS",
    "AdapterFactory",
    "AdapterParts",
    "HealthCheck",
    "IAdapter",
    "ILocalSocket",
    "build_adapter",
    "validate_adapter_driver",
]


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


HealthCheck = Callable[[], Deferred[bool]]
"""
Fires C{True} while the adapter's backend is reachable (C{/up}).
"""


@attrs.frozen
class AdapterParts:
    """
    A built adapter, as the composition root wires it.

    @ivar health: the adapter's health check (C{/up}).
    @ivar observe: sets the observer told about deliveries and channel
        transitions (built after the adapter: the webhook sink in it may
        keep its state in the adapter's Redis).
    @ivar redis: the adapter's own Redis connection, if any, for the parts
        of the node that keep cluster-wide state (held webhook leaves).
    @ivar node_id: this node's id in the cluster (L{None} for one node).
    @ivar forget_node: removes the state of another node known to be dead
        at once (a worker process that exited), if the adapter can.
    @ivar drain: told when the shutdown starts closing every client, if
        the adapter can leave the cluster faster than socket by socket.
    """

    adapter: IAdapter
    health: HealthCheck
    observe: Callable[[IPusherEvents], None]
    redis: RedisCommands | None = None
    node_id: str | None = None
    forget_node: Callable[[str], Deferred[bool]] | None = None
    drain: Callable[[], None] | None = None


AdapterFactory = Callable[["ServerConfig", Any], AdapterParts]


def _always_healthy() -> Deferred[bool]:
    return succeed(True)


def _local(config: ServerConfig, reactor: Any) -> AdapterParts:
    from sockudo_tw.adapters.local import LocalAdapter

    local = LocalAdapter()

    def observe(observer: IPusherEvents) -> None:
        local.observer = observer

    return AdapterParts(local, _always_healthy, observe)


def _redis(config: ServerConfig, reactor: Any, node_id: str | None = None) -> AdapterParts:
    from sockudo_tw.adapters.redis import redis_adapter_from_config

    cluster = redis_adapter_from_config(config, reactor, node_id=node_id)

    def observe(observer: IPusherEvents) -> None:
        cluster.observer = observer

    return AdapterParts(
        cluster,
        cluster.health,
        observe,
        cluster.link,
        cluster.node_id,
        cluster.forget_node,
        cluster.drain,
    )


def _nats(config: ServerConfig, reactor: Any) -> AdapterParts:
    from sockudo_tw.adapters.nats import nats_adapter_from_config

    cluster = nats_adapter_from_config(config, reactor)

    def observe(observer: IPusherEvents) -> None:
        cluster.observer = observer

    return AdapterParts(cluster, cluster.health, observe)


def _redis_cluster(config: ServerConfig, reactor: Any) -> AdapterParts:
    from sockudo_tw.adapters.redis_cluster import redis_cluster_adapter_from_config

    cluster = redis_cluster_adapter_from_config(config, reactor)

    def observe(observer: IPusherEvents) -> None:
        cluster.observer = observer

    return AdapterParts(cluster, cluster.health, observe, cluster.link)


DRIVERS: dict[str, AdapterFactory] = {
    "local": _local,
    "redis": _redis,
    "nats": _nats,
    "redis-cluster": _redis_cluster,
}
"""
C{adapter.driver} to the factory building the adapter (and its health
check and Redis connection) from the config and the reactor.
"""

SUPPORTED_ADAPTER_DRIVERS = tuple(DRIVERS)


def build_adapter(config: ServerConfig, reactor: Any, node_id: str | None = None) -> AdapterParts:
    """
    The adapter C{adapter.driver} names, with its health check.

    @param node_id: the node id a worker process was given by its
        supervisor (only the Redis adapter joins workers; see
        L{sockudo_tw.workers}).
    """
    if node_id is not None:
        if config.adapter.driver != "redis":
            raise ValueError(
                f"a worker's node id needs the redis adapter, not {config.adapter.driver!r}"
            )
        return _redis(config, reactor, node_id=node_id)
    return DRIVERS[config.adapter.driver](config, reactor)


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
