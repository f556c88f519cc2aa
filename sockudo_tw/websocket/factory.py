# -*- test-case-name: tests.test_websocket -*-
"""
The factory every connection shares: configuration, the corked frames of
this reactor turn, the deadline heap, disconnect cleanup in chunks, and the
channel effects the core decides (broadcasts, notices, coalesced
subscription counts).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockudo_tw.adapters import IAdapter, ILocalSocket
from sockudo_tw.appstores import IAppStore
from sockudo_tw.caches import IChannelCache
from sockudo_tw.compat.autobahn import CLOSE_FRAME, sharing_class, use_reactor_for_timers
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.listening import AcceptCeiling
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.session import (
    MAX_SUBSCRIPTIONS,
    MESSAGE_BURST,
    MESSAGES_PER_SECOND,
    PONG_TIMEOUT,
    Session,
    new_socket_id,
)
from sockudo_tw.pusher.subscriptions import (
    Broadcast,
    CacheMissed,
    ChannelEffect,
    CountChanged,
    MemberAdded,
    MemberRemoved,
    Occupied,
    Subscribed,
    SubscriptionCount,
    Unsubscribed,
    UnsubscribeOutcome,
    Vacated,
    channel_left,
    count_known,
)
from sockudo_tw.registry import SocketRemoval
from sockudo_tw.websocket.deadlines import Deadlines
from sockudo_tw.websocket.protocol import PusherProtocol
from sockudo_tw.websocket.writing import CorkedWriter

__all__ = ["CLEANUP_CHUNK", "PusherFactory"]

CLEANUP_CHUNK = 200


class PusherFactory(WebSocketServerFactory):
    """
    Builds L{PusherProtocol}s and holds what they share.

    @ivar protocols: the accepted, still-open connections.
    @ivar max_buffer_bytes: outbound bytes a paused client may pile up
        before it is closed with 4100.
    @ivar max_subscriptions: channels per connection (0 unlimited).
    @ivar messages_per_second: each connection's sustained inbound message
        rate (0 unlimited).
    @ivar message_burst: inbound messages a connection may send at once.
    """

    protocol = PusherProtocol  # type: ignore[assignment]
    _log = Logger()

    def __init__(
        self,
        *,
        reactor: Any,
        app_store: IAppStore,
        adapter: IAdapter,
        cache: IChannelCache,
        activity_timeout: int = 120,
        pong_timeout: float = PONG_TIMEOUT,
        user_authentication_timeout: float = 3600.0,
        max_payload_kb: int = 64,
        max_buffer_bytes: int = 4 * 1024 * 1024,
        observer: IPusherEvents | None = None,
        server: str = "sockudo-tw",
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        messages_per_second: float = MESSAGES_PER_SECOND,
        message_burst: int = MESSAGE_BURST,
    ) -> None:
        super().__init__(reactor=reactor)  # type: ignore[no-untyped-call]
        self.app_store = app_store
        self.adapter = adapter
        self.cache = cache
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        self.user_authentication_timeout = user_authentication_timeout
        self.max_buffer_bytes = max_buffer_bytes
        self.max_subscriptions = max_subscriptions
        self.messages_per_second = messages_per_second
        self.message_burst = message_burst
        self.observer: IPusherEvents = observer if observer is not None else NoPusherEvents()
        self.server = server
        self.protocols: set[PusherProtocol] = set()
        # Told the number of connections held (set by the composition root).
        self.accept_ceiling: AcceptCeiling | None = None
        limit = max_payload_kb * 1024
        self.setProtocolOptions(
            webStatus=False,
            # Text messages are validated by the strict decode in the
            # protocol, which closes with 1007 itself (when it can: else
            # Autobahn's validation does it).
            utf8validateIncoming=not CLOSE_FRAME,
            maxMessagePayloadSize=limit,
            maxFramePayloadSize=limit,
            autoPingInterval=0,
            failByDrop=False,
            perMessageCompressionAccept=lambda offers: None,
        )
        if not use_reactor_for_timers(self, reactor):
            self._log.debug("Autobahn timers stay on the global reactor")
        self._deadlines = Deadlines(reactor)
        self._cleanup: deque[tuple[App, str]] = deque()
        self._cleanup_call: IDelayedCall | None = None
        # Ordered set of (app id, channel) whose count changed this turn.
        self._dirty_counts: dict[tuple[str, str], App] = {}
        self._counts_call: IDelayedCall | None = None
        self._all_closed: list[Deferred[None]] = []
        # Frames waiting for the end of the turn, per idle TCP connection
        # (here rather than on the protocol, whose __dict__ is kept small).
        self._corked: dict[CorkedWriter, list[bytes]] = {}
        self._uncork_call: IDelayedCall | None = None

    def new_session(self, app: App) -> Session:
        """
        The session of a newly accepted connection of C{app}, with a socket
        id no connection of this node has.
        """
        socket_id = new_socket_id()
        while self.adapter.has_socket(socket_id):
            socket_id = new_socket_id()
        return Session(
            app,
            socket_id,
            self.reactor.seconds(),
            activity_timeout=self.activity_timeout,
            pong_timeout=self.pong_timeout,
            user_authentication_timeout=self.user_authentication_timeout,
            max_subscriptions=self.max_subscriptions,
            messages_per_second=self.messages_per_second,
            message_burst=self.message_burst,
        )

    def _schedule_uncork(self) -> None:
        """
        Have the corked frames written at the end of this reactor turn.
        """
        if self._uncork_call is None:
            self._uncork_call = self.reactor.callLater(0, self._uncork)

    def _uncork(self) -> None:
        """
        Write each corked connection's frames with one C{send()}
        (L{CorkedWriter.write_corked}).
        """
        self._uncork_call = None
        corked, self._corked = self._corked, {}
        for protocol, frames in corked.items():
            try:
                protocol.write_corked(frames)
            except Exception:
                self._log.failure("Writing to {socket_id} failed", socket_id=protocol.socket_id)

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:  # noqa: N802 (Autobahn's name)
        """
        Set Autobahn's options, then rebuild the protocol class that holds
        them for every new connection (L{sharing_class}): Autobahn copies
        an option to a connection only when its class lacks it.
        """
        super().setProtocolOptions(*args, **options)  # type: ignore[no-untyped-call]
        self.protocol = sharing_class(type(self).protocol, self)

    def websocket_resource(self) -> WebSocketResource:
        """
        The resource to mount at C{/app/} on the Site.
        """
        return WebSocketResource(self)  # type: ignore[no-untyped-call]

    def close_connections(self, code: int, reason: str) -> Deferred[None]:
        """
        Close every accepted connection (graceful shutdown: 4200 "Server
        shutting down"); fires once they are all gone. Each gets its
        C{pusher:error} and close frames, then its TCP connection is closed
        behind them (the client still reads the frames first).
        """
        for protocol in list(self.protocols):
            protocol.shut_down(code, reason)
        if not self.protocols and not self._cleanup:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._all_closed.append(d)
        return d

    # -- disconnect cleanup, in chunks ---------------------------------------

    def _connection_lost(self, protocol: PusherProtocol, app: App) -> None:
        self.protocols.discard(protocol)
        if self.accept_ceiling is not None:
            self.accept_ceiling.update(len(self.protocols))
        self.observer.connection_closed(app.id, protocol.socket_id)
        self._cleanup.append((app, protocol.socket_id))
        if self._cleanup_call is None:
            self._cleanup_call = self.reactor.callLater(0, self._run_cleanup)

    def _run_cleanup(self) -> None:
        self._cleanup_call = None
        queue = self._cleanup
        for _ in range(min(CLEANUP_CHUNK, len(queue))):
            app, socket_id = queue.popleft()
            try:
                d = self.adapter.remove_socket(app.id, socket_id)
                d.addCallback(self._socket_removed, app, socket_id)
                d.addErrback(self._cleanup_failed)
            except Exception:
                self._log.failure("Cleaning up {socket_id} failed", socket_id=socket_id)
        if queue:
            self._cleanup_call = self.reactor.callLater(0, self._run_cleanup)
        elif not self.protocols and self._all_closed:
            waiting, self._all_closed = self._all_closed, []
            for done in waiting:
                done.callback(None)

    def _cleanup_failed(self, failure: Failure) -> None:
        self._log.failure("Disconnect cleanup failed", failure)

    def _socket_removed(
        self, removal: SocketRemoval[ILocalSocket], app: App, socket_id: str
    ) -> None:
        for outcome in removal.unsubscribed:
            self.channel_left(outcome, app, socket_id)

    # -- channel effects, as the core decided them ----------------------------

    def channel_left(self, outcome: UnsubscribeOutcome, app: App, socket_id: str) -> None:
        """
        Carry out what leaving a channel changed, as
        L{sockudo_tw.pusher.subscriptions.channel_left} decides it.
        """
        for effect in channel_left(app, outcome):
            self.carry_out(app, socket_id, effect)

    def carry_out(self, app: App, socket_id: str, effect: ChannelEffect) -> None:
        """
        Carry out one channel effect of connection C{socket_id} of C{app}:
        broadcast through the adapter, tell the observer, or queue a count.
        """
        observer = self.observer
        if isinstance(effect, Broadcast):
            exclude = socket_id if effect.exclude_self else None
            self.adapter.broadcast(app.id, effect.channel, effect.frame, exclude)
        elif isinstance(effect, Subscribed):
            observer.subscribed(app.id, effect.channel, socket_id)
        elif isinstance(effect, Unsubscribed):
            observer.unsubscribed(app.id, effect.channel, socket_id)
        elif isinstance(effect, CountChanged):
            self._count_changed(app, effect.channel)
        elif isinstance(effect, Occupied):
            observer.channel_occupied(app.id, effect.channel)
        elif isinstance(effect, Vacated):
            observer.channel_vacated(app.id, effect.channel)
        elif isinstance(effect, MemberAdded):
            observer.member_added(app.id, effect.channel, effect.user_id)
        elif isinstance(effect, MemberRemoved):
            observer.member_removed(app.id, effect.channel, effect.user_id)
        elif isinstance(effect, SubscriptionCount):
            observer.subscription_count(app.id, effect.channel, effect.count)
        elif isinstance(effect, CacheMissed):
            observer.cache_miss(app.id, effect.channel)
        else:
            self._log.error("Unknown channel effect {effect!r}", effect=effect)

    # -- subscription_count, coalesced per reactor turn -----------------------

    def _count_changed(self, app: App, channel: str) -> None:
        self._dirty_counts[(app.id, channel)] = app
        if self._counts_call is None:
            self._counts_call = self.reactor.callLater(0, self._send_counts)

    def _send_counts(self) -> None:
        self._counts_call = None
        dirty, self._dirty_counts = self._dirty_counts, {}
        for (app_id, channel), app in dirty.items():
            d = self.adapter.channel_subscription_count(app_id, channel)
            d.addCallback(self._count_known, app, channel)
            d.addErrback(self._cleanup_failed)

    def _count_known(self, count: int, app: App, channel: str) -> None:
        for effect in count_known(channel, count):
            self.carry_out(app, "", effect)
