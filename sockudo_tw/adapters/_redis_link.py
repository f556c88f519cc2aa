# -*- test-case-name: tests.test_redis_adapter -*-
"""
The two Redis connections of a cluster node: one to run commands and
PUBLISH, one held in SUBSCRIBE mode (a subscribed connection cannot publish).

Each connection is kept by its own L{ClientService}: reconnect forever with
jittered exponential backoff, a keepalive C{PING} on a timer (a connection
that does not answer within C{ping_timeout} is aborted and redialled), and
the connection lifecycle logged once per outage, never once per message.

While the command connection is down, L{RedisLink.publish} drops the message
and counts it, and L{RedisLink.command} fails at once with
L{RedisUnavailableError}: nothing is queued, so an outage never turns into
unbounded buffering. While it is up, at most C{max_pending} commands may be
awaiting replies; past that, publishes are dropped the same way. Neither
ever raises, not even while a connection is being torn down (txredisapi
raises C{ConnectionError} then, and fails the pending replies, whose
callbacks may publish again): a Redis fault must never abort the local work
of whoever published (a subscribe, a disconnect cleanup).

We use txredisapi's protocol classes (RESP, the hiredis parser, commands)
but not its C{RedisFactory}/C{lazyConnection} pool: in txredisapi 1.6 the
pool schedules on the global reactor (C{callLater(0)} before a connection
joins the pool, a C{ClientService} built without a clock) and queues
commands forever while disconnected. Owning the C{ClientService} gives an
injected clock, bounded behaviour during outages and deterministic tests.
Both protocols chain C{connectionMade} to txredisapi's (AUTH and SELECT),
the subscriber resubscribes on every connection, and both are built with
C{charset=None, convertNumbers=False} so every payload is binary-safe bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import txredisapi
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from zope.interface import provider

from sockudo_tw.compat.twisted import quiet_client_service

__all__ = ["LuaScript", "RedisLink", "RedisUnavailableError"]


class RedisUnavailableError(Exception):
    """
    The command connection is down (or saturated); the command was not sent.
    """


@attrs.frozen
class LuaScript:
    """
    A Lua script run with EVALSHA, falling back to EVAL if the server lost
    its script cache (restart, SCRIPT FLUSH).
    """

    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode("utf-8")).hexdigest()


@provider(ILogObserver)
def _quiet(event: dict[str, Any]) -> None:
    """
    Drop L{ClientService}'s "Scheduling retry" lines: the link logs each
    outage once itself.
    """


# A ClientService whose per-attempt log lines are discarded (a guarded
# Twisted internal, see sockudo_tw.compat.twisted).
_QuietClientService = quiet_client_service(_quiet)


class _LinkFactory(Factory):
    """
    Builds txredisapi protocols for one side of the link, and gives them the
    few factory hooks their C{connectionMade} and C{quit} call.
    """

    isLazy = False  # noqa: N815 (txredisapi reads it)
    noisy = False

    def __init__(self, side: _Side, protocol_class: type[Any]) -> None:
        self._side = side
        self._protocol_class = protocol_class

    def buildProtocol(self, addr: object) -> Any:
        """
        A binary-safe protocol (bytes in, bytes out, no number conversion).
        """
        p = self._protocol_class(
            None,
            password=self._side.link.password,
            dbid=self._side.link.db,
            convertNumbers=False,
            username=self._side.link.username,
        )
        p.factory = self
        p.side = self._side
        return p

    def stopTrying(self) -> None:  # noqa: N802 (txredisapi hook)
        """
        txredisapi asks to give up after a failed AUTH/SELECT or QUIT; a
        cluster link keeps retrying with backoff instead (synapse does too).
        """

    def connectionError(self, why: str) -> None:  # noqa: N802 (txredisapi hook)
        """
        AUTH or SELECT failed: the connection is closed and will be retried.
        """
        self._side.auth_failed(why)


class _CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    The command/PUBLISH connection.

    @ivar replies_awaited: commands sent and not yet answered (or failed),
        counted here rather than read from txredisapi's undocumented
        C{replyQueue}: the link's bound on outstanding replies.
    """

    side: _Side
    replies_awaited = 0

    def unwrapped(self) -> _CommandProtocol:
        """
        This protocol, also when called through L{ClientService}'s proxy.
        """
        return self

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Send a command (txredisapi's entry point for every command, AUTH,
        SELECT and PING included) and count it until its reply or failure.
        """
        d: Deferred[Any] = super().execute_command(*args, **kwargs)
        self.replies_awaited += 1
        d.addBoth(self._answered)
        return d

    def _answered(self, result: object) -> object:
        self.replies_awaited -= 1
        return result

    def connectionLost(self, why: Failure) -> None:
        """
        Tell the link first, then chain to txredisapi, which fails the
        pending replies: their callbacks run right there and may publish,
        and must find the link already down, not this dead protocol.
        """
        self.side.lost(self)
        super().connectionLost(why)


class _SubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """
    The SUBSCRIBE connection: every message goes to the link's handler.
    """

    side: _Side

    def unwrapped(self) -> _SubscriberProtocol:
        """
        This protocol, also when called through L{ClientService}'s proxy.
        """
        return self

    def messageReceived(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
        """
        Hand a pub/sub message to the link; a handler bug is logged, never
        allowed to kill the connection.
        """
        try:
            self.side.link.on_message(message)
        except Exception:
            self.side.link.log.failure("Bad cluster message {message!r}", message=message[:200])

    def connectionLost(self, why: Failure) -> None:
        """
        Tell the link, then chain to txredisapi.
        """
        self.side.lost(self)
        super().connectionLost(why)


class _Side:
    """
    One connection of the link (command or subscriber): its L{ClientService},
    whether it is usable, and the once-per-outage logging.
    """

    def __init__(
        self,
        link: RedisLink,
        name: str,
        protocol_class: type[Any],
        prepare: Callable[[Any], Deferred[object]],
    ) -> None:
        self.link = link
        self.name = name
        self.protocol: Any = None
        self.ever_up = False
        self.down_since: float | None = link.clock.seconds()
        self.outage_logged = False
        self._prepare_ready = prepare
        # Connections dropped before they became usable (refused AUTH, a
        # failed SUBSCRIBE): ClientService forgets failures once a TCP
        # connection is made, so this keeps the backoff growing for them.
        self.rejected = 0
        policy = backoffPolicy(initialDelay=link.initial_delay, maxDelay=link.max_delay, factor=2.0)
        self.service = _QuietClientService(
            link.endpoint,
            _LinkFactory(self, protocol_class),
            retryPolicy=lambda attempt: policy(max(attempt, self.rejected)),
            clock=link.clock,
            prepareConnection=self._connected,
        )

    @property
    def up(self) -> bool:
        """
        Whether this connection is ready for use.
        """
        return self.protocol is not None

    def _connected(self, proxy: Any) -> None:
        """
        A TCP connection is made: wait for txredisapi's AUTH/SELECT, then run
        the side-specific step (script loading, SUBSCRIBE) before declaring
        the connection up; on failure, abort it and ClientService redials.

        This runs outside ClientService's C{prepareConnection} wait on
        purpose: ClientService (Twisted 26.10) has no transition for a
        connection lost while being prepared and raises C{NoTransition}.
        """
        # ClientService hands over a proxy (forwarding attribute access to
        # the protocol); the link compares protocols by identity.
        protocol = proxy.unwrapped()
        self.rejected += 1
        no_delay = getattr(protocol.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            # Small PUBLISH/EVALSHA writes must not wait for Nagle.
            no_delay(True)
        gone: list[bool] = []
        protocol.whenDisconnected().addCallback(lambda _: gone.append(True))

        def ready(_: object) -> Deferred[object]:
            return self._prepare_ready(protocol)

        def done(_: object) -> None:
            if not gone:
                self.rejected = 0
                self.protocol = protocol
                self.link._side_up(self)

        def failed(f: Failure) -> None:
            if not gone and protocol.transport is not None:
                protocol.transport.abortConnection()

        preparing = protocol.whenConnected().addCallback(ready)
        # A server that accepts but never answers must not leave the side
        # stuck here: give up and redial.
        preparing.addTimeout(self.link.ping_timeout, self.link.clock)
        preparing.addCallbacks(done, failed)

    def lost(self, protocol: object) -> None:
        """
        The connection closed: mark the side down (logging once), and let
        ClientService reconnect.
        """
        if protocol is self.protocol:
            self.protocol = None
            self.down_since = self.link.clock.seconds()
            self.link._side_down(self)

    def auth_failed(self, why: str) -> None:
        """
        Log a failed AUTH/SELECT once per outage.
        """
        if not self.outage_logged:
            self.outage_logged = True
            self.link.log.error("Redis {side} connection refused: {why}", side=self.name, why=why)


class RedisLink(Service):
    """
    A Redis command connection plus a subscriber connection on one pub/sub
    channel, both kept alive forever. (Slightly over 300 lines: the two
    connections share one outage log, keepalive and state observers.)

    @ivar published: messages handed to Redis.
    @ivar dropped: publishes dropped because the link was down or saturated.
    @ivar outages: how many times the link went from up to down.
    """

    log = Logger()
    # What a subclass changes for sharded pub/sub (redis_cluster).
    publish_command = "PUBLISH"
    subscriber_protocol: type[Any] = _SubscriberProtocol

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        channel: bytes,
        on_message: Callable[[bytes], None],
        *,
        scripts: Sequence[LuaScript] = (),
        password: str | None = None,
        username: str | None = None,
        db: int | None = None,
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        initial_delay: float = 0.2,
        max_delay: float = 10.0,
        max_pending: int = 100_000,
        startup_grace: float = 5.0,
    ) -> None:
        self.clock = clock
        self.endpoint = endpoint
        self.channel = channel
        self.on_message = on_message
        self.scripts = tuple(scripts)
        self.password = password
        self.username = username
        self.db = db
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.max_pending = max_pending
        self.startup_grace = startup_grace
        self._start_check: IDelayedCall | None = None
        self.published = 0
        self.dropped = 0
        self.outages = 0
        self._dropped_in_outage = 0
        self._observers: list[Callable[[bool], None]] = []
        self._command_observers: list[Callable[[], None]] = []
        self._was_up = False
        self.commands = _Side(self, "command", _CommandProtocol, self._prepare_commands)
        self.subscriber = _Side(
            self, "subscriber", self.subscriber_protocol, self._prepare_subscriber
        )
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = clock

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        """
        Start dialling both connections and the keepalive timer.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self.commands.service.startService()
        self.subscriber.service.startService()
        self._pinger.start(self.ping_interval, now=False)
        self._start_check = self.clock.callLater(self.startup_grace, self.log_unreachable_at_start)

    def stopService(self) -> Deferred[None]:
        """
        Stop the keepalive and close both connections.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._pinger.running:
            self._pinger.stop()
        if self._start_check is not None and self._start_check.active():
            self._start_check.cancel()
        d1 = self.commands.service.stopService()
        d2 = self.subscriber.service.stopService()

        async def both() -> None:
            await d1
            await d2

        return Deferred.fromCoroutine(both())

    # -- state -------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        """
        Whether both connections are usable: cluster traffic flows both ways.
        """
        return self.commands.up and self.subscriber.up

    @property
    def state(self) -> str:
        """
        C{"up"}, C{"degraded"} (one connection down) or C{"down"}.
        """
        if self.is_up:
            return "up"
        if self.commands.up or self.subscriber.up:
            return "degraded"
        return "down"

    def observe_state(self, observer: Callable[[bool], None]) -> None:
        """
        Call C{observer(is_up)} whenever L{is_up} changes.
        """
        self._observers.append(observer)

    def observe_command_ready(self, observer: Callable[[], None]) -> None:
        """
        Call C{observer()} each time the command connection becomes usable,
        before any other command can be sent on it: the adapter re-registers
        its node state there.
        """
        self._command_observers.append(observer)

    def _side_up(self, side: _Side) -> None:
        """
        A connection became usable: log the recovery once, notify observers.
        """
        now = self.clock.seconds()
        if side.ever_up and side.down_since is not None:
            self.log.info(
                "Redis {side} connection restored after {seconds:.1f}s",
                side=side.name,
                seconds=now - side.down_since,
            )
        elif side.outage_logged:
            self.log.info("Redis {side} connection established", side=side.name)
        side.ever_up = True
        side.outage_logged = False
        side.down_since = None
        if side is self.commands:
            if self._dropped_in_outage:
                self.log.info(
                    "{count} cluster messages were dropped while Redis was unreachable",
                    count=self._dropped_in_outage,
                )
                self._dropped_in_outage = 0
            for command_observer in list(self._command_observers):
                try:
                    command_observer()
                except Exception:
                    self.log.failure("Redis command-ready observer failed")
        self._notify()

    def _side_down(self, side: _Side) -> None:
        """
        A connection was lost: log it once for this outage, notify observers.
        Closing our own connections at shutdown is no outage.
        """
        if not self.running:
            return
        if not side.outage_logged:
            side.outage_logged = True
            self.log.warn(
                "Redis {side} connection lost; serving local clients only, "
                "reconnecting with backoff",
                side=side.name,
            )
        self._notify()

    def _notify(self) -> None:
        """
        Tell observers when L{is_up} flips.
        """
        up = self.is_up
        if up == self._was_up:
            return
        self._was_up = up
        if not up:
            self.outages += 1
        for observer in list(self._observers):
            try:
                observer(up)
            except Exception:
                self.log.failure("Redis state observer failed")

    def log_unreachable_at_start(self) -> None:
        """
        Log once that Redis could not be reached (called by the owner after
        a grace period, so a normal start stays quiet).
        """
        for side in (self.commands, self.subscriber):
            if not side.up and not side.outage_logged:
                side.outage_logged = True
                self.log.warn(
                    "Redis {side} connection not established yet; serving local "
                    "clients only, retrying with backoff",
                    side=side.name,
                )

    # -- preparing connections ---------------------------------------------

    def _prepare_commands(self, protocol: Any) -> Deferred[object]:
        """
        Load the Lua scripts so EVALSHA works from the first command.
        """
        loads = [protocol.execute_command("SCRIPT", "LOAD", s.source) for s in self.scripts]
        d: Deferred[Any] = gatherResults(loads, consumeErrors=True)
        return d

    def _prepare_subscriber(self, protocol: Any) -> Deferred[object]:
        """
        Subscribe (again, after every reconnect) to the cluster channel.
        """
        d: Deferred[object] = protocol.subscribe([self.channel])
        return d

    def _ping(self) -> None:
        """
        Keepalive: PING both connections; abort one that does not answer.
        """
        for side in (self.commands, self.subscriber):
            protocol = side.protocol
            if protocol is None:
                continue
            try:
                d: Deferred[object] = protocol.ping()
            except Exception as e:
                # txredisapi raises when the connection is already closing.
                d = fail(e)
            d.addTimeout(self.ping_timeout, self.clock)

            def no_pong(f: Failure, protocol: Any = protocol, side: _Side = side) -> None:
                if protocol is side.protocol and protocol.transport is not None:
                    self.log.warn(
                        "Redis {side} connection did not answer PING: {why}",
                        side=side.name,
                        why=f.getErrorMessage(),
                    )
                    protocol.transport.abortConnection()

            d.addErrback(no_pong)

    # -- commands ----------------------------------------------------------

    def _usable(self) -> Any:
        """
        The command protocol if it can take one more command, else None.
        """
        protocol = self.commands.protocol
        if (
            protocol is None
            or not protocol.connected
            or protocol.replies_awaited >= self.max_pending
        ):
            return None
        return protocol

    def publish(self, payload: bytes) -> bool:
        """
        PUBLISH C{payload} on the cluster channel without waiting. Returns
        False (and counts a drop) if the command connection is down, is
        closing, or has C{max_pending} replies outstanding. Never raises:
        callers are on the protocol's path (a subscribe, a disconnect
        cleanup) and must finish their local work whatever Redis does.
        """
        protocol = self._usable()
        if protocol is not None:
            try:
                d = protocol.execute_command(self.publish_command, self.channel, payload)
            except Exception:
                # txredisapi raises ConnectionError("Not connected") while
                # the connection is being torn down.
                protocol = None
            else:
                d.addErrback(_ignore)
        if protocol is None:
            self.dropped += 1
            self._dropped_in_outage += 1
            return False
        self.published += 1
        return True

    def command(self, *args: bytes | str | int, timeout: float = 5.0) -> Deferred[Any]:
        """
        Run one command; fails at once with L{RedisUnavailableError} when the link
        is down, or with a timeout after C{timeout} seconds. Never raises.
        """
        protocol = self._usable()
        if protocol is None:
            return fail(RedisUnavailableError("Redis command connection is down"))
        try:
            d: Deferred[Any] = protocol.execute_command(*args)
        except Exception as e:
            return fail(RedisUnavailableError(f"Redis command connection is closing: {e}"))
        d.addTimeout(timeout, self.clock)
        return d

    def execute_command(self, *args: bytes | str | int) -> Deferred[Any]:
        """
        L{command} with its default timeout: the
        L{sockudo_tw.queues.RedisCommands} face, so the webhook queue and
        held leaves run on this same client stack.
        """
        return self.command(*args)

    def run_script(
        self, script: LuaScript, args: Sequence[bytes | str | int], timeout: float = 5.0
    ) -> Deferred[Any]:
        """
        EVALSHA C{script} with no keys and C{args}, falling back to EVAL if
        the server no longer knows the script.
        """
        d = self.command("EVALSHA", script.sha, 0, *args, timeout=timeout)

        def noscript(f: Failure) -> Deferred[Any] | Failure:
            missing = f.check(txredisapi.ResponseError)  # type: ignore[no-untyped-call]
            if missing and "NOSCRIPT" in str(f.value):
                return self.command("EVAL", script.source, 0, *args, timeout=timeout)
            return f

        d.addErrback(noscript)
        return d


def _ignore(f: Failure) -> None:
    """
    A fire-and-forget PUBLISH failed (connection lost): already counted by
    the outage, nothing to do.
    """
