# -*- test-case-name: tests.test_redis_cluster_adapter -*-
"""
A small Redis Cluster router on the same txredisapi stack as
L{sockudo_tw.adapters._redis_link}: hash slots (CRC16 of the key or of its
C{{hash tag}}), the slot map (C{CLUSTER SLOTS}), a connection per master,
and C{MOVED}/C{ASK} redirections.

Why not a second Redis library: the adapter's outage behaviour (bounded
pending replies, drop-and-count publishes, one log line per outage,
keepalive, injected clock) lives in L{RedisLink}; a cluster client from
another library would need all of it again, and would bring its own
reconnect policy and (for the asyncio ones) a second event loop; the
router is this one module.

The link of the adapter (L{ClusterLink}) is a L{RedisLink} whose endpoint
dials "the master of the home slot", looked up again at every (re)dial:
every adapter key shares one hash tag, so all its Lua scripts run on that
master, the pub/sub bus is subscribed there, and a failover, a restart or
a slot migration is a reconnect of the same link (with the resync that
follows any Redis outage). Commands on other keys (the webhook queue, held
leaves) go to the master of their own slot on a command-only connection.
The slot map is refreshed at every home (re)dial, on every redirection,
and every C{refresh_interval} seconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockudo_tw.adapters._redis_link import LuaScript, RedisLink, _SubscriberProtocol

__all__ = [
    "ClusterLink",
    "ClusterTopology",
    "ClusterUnavailableError",
    "ShardedClusterLink",
    "crc16",
    "key_slot",
    "parse_redirect",
]

SLOTS = 16384

Address = tuple[str, int]
EndpointFor = Callable[[str, int], IStreamClientEndpoint]


def _crc16_table() -> list[int]:
    """
    The 256 entries of the byte-wise CRC16 (polynomial 0x1021) table.
    """
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """
    CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the checksum
    Redis Cluster hashes keys with.
    """
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: bytes | str) -> int:
    """
    The hash slot of C{key}: only the part between the first C{{} and the
    first C{}} after it is hashed when that part is not empty (a hash
    tag), so keys sharing a tag share a slot.
    """
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16(raw) % SLOTS


def parse_redirect(message: str) -> tuple[str, int, Address] | None:
    """
    C{("MOVED" | "ASK", slot, (host, port))} for a redirection error
    text, else L{None}.
    """
    parts = message.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return parts[0], int(parts[1]), (host, int(port))
    except ValueError:
        return None


_KEYLESS = frozenset(
    b"PING PUBLISH SPUBLISH PUBSUB SCRIPT CLUSTER INFO TIME ASKING ECHO READONLY".split()
)


def command_key(args: Sequence[bytes | str | int]) -> bytes | None:
    """
    The key a command is routed by (its first key), or L{None} for a
    command that may run on any master.
    """
    name = _bytes(args[0]).upper()
    if name in (b"EVAL", b"EVALSHA"):
        return _bytes(args[3]) if len(args) > 3 and int(args[2]) > 0 else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return _bytes(args[1])


def _bytes(value: bytes | str | int) -> bytes:
    """
    A command argument as bytes (how Redis sees it).
    """
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _text(value: bytes | str) -> str:
    """
    A reply string as text.
    """
    return value.decode() if isinstance(value, bytes) else value


class ClusterUnavailableError(Exception):
    """
    No cluster node answered C{CLUSTER SLOTS}.
    """


class _OneShotFactory(Factory):
    """
    Builds a binary-safe txredisapi protocol for one C{CLUSTER SLOTS}.
    """

    isLazy = False  # noqa: N815 (txredisapi reads it)
    noisy = False

    def __init__(self, password: str | None, username: str | None) -> None:
        self.password = password
        self.username = username
        self.error: str | None = None

    def buildProtocol(self, addr: object) -> Any:
        """
        The protocol, logging in with the cluster's credentials.
        """
        p = txredisapi.RedisProtocol(
            None, password=self.password, convertNumbers=False, username=self.username
        )
        p.factory = self
        return p

    def stopTrying(self) -> None:  # noqa: N802 (txredisapi hook)
        """
        Nothing to stop: one connection only.
        """

    def connectionError(self, why: str) -> None:  # noqa: N802 (txredisapi hook)
        """
        AUTH failed; remembered for the error message.
        """
        self.error = why


class ClusterTopology:
    """
    The slot map of one Redis Cluster: which master serves which slot,
    learnt with C{CLUSTER SLOTS} from any node that answers (known masters
    first, then the configured seeds). Concurrent refreshes share one query.

    @ivar refreshes: slot maps fetched.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        seeds: Sequence[Address],
        endpoint_for: EndpointFor,
        *,
        password: str | None = None,
        username: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if not seeds:
            raise ValueError("a Redis Cluster needs at least one seed node")
        self.clock = clock
        self.seeds = tuple(seeds)
        self.endpoint_for = endpoint_for
        self.password = password
        self.username = username
        self.timeout = timeout
        self.refreshes = 0
        # Sorted (first slot, last slot, master) ranges.
        self._ranges: list[tuple[int, int, Address]] = []
        self._starts: list[int] = []
        self._refreshing: Deferred[None] | None = None
        self._waiting: list[Deferred[None]] = []
        self._observers: list[Callable[[], None]] = []

    @property
    def known(self) -> bool:
        """
        Whether a slot map was ever fetched.
        """
        return bool(self._ranges)

    def master_for(self, slot: int) -> Address | None:
        """
        The master serving C{slot} in the last slot map, if any.
        """
        i = bisect.bisect_right(self._starts, slot) - 1
        if i >= 0:
            first, last, address = self._ranges[i]
            if first <= slot <= last:
                return address
        return None

    def masters(self) -> set[Address]:
        """
        Every master of the last slot map.
        """
        return {address for _, _, address in self._ranges}

    def observe(self, observer: Callable[[], None]) -> None:
        """
        Call C{observer()} after each refresh that changed the slot map.
        """
        self._observers.append(observer)

    def refresh(self) -> Deferred[None]:
        """
        Fetch the slot map again; fails with L{ClusterUnavailableError}
        when no node answers.
        """
        mine: Deferred[None] = Deferred()
        self._waiting.append(mine)
        if self._refreshing is None:
            self._refreshing = Deferred.fromCoroutine(self._refresh())
            self._refreshing.addBoth(self._refreshed)
        return mine

    def _refreshed(self, result: Failure | None) -> None:
        """
        A query ended: hand its outcome to every caller waiting on it.
        """
        self._refreshing = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    async def _refresh(self) -> None:
        """
        Ask the known masters, then the seeds, until one gives a slot map.
        """
        candidates = sorted(self.masters()) + [s for s in self.seeds if s not in self.masters()]
        errors = []
        for address in candidates:
            try:
                reply = await self._ask(address)
                ranges = _parse_slots(reply)
            except Exception as e:
                errors.append(f"{address[0]}:{address[1]}: {e}")
                continue
            if not ranges:
                errors.append(f"{address[0]}:{address[1]}: no slots assigned")
                continue
            self.refreshes += 1
            changed = ranges != self._ranges
            self._ranges = ranges
            self._starts = [first for first, _, _ in ranges]
            if changed:
                for observer in list(self._observers):
                    try:
                        observer()
                    except Exception:
                        self.log.failure("Redis Cluster topology observer failed")
            return
        raise ClusterUnavailableError("no Redis Cluster node answered: " + "; ".join(errors))

    async def _ask(self, address: Address) -> Any:
        """
        C{CLUSTER SLOTS} on a fresh connection to C{address}.
        """
        factory = _OneShotFactory(self.password, self.username)
        connecting = self.endpoint_for(*address).connect(factory)
        connecting.addTimeout(self.timeout, self.clock)
        protocol: Any = await connecting
        try:
            ready = protocol.whenConnected()
            ready.addTimeout(self.timeout, self.clock)
            gone = protocol.whenDisconnected()
            refused = ClusterUnavailableError(factory.error or "connection lost")
            gone.addCallback(lambda _: ready.called or ready.errback(refused))
            await ready
            slots = protocol.execute_command("CLUSTER", "SLOTS")
            slots.addTimeout(self.timeout, self.clock)
            return await slots
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()


def _parse_slots(reply: Any) -> list[tuple[int, int, Address]]:
    """
    C{CLUSTER SLOTS}: C{[[first, last, [host, port, id...], replica...]...]}
    as sorted ranges with their master.
    """
    ranges = []
    for entry in reply:
        first, last, master = int(entry[0]), int(entry[1]), entry[2]
        host = _text(master[0]) or "127.0.0.1"
        ranges.append((first, last, (host, int(master[1]))))
    ranges.sort()
    return ranges


@implementer(IStreamClientEndpoint)
class _SlotEndpoint:
    """
    Dials whichever master serves C{slot}, refreshing the slot map first.

    @ivar address: the master of the last dial.
    """

    def __init__(self, topology: ClusterTopology, slot: int) -> None:
        self.topology = topology
        self.slot = slot
        self.address: Address | None = None
        # Told how each refresh went (the link logs failures once).
        self.refreshed: Callable[[object], None] = _ignore
        self.refresh_failed: Callable[[str], None] = _ignore

    def connect(self, protocolFactory: Any) -> Deferred[Any]:  # noqa: N803 (interface)
        """
        Refresh the slot map (keeping the last one if no node answers), then
        connect to the master of the slot.
        """

        async def dial() -> Any:
            try:
                await self.topology.refresh()
            except ClusterUnavailableError as e:
                self.refresh_failed(str(e))
                if not self.topology.known:
                    raise
            else:
                self.refreshed(None)
            address = self.topology.master_for(self.slot)
            if address is None:
                raise ClusterUnavailableError(f"no Redis Cluster master serves slot {self.slot}")
            self.address = address
            protocol: Any = await self.topology.endpoint_for(*address).connect(protocolFactory)
            # Remember on the protocol (not the proxy ClientService may
            # wrap it in) which master it reached.
            unwrapped = getattr(protocol, "unwrapped", None)
            (unwrapped() if unwrapped is not None else protocol).cluster_address = address
            return protocol

        return Deferred.fromCoroutine(dial())


class _CommandLink(RedisLink):
    """
    A command-only connection to one master (no subscriber): the
    L{RedisLink} command side, keepalive and outage log.
    """

    def startService(self) -> None:
        """
        Dial the command connection and start the keepalive.
        """
        self.running = True
        self.commands.service.startService()
        self._pinger.start(self.ping_interval, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Close the command connection.
        """
        self.running = False
        if self._pinger.running:
            self._pinger.stop()
        d: Deferred[None] = self.commands.service.stopService()
        return d

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """
        A L{RedisLink}, plus the callers waiting for its first connection.
        """
        super().__init__(*args, **kwargs)
        self._waiters: list[Deferred[None]] = []
        self.observe_command_ready(self._wake)

    def when_ready(self, timeout: float) -> Deferred[None]:
        """
        Fires once the command connection is usable (at once if it is),
        fails after C{timeout} seconds.
        """
        if self.commands.up:
            return Deferred.fromCoroutine(_nothing())
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        d.addTimeout(timeout, self.clock)

        def forget(result: object) -> object:
            if d in self._waiters:
                self._waiters.remove(d)
            return result

        d.addBoth(forget)
        return d

    def _wake(self) -> None:
        """
        The connection is usable: fire every L{when_ready} waiter.
        """
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)


def _ignore(_: object) -> None:
    """
    The default refresh outcome hooks of L{_SlotEndpoint}.
    """


async def _nothing() -> None:
    """
    An already-fired Deferred's coroutine (for L{Deferred.fromCoroutine}).
    """
    return None


class ClusterLink(RedisLink):
    """
    L{RedisLink} for a Redis Cluster: its own connections (commands,
    scripts, PUBLISH and the bus subscription) go to the master of the
    home slot (the slot of C{anchor_key}); commands on keys of other slots
    go to their master; C{MOVED} and C{ASK} replies are followed (up to
    5 hops) and a C{MOVED} refreshes the slot map.

    @ivar redirects: C{MOVED}/C{ASK} replies followed.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        topology: ClusterTopology,
        anchor_key: bytes,
        channel: bytes,
        on_message: Callable[[bytes], None],
        *,
        refresh_interval: float = 30.0,
        **options: Any,
    ) -> None:
        self.topology = topology
        self.anchor_key = anchor_key
        self.home = _SlotEndpoint(topology, key_slot(anchor_key))
        super().__init__(clock, self.home, channel, on_message, **options)
        self._options = options
        self._others: dict[Address, _CommandLink] = {}
        self.redirects = 0
        self._refresh_failing = False
        self.home.refreshed = self._refresh_worked
        self.home.refresh_failed = self._refresh_failure
        self._refresher = LoopingCall(self._periodic_refresh)
        self._refresher.clock = clock
        self.refresh_interval = refresh_interval
        topology.observe(self._topology_changed)

    def startService(self) -> None:
        """
        Dial the home master and start the periodic slot-map refresh.
        """
        super().startService()
        self._refresher.start(self.refresh_interval, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Close the home connections and every other master's.
        """
        if self._refresher.running:
            self._refresher.stop()
        others, self._others = list(self._others.values()), {}
        home = super().stopService()

        async def all_closed() -> None:
            await home
            for link in others:
                await link.stopService()

        return Deferred.fromCoroutine(all_closed())

    # -- topology ----------------------------------------------------------

    def _periodic_refresh(self) -> None:
        """
        The timed slot-map refresh.
        """
        self.topology.refresh().addCallbacks(self._refresh_worked, self._refresh_failed)

    def _refresh_worked(self, _: object) -> None:
        """
        A refresh worked: say so once after failures.
        """
        if self._refresh_failing:
            self._refresh_failing = False
            self.log.info("Redis Cluster slot map refreshed again")

    def _refresh_failed(self, f: Failure) -> None:
        """
        L{_refresh_failure} as an errback.
        """
        self._refresh_failure(f.getErrorMessage())

    def _refresh_failure(self, why: str) -> None:
        """
        Log a failed refresh once until one works again (the link's own
        outage log says the rest).
        """
        if not self._refresh_failing:
            self._refresh_failing = True
            self.log.warn("Redis Cluster slot map refresh failed: {why}", why=why)

    def _topology_changed(self) -> None:
        """
        The slot map changed: if the home slot moved, drop the home
        connections (they redial the new master); close links to nodes
        that are no longer masters.
        """
        masters = self.topology.masters()
        for address in [a for a in self._others if a not in masters]:
            self._others.pop(address).stopService()
        home = self.topology.master_for(self.home.slot)
        if home is None:
            return
        for side in (self.commands, self.subscriber):
            protocol = side.protocol
            if protocol is None or protocol.transport is None:
                continue
            if getattr(protocol, "cluster_address", home) == home:
                continue
            self.log.info(
                "Redis Cluster slot {slot} moved to {host}:{port}; {side} connection redials",
                slot=self.home.slot,
                host=home[0],
                port=home[1],
                side=side.name,
            )
            protocol.transport.abortConnection()

    def _other(self, address: Address) -> _CommandLink:
        """
        The command-only link to the master at C{address}, made (and started) on first use.
        """
        link = self._others.get(address)
        if link is None:
            link = _CommandLink(
                self.clock,
                self.topology.endpoint_for(*address),
                self.channel,
                _drop,
                **self._options,
            )
            self._others[address] = link
            if self.running:
                link.startService()
        return link

    # -- commands ----------------------------------------------------------

    def command(self, *args: bytes | str | int, timeout: float = 5.0) -> Deferred[Any]:
        """
        Run one command on the master of its key's slot (the home master
        for keyless commands), following redirections. Never raises.
        """
        key = command_key(args)
        address = None if key is None else self.topology.master_for(key_slot(key))
        return self._routed(address, args, timeout, 0)

    def _routed(
        self, address: Address | None, args: Sequence[bytes | str | int], timeout: float, hops: int
    ) -> Deferred[Any]:
        """
        Send C{args} to C{address} (L{None}: the home master), following a
        C{MOVED} or C{ASK} reply up to 5 hops.
        """
        if address is None or address == self.home.address:
            d = super().command(*args, timeout=timeout)
        else:
            # A master first used now: wait (within the timeout) for its
            # connection rather than fail the command at once.
            link = self._other(address)
            if link.commands.up:
                d = link.command(*args, timeout=timeout)
            else:
                d = link.when_ready(timeout).addCallback(
                    lambda _: link.command(*args, timeout=timeout)
                )

        def redirected(f: Failure) -> Deferred[Any] | Failure:
            if hops >= 5 or not f.check(txredisapi.ResponseError):  # type: ignore[no-untyped-call]
                return f
            where = parse_redirect(str(f.value))
            if where is None:
                return f
            kind, _, target = where
            self.redirects += 1
            if kind == "MOVED":
                self.topology.refresh().addCallbacks(self._refresh_worked, self._refresh_failed)
                return self._when_ready(target, timeout).addCallback(
                    lambda _: self._routed(target, args, timeout, hops + 1)
                )
            return self._when_ready(target, timeout).addCallback(
                lambda _: self._asking(target, args, timeout, hops)
            )

        d.addErrback(redirected)
        return d

    def _when_ready(self, address: Address, timeout: float) -> Deferred[None]:
        """
        Fires once a command can be sent to C{address}.
        """
        if address == self.home.address:
            return Deferred.fromCoroutine(_nothing())
        return self._other(address).when_ready(timeout)

    def _asking(
        self, address: Address, args: Sequence[bytes | str | int], timeout: float, hops: int
    ) -> Deferred[Any]:
        """
        C{ASKING} then the command, back to back on the same connection
        (a slot being migrated: this key is already on the importing node).
        """
        link: RedisLink = self if address == self.home.address else self._other(address)
        send = super().command if link is self else link.command
        send("ASKING", timeout=timeout).addErrback(_drop_failure)
        return send(*args, timeout=timeout)

    def run_script(
        self, script: LuaScript, args: Sequence[bytes | str | int], timeout: float = 5.0
    ) -> Deferred[Any]:
        """
        EVALSHA C{script} with the anchor key as its one declared key (so
        the cluster checks, and redirects, the script's slot) and C{args};
        EVAL if the master no longer knows the script.
        """
        d = self.command("EVALSHA", script.sha, 1, self.anchor_key, *args, timeout=timeout)

        def noscript(f: Failure) -> Deferred[Any] | Failure:
            missing = f.check(txredisapi.ResponseError)  # type: ignore[no-untyped-call]
            if missing and "NOSCRIPT" in str(f.value):
                return self.command(
                    "EVAL", script.source, 1, self.anchor_key, *args, timeout=timeout
                )
            return f

        d.addErrback(noscript)
        return d


def _drop(payload: bytes) -> None:
    """
    Command-only links never subscribe.
    """


def _drop_failure(f: Failure) -> None:
    """
    An C{ASKING} failed: the command after it fails the same way.
    """


class _ShardedSubscriberProtocol(_SubscriberProtocol):
    """
    The subscriber connection in sharded pub/sub mode: C{smessage} pushes
    are delivered; an unasked C{sunsubscribe} (the server drops shard
    subscriptions when their slot moves away) closes the connection, so
    it redials the slot's new master and subscribes there.
    """

    def replyReceived(self, reply: Any) -> None:  # noqa: N802 (txredisapi)
        """
        Route the sharded pushes; everything else as txredisapi does.
        """
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind == b"smessage":
                self.messageReceived(None, reply[1], reply[2])
                return
            if kind == b"sunsubscribe" and not self.replyQueue.waiting:
                if self.transport is not None:
                    self.transport.abortConnection()
                return
        super().replyReceived(reply)


class ShardedClusterLink(ClusterLink):
    """
    L{ClusterLink} with sharded pub/sub (Redis 7): C{SPUBLISH} and
    C{SSUBSCRIBE} on the bus channel, whose hash tag puts it in the home
    slot, so a message is not forwarded to every master of the cluster.
    """

    publish_command = "SPUBLISH"
    subscriber_protocol = _ShardedSubscriberProtocol
    _old_server_logged = False

    def _prepare_subscriber(self, protocol: Any) -> Deferred[object]:
        """
        C{SSUBSCRIBE} (again, after every reconnect) to the bus channel.
        """
        d: Deferred[object] = protocol.execute_command(
            "SSUBSCRIBE", self.channel, apply_timeout=False
        )

        def refused(f: Failure) -> Failure:
            if "unknown command" in f.getErrorMessage().lower() and not self._old_server_logged:
                self._old_server_logged = True
                self.log.error(
                    "Redis refused SSUBSCRIBE: sharded pub/sub needs Redis 7.0 or later ({why})",
                    why=f.getErrorMessage(),
                )
            return f

        d.addErrback(refused)
        return d

    def command(self, *args: bytes | str | int, timeout: float = 5.0) -> Deferred[Any]:
        """
        As L{ClusterLink.command}, with C{PUBSUB NUMSUB} (how many nodes
        listen) asked as C{PUBSUB SHARDNUMSUB}.
        """
        if len(args) >= 2 and _bytes(args[0]).upper() == b"PUBSUB":
            if _bytes(args[1]).upper() == b"NUMSUB":
                args = (args[0], "SHARDNUMSUB", *args[2:])
        return super().command(*args, timeout=timeout)
