# -*- test-case-name: tests.test_nats_adapter -*-
"""
The NATS adapter: many C{twistd sockudo} nodes joined through NATS.

Design: replicated contributions, with a read barrier
=====================================================

NATS (core, no JetStream) keeps no state, so every node keeps a replica of
every other node's contribution: per channel its socket count, per
presence channel its users' socket counts and user_info, per app its
connection count, per signed-in user its socket count (the same fields as
the Redis adapter keeps in Redis).
A node publishes each change of its own contribution as a numbered delta
on C{<prefix>.bus}; the others apply it. Sockudo instead asks every node
at each query and waits for a configured number of answers (one by
default, so its answers are local-only).

  - Exact queries: a REST query first runs a barrier: it asks each live
    node (known from heartbeats) for its current delta number and waits
    until its replica of that node has applied that many, then answers
    from local state plus the replicas. So a query sees every change any
    node made before it answered the barrier. A node that does not answer
    within C{request_timeout_ms} is answered for from its replica (what it
    last announced) and counted in C{stale_answers}; it is purged as dead
    after C{node_timeout_ms} without heartbeats.
  - Membership decisions (first socket of a user anywhere, last socket of
    a channel anywhere) are taken after the same barrier, and only when
    this node's own state says it may be one (its first local subscriber
    of the channel, its first local socket of the user, or the last ones):
    other subscribes answer at once. A join holds this node's deltas back
    until it has decided, so its decision sees everything the others did
    before and not itself; two joins (or two leaves) on different nodes
    at the same instant may then both decide (a duplicate C{member_added}
    frame, which pusher-js ignores, or a duplicate webhook), never
    neither. A node that missed a barrier is not waited for again until
    it is heard from (a dead node costs one slow query, not one per
    query until it is purged).
  - Gaps (a lost delta, a node seen for the first time, NATS restarted)
    are noticed from the numbers in deltas and heartbeats; the node then
    asks the other for a snapshot of its whole contribution, so replicas
    converge within one heartbeat period after NATS is back. The members
    that appeared or vanished in the gap are announced to this node's
    clients then (their broadcasts were lost with the deltas).
  - Dead nodes: a node whose heartbeat is older than C{node_timeout_ms}
    is dropped from every replica. The live node with the smallest id
    sends the C{member_removed} frames its users never said and reports
    C{member_removed}/C{channel_vacated} to its observer. While this
    node's own NATS connection is down (and for C{node_timeout_ms} after
    it is back) no node is declared dead.

Watchlists are cluster-wide: a user is online while any node has one of
its sockets signed in. Each node tells its own watchers when its replicas
show a watched user's first socket appear, or last one vanish, elsewhere
(deltas, snapshots, dead nodes alike), and when its own sockets do so
while no other node has the user.

Measured (2-core machine, NATS on loopback, 1 publishing node and 2
receiving nodes with 100 subscribers each, no message lost in any run):
20,000 and 60,000 deliveries/s on either reactor; 120,000/s with p99 under
300 ms on the asyncio reactor (see L{sockudo_tw.adapters._nats_link} for
the thread bridge against it).

Subjects: C{<prefix>.bus} (broadcasts, terminations, deltas, heartbeats,
leaving) and C{<prefix>.node.<id>} (snapshot and barrier requests and
replies addressed to one node). Messages are bytes fields separated by
0x1F, the first byte saying the kind (L{encode}, L{decode}).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from sockudo_tw.adapters import IAdapter, ILocalSocket
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.hooks import IPusherEvents
from sockudo_tw.pusher import events
from sockudo_tw.pusher.presence import PresenceMember
from sockudo_tw.registry import (
    SignInOutcome,
    SocketRemoval,
    SubscribeOutcome,
    UnsubscribeOutcome,
)

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = [
    "NatsAdapter",
    "NatsNodeOptions",
    "decode",
    "encode",
    "nats_adapter_from_config",
]

_USB = b"\x1f"

Field = tuple[str, ...]
"""
A contribution field: C{("s", app, channel)} sockets in a channel,
C{("p", app, channel, user)} presence sockets of a user, C{("c", app)}
connections, C{("u", app, user)} signed-in sockets of a user.
"""


def encode(kind: bytes, *fields: str | bytes) -> bytes:
    """
    One bus message: the kind byte, then the fields separated by 0x1F (the
    last field may contain 0x1F: it is a Pusher frame or JSON).

    @raise UnicodeError: a text field is not encodable (a lone surrogate).
    """
    parts = [f if isinstance(f, bytes) else f.encode() for f in fields]
    return kind + _USB.join(parts)


def decode(payload: bytes, count: int) -> tuple[bytes, list[bytes]]:
    """
    The kind and the C{count} fields of a bus message.

    @raise ValueError: fewer fields than C{count}.
    """
    parts = payload[1:].split(_USB, count - 1)
    if len(parts) != count:
        raise ValueError(f"expected {count} fields, got {len(parts)}")
    return payload[:1], parts


class BusLink(Protocol):
    """
    What the adapter needs of its connection (L{NatsLink} or a test bus).
    """

    up: bool

    def publish(self, subject: str, payload: bytes) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> Deferred[None]: ...


@attrs.frozen
class NatsNodeOptions:
    """
    Timing of one node.

    @ivar request_timeout: seconds a query waits for the other nodes.
    @ivar heartbeat_interval: seconds between heartbeats.
    @ivar node_timeout: seconds without a heartbeat before a node is dead.
    """

    prefix: str = "sockudo"
    request_timeout: float = 5.0
    heartbeat_interval: float = 10.0
    node_timeout: float = 30.0

    @property
    def period(self) -> float:
        """
        Heartbeat and dead-node check period: often enough that a dead
        node is purged within C{node_timeout} plus one period.
        """
        return min(self.heartbeat_interval, self.node_timeout / 4)


@attrs.define
class _Peer:
    """
    Another node as this node knows it.
    """

    counts: dict[Field, int] = attrs.Factory(dict)
    infos: dict[Field, Any] = attrs.Factory(dict)
    seq: int = -1
    seen: float = 0.0
    snapshot_asked: float | None = None


@attrs.define
class _Barrier:
    """
    A query waiting for the other nodes' delta numbers.
    """

    waiting: dict[str, int | None]
    done: Deferred[None]
    timeout: IDelayedCall | None = None


@implementer(IAdapter)
class NatsAdapter(Service):
    """
    L{IAdapter} for a cluster over NATS: a L{LocalAdapter} for this node's
    sockets plus replicas of the other nodes' contributions.

    @ivar node_id: this process's random id in the cluster.
    @ivar stale_answers: queries answered without some node's barrier
        reply (it did not answer within the request timeout).
    @ivar purged_nodes: dead nodes dropped from the replicas.
    @ivar snapshots: snapshots received (gaps repaired).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        link_factory: Any,
        options: NatsNodeOptions | None = None,
        local: LocalAdapter | None = None,
        node_id: str | None = None,
    ) -> None:
        """
        @param link_factory: called with the subjects to subscribe, the
            message handler and the state handler; returns the L{BusLink}.
        """
        self.clock = clock
        self.options = options if options is not None else NatsNodeOptions()
        self.local = local if local is not None else LocalAdapter()
        self.node_id = node_id if node_id is not None else uuid.uuid4().hex
        prefix = self.options.prefix
        self._bus = f"{prefix}.bus"
        self._node_prefix = f"{prefix}.node."
        self.link: BusLink = link_factory(
            [self._bus, self._node_prefix + self.node_id], self._on_message, self._link_changed
        )
        self._seq = 0
        self._counts: dict[Field, int] = {}
        self._infos: dict[Field, Any] = {}
        self._socket_members: dict[str, dict[str, str]] = {}
        self._peers: dict[str, _Peer] = {}
        self._gone: set[str] = set()
        # Remote totals (all peers), kept in step with the replicas.
        self._remote_s: dict[tuple[str, str], int] = {}
        self._remote_p: dict[tuple[str, str], dict[str, int]] = {}
        self._remote_info: dict[tuple[str, str, str], Any] = {}
        self._remote_c: dict[str, int] = {}
        self._remote_u: dict[tuple[str, str], int] = {}
        # Watchlists of this node's sockets: (app, watched user) -> the
        # sockets watching, and each socket's sign-in.
        self._watching: dict[tuple[str, str], dict[str, ILocalSocket]] = {}
        self._signed_in: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self._barriers: dict[str, _Barrier] = {}
        # Nodes that missed a barrier: not waited for until heard from.
        self._unresponsive: set[str] = set()
        # Deltas held back while a join decides, and who waits for a
        # snapshot meanwhile.
        self._holds = 0
        self._unpublished: list[list[tuple[Field, int, Any]]] = []
        self._snapshot_waiters: list[str] = []
        self._link_up_at: float | None = None
        self.stale_answers = 0
        self.purged_nodes = 0
        self.snapshots = 0
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = clock

    # -- observer and service ------------------------------------------------

    @property
    def observer(self) -> IPusherEvents:
        """
        Told about deliveries and dead-node transitions.
        """
        return self.local.observer

    @observer.setter
    def observer(self, value: IPusherEvents) -> None:
        self.local.observer = value

    def startService(self) -> None:
        """
        Connect to NATS and start heartbeating.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self.link.start()
        self._beat.start(self.options.period, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Tell the others this node leaves (they drop its contribution at
        once), then close the connection.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._beat.running:
            self._beat.stop()
        self.link.publish(self._bus, encode(b"L", self.node_id))
        return self.link.stop()

    def health(self) -> Deferred[bool]:
        """
        C{/up}: True while the NATS connection is established.
        """
        return succeed(self.link.up)

    def cluster_links(self) -> dict[str, bool]:
        """
        Whether the NATS connection is up, for the C{cluster_link_up} gauge.
        """
        return {"nats": self.link.up}

    def _link_changed(self, up: bool) -> None:
        if up:
            self._link_up_at = self.clock.seconds()
            self._heartbeat()
        else:
            self._link_up_at = None

    # -- contribution --------------------------------------------------------

    def _change(self, entries: list[tuple[Field, int, Any]]) -> None:
        """
        Apply deltas to this node's contribution and announce them.
        """
        if not entries:
            return
        for field, delta, info in entries:
            count = self._counts.get(field, 0) + delta
            if count > 0:
                self._counts[field] = count
                if field[0] == "p" and (delta > 0 or field not in self._infos):
                    self._infos[field] = info
            else:
                self._counts.pop(field, None)
                self._infos.pop(field, None)
        self._unpublished.append(entries)
        if not self._holds:
            self._publish_changes()

    def _publish_changes(self) -> None:
        """
        Publish the queued deltas in order, then answer the snapshot
        requests that waited for them.
        """
        for entries in self._unpublished:
            self._seq += 1
            body = json.dumps(
                [[list(f), d, i] for f, d, i in entries],
                ensure_ascii=False,
                separators=(",", ":"),
            )
            self.link.publish(self._bus, encode(b"D", self.node_id, str(self._seq), body))
        self._unpublished.clear()
        waiting, self._snapshot_waiters = self._snapshot_waiters, []
        for node in waiting:
            self._send_snapshot(node)

    def _send_snapshot(self, node: str) -> None:
        if self._holds:
            # Our contribution has changes not yet published: the snapshot
            # must match the delta number it carries.
            self._snapshot_waiters.append(node)
            return
        reply = encode(b"Z", self.node_id, str(self._seq), self._snapshot_body())
        self.link.publish(self._node_prefix + node, reply)

    def _hold(self) -> None:
        """
        Keep this node's next deltas back while a join decides: its
        decision must not see itself in the others' answers.
        """
        self._holds += 1

    def _release(self) -> None:
        self._holds -= 1
        if not self._holds:
            self._publish_changes()

    def _snapshot_body(self) -> str:
        return json.dumps(
            [[list(f), c, self._infos.get(f)] for f, c in self._counts.items()],
            ensure_ascii=False,
            separators=(",", ":"),
        )

    # -- replicas --------------------------------------------------------------

    def _add_remote(self, field: Field, delta: int, info: Any) -> None:
        kind = field[0]
        if kind == "s":
            key = (field[1], field[2])
            n = self._remote_s.get(key, 0) + delta
            if n > 0:
                self._remote_s[key] = n
            else:
                self._remote_s.pop(key, None)
        elif kind == "p":
            key = (field[1], field[2])
            users = self._remote_p.setdefault(key, {})
            n = users.get(field[3], 0) + delta
            if n > 0:
                users[field[3]] = n
                if delta > 0:
                    self._remote_info[(field[1], field[2], field[3])] = info
            else:
                users.pop(field[3], None)
                self._remote_info.pop((field[1], field[2], field[3]), None)
                if not users:
                    del self._remote_p[key]
        elif kind == "u":
            key = (field[1], field[2])
            before = self._remote_u.get(key, 0)
            n = before + delta
            if n > 0:
                self._remote_u[key] = n
            else:
                self._remote_u.pop(key, None)
            if (before > 0) != (n > 0) and not self.local.registry.user_sockets(*key):
                # Online or offline elsewhere, and not signed in here.
                self._tell_watchers(key, "online" if n > 0 else "offline")
        elif kind == "c":
            n = self._remote_c.get(field[1], 0) + delta
            if n > 0:
                self._remote_c[field[1]] = n
            else:
                self._remote_c.pop(field[1], None)

    def _peer_apply(self, peer: _Peer, field: Field, delta: int, info: Any) -> None:
        count = peer.counts.get(field, 0)
        new = max(0, count + delta)
        if new:
            peer.counts[field] = new
            if field[0] == "p" and (delta > 0 or field not in peer.infos):
                peer.infos[field] = info
        else:
            peer.counts.pop(field, None)
            peer.infos.pop(field, None)
        self._add_remote(field, new - count, peer.infos.get(field, info))

    def _peer(self, node: str) -> _Peer | None:
        """
        The replica of C{node}, created when first heard of (and a snapshot
        asked for); L{None} for a node that left or was purged.
        """
        if node in self._gone or node == self.node_id:
            return None
        peer = self._peers.get(node)
        if peer is None:
            peer = self._peers[node] = _Peer(seen=self.clock.seconds())
            self._ask_snapshot(node, peer)
        return peer

    def _ask_snapshot(self, node: str, peer: _Peer) -> None:
        now = self.clock.seconds()
        if peer.snapshot_asked is not None and now - peer.snapshot_asked < self.options.period:
            return
        peer.snapshot_asked = now
        self.link.publish(self._node_prefix + node, encode(b"S", self.node_id))

    def _drop_peer(self, node: str) -> list[Field]:
        """
        Forget a node's contribution; the presence fields it held.
        """
        peer = self._peers.pop(node, None)
        self._gone.add(node)
        if peer is None:
            return []
        held = [f for f in peer.counts if f[0] == "p"]
        held += [f for f in peer.counts if f[0] == "s"]
        for field, count in list(peer.counts.items()):
            self._add_remote(field, -count, None)
        for barrier in list(self._barriers.values()):
            if node in barrier.waiting:
                del barrier.waiting[node]
                self._barrier_check(barrier)
        return held

    # -- bus -------------------------------------------------------------------

    def _on_message(self, subject: str, payload: bytes) -> None:
        """
        A message from another node (NATS does not echo our own).
        """
        kind = payload[:1]
        try:
            if kind == b"B":
                _, (node, app, channel, except_id, frame) = decode(payload, 5)
                self.local.broadcast(
                    app.decode(), channel.decode(), frame, except_id.decode() or None
                )
            elif kind == b"D":
                _, (node, seq, body) = decode(payload, 3)
                self._on_delta(node.decode(), int(seq), body)
            elif kind == b"H":
                _, (node, seq) = decode(payload, 2)
                self._on_heartbeat(node.decode(), int(seq))
            elif kind == b"T":
                _, (node, app, user) = decode(payload, 3)
                self.local.terminate_user_connections(app.decode(), user.decode())
            elif kind == b"S":
                _, (node,) = decode(payload, 1)
                self._send_snapshot(node.decode())
            elif kind == b"Z":
                _, (node, seq, body) = decode(payload, 3)
                self._on_snapshot(node.decode(), int(seq), body)
            elif kind == b"P":
                _, (node, request) = decode(payload, 2)
                reply = encode(b"Q", self.node_id, request, str(self._seq))
                self.link.publish(self._node_prefix + node.decode(), reply)
            elif kind == b"Q":
                _, (node, request, seq) = decode(payload, 3)
                self._on_barrier_reply(node.decode(), request.decode(), int(seq))
            elif kind == b"L":
                _, (node,) = decode(payload, 1)
                self._purge(node.decode(), "left")
            else:
                self.log.warn("Unknown cluster message {head!r}", head=payload[:40])
        except (ValueError, UnicodeError, json.JSONDecodeError):
            self.log.warn("Malformed cluster message {head!r}", head=payload[:80])

    def _on_delta(self, node: str, seq: int, body: bytes) -> None:
        self._unresponsive.discard(node)
        peer = self._peer(node)
        if peer is None:
            return
        peer.seen = self.clock.seconds()
        if seq <= peer.seq:
            return
        if peer.seq < 0 or seq != peer.seq + 1:
            # A gap (or no snapshot yet): the snapshot brings it all.
            self._ask_snapshot(node, peer)
            return
        for field, delta, info in json.loads(body):
            self._peer_apply(peer, tuple(field), int(delta), info)
        peer.seq = seq
        self._peer_advanced(node, peer)

    def _on_snapshot(self, node: str, seq: int, body: bytes) -> None:
        self._unresponsive.discard(node)
        peer = self._peer(node)
        if peer is None or seq < peer.seq:
            return
        self.snapshots += 1
        fresh: dict[Field, tuple[int, Any]] = {
            tuple(f): (int(c), i) for f, c, i in json.loads(body)
        }
        users = {f for f in (*peer.counts, *fresh) if f[0] == "p"}
        before = {f for f in users if self._remote_member(f)}
        for field in list(peer.counts):
            if field not in fresh:
                self._peer_apply(peer, field, -peer.counts[field], None)
        for field, (count, info) in fresh.items():
            self._peer_apply(peer, field, count - peer.counts.get(field, 0), info)
            if info is not None:
                peer.infos[field] = info
        peer.seq = seq
        peer.seen = self.clock.seconds()
        peer.snapshot_asked = None
        self._tell_local_clients(users, before)
        self._peer_advanced(node, peer)

    def _remote_member(self, field: Field) -> bool:
        return bool(self._remote_p.get((field[1], field[2]), {}).get(field[3]))

    def _tell_local_clients(self, users: set[Field], before: set[Field]) -> None:
        """
        After a snapshot repaired a gap, send this node's clients the member
        events they missed (the broadcasts were lost with the deltas): users
        who appeared or vanished elsewhere and have no socket here.
        """
        registry = self.local.registry
        for field in users:
            _, app_id, channel, user = field
            was, now = field in before, self._remote_member(field)
            if was == now or not registry.subscribers(app_id, channel):
                continue
            if user in registry.members(app_id, channel):
                continue
            if now:
                info = self._remote_info.get((app_id, channel, user))
                frame = events.member_added(channel, user, info)
            else:
                frame = events.member_removed(channel, user)
            self.local.broadcast(app_id, channel, frame, None)

    def _on_heartbeat(self, node: str, seq: int) -> None:
        self._unresponsive.discard(node)
        if node in self._gone:
            # Purged while it was only cut off from us (a partition longer
            # than node_timeout): take it back from a fresh snapshot.
            self.log.info("Node {node} is back", node=node)
            self._gone.discard(node)
        known = node in self._peers
        peer = self._peer(node)
        if peer is None:
            return
        if not known:
            # A node we had not heard of (it may have just started): tell
            # it about us now rather than at our next heartbeat.
            self.link.publish(self._node_prefix + node, encode(b"H", self.node_id, str(self._seq)))
        peer.seen = self.clock.seconds()
        if seq > peer.seq:
            self._ask_snapshot(node, peer)

    def _heartbeat(self) -> None:
        """
        Say this node lives (with its delta number) and purge dead nodes.
        """
        if not self.link.up:
            return
        self.link.publish(self._bus, encode(b"H", self.node_id, str(self._seq)))
        now = self.clock.seconds()
        if self._link_up_at is None or now - self._link_up_at < self.options.node_timeout:
            # Our own view is too young to call anyone dead.
            return
        for node, peer in list(self._peers.items()):
            if now - peer.seen > self.options.node_timeout:
                self._purge(node, "dead")

    def _purge(self, node: str, why: str) -> None:
        """
        Drop a dead (or departed) node; the smallest live node id announces
        the member_removed and channel_vacated its departure caused.
        """
        if node not in self._peers:
            self._gone.add(node)
            return
        held = self._drop_peer(node)
        self.purged_nodes += 1
        self.log.info("Node {node} {why}: dropped from the cluster", node=node, why=why)
        if min([self.node_id, *self._peers]) != self.node_id:
            return
        registry = self.local.registry
        for field in held:
            app_id, channel = field[1], field[2]
            if field[0] == "p":
                user = field[3]
                if self._remote_p.get((app_id, channel), {}).get(user, 0):
                    continue
                if user in registry.members(app_id, channel):
                    continue
                self.broadcast(app_id, channel, events.member_removed(channel, user), None)
                self.observer.member_removed(app_id, channel, user)
            elif not self._remote_s.get((app_id, channel)) and not registry.subscribers(
                app_id, channel
            ):
                self.observer.channel_vacated(app_id, channel)

    # -- barrier ---------------------------------------------------------------

    def _barrier(self) -> Deferred[None]:
        """
        Fires once every live node's replica has caught up with what that
        node had done when it answered, or after the request timeout.
        """
        nodes = [n for n in self._peers if n not in self._unresponsive]
        if not nodes or not self.link.up:
            return succeed(None)
        request = uuid.uuid4().hex
        barrier = _Barrier(dict.fromkeys(nodes), Deferred())
        self._barriers[request] = barrier
        for node in nodes:
            self.link.publish(self._node_prefix + node, encode(b"P", self.node_id, request))

        def expire() -> None:
            barrier.timeout = None
            if self._barriers.pop(request, None) is not None:
                self.stale_answers += 1
                self._unresponsive.update(barrier.waiting)
                self.log.info(
                    "Cluster query answered without {nodes}", nodes=sorted(barrier.waiting)
                )
                barrier.done.callback(None)

        barrier.timeout = self.clock.callLater(self.options.request_timeout, expire)
        return barrier.done

    def _on_barrier_reply(self, node: str, request: str, seq: int) -> None:
        self._unresponsive.discard(node)
        barrier = self._barriers.get(request)
        if barrier is None or node not in barrier.waiting:
            return
        barrier.waiting[node] = seq
        peer = self._peers.get(node)
        if peer is not None and peer.seq < seq:
            # Deltas still in flight (or lost: the snapshot repairs it).
            if peer.seq < 0:
                self._ask_snapshot(node, peer)
            return
        self._barrier_check(barrier)

    def _peer_advanced(self, node: str, peer: _Peer) -> None:
        for barrier in list(self._barriers.values()):
            wanted = barrier.waiting.get(node)
            if wanted is not None and peer.seq >= wanted:
                self._barrier_check(barrier)

    def _barrier_check(self, barrier: _Barrier) -> None:
        for node, wanted in barrier.waiting.items():
            peer = self._peers.get(node)
            if peer is not None and (wanted is None or peer.seq < wanted):
                return
        for request, b in list(self._barriers.items()):
            if b is barrier:
                del self._barriers[request]
        if barrier.timeout is not None and barrier.timeout.active():
            barrier.timeout.cancel()
        barrier.done.callback(None)

    # -- IAdapter: delivery ----------------------------------------------------

    def broadcast(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        """
        Deliver locally, then publish once to the other nodes.
        """
        self.local.broadcast(app_id, channel, frame, except_socket_id)
        if except_socket_id is not None and "\x1f" in except_socket_id:
            except_socket_id = None
        try:
            message = encode(b"B", self.node_id, app_id, channel, except_socket_id or "", frame)
        except UnicodeError:
            self.log.info("Not publishing: channel {channel!r} is not UTF-8", channel=channel)
            return
        self.link.publish(self._bus, message)

    def terminate_user_connections(self, app_id: str, user_id: str) -> None:
        self.local.terminate_user_connections(app_id, user_id)
        try:
            self.link.publish(self._bus, encode(b"T", self.node_id, app_id, user_id))
        except UnicodeError:
            pass

    # -- IAdapter: queries -----------------------------------------------------

    def channels(self, app_id: str) -> Deferred[dict[str, int]]:
        def answer(_: None) -> dict[str, int]:
            counts = self.local.registry.channel_counts(app_id)
            for (app, channel), n in self._remote_s.items():
                if app == app_id:
                    counts[channel] = counts.get(channel, 0) + n
            return counts

        return self._barrier().addCallback(answer)

    def channel_subscription_count(self, app_id: str, channel: str) -> Deferred[int]:
        def answer(_: None) -> int:
            local = len(self.local.registry.subscribers(app_id, channel))
            return local + self._remote_s.get((app_id, channel), 0)

        return self._barrier().addCallback(answer)

    def presence_members(self, app_id: str, channel: str) -> Deferred[dict[str, Any]]:
        return self._barrier().addCallback(lambda _: self._members(app_id, channel))

    def _members(self, app_id: str, channel: str) -> dict[str, Any]:
        members = {
            user: self._remote_info.get((app_id, channel, user))
            for user in self._remote_p.get((app_id, channel), {})
        }
        members.update(self.local.registry.members(app_id, channel))
        return members

    def app_connection_count(self, app_id: str) -> Deferred[int]:
        def answer(_: None) -> int:
            return self.local.registry.socket_count(app_id) + self._remote_c.get(app_id, 0)

        return self._barrier().addCallback(answer)

    # -- IAdapter: membership --------------------------------------------------

    def add_socket(self, app_id: str, socket: ILocalSocket) -> None:
        self.local.add_socket(app_id, socket)
        self._change([(("c", app_id), 1, None)])

    def has_socket(self, socket_id: str) -> bool:
        return self.local.has_socket(socket_id)

    def _tell_watchers(
        self, key: tuple[str, str], state: str, watchers: Iterable[ILocalSocket] | None = None
    ) -> None:
        """
        Send C{online}/C{offline} for a user to this node's sockets that
        watch it.
        """
        sockets = self._watching.get(key, {}).values() if watchers is None else watchers
        frame = events.watchlist_events([(state, [key[1]])])
        for socket in tuple(sockets):
            socket.send_frame(frame)

    def _online(self, app_id: str, user_id: str) -> bool:
        return bool(
            self._remote_u.get((app_id, user_id))
            or self.local.registry.user_sockets(app_id, user_id)
        )

    def sign_in(
        self, app_id: str, socket_id: str, user_id: str, watchlist: tuple[str, ...]
    ) -> Deferred[SignInOutcome[ILocalSocket]]:
        """
        Sign in locally; the user is online cluster-wide when no node had
        it signed in, and watched ids are online when any node has them.
        Other nodes tell their watchers when they apply this node's delta.
        """
        registry = self.local.registry
        socket = registry.socket(app_id, socket_id)
        if socket is None or socket_id in self._signed_in:
            return succeed(SignInOutcome(came_online=False))
        outcome = registry.sign_in(app_id, socket_id, user_id, watchlist)
        watched = tuple(watchlist)
        self._signed_in[socket_id] = (app_id, user_id, watched)
        for uid in watched:
            self._watching.setdefault((app_id, uid), {})[socket_id] = socket
        came_online = outcome.came_online and not self._remote_u.get((app_id, user_id))
        self._change([(("u", app_id, user_id), 1, None)])
        if came_online and outcome.watchers:
            self._tell_watchers((app_id, user_id), "online", outcome.watchers)
        return succeed(
            attrs.evolve(
                outcome,
                came_online=came_online,
                online=tuple(u for u in watched if self._online(app_id, u)),
                offline=tuple(u for u in watched if not self._online(app_id, u)),
                watchers=outcome.watchers if came_online else (),
            )
        )

    def subscribe(
        self,
        app_id: str,
        channel: str,
        socket_id: str,
        member: PresenceMember | None,
        max_members: int,
    ) -> Deferred[SubscribeOutcome]:
        """
        Join locally and decide the cluster-wide transitions from the
        replicas; a presence channel counts every node's users against
        C{max_members}.
        """
        registry = self.local.registry
        if channel in registry.socket_channels(socket_id):
            return succeed(registry.subscribe(app_id, channel, socket_id, member, max_members))
        remote_users = self._remote_p.get((app_id, channel), {})
        if member is not None and max_members and member.user_id not in remote_users:
            users = set(remote_users) | set(registry.members(app_id, channel))
            if member.user_id not in users and len(users) >= max_members:
                count = len(registry.subscribers(app_id, channel))
                return succeed(SubscribeOutcome(accepted=False, count=count))
        outcome = registry.subscribe(app_id, channel, socket_id, member, 0)
        if not outcome.accepted:
            return succeed(outcome)
        entries: list[tuple[Field, int, Any]] = [(("s", app_id, channel), 1, None)]
        if member is not None:
            entries.append((("p", app_id, channel, member.user_id), 1, member.user_info))
            self._socket_members.setdefault(socket_id, {})[channel] = member.user_id

        def decide(_: object = None) -> SubscribeOutcome:
            remote_sockets = self._remote_s.get((app_id, channel), 0)
            if member is None:
                return attrs.evolve(
                    outcome,
                    occupied=outcome.occupied and not remote_sockets,
                    count=outcome.count + remote_sockets,
                )
            remote_users = self._remote_p.get((app_id, channel), {})
            return attrs.evolve(
                outcome,
                occupied=outcome.occupied and not remote_sockets,
                member_added=outcome.member_added and member.user_id not in remote_users,
                members=self._members(app_id, channel),
                count=outcome.count + remote_sockets,
            )

        if not (outcome.occupied or outcome.member_added):
            self._change(entries)
            return succeed(decide())
        # A transition here may be one for the cluster: decide once the
        # replicas hold everything the others did before, and without our
        # own change in their answers (concurrent joins on two nodes may
        # then both decide, never neither).
        self._hold()
        self._change(entries)
        d = self._barrier().addCallback(decide)
        d.addBoth(_passing(self._release))
        return d

    def unsubscribe(
        self, app_id: str, channel: str, socket_id: str
    ) -> Deferred[UnsubscribeOutcome]:
        outcome = self.local.registry.unsubscribe(app_id, channel, socket_id)
        if not outcome.removed:
            return succeed(outcome)
        self._change(self._leave_entries(app_id, socket_id, [channel]))
        if not (outcome.vacated or outcome.member_removed):
            return succeed(self._cluster_view(app_id, outcome))
        return self._barrier().addCallback(lambda _: self._cluster_view(app_id, outcome))

    def _cluster_view(self, app_id: str, outcome: UnsubscribeOutcome) -> UnsubscribeOutcome:
        """
        A local leave's outcome, with the transitions only the last socket
        cluster-wide causes.
        """
        remote_sockets = self._remote_s.get((app_id, outcome.channel), 0)
        removed = outcome.member_removed
        if removed is not None and self._remote_p.get((app_id, outcome.channel), {}).get(removed):
            removed = None
        return attrs.evolve(
            outcome,
            vacated=outcome.vacated and not remote_sockets,
            member_removed=removed,
            count=outcome.count + remote_sockets,
        )

    def _leave_entries(
        self, app_id: str, socket_id: str, channels: Iterable[str]
    ) -> list[tuple[Field, int, Any]]:
        members = self._socket_members.get(socket_id, {})
        entries: list[tuple[Field, int, Any]] = []
        for channel in channels:
            entries.append((("s", app_id, channel), -1, None))
            user_id = members.pop(channel, None)
            if user_id is not None:
                entries.append((("p", app_id, channel, user_id), -1, None))
        if not members:
            self._socket_members.pop(socket_id, None)
        return entries

    def remove_socket(self, app_id: str, socket_id: str) -> Deferred[SocketRemoval[ILocalSocket]]:
        removed = self.local.registry.remove_socket(socket_id)
        if removed is None:
            return succeed(SocketRemoval(app_id))
        removal: SocketRemoval[ILocalSocket] = removed
        left = [o.channel for o in removal.unsubscribed if o.removed]
        entries = self._leave_entries(app_id, socket_id, left)
        self._socket_members.pop(socket_id, None)
        entries.append((("c", app_id), -1, None))
        signed = self._signed_in.pop(socket_id, None)
        if signed is not None:
            _, user_id, watched = signed
            for uid in watched:
                table = self._watching.get((app_id, uid))
                if table is not None:
                    table.pop(socket_id, None)
                    if not table:
                        del self._watching[(app_id, uid)]
            entries.append((("u", app_id, user_id), -1, None))
        went = removal.went_offline
        if went is not None and self._remote_u.get((app_id, went)):
            # Still signed in on another node: nobody went offline.
            removal = attrs.evolve(removal, went_offline=None, watchers=())
        elif went is not None and removal.watchers:
            self._tell_watchers((app_id, went), "offline", removal.watchers)
        self._change(entries)

        def decide(_: object = None) -> SocketRemoval[ILocalSocket]:
            return attrs.evolve(
                removal,
                unsubscribed=tuple(self._cluster_view(app_id, o) for o in removal.unsubscribed),
            )

        if not any(o.vacated or o.member_removed for o in removal.unsubscribed):
            return succeed(decide())
        return self._barrier().addCallback(decide)


def _passing(f: Callable[[], None]) -> Callable[[Any], Any]:
    """
    A callback/errback that calls C{f} and passes the result on.
    """

    def call(result: Any) -> Any:
        f()
        return result

    return call


def nats_adapter_from_config(
    config: ServerConfig, reactor: Any, local: LocalAdapter | None = None
) -> NatsAdapter:
    """
    Build the adapter for C{adapter.driver: nats} from C{adapter.nats}
    (servers, prefix, credentials, timeouts) and C{adapter.cluster_health}.

    @raise ConfigError: nats-py is not installed (naming the pip extra).
    """
    from sockudo_tw.adapters._nats_link import NatsLink, NatsLinkOptions, missing_nats_py
    from sockudo_tw.config import ConfigError

    problem = missing_nats_py()
    if problem is not None:
        raise ConfigError(problem)
    nats_config = config.adapter.nats
    health = config.adapter.cluster_health
    link_options = NatsLinkOptions(
        servers=tuple(nats_config.servers),
        username=nats_config.username,
        password=nats_config.password,
        token=nats_config.token,
        connect_timeout=nats_config.connection_timeout_ms / 1000,
    )
    options = NatsNodeOptions(
        prefix=nats_config.prefix,
        request_timeout=nats_config.request_timeout_ms / 1000,
        heartbeat_interval=health.heartbeat_interval_ms / 1000,
        node_timeout=health.node_timeout_ms / 1000,
    )
    # A stalled NATS must be noticed (the link goes down, so nobody is
    # declared dead) before node_timeout: two unanswered PINGs drop it.
    link_options = attrs.evolve(link_options, ping_interval=max(0.1, options.period))

    def link(subjects: list[str], on_message: Any, on_state: Any) -> NatsLink:
        return NatsLink(reactor, link_options, subjects, on_message, on_state)

    return NatsAdapter(reactor, link, options, local=local)
