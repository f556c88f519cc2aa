# -*- test-case-name: tests.test_redis_cluster_adapter -*-
"""
The Redis Cluster adapter (C{adapter.driver: redis-cluster}): the Redis
adapter's design (L{sockudo_tw.adapters.redis}: shared state changed by
atomic Lua scripts, node liveness, a pub/sub bus) on a Redis Cluster.

Slots: every adapter key starts with the prefix C{{<adapter.cluster.prefix>}:},
one hash tag, so all of them live in one slot and each script (which
reads and writes a node's contribution across all apps, the node
registry and the per-app counts in one atomic step) runs unchanged on the
master of that slot. A hash tag per app would spread apps over masters
but split that atomic step (a node's sync, purge and liveness span every
app), so the scripts would need rewriting per app with their own node
registry; not done: the adapter's Redis load (36 us per script, see
L{sockudo_tw.adapters.redis}) fits one master well past what one Pusher
cluster sends. What the cluster gives here is running on the Redis users
already operate, failover/restart/migration of that slot followed
(C{MOVED}, C{ASK}, slot-map refresh: L{sockudo_tw.adapters._cluster_router}),
and other keys on the same connections (webhook queue, held leaves) routed
to their own masters.

Pub/sub: sharded (Redis 7.0+), C{SPUBLISH}/C{SSUBSCRIBE} on the bus
channel, which has the same hash tag, so it lives on the home master and
every daemon listens there (C{PUBSUB SHARDNUMSUB} counts them for the
resync). Classic C{PUBLISH} (C{sharded=False}, kept for tests and
comparison) is forwarded by Redis Cluster to every node over the cluster
bus. Measured on this 2-core machine, 3 masters, 3 subscribers, 300-byte
messages, C{redis-benchmark -c 4 -P 20}: classic 63,000-109,000 msg/s,
each message costing ~4.7 us of CPU on the home master and ~2.1 us on
each other master; sharded 224,000-279,000 msg/s, ~1.8 us on the home
master and nothing elsewhere. A per-app bus (one shard channel per app)
would spread the load over masters but make every node subscribe to
every app's channel on every master; not done, as the state's one slot
already ties the adapter to one master.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from zope.interface import implementer

from sockudo_tw.adapters._cluster_router import (
    ClusterLink,
    ClusterTopology,
    ShardedClusterLink,
    key_slot,
)
from sockudo_tw.adapters._redis_link import RedisLink
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.adapters.redis import APPLY, HEARTBEAT, JOIN, RedisAdapter, RedisNodeOptions
from sockudo_tw.redisurl import RedisUrl, parse_redis_url

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = [
    "RedisClusterAdapter",
    "cluster_prefix",
    "parse_cluster_nodes",
    "redis_cluster_adapter_from_config",
]


def cluster_prefix(prefix: str) -> str:
    """
    The key prefix for C{adapter.cluster.prefix}: wrapped in a hash tag
    (C{sockudo} -> C{{sockudo}:}) unless it already has one, so every
    adapter key shares one slot.
    """
    start = prefix.find("{")
    if start != -1 and prefix.find("}", start + 1) > start + 1:
        return prefix
    return "{" + prefix + "}:"


def parse_cluster_nodes(nodes: tuple[str, ...] | list[str]) -> list[RedisUrl]:
    """
    C{adapter.cluster.nodes} (C{REDIS_CLUSTER_NODES}): C{redis://host:port}
    URLs or bare C{host:port}, each a seed for the slot map.

    @raise ValueError: on an empty list, a Unix socket, or a bad entry.
    """
    urls = []
    for node in nodes:
        text = node.strip()
        if not text:
            continue
        url = parse_redis_url(text if "://" in text else "redis://" + text)
        if url.path is not None:
            raise ValueError(f"adapter.cluster.nodes: {node!r}: a cluster node needs host:port")
        urls.append(url)
    if not urls:
        raise ValueError("adapter.cluster.nodes: at least one Redis Cluster node is needed")
    return urls


class RedisClusterAdapter(RedisAdapter):
    """
    L{RedisAdapter} whose connections go to the master of its hash tag's
    slot through a L{ClusterLink}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        topology: ClusterTopology,
        options: RedisNodeOptions | None = None,
        local: LocalAdapter | None = None,
        node_id: str | None = None,
        refresh_interval: float = 30.0,
        sharded: bool = True,
    ) -> None:
        self.topology = topology
        self._sharded = sharded
        self._refresh_interval = refresh_interval
        options = options if options is not None else RedisNodeOptions()
        options = attrs.evolve(options, prefix=cluster_prefix(options.prefix), db=None)
        anchor = (options.prefix + "nodes").encode()
        super().__init__(clock, _Unused(key_slot(anchor)), options, local, node_id)

    def _make_link(self, clock: IReactorTime, endpoint: IStreamClientEndpoint) -> RedisLink:
        """
        A L{ClusterLink} anchored on this adapter's node registry key.
        """
        link_class = ShardedClusterLink if self._sharded else ClusterLink
        return link_class(
            clock,
            self.topology,
            (self._prefix + "nodes").encode(),
            (self._prefix + "#bus").encode(),
            self._on_message,
            refresh_interval=self._refresh_interval,
            scripts=(APPLY, JOIN, HEARTBEAT),
            password=self.options.password,
            username=self.options.username,
            ping_interval=self.options.ping_interval,
            ping_timeout=self.options.ping_timeout,
            max_delay=self.options.reconnect_max_delay,
        )


@implementer(IStreamClientEndpoint)
class _Unused:
    """
    The endpoint slot of L{RedisAdapter}'s constructor, which
    L{RedisClusterAdapter._make_link} does not use (the link dials the
    master of a slot itself).
    """

    def __init__(self, slot: int) -> None:
        self.slot = slot

    def connect(self, factory: Any) -> Any:
        """
        Never called.
        """
        raise NotImplementedError("the cluster link dials masters itself")


def redis_cluster_adapter_from_config(
    config: ServerConfig, reactor: Any, local: LocalAdapter | None = None
) -> RedisClusterAdapter:
    """
    Build the adapter for C{adapter.driver: redis-cluster}: seeds from
    C{adapter.cluster.nodes} (C{REDIS_CLUSTER_NODES}; credentials and TLS
    from the first), keys and bus under C{adapter.cluster.prefix}, queries
    bounded by C{adapter.cluster.request_timeout_ms}, heartbeats from
    C{adapter.cluster_health}.
    """
    adapter_config = config.adapter
    seeds = parse_cluster_nodes(adapter_config.cluster_nodes)
    first = seeds[0]
    health = adapter_config.cluster_health
    requests_timeout = adapter_config.cluster_request_timeout_ms / 1000
    heartbeat_interval = health.heartbeat_interval_ms / 1000
    node_timeout = health.node_timeout_ms / 1000
    period = min(heartbeat_interval, node_timeout / 4)
    options = RedisNodeOptions(
        prefix=adapter_config.cluster_prefix,
        requests_timeout=requests_timeout,
        heartbeat_interval=heartbeat_interval,
        node_timeout=node_timeout,
        ping_interval=min(10.0, period),
        ping_timeout=min(5.0, requests_timeout),
        password=first.password,
        username=first.username,
    )

    def endpoint_for(host: str, port: int) -> IStreamClientEndpoint:
        return attrs.evolve(first, host=host, port=port, db=None).endpoint(reactor, timeout=5)

    topology = ClusterTopology(
        reactor,
        [(url.host or "127.0.0.1", url.port) for url in seeds],
        endpoint_for,
        password=first.password,
        username=first.username,
        timeout=requests_timeout,
    )
    return RedisClusterAdapter(reactor, topology, options, local=local)
