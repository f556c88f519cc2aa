# -*- test-case-name: tests.test_redis_adapter -*-
"""
The Redis adapter: many C{twistd sockudo} nodes, one Pusher service.

Design: shared state in Redis with atomic Lua transitions
========================================================

architecture.md offers two designs: (a) Sockudo's request/response fan-in
over pub/sub (every query asks every node and waits for N-1 answers or a
timeout), or (b) shared state in Redis, changed only by Lua scripts that
decide Pusher's transitions atomically, with node liveness in Redis. We use
(b), because:

  - A REST query is one Redis read (HGETALL/HGET), never a wait on the
    slowest or a dead node; (a) waits up to C{requests_timeout} whenever a
    node is dead or slow, and returns silently partial answers.
  - "First socket of a user anywhere" and "last socket of a channel
    anywhere" are read-modify-write decisions. A Lua script is atomic, so
    exactly one node sees each transition (member_added/member_removed,
    channel_occupied/channel_vacated): no leader, no replicated registry,
    no O(N^2) heartbeat replies.
  - Dead-node cleanup is the same script run for the dead node with an
    empty target state; the script first checks the node's deadline, so
    whichever survivor runs it first gets the transitions and every other
    survivor gets nothing (exactly-once, no lock key needed).

Measured (2-core machine, Redis 7.0.15 on loopback, hiredis):

  - Redis-side cost (C{INFO commandstats}): 36 us per script call on
    average over subscribe/join/leave; HGETALL of a 500-channel app 30 us.
    One pipelining client drives 35,000 subscribe/unsubscribe scripts/s,
    8,500 presence joins/s (200-member channels: the join returns the
    member list), 73,000 PUBLISH/s. A resync or purge of a node holding
    10,000 memberships is one script of ~100 ms (Redis is blocked meanwhile).
  - C{python bench/cluster_fanout.py --nodes 3 --subscribers 1000 --rate R
    --duration 10}: triggers to one node, subscribers spread over 3 nodes,
    0 lost in every run. On a quiet machine (load average < 1 at start):
    R=20: 20,000 deliveries/s, p50 14 ms, p99 29 ms; R=100: 99,800/s, p50
    39 ms, p99 96 ms; R=200: 198,000/s, p50 103 ms, p99 233 ms; R=300:
    297,000/s, p50 117 ms, p99 233 ms. Same script with C{--nodes 1}: R=20
    p50 21 ms, p99 47 ms; R=100 p50 29 ms, p99 61 ms. Server CPU (all nodes)
    per 1,000 deliveries: 20 ms at R=20, 4.9 ms at R=200, 3.6 ms at R=300
    (one node with the local adapter, C{bench/run.js --scenario fanout} at
    R=20: 20.9 ms). With other test runs loading the 2 cores (load average
    3-7) the same runs gave p50 40-200 ms and p99 200-470 ms.
  - Design (a) would add to every REST query a wait for N-1 answers (up to
    C{requests_timeout}, 5 s, whenever a node is dead) and O(N^2) pub/sub
    traffic for heartbeats and presence replication; (b) answers a query
    in one Redis round trip (an HGET from redis-py: 120 us on this
    loopback) whatever the number of nodes, dead ones included.

Data model (all keys start with the configured prefix C{P}):

  - C{P nodes}: sorted set, node id -> liveness deadline (ms, Redis clock).
  - C{P n:<node>}: hash of this node's contributions, field -> count:
    C{s<US>app<US>channel} sockets in a channel, C{p<US>app<US>channel<US>user}
    presence sockets of a user, C{c<US>app} connections, C{u<US>app<US>user}
    signed-in sockets of a user, C{w<US>app} sockets with a watchlist
    (US = 0x1F).
  - C{P a:<app>:ch}: channel -> socket count, cluster-wide (occupied
    channels only).
  - C{P a:<app>:p:<channel>}: user id -> socket count, cluster-wide.
  - C{P a:<app>:pi:<channel>}: user id -> user_info JSON (first socket's).
  - C{P conns}: app id -> connection count, cluster-wide.
  - C{P a:<app>:u}: user id -> signed-in socket count, cluster-wide (who
    is online, for watchlists).
  - C{P watching}: app id -> sockets with a watchlist, cluster-wide; while
    0, users coming and going are not published.
  - C{P a:<app>:wseq}: the app's watch-event counter (starts at the Redis
    time in microseconds, so it keeps growing if Redis loses its data).
  - Pub/sub channel C{P #bus}: broadcasts, terminations and watch events,
    one PUBLISH per event whatever the number of nodes.

Watchlists: a user is online while it has a signed-in socket on any node.
The script that counts a socket in or out (sign-in: APPLY mode C{i};
disconnect and dead-node purge: the usual APPLY) decides the user's
first/last socket anywhere atomically and numbers the event; the node that
ran it tells its own watchers and publishes it once. Each node delivers an
event to each local watcher of that user unless that watcher was already
told a later number (publishes from different nodes can arrive out of
order) or already has that state. The
sign-in script also counts the socket's watchlist and reads the watched
ids' state in the same step, so every transition is either in that
initial state or numbered after it; events that reach the socket while its
sign-in is in flight are folded into the initial state (or dropped as
already in it), so the watcher never sees an older state after a newer
one. A dead node's users go offline when a survivor purges it, within
C{node_timeout}. After a fault each node reconciles its watchers with
C{P a:<app>:u}, as it does presence lists.

Hot paths:

  - C{broadcast} delivers locally at once and PUBLISHes once; it never
    waits. The origin ignores its own echo; others deliver to their local
    subscribers, honouring C{except_socket_id}. Per-publisher order holds
    (one connection, in order).
  - C{subscribe}/C{unsubscribe}/C{remove_socket} wait for Redis only when a
    presence channel is involved (the protocol needs the cluster's member
    list and member_added/member_removed decision). For other channels the
    outcome is returned at once and the cluster's occupied/vacated decision
    is reported to the observer (webhooks) when the script answers.
  - C{sign_in} waits for one script (the watchlist's initial state is the
    cluster's); a disconnect's user offline decision never holds up its
    outcome.

Node liveness: every C{period} = min(heartbeat_interval, node_timeout/4)
a node sets its deadline to now + (node_timeout - period) (Redis server
time, so node clocks may disagree) and lists the nodes past theirs, so a
node killed with SIGKILL is purged within C{node_timeout} of its death; the
survivor that purges it broadcasts the missing C{member_removed} frames and
reports C{member_removed}/C{channel_vacated} to its observer.

When Redis is unreachable, stalls or loses its data (see
L{sockudo_tw.adapters._redis_link}), nothing raises into the protocol: local
delivery and local clients keep working; cluster publishes are dropped and
counted; queries answer from this node's state; subscribe, unsubscribe and
disconnect decide from local state (so a subscribe still gets
C{subscription_succeeded} and a last local leave still sends
C{member_removed} to local subscribers). The scripts refuse changes from a
node Redis does not know (status 3: Redis restarted empty, was flushed, or
purged the node while it stalled) instead of applying them to a
contribution that is gone; such changes are decided locally the same way.

Recovery: when the command connection comes back, or a refused change or a
heartbeat shows Redis lost this node, the node rewrites its whole
contribution with one script ("sync": the difference between its real
local state and what Redis holds for it; the sync also registers the node,
so a registered node always has its state in Redis) and announces to the
other nodes the member_added/member_removed it finds: all of them if Redis
had nothing of this node (data lost, or purged as dead: the purge leaves a
tombstone the sync finds), else those of members that changed here while
the cluster could not hear. These are held until as many nodes listen on
the bus as are registered (or were, before Redis lost its data), at most
C{node_timeout}, because after a Redis restart the others may still be
redialling. Then every node that had a fault (its link dropped, a script
failed or was refused, it was purged) reconciles its own clients: it keeps
the set of members its local clients were told about on each presence
channel, and once every registered node has written its state back (or
C{node_timeout} after its own sync) it sends member_added for members they
lack (all members where a client joined with a locally decided list) and
member_removed for ghosts, so every list converges to what Redis holds.
Member events may be duplicated around a fault (pusher-js keeps one entry
per user); other messages published while a node's subscriber connection
was down are lost for that node (Pusher is at-most-once too).

Convergence bound, once Redis answers again: a node redials within
C{min(10 s, max(1 s, P))} plus up to 1 s of jitter, where C{P} is the
heartbeat period, and reconciles at its next heartbeat after the last node
is back, so lists and C{GET .../users} agree within about
C{min(10 s, max(1 s, P)) + 1 s + P} (16 s with the default 10 s heartbeat
and 30 s node timeout); after a FLUSHALL, within C{2 P}. A stall is noticed
within C{P + requests_timeout} (the keepalive PING).

C{cluster_health.enabled: false} is refused by the config: without
heartbeats a dead node's members would stay forever. C{cleanup_interval_ms} is folded into the
heartbeat period.

One Redis or a Sentinel-less primary; on a Redis Cluster, see
L{sockudo_tw.adapters.redis_cluster} (the same adapter, every key under
one hash tag, its connections routed by L{_make_link}).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockudo_tw.adapters import IAdapter, ILocalSocket
from sockudo_tw.adapters._redis_link import LuaScript, RedisLink
from sockudo_tw.adapters.local import LocalAdapter
from sockudo_tw.hooks import IPusherEvents
from sockudo_tw.pusher import events
from sockudo_tw.pusher.presence import PresenceMember
from sockudo_tw.redisurl import RedisUrl
from sockudo_tw.redisurl import parse_redis_url as parse_url
from sockudo_tw.registry import (
    SignInOutcome,
    SocketRemoval,
    SubscribeOutcome,
    UnsubscribeOutcome,
)

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = [
    "APPLY",
    "HEARTBEAT",
    "JOIN",
    "RedisAdapter",
    "RedisNodeOptions",
    "RedisServer",
    "parse_redis_url",
    "redis_adapter_from_config",
]

_US = "\x1f"
_USB = b"\x1f"


def _lua(name: str) -> str:
    """
    The text of C{redis_scripts/<name>.lua}, shipped as package data.
    """
    return (resources.files(__package__) / "redis_scripts" / f"{name}.lua").read_text("utf-8")


# The scripts share common.lua (key layout, apply(), registered()); APPLY
# and JOIN are that prelude followed by their own body.
_LUA_COMMON = _lua("common")
APPLY = LuaScript(_LUA_COMMON + _lua("apply"))
JOIN = LuaScript(_LUA_COMMON + _lua("join"))
HEARTBEAT = LuaScript(_lua("heartbeat"))


def _text(value: bytes | str) -> str:
    """
    Redis replies are bytes (the link is binary-safe); our names are UTF-8.
    """
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _s_field(app_id: str, channel: str) -> str:
    return f"s{_US}{app_id}{_US}{channel}"


def _p_field(app_id: str, channel: str, user_id: str) -> str:
    return f"p{_US}{app_id}{_US}{channel}{_US}{user_id}"


def _c_field(app_id: str) -> str:
    return f"c{_US}{app_id}"


def _u_field(app_id: str, user_id: str) -> str:
    return f"u{_US}{app_id}{_US}{user_id}"


def _w_field(app_id: str) -> str:
    return f"w{_US}{app_id}"


@attrs.frozen
class Transition:
    """
    A cluster-wide change decided by a script.

    @ivar kind: C{"o"} occupied, C{"v"} vacated, C{"a"} member added,
        C{"r"} member removed, C{"n"} user online, C{"f"} user offline
        (these two have an empty channel, and as C{user_info} the app's
        watch-event sequence number, C{"0"} when nobody watches).
    """

    kind: str
    app_id: str
    channel: str
    user_id: str | None = None
    user_info: str | None = None

    @classmethod
    def parse(cls, raw: Sequence[bytes]) -> Transition:
        """
        Read one transition from a script reply.
        """
        fields = [_text(x) for x in raw]
        return cls(
            fields[0],
            fields[1],
            fields[2],
            fields[3] if len(fields) > 3 else None,
            fields[4] if len(fields) > 4 else None,
        )

    @property
    def field(self) -> str | None:
        """
        The contribution field of a member or user transition.
        """
        if self.user_id is None:
            return None
        if self.kind in ("n", "f"):
            return _u_field(self.app_id, self.user_id)
        return _p_field(self.app_id, self.channel, self.user_id)

    @property
    def watch_seq(self) -> int:
        """
        A user transition's watch-event number (0: nobody watches).
        """
        try:
            return int(self.user_info or 0)
        except ValueError:
            return 0


def _transitions(raw: Iterable[Any]) -> list[Transition]:
    return [Transition.parse(t) for t in raw]


@attrs.frozen
class RedisNodeOptions:
    """
    How a node joins the cluster.

    @ivar prefix: key and channel prefix (C{adapter.redis.prefix}).
    @ivar requests_timeout: seconds a cluster query or decision may take
        before the node answers from local state.
    @ivar heartbeat_interval: seconds between liveness refreshes.
    @ivar node_timeout: seconds after which a silent node is purged.
    """

    prefix: str = "sockudo_adapter:"
    requests_timeout: float = 5.0
    heartbeat_interval: float = 10.0
    node_timeout: float = 30.0
    password: str | None = None
    username: str | None = None
    db: int | None = None
    ping_interval: float = 10.0
    ping_timeout: float = 5.0

    @property
    def period(self) -> float:
        """
        Seconds between heartbeats (also the dead-node check).
        """
        return min(self.heartbeat_interval, self.node_timeout / 4)

    @property
    def reconnect_max_delay(self) -> float:
        """
        The longest wait between two attempts to reach Redis (plus up to 1 s
        of jitter): at most one heartbeat period, so a node notices that
        Redis is back within the convergence bound the README states.
        """
        return min(10.0, max(1.0, self.period))

    @property
    def reconnect_grace(self) -> float:
        """
        How long a node that just reached Redis waits before purging nodes
        past their deadline: long enough for the others to reach it too.
        """
        return self.reconnect_max_delay + 1.0 + self.period

    @property
    def ttl_ms(self) -> int:
        """
        How long a heartbeat keeps a node alive: short enough that a dead
        node is purged within C{node_timeout} of its death.
        """
        return max(1, int((self.node_timeout - self.period) * 1000))


@implementer(IAdapter)
class RedisAdapter(Service):
    """
    L{IAdapter} for a cluster: a L{LocalAdapter} for this node's sockets,
    plus shared state and a pub/sub bus in Redis.

    Why one class of about 800 lines: the IAdapter methods, the resync
    after an outage and the dead-node purge all read and write the same
    three pieces of state (this node's contribution C{_counts}, the
    transitions it believes announced, the link's up/down edges), and the
    order of those writes inside one reactor turn is what makes each
    transition exactly-once. Split into objects, that state would be
    shared by reference and the ordering spread over several files; the
    sections below (queries, membership, sync and purge) keep it readable.

    @ivar node_id: this process's random id in the cluster.
    @ivar local_answers: queries answered from local state (Redis down or
        too slow).
    @ivar purged_nodes: dead nodes this node cleaned up.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        options: RedisNodeOptions | None = None,
        local: LocalAdapter | None = None,
        node_id: str | None = None,
    ) -> None:
        self.clock = clock
        self.options = options if options is not None else RedisNodeOptions()
        self.local = local if local is not None else LocalAdapter()
        self.node_id = node_id if node_id is not None else uuid.uuid4().hex
        self._node_b = self.node_id.encode()
        self._prefix = self.options.prefix
        self.link = self._make_link(clock, endpoint)
        self.link.observe_command_ready(self._command_ready)
        self.link.observe_state(self._link_changed)
        # This node's contribution, the truth a sync writes back to Redis.
        self._counts: dict[str, int] = {}
        self._infos: dict[str, str] = {}
        self._socket_members: dict[str, dict[str, str]] = {}
        self._need_sync = False
        # Presence fields changed while the cluster could not hear: the
        # member events a sync finds for these are news to the other nodes.
        self._dirty: set[str] = set()
        # Member events found by a sync, held until every registered node
        # is subscribed again (after a Redis restart the others may still be
        # redialling, and pub/sub does not keep messages for them).
        self._held: list[Transition] = []
        self._held_since: float | None = None
        # What this node's clients may believe about presence channels:
        # (app, channel) -> user ids they were told about (member lists and
        # member events), for every presence channel with a local subscriber.
        # After a fault (this node's link down, a script failed or was
        # refused, Redis lost its data) the node is "suspect": once every
        # node has written its state back, it reconciles its own clients
        # with what Redis holds (member_added for the missing, member_removed
        # for the ghosts). "partial" channels had a client join with a
        # member list decided locally, which lacks the other nodes' members.
        self._believed: dict[tuple[str, str], set[str]] = {}
        self._partial: set[tuple[str, str]] = set()
        self._suspect = False
        self._resynced_at: float | None = None
        self._syncs_sent = 0
        self._link_up_at = 0.0
        self._reconciling = False
        self.reconciles = 0
        self.local_answers = 0
        self.purged_nodes = 0
        self._draining = False
        # Registered nodes at the last heartbeat that found the registry
        # intact: after a Redis restart the others re-register only when
        # they reconnect, and held announcements wait for them.
        self._cluster_size = 1
        # Watchlists: sockets whose sign-in the cluster has not answered
        # yet, with the watch events that reached them meanwhile (user,
        # online, number); and what each local watcher was told: socket id
        # -> app, watched id -> (online, number of the event it reflects).
        # An event numbered at or before that is stale (a slower node
        # published it) and dropped; a reconcile after a fault corrects
        # only what is wrong.
        self._pending_signins: dict[str, list[tuple[str, bool, int | None]]] = {}
        self._told: dict[str, tuple[str, dict[str, tuple[bool, int]]]] = {}
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = clock

    def _make_link(self, clock: IReactorTime, endpoint: IStreamClientEndpoint) -> RedisLink:
        """
        The node's Redis connections, on which every command, script and
        PUBLISH runs (L{sockudo_tw.adapters.redis_cluster} routes them over a
        Redis Cluster instead).
        """
        return RedisLink(
            clock,
            endpoint,
            (self._prefix + "#bus").encode(),
            self._on_message,
            scripts=(APPLY, JOIN, HEARTBEAT),
            password=self.options.password,
            username=self.options.username,
            db=self.options.db,
            ping_interval=self.options.ping_interval,
            ping_timeout=self.options.ping_timeout,
            max_delay=self.options.reconnect_max_delay,
        )

    # -- observer (shared with the local adapter) --------------------------

    @property
    def observer(self) -> IPusherEvents:
        """
        Told about deliveries and about cluster transitions that have no
        caller waiting (non-presence occupancy, dead-node cleanup).
        """
        return self.local.observer

    @observer.setter
    def observer(self, value: IPusherEvents) -> None:
        self.local.observer = value

    # -- service -----------------------------------------------------------

    def startService(self) -> None:
        """
        Connect to Redis and start heartbeating.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self.link.startService()
        self._beat.start(self.options.period, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Leave the cluster: purge this node's contribution (announcing the
        members that leave with it), then close the connections.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._beat.running:
            self._beat.stop()
        return Deferred.fromCoroutine(self._leave())

    async def _leave(self) -> None:
        if self.link.commands.up:
            try:
                reply = await self.link.run_script(
                    APPLY, [self._prefix, self.node_id, "x"], timeout=2.0
                )
                self._announce(_transitions(reply[1:]), to_self=False, report=True)
            except Exception:
                self.log.warn("Could not remove this node's state from Redis at shutdown")
        await self.link.stopService()

    def cluster_links(self) -> dict[str, bool]:
        """
        Whether each Redis connection is up, for the C{cluster_link_up}
        gauge.
        """
        return {"publisher": self.link.commands.up, "subscriber": self.link.subscriber.up}

    def health(self) -> Deferred[bool]:
        """
        C{/up}: True when the command connection answers PING.
        """
        if not self.link.commands.up:
            return succeed(False)
        d = self.link.command("PING", timeout=self.options.requests_timeout)
        return d.addCallbacks(lambda _: True, lambda _: False)

    # -- contribution bookkeeping ------------------------------------------

    def _bump(self, field: str, delta: int, info: str | None = None) -> None:
        n = self._counts.get(field, 0) + delta
        if n > 0:
            self._counts[field] = n
            if info is not None:
                self._infos.setdefault(field, info)
        else:
            self._counts.pop(field, None)
            self._infos.pop(field, None)

    def _deltas(self, entries: Sequence[tuple[str, int, str]]) -> Deferred[list[Transition]] | None:
        """
        Send deltas (already applied to the contribution). None if Redis is
        down: the next sync writes them. Failures mark a sync as needed and
        fire with None.
        """
        fields = [entry[0] for entry in entries]
        if not self.link.commands.up:
            self._unsynced(fields)
            return None
        args: list[str | int] = [self._prefix, self.node_id, "d"]
        for field, delta, info in entries:
            args += [field, delta, info]
        syncs_before = self._syncs_sent
        d = self.link.run_script(APPLY, args, timeout=self.options.requests_timeout)

        def applied(reply: list[Any]) -> list[Transition] | None:
            if int(reply[0]) == 3:
                self._state_lost(fields, syncs_before)
                return None
            return _transitions(reply[1:])

        d.addCallback(applied)
        d.addErrback(self._script_failed, fields)
        return d

    def _unsynced(self, fields: Iterable[str]) -> None:
        """
        Changes the cluster did not hear about (decided from local state):
        the next sync writes them, and this node's clients are reconciled
        once the cluster has settled.
        """
        self._need_sync = True
        self._dirty.update(f for f in fields if f.startswith(("p", "u")))
        self._mark_suspect()

    def _mark_suspect(self) -> None:
        """
        This node's clients may hold stale presence lists from now on.
        """
        self._suspect = True
        self._resynced_at = None

    def _state_lost(self, fields: Iterable[str] = (), syncs_before: int | None = None) -> None:
        """
        Redis does not know this node (it lost its data, or purged this
        node as dead): nothing was applied. Write the whole state back at
        once, unless a sync sent after the refused change is on its way.
        """
        self._unsynced(fields)
        if self._draining:
            # Leaving anyway: writing the state back would only be undone.
            return
        if syncs_before is None or syncs_before == self._syncs_sent:
            self.log.warn("Redis does not know this node; writing its whole state back")
            self._sync()

    def _script_failed(self, failure: Failure, fields: Iterable[str] = ()) -> None:
        self._unsynced(fields)
        self.log.debug("Cluster update failed: {why}", why=failure.getErrorMessage())
        return None

    def _link_changed(self, up: bool) -> None:
        """
        A Redis connection went down: messages to this node are lost and
        its decisions are local until it is back, so resync and reconcile
        then.
        """
        if not up:
            self._need_sync = True
            self._mark_suspect()

    # -- what this node's clients were told about presence ------------------

    def _believe(
        self, app_id: str, channel: str, user_ids: Iterable[str], partial: bool = False
    ) -> None:
        """
        A local client was given a member list for C{channel}.
        """
        key = (app_id, channel)
        self._believed.setdefault(key, set()).update(user_ids)
        if partial:
            self._partial.add(key)

    def _forget_if_empty(self, app_id: str, channel: str) -> None:
        """
        Stop tracking a presence channel once no local client is on it.
        """
        key = (app_id, channel)
        if key in self._believed and not self.local.registry.subscribers(app_id, channel):
            del self._believed[key]
            self._partial.discard(key)

    def _deliver(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        """
        Deliver to this node's subscribers, noting member events on
        presence channels (what the clients now believe).
        """
        believed = self._believed.get((app_id, channel)) if self._believed else None
        if believed is not None and b"pusher_internal:member_" in frame:
            _note_member_event(believed, frame)
        self.local.broadcast(app_id, channel, frame, except_socket_id)

    def _report(
        self, transitions: list[Transition] | None, local: Sequence[Transition] = ()
    ) -> None:
        """
        Tell the observer about occupancy decided for a caller that did not
        wait: the cluster's decision, or this node's (C{local}) if the
        cluster could not decide.
        """
        for t in transitions if transitions is not None else local:
            if t.kind == "o":
                self.observer.channel_occupied(t.app_id, t.channel)
            elif t.kind == "v":
                self.observer.channel_vacated(t.app_id, t.channel)

    # -- IAdapter: delivery ------------------------------------------------

    def broadcast(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        """
        Deliver locally, then publish to the other nodes. Never raises for
        a cluster fault: the publish is dropped and counted instead.
        """
        self._deliver(app_id, channel, frame, except_socket_id)
        self._publish_broadcast(app_id, channel, frame, except_socket_id)

    def _publish_broadcast(
        self, app_id: str, channel: str, frame: bytes, except_socket_id: str | None
    ) -> None:
        if except_socket_id is not None and _US in except_socket_id:
            # Not a real socket id (those are digits and a dot); it must not
            # shift the fields of the bus message.
            except_socket_id = None
        try:
            message = _USB.join(
                [
                    b"B" + self._node_b,
                    app_id.encode(),
                    channel.encode(),
                    (except_socket_id or "").encode(),
                    frame,
                ]
            )
        except UnicodeError:
            self.log.info(
                "Not publishing to the cluster: channel {channel!r} is not UTF-8", channel=channel
            )
            return
        self.link.publish(message)

    def terminate_user_connections(self, app_id: str, user_id: str) -> None:
        self.local.terminate_user_connections(app_id, user_id)
        try:
            message = _USB.join([b"T" + self._node_b, app_id.encode(), user_id.encode()])
        except UnicodeError:
            return
        self.link.publish(message)

    def _on_message(self, payload: bytes) -> None:
        """
        A bus message from some node; our own echo is ignored.
        """
        kind = payload[:1]
        if kind == b"B":
            origin, app, channel, except_id, frame = payload[1:].split(_USB, 4)
            if origin != self._node_b:
                self._deliver(app.decode(), channel.decode(), frame, except_id.decode() or None)
        elif kind == b"T":
            origin, app, user = payload[1:].split(_USB, 2)
            if origin != self._node_b:
                self.local.terminate_user_connections(app.decode(), user.decode())
        elif kind == b"W":
            origin, app, state, seq, user = payload[1:].split(_USB, 4)
            if origin != self._node_b:
                self._deliver_watch(app.decode(), user.decode(), state == b"n", int(seq))
        else:
            self.log.warn("Unknown cluster message {head!r}", head=payload[:40])

    # -- IAdapter: queries -------------------------------------------------

    def _query(self, fallback: Deferred[Any], *command: str) -> Deferred[Any]:
        """
        Run a read; on any failure answer C{fallback} (local state).
        """
        if not self.link.commands.up:
            self.local_answers += 1
            return fallback
        d = self.link.command(*command, timeout=self.options.requests_timeout)

        def local_instead(f: Failure) -> Deferred[Any]:
            self.local_answers += 1
            return fallback

        d.addErrback(local_instead)
        return d

    def channels(self, app_id: str) -> Deferred[dict[str, int]]:
        d = self._query(
            self.local.channels(app_id).addCallback(lambda v: ("local", v)),
            "HGETALL",
            f"{self._prefix}a:{app_id}:ch",
        )
        return d.addCallback(_pairs_to_counts)

    def channel_subscription_count(self, app_id: str, channel: str) -> Deferred[int]:
        d = self._query(
            self.local.channel_subscription_count(app_id, channel).addCallback(
                lambda v: ("local", v)
            ),
            "HGET",
            f"{self._prefix}a:{app_id}:ch",
            channel,
        )
        return d.addCallback(_to_int)

    def presence_members(self, app_id: str, channel: str) -> Deferred[dict[str, Any]]:
        d = self._query(
            self.local.presence_members(app_id, channel).addCallback(lambda v: ("local", v)),
            "HGETALL",
            f"{self._prefix}a:{app_id}:pi:{channel}",
        )
        return d.addCallback(_pairs_to_members)

    def app_connection_count(self, app_id: str) -> Deferred[int]:
        d = self._query(
            self.local.app_connection_count(app_id).addCallback(lambda v: ("local", v)),
            "HGET",
            f"{self._prefix}conns",
            app_id,
        )
        return d.addCallback(_to_int)

    # -- IAdapter: membership ----------------------------------------------

    def add_socket(self, app_id: str, socket: ILocalSocket) -> None:
        self.local.add_socket(app_id, socket)
        field = _c_field(app_id)
        self._bump(field, 1)
        self._deltas([(field, 1, "")])

    def has_socket(self, socket_id: str) -> bool:
        return self.local.has_socket(socket_id)

    def sign_in(
        self, app_id: str, socket_id: str, user_id: str, watchlist: tuple[str, ...]
    ) -> Deferred[SignInOutcome[ILocalSocket]]:
        """
        Sign in locally, then let the cluster decide whether the user came
        online (its watchers on every node are told) and which watched ids
        are online anywhere. Never fails for a Redis fault: this node's
        answer stands instead.
        """
        registry = self.local.registry
        if registry.user_of(socket_id) is not None:
            return succeed(SignInOutcome(came_online=False))
        local = registry.sign_in(app_id, socket_id, user_id, watchlist)
        if registry.user_of(socket_id) != user_id:
            return succeed(local)
        watched = tuple(dict.fromkeys(watchlist))
        entries = [(_u_field(app_id, user_id), 1, "")]
        if watched:
            entries.append((_w_field(app_id), 1, ""))
        for field, delta, _ in entries:
            self._bump(field, delta)
        fields = [entry[0] for entry in entries]

        def local_decision() -> SignInOutcome[ILocalSocket]:
            if local.came_online:
                self._deliver_watch(app_id, user_id, True, None, except_socket_id=socket_id)
            states = dict.fromkeys(local.online, True)
            return self._signed_in(socket_id, watched, states, None, local.came_online)

        if not self.link.commands.up:
            self._unsynced(fields)
            return succeed(local_decision())
        if watched:
            self._pending_signins[socket_id] = []
        syncs_before = self._syncs_sent
        d = self.link.run_script(
            APPLY,
            [self._prefix, self.node_id, "i", app_id, user_id, *watched],
            timeout=self.options.requests_timeout,
        )

        def signed(reply: list[Any]) -> SignInOutcome[ILocalSocket]:
            if int(reply[0]) == 3:
                self._state_lost(fields, syncs_before)
                return local_decision()
            transitions = _transitions(reply[1])
            states = {uid: bool(int(flag)) for uid, flag in zip(watched, reply[2], strict=True)}
            self._announce(transitions, to_self=True, report=False)
            came_online = any(t.kind == "n" for t in transitions)
            return self._signed_in(socket_id, watched, states, int(reply[3]), came_online)

        def failed(f: Failure) -> SignInOutcome[ILocalSocket]:
            self._script_failed(f, fields)
            return local_decision()

        return d.addCallback(signed).addErrback(failed)

    def _signed_in(
        self,
        socket_id: str,
        watched: tuple[str, ...],
        states: dict[str, bool],
        seq: int | None,
        came_online: bool,
    ) -> SignInOutcome[ILocalSocket]:
        """
        The sign-in's outcome: the watched ids' state as the cluster (or
        this node) answered, updated by the watch events numbered after
        that answer which reached the socket while it waited.
        """
        told = {u: (states.get(u, False), seq or 0) for u in watched}
        for user_id, online, event_seq in self._pending_signins.pop(socket_id, ()):
            before = told.get(user_id)
            if before is None:
                continue
            if seq is None or event_seq is None:
                told[user_id] = (online, before[1])
            elif event_seq > before[1]:
                told[user_id] = (online, event_seq)
        app_id = self.local.registry.app_of(socket_id) if watched else None
        if app_id is not None:
            self._told[socket_id] = (app_id, told)
        return SignInOutcome(
            came_online,
            tuple(u for u in watched if told[u][0]),
            tuple(u for u in watched if not told[u][0]),
        )

    def _deliver_watch(
        self,
        app_id: str,
        user_id: str,
        online: bool,
        seq: int | None,
        except_socket_id: str | None = None,
    ) -> None:
        """
        Tell this node's watchers of C{user_id} that it went online or
        offline. An event numbered at or before what a watcher was last
        told is stale (published by a slower node) and dropped for it, and
        one that matches what it was told (a re-announcement after a
        fault) is not repeated; C{seq} None is a decision this node made
        alone. A watcher whose sign-in is still waiting for the cluster
        gets it folded into its initial state instead.
        """
        watchers = self.local.registry.watchers(app_id, user_id)
        if not watchers:
            return
        frame: bytes | None = None
        for socket_id, socket in watchers.items():
            if socket_id == except_socket_id:
                continue
            pending = self._pending_signins.get(socket_id)
            if pending is not None:
                pending.append((user_id, online, seq))
                continue
            entry = self._told.get(socket_id)
            if entry is None:
                # Not answered yet (a local sign-in whose app is gone).
                continue
            told = entry[1]
            state, last = told.get(user_id, (not online, 0))
            if seq is not None and seq <= last:
                continue
            told[user_id] = (online, last if seq is None else seq)
            if state == online:
                continue
            if frame is None:
                frame = events.watchlist_events([("online" if online else "offline", [user_id])])
            socket.send_frame(frame)

    def _publish_watch(self, app_id: str, user_id: str, online: bool, seq: int) -> None:
        """
        Tell the other nodes' watchers of C{user_id}.
        """
        try:
            message = _USB.join(
                [
                    b"W" + self._node_b,
                    app_id.encode(),
                    b"n" if online else b"f",
                    b"%d" % seq,
                    user_id.encode(),
                ]
            )
        except UnicodeError:
            return
        self.link.publish(message)

    def subscribe(
        self,
        app_id: str,
        channel: str,
        socket_id: str,
        member: PresenceMember | None,
        max_members: int,
    ) -> Deferred[SubscribeOutcome]:
        """
        Join locally, then let the cluster decide the transitions. Never
        fails for a Redis fault: the local decision stands instead.
        """
        registry = self.local.registry
        already = channel in registry.socket_channels(socket_id)
        outcome = registry.subscribe(app_id, channel, socket_id, member, max_members)
        if already or not outcome.accepted:
            return succeed(outcome)
        s_field = _s_field(app_id, channel)
        self._bump(s_field, 1)
        if member is None:
            d = self._deltas([(s_field, 1, "")])
            if d is None:
                return succeed(outcome)
            local = [Transition("o", app_id, channel)] if outcome.occupied else []
            d.addCallback(self._report, local)
            return succeed(attrs.evolve(outcome, occupied=False))
        info = json.dumps(member.user_info, ensure_ascii=False, separators=(",", ":"))
        p_field = _p_field(app_id, channel, member.user_id)
        self._bump(p_field, 1, info)
        self._socket_members.setdefault(socket_id, {})[channel] = member.user_id

        def local_decision() -> SubscribeOutcome:
            self._believe(app_id, channel, outcome.members or {}, partial=True)
            return outcome

        if not self.link.commands.up:
            self._unsynced([s_field, p_field])
            return succeed(local_decision())
        syncs_before = self._syncs_sent
        j = self.link.run_script(
            JOIN,
            [self._prefix, self.node_id, app_id, channel, member.user_id, info, max_members],
            timeout=self.options.requests_timeout,
        )

        def joined(reply: list[Any]) -> SubscribeOutcome:
            status = int(reply[0])
            if status == 3:
                self._state_lost([s_field, p_field], syncs_before)
                return local_decision()
            if status == 0:
                return self._refuse(app_id, channel, socket_id, member.user_id)
            transitions = _transitions(reply[1])
            members = _pairs_to_members(reply[2])
            self._believe(app_id, channel, members)
            return attrs.evolve(
                outcome,
                occupied=any(t.kind == "o" for t in transitions),
                member_added=any(t.kind == "a" for t in transitions),
                members=members,
            )

        def failed(f: Failure) -> SubscribeOutcome:
            self._script_failed(f, [s_field, p_field])
            return local_decision()

        return j.addCallback(joined).addErrback(failed)

    def _refuse(self, app_id: str, channel: str, socket_id: str, user_id: str) -> SubscribeOutcome:
        """
        The cluster says the presence channel is full: undo the local join.
        """
        left = self.local.registry.unsubscribe(app_id, channel, socket_id)
        self._bump(_s_field(app_id, channel), -1)
        self._bump(_p_field(app_id, channel, user_id), -1)
        self._socket_members.get(socket_id, {}).pop(channel, None)
        self._forget_if_empty(app_id, channel)
        return SubscribeOutcome(accepted=False, count=left.count)

    def unsubscribe(
        self, app_id: str, channel: str, socket_id: str
    ) -> Deferred[UnsubscribeOutcome]:
        """
        Leave locally, then let the cluster decide the transitions. Never
        fails for a Redis fault: the local decision stands instead.
        """
        outcome = self.local.registry.unsubscribe(app_id, channel, socket_id)
        if not outcome.removed:
            return succeed(outcome)
        entries = self._leave_entries(app_id, socket_id, [channel])
        self._forget_if_empty(app_id, channel)
        d = self._deltas(entries)
        if d is None:
            return succeed(outcome)
        if not any(e[0].startswith("p") for e in entries):
            local = [Transition("v", app_id, channel)] if outcome.vacated else []
            d.addCallback(self._report, local)
            return succeed(attrs.evolve(outcome, vacated=False))

        def decided(transitions: list[Transition] | None) -> UnsubscribeOutcome:
            if transitions is None:
                return outcome
            return _cluster_unsubscribe(outcome, app_id, transitions)

        return d.addCallback(decided).addErrback(_local_instead, self.log, outcome)

    def _leave_entries(
        self, app_id: str, socket_id: str, channels: Iterable[str]
    ) -> list[tuple[str, int, str]]:
        """
        The deltas for a socket leaving C{channels}, applied to the
        contribution.
        """
        members = self._socket_members.get(socket_id, {})
        entries: list[tuple[str, int, str]] = []
        for channel in channels:
            field = _s_field(app_id, channel)
            self._bump(field, -1)
            entries.append((field, -1, ""))
            user_id = members.pop(channel, None)
            if user_id is not None:
                pfield = _p_field(app_id, channel, user_id)
                self._bump(pfield, -1)
                entries.append((pfield, -1, ""))
        if not members:
            self._socket_members.pop(socket_id, None)
        return entries

    def remove_socket(self, app_id: str, socket_id: str) -> Deferred[SocketRemoval[ILocalSocket]]:
        """
        Forget a connection locally, then let the cluster decide the
        transitions. Never fails for a Redis fault: the local decisions
        (member_removed when this node held the user's last socket) stand.
        """
        found = self.local.registry.remove_socket(socket_id)
        if found is None:
            return succeed(SocketRemoval(app_id))
        removal: SocketRemoval[ILocalSocket] = found
        left = [o.channel for o in removal.unsubscribed if o.removed]
        entries = self._leave_entries(app_id, socket_id, left)
        for channel in left:
            self._forget_if_empty(app_id, channel)
        self._socket_members.pop(socket_id, None)
        if self._draining:
            # The node's leave removes everything it holds in one script
            # and announces what changed; a script per closing socket
            # would only delay the shutdown.
            self._told.pop(socket_id, None)
            return succeed(
                attrs.evolve(
                    removal,
                    unsubscribed=tuple(
                        _cluster_unsubscribe(o, app_id, []) for o in removal.unsubscribed
                    ),
                )
            )
        field = _c_field(app_id)
        self._bump(field, -1)
        entries.append((field, -1, ""))
        if removal.user_id is not None:
            # The watcher count first: the socket's own watchlist is no
            # reason to publish that its user went offline.
            signed = [(_u_field(app_id, removal.user_id), -1, "")]
            if removal.watchlist:
                signed.insert(0, (_w_field(app_id), -1, ""))
            for field_name, delta, _ in signed:
                self._bump(field_name, delta)
            entries += signed
        self._told.pop(socket_id, None)
        d = self._deltas(entries)
        if d is None:
            self._offline_here(app_id, removal)
            return succeed(removal)
        d.addCallback(self._watch_decided, app_id, removal)
        if not any(e[0].startswith("p") for e in entries):
            local = [Transition("v", app_id, o.channel) for o in removal.unsubscribed if o.vacated]
            d.addCallback(self._report, local)
            return succeed(
                attrs.evolve(
                    removal,
                    unsubscribed=tuple(
                        attrs.evolve(o, vacated=False) for o in removal.unsubscribed
                    ),
                )
            )

        def decided(transitions: list[Transition] | None) -> SocketRemoval[ILocalSocket]:
            if transitions is None:
                return removal
            return attrs.evolve(
                removal,
                unsubscribed=tuple(
                    _cluster_unsubscribe(o, app_id, transitions) for o in removal.unsubscribed
                ),
            )

        return d.addCallback(decided).addErrback(_local_instead, self.log, removal)

    def _watch_decided(
        self,
        transitions: list[Transition] | None,
        app_id: str,
        removal: SocketRemoval[ILocalSocket],
    ) -> list[Transition] | None:
        """
        A disconnect's cluster decision is in: tell the watchers of a user
        whose last socket anywhere left (this node's decision if the
        cluster could not decide). Passes the transitions on.
        """
        if transitions is None:
            self._offline_here(app_id, removal)
        else:
            self._announce(
                [t for t in transitions if t.kind in ("n", "f")], to_self=True, report=False
            )
        return transitions

    def _offline_here(self, app_id: str, removal: SocketRemoval[ILocalSocket]) -> None:
        """
        Without the cluster: tell this node's watchers that the user left
        if this node held its last socket.
        """
        if removal.went_offline is not None:
            self._deliver_watch(app_id, removal.went_offline, False, None)

    # -- liveness, sync and dead nodes -------------------------------------

    def _command_ready(self) -> None:
        """
        The command connection is (again) usable: register and rewrite this
        node's contribution before anything else goes out on it.
        """
        self._link_up_at = self.clock.seconds()
        self._heartbeat(force_sync=True)

    def _heartbeat(self, force_sync: bool = False) -> None:
        """
        Resync if needed, refresh this node's deadline, purge dead nodes,
        and finish a recovery (held announcements, reconciling clients).
        """
        if not self.link.commands.up:
            return
        if force_sync or self._need_sync:
            # Before the heartbeat: the sync registers the node, so the
            # heartbeat finds it known.
            self._sync()
        d = self.link.run_script(
            HEARTBEAT,
            [self._prefix, self.node_id, self.options.ttl_ms],
            timeout=self.options.requests_timeout,
        )
        self._settle()

        def beat(reply: list[Any]) -> None:
            known, dead = int(reply[0]), [_text(n) for n in reply[1]]
            if known:
                size = int(reply[2])
                keep = self._held or self._suspect
                self._cluster_size = max(self._cluster_size, size) if keep else size
            elif not self._need_sync:
                # Redis lost its data (restart, FLUSHALL) or purged this
                # node while it stalled.
                self._state_lost()
            if self.clock.seconds() - self._link_up_at < self.options.reconnect_grace:
                # Just back from an outage: after Redis stalled, every
                # deadline has passed, but the other nodes are redialling
                # too and will refresh theirs; purging them now would tell
                # every client their members left, then came back.
                dead = []
            for node in dead:
                if node != self.node_id:
                    self._purge(node)

        d.addCallbacks(beat, self._script_failed)

    def _sync(self) -> None:
        """
        Make Redis hold exactly this node's contribution (registering the
        node), and tell the other nodes about member changes they missed:
        all of them when Redis had nothing of this node (data lost, purged
        as dead), else those that changed here while the cluster could not
        hear.
        """
        self._need_sync = False
        self._syncs_sent += 1
        dirty, self._dirty = self._dirty, set()
        args: list[str | int] = [self._prefix, self.node_id, "s", self.options.ttl_ms]
        for field, count in self._counts.items():
            args += [field, count, self._infos.get(field, "")]
        d = self.link.run_script(APPLY, args, timeout=self.options.requests_timeout)

        def synced(reply: list[Any]) -> None:
            status = int(reply[0])
            transitions = _transitions(reply[1:])
            if transitions:
                self.log.info(
                    "Resynced this node's state with Redis ({n} cluster changes)",
                    n=len(transitions),
                )
            if status == 1:
                # Only this node's link dropped: the other nodes already
                # know every member but those that changed here meanwhile.
                transitions = [t for t in transitions if t.field is not None and t.field in dirty]
            elif status == 2:
                # The purge told every node, this one included, that its
                # members left.
                self._mark_suspect()
            if transitions:
                self._held += transitions
                if self._held_since is None:
                    self._held_since = self.clock.seconds()
            if not self._need_sync:
                self._resynced_at = self.clock.seconds()
            self._settle()

        def failed(f: Failure) -> None:
            self._dirty |= dirty
            self._script_failed(f)

        d.addCallbacks(synced, failed)

    def _settle(self) -> None:
        """
        Finish a recovery once the cluster has settled: as many nodes listen
        on the bus as are registered (or were, before Redis lost its data),
        and, for the reconcile, have written their state back; or after
        C{node_timeout} at the latest. Then announce held member events to
        the other nodes, and reconcile this node's clients with Redis.
        """
        if not (self._held or self._suspect) or not self.link.commands.up:
            return
        listening = self.link.command(
            "PUBSUB", "NUMSUB", self.link.channel, timeout=self.options.requests_timeout
        )
        registered = self.link.command(
            "ZCARD", self._prefix + "nodes", timeout=self.options.requests_timeout
        )

        both: Deferred[list[Any]] = gatherResults([listening, registered], consumeErrors=True)

        async def check() -> None:
            numsub, zcard = await both
            subscribers, nodes = int(numsub[1]), int(zcard)
            now = self.clock.seconds()
            needed = max(nodes, self._cluster_size)
            if self._held:
                waited = now - (self._held_since or now)
                if subscribers >= needed or waited >= self.options.node_timeout:
                    held, self._held, self._held_since = self._held, [], None
                    self._announce(
                        [t for t in held if self._still_true(t)], to_self=False, report=False
                    )
            resynced = self._resynced_at
            if (
                self._suspect
                and resynced is not None
                and not self._need_sync
                and self.link.subscriber.up
                and (
                    (nodes >= self._cluster_size and subscribers >= needed)
                    or now - resynced >= self.options.node_timeout
                )
            ):
                await self._reconcile()

        Deferred.fromCoroutine(check()).addErrback(self._script_failed)

    def _still_true(self, t: Transition) -> bool:
        """
        Whether a held member event still matches this node's state (the
        member may have left, or come back, while it was held).
        """
        if t.field is None:
            return True
        here = t.field in self._counts
        return here if t.kind in ("a", "n") else not here

    async def _reconcile(self) -> None:
        """
        Make this node's clients' presence lists what Redis holds: after a
        fault they may lack members (a list decided locally, member_added
        events lost) or keep ghosts (member_removed events lost or never
        decided). Sends member_added for members they may lack and
        member_removed for ghosts, to local subscribers only (every node
        reconciles its own clients).
        """
        if self._reconciling:
            return
        self._reconciling = True
        self._suspect = False
        partial, self._partial = self._partial, set()
        try:
            keys = list(self._believed)
            replies = [
                self.link.command(
                    "HGETALL",
                    f"{self._prefix}a:{app_id}:pi:{channel}",
                    timeout=self.options.requests_timeout,
                ).addErrback(lambda f: f.value)
                for app_id, channel in keys
            ]
            sent = 0
            for (app_id, channel), reply in zip(keys, replies, strict=True):
                flat = await reply
                if not isinstance(flat, list):
                    # The read failed (an exception, not a reply): try again
                    # at the next heartbeat.
                    self._mark_suspect()
                    self._need_sync = True
                    self._partial.add((app_id, channel))
                    continue
                believed = self._believed.get((app_id, channel))
                if believed is None:
                    continue
                infos = {_text(k): _text(v) for k, v in _pairs(flat)}
                ghosts = [u for u in believed if u not in infos]
                everyone = (app_id, channel) in partial
                missing = [u for u in infos if everyone or u not in believed]
                for user_id in ghosts:
                    self._deliver(app_id, channel, events.member_removed(channel, user_id), None)
                for user_id in missing:
                    try:
                        info = json.loads(infos[user_id])
                    except ValueError:
                        info = None
                    frame = events.member_added(channel, user_id, info)
                    self._deliver(app_id, channel, frame, None)
                sent += len(ghosts) + len(missing)
            self.reconciles += 1
            if sent:
                self.log.info(
                    "Reconciled local clients' presence lists with the cluster ({n} member events)",
                    n=sent,
                )
            await self._reconcile_watchlists()
        finally:
            self._reconciling = False

    async def _reconcile_watchlists(self) -> None:
        """
        Make what this node's watchers were told match who is online in
        the cluster: after a fault they may have missed watch events, or
        signed in with a state decided from this node alone. Sends each
        watcher one event with its corrections.
        """
        by_app: dict[str, tuple[set[str], list[str]]] = {}
        for socket_id, (app_id, told) in self._told.items():
            watched, sockets = by_app.setdefault(app_id, (set(), []))
            watched.update(told)
            sockets.append(socket_id)
        corrected = 0
        for app_id, (watched, sockets) in by_app.items():
            users = sorted(watched)
            truth: dict[str, bool] = {}
            try:
                for start in range(0, len(users), 1000):
                    chunk = users[start : start + 1000]
                    reply = await self.link.command(
                        "HMGET",
                        f"{self._prefix}a:{app_id}:u",
                        *chunk,
                        timeout=self.options.requests_timeout,
                    )
                    truth.update((u, v is not None) for u, v in zip(chunk, reply, strict=True))
            except Exception:
                # Try again at the next heartbeat.
                self._mark_suspect()
                self._need_sync = True
                return
            for socket_id in sockets:
                entry = self._told.get(socket_id)
                socket = self.local.registry.socket(app_id, socket_id)
                if entry is None or socket is None:
                    continue
                told = entry[1]
                came = [u for u, (state, _) in told.items() if truth.get(u) and not state]
                went = [u for u, (state, _) in told.items() if state and not truth.get(u, True)]
                pairs = [(name, ids) for name, ids in (("online", came), ("offline", went)) if ids]
                if pairs:
                    socket.send_frame(events.watchlist_events(pairs))
                    for user_id in came + went:
                        told[user_id] = (user_id in came, told[user_id][1])
                    corrected += 1
        if corrected:
            self.log.info("Reconciled {n} local watchers' watchlists with the cluster", n=corrected)

    def _purge(self, node: str, mode: str = "p") -> Deferred[bool]:
        """
        Clean up a node past its deadline (mode C{p}) or known to be dead
        (mode C{k}); a no-op, firing C{False}, if another survivor already
        did or the node is alive.
        """
        d = self.link.run_script(
            APPLY, [self._prefix, node, mode], timeout=self.options.requests_timeout
        )

        def purged(reply: list[Any]) -> bool:
            if int(reply[0]) == 0:
                return False
            self.purged_nodes += 1
            transitions = _transitions(reply[1:])
            self.log.warn(
                "Cluster node {node} {why}; removed its state ({n} cluster changes)",
                node=node,
                why="stopped heartbeating" if mode == "p" else "is gone",
                n=len(transitions),
            )
            self._announce(transitions, to_self=True, report=True)
            return True

        def failed(failure: Failure) -> bool:
            self._script_failed(failure)
            return False

        return d.addCallbacks(purged, failed)

    def drain(self) -> None:
        """
        The daemon is shutting down and closing every client: from now on
        a closing socket only leaves this node's memory, and the leave at
        C{stopService} takes the node's whole contribution out of Redis at
        once (telling the other nodes which members left).
        """
        self._draining = True

    def forget_node(self, node: str) -> Deferred[bool]:
        """
        Remove the state of a node known to be dead now, without waiting
        for its deadline: the worker supervisor calls it when a worker
        process exits, so its clients' presence ends at once instead of
        within C{node_timeout}. Fires whether anything was removed.
        """
        if node == self.node_id or not self.link.commands.up:
            return succeed(False)
        return self._purge(node, "k")

    def _announce(self, transitions: list[Transition], to_self: bool, report: bool) -> None:
        """
        Broadcast the member frames of script-decided transitions (to the
        other nodes only, or to every node), and report them to the
        observer when nobody else will.
        """
        for t in transitions:
            frame: bytes | None = None
            if t.kind == "a" and t.user_id is not None:
                frame = events.member_added(t.channel, t.user_id, json.loads(t.user_info or "{}"))
            elif t.kind == "r" and t.user_id is not None:
                frame = events.member_removed(t.channel, t.user_id)
            elif t.kind in ("n", "f") and t.user_id is not None and t.watch_seq:
                if to_self:
                    self._deliver_watch(t.app_id, t.user_id, t.kind == "n", t.watch_seq)
                self._publish_watch(t.app_id, t.user_id, t.kind == "n", t.watch_seq)
            if frame is not None:
                if to_self:
                    self._deliver(t.app_id, t.channel, frame, None)
                self._publish_broadcast(t.app_id, t.channel, frame, None)
            if report:
                if t.kind == "r" and t.user_id is not None:
                    self.observer.member_removed(t.app_id, t.channel, t.user_id)
                elif t.kind == "v":
                    self.observer.channel_vacated(t.app_id, t.channel)


def _local_instead(failure: Failure, log: Logger, local: Any) -> Any:
    """
    A cluster decision went wrong in an unexpected way (a bad reply): keep
    the local decision, so the caller's work (a disconnect cleanup, a
    member_removed) still happens.
    """
    log.failure("Cluster decision failed; using this node's", failure)
    return local


def _note_member_event(believed: set[str], frame: bytes) -> None:
    """
    Update what a presence channel's local clients believe from a
    C{pusher_internal:member_added}/C{member_removed} frame sent to them.
    """
    try:
        message = json.loads(frame)
        data = message["data"]
        if isinstance(data, str):
            data = json.loads(data)
        user_id = data["user_id"]
        event = message["event"]
    except (ValueError, KeyError, TypeError):
        return
    if not isinstance(user_id, str):
        user_id = str(user_id)
    if event == "pusher_internal:member_added":
        believed.add(user_id)
    elif event == "pusher_internal:member_removed":
        believed.discard(user_id)


def _cluster_unsubscribe(
    outcome: UnsubscribeOutcome, app_id: str, transitions: list[Transition]
) -> UnsubscribeOutcome:
    """
    Replace the local decisions in C{outcome} with the cluster's.
    """
    if not outcome.removed:
        return outcome
    vacated = False
    removed: str | None = None
    for t in transitions:
        if t.app_id == app_id and t.channel == outcome.channel:
            if t.kind == "v":
                vacated = True
            elif t.kind == "r":
                removed = t.user_id
    return attrs.evolve(outcome, vacated=vacated, member_removed=removed)


def _pairs(flat: Sequence[Any]) -> Iterable[tuple[Any, Any]]:
    return zip(flat[::2], flat[1::2], strict=True)


def _pairs_to_counts(reply: Any) -> dict[str, int]:
    if isinstance(reply, tuple):
        return dict(reply[1])
    return {_text(k): int(v) for k, v in _pairs(reply)}


def _pairs_to_members(reply: Any) -> dict[str, Any]:
    if isinstance(reply, tuple):
        return dict(reply[1])
    return {_text(k): json.loads(v) for k, v in _pairs(reply)}


def _to_int(reply: Any) -> int:
    if isinstance(reply, tuple):
        return int(reply[1])
    return int(reply) if reply is not None else 0


# The one Redis URL parser (sockudo_tw.redisurl), under this module's old names.
RedisServer = RedisUrl
parse_redis_url = parse_url


def redis_adapter_from_config(
    config: ServerConfig,
    reactor: Any,
    local: LocalAdapter | None = None,
    node_id: str | None = None,
) -> RedisAdapter:
    """
    Build the adapter for C{adapter.driver: redis}: the URL from
    C{adapter.redis.redis_pub_options.url}/C{REDIS_URL}, else
    C{database.redis}; heartbeats from C{adapter.cluster_health}.

    @param node_id: this node's id (a worker's, chosen by its supervisor);
        L{None} for a random one.
    """
    adapter_config = config.adapter
    server = parse_redis_url(adapter_config.redis_url or config.database_redis.url)
    health = adapter_config.cluster_health
    requests_timeout = adapter_config.redis_requests_timeout_ms / 1000
    heartbeat_interval = health.heartbeat_interval_ms / 1000
    node_timeout = health.node_timeout_ms / 1000
    period = min(heartbeat_interval, node_timeout / 4)
    options = RedisNodeOptions(
        prefix=adapter_config.redis_prefix,
        requests_timeout=requests_timeout,
        heartbeat_interval=heartbeat_interval,
        node_timeout=node_timeout,
        # A stalled Redis is noticed within one period plus the request
        # timeout, well inside node_timeout.
        ping_interval=min(10.0, period),
        ping_timeout=min(5.0, requests_timeout),
        password=server.password,
        username=server.username,
        db=server.db,
    )
    endpoint: IStreamClientEndpoint = server.endpoint(reactor, timeout=5)
    return RedisAdapter(reactor, endpoint, options, local=local, node_id=node_id)
