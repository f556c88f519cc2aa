# -*- test-case-name: tests.test_websocket -*-
"""
The Autobahn glue: C{/app/{key}} connections run a L{Session} and this
module carries out its effects against the adapter, the cache and the
observer.

Kept thin on purpose: protocol rules live in L{sockudo_tw.pusher.session}.
What lives here is I/O policy: the upgrade is always completed and
rejections are sent as C{pusher:error} plus a close; frames for an idle
TCP connection are corked until the end of the reactor turn and then sent
with one C{send()} each (L{sockudo_tw.directwrite}); each connection's
outbound buffer is bounded (close 4100 "Over capacity" beyond it); timers
are lazy, one deadline per connection in a heap the factory runs with a
single C{callLater}; disconnect cleanup runs in chunks
so that thousands of sockets dropping at once never stall the reactor.
"""

from __future__ import annotations

import heapq
import pprint
from collections import deque
from collections.abc import Iterable
from itertools import count
from typing import Any

import autobahn.util as autobahn_util
import autobahn.websocket.protocol as autobahn_protocol
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from sockudo_tw.adapters import IAdapter, ILocalSocket
from sockudo_tw.appstores import IAppStore
from sockudo_tw.caches import IChannelCache
from sockudo_tw.directwrite import idle_socket, write_now
from sockudo_tw.framing import text_frame
from sockudo_tw.hooks import IPusherEvents, NoPusherEvents
from sockudo_tw.pusher import events
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.channels import ChannelKind, channel_type
from sockudo_tw.pusher.errors import PusherError, PusherErrorCode
from sockudo_tw.pusher.session import (
    MAX_SUBSCRIPTIONS,
    MESSAGE_BURST,
    MESSAGES_PER_SECOND,
    PONG_TIMEOUT,
    ClientEvent,
    Close,
    Effect,
    Ping,
    Refused,
    Send,
    Session,
    SignIn,
    Subscribe,
    Unsubscribe,
    check_protocol,
    new_socket_id,
    origin_allowed,
    parse_app_key,
    rejection,
)
from sockudo_tw.registry import SocketRemoval, SubscribeOutcome, UnsubscribeOutcome

__all__ = ["PusherFactory", "PusherProtocol"]

CLEANUP_CHUNK = 200
MAX_EARLY_MESSAGES = 32

_HANDSHAKE_STATE = (
    # The opening handshake as Autobahn parsed and answered it.
    "http_request_data",
    "http_response_data",
    "http_headers",
    "http_request_params",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "_wskey",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    # Factory options Autobahn copies to each protocol and reads only while
    # it accepts the handshake.
    "flashSocketPolicy",
    "serveFlashSocketPolicy",
    "allowedOrigins",
    "allowedOriginsPatterns",
    "allowNullOrigin",
    "maxConnections",
    "trustXForwardedFor",
    "versions",
    "perMessageCompressionAccept",
    "webStatus",
    "openHandshakeTimeout",
)
"""
Attributes an Autobahn server protocol only reads until C{onOpen} (checked
against autobahn/websocket/protocol.py: C{processHandshake},
C{succeedHandshake} and C{_connectionMade}). Dropping them after the
handshake frees about 2 KiB per connection, half of it because the
instance C{__dict__} then fits a table of half the size.
"""


class _FormatLater:
    """
    A log argument formatted only when a log event is written.
    """

    __slots__ = ("_argument", "_format")

    def __init__(self, format_: Any, argument: object) -> None:
        self._format = format_
        self._argument = argument

    def __str__(self) -> str:
        return str(self._format(self._argument))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


_EAGER_FORMATTERS = {"pformat": pprint.pformat, "hltype": autobahn_util.hltype}


def _defer_autobahn_log_formatting() -> None:
    """
    Autobahn builds its debug log arguments eagerly, even with debug off:
    C{pformat} of its ~40 protocol options and C{hltype} names on every
    connection, about 30 % of the CPU an accepted connection costs. Have
    its module call lazy versions instead, which format only if a debug
    event is written. Only the functions it imported are swapped (checked
    by identity), so an Autobahn that stops calling them is left alone;
    C{tests.test_websocket} pins the effect.
    """
    for name, eager in _EAGER_FORMATTERS.items():
        if getattr(autobahn_protocol, name, None) is eager:
            setattr(
                autobahn_protocol,
                name,
                lambda argument, eager=eager: _FormatLater(eager, argument),
            )
    # The one use that is not a log argument must still return text.
    autobahn_protocol.Timings.__str__ = _timings_text  # type: ignore[method-assign]


def _timings_text(timings: Any) -> str:
    """
    Autobahn's C{Timings.__str__}, with the real C{pformat}.
    """
    return pprint.pformat(timings._timings)


class _SendQueue(list[tuple[bytes, bool]]):
    """
    Autobahn's outgoing queue (C{send_queue}), used only for sync or chopped
    writes, which this server does not make: an empty list costs 72 bytes
    where the empty C{deque} Autobahn creates costs 760.
    """

    __slots__ = ()

    def popleft(self) -> tuple[bytes, bool]:
        """
        The oldest queued write, as C{deque.popleft}.
        """
        return self.pop(0)


@implementer(IPushProducer)
class _Backpressure:
    """
    Registered as the transport's producer: the transport pauses it when its
    write buffer is full, and bytes written while paused are counted.
    """

    def __init__(self) -> None:
        self.paused = False
        self.buffered = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.buffered = 0

    def stopProducing(self) -> None:
        self.paused = False


class _Deadlines:
    """
    Every connection's next timer deadline (activity ping, pong timeout,
    user authentication timeout) in one heap, behind one reactor call for
    the earliest.

    A C{DelayedCall} per connection cost about 0.7 KiB each; an entry here
    is a tuple and a one-item list. Each connection has at most one live
    entry: it is re-added only when its deadline fires, and a closed
    connection empties its entry's list so the heap does not keep it alive.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, list[PusherProtocol | None]]] = []
        self._order = count()
        self._call: IDelayedCall | None = None
        self._armed_for = 0.0
        self._firing = False
        self._live = 0

    def add(self, when: float, protocol: PusherProtocol) -> list[PusherProtocol | None]:
        """
        Call C{protocol._tick()} at C{when}.

        @return: the entry's handle; set its item to L{None} to cancel.
        """
        handle: list[PusherProtocol | None] = [protocol]
        heapq.heappush(self._heap, (when, next(self._order), handle))
        self._live += 1
        if not self._firing and (self._call is None or when < self._armed_for):
            self._arm(when)
        return handle

    def cancel(self, handle: list[PusherProtocol | None]) -> None:
        """
        Forget the entry of C{handle} (its connection is gone). The entry
        stays in the heap until it is due, unless stale entries outnumber
        live ones, when the heap is rebuilt without them; with no live entry
        left the reactor call is cancelled too.
        """
        if handle[0] is None:
            return
        handle[0] = None
        self._live -= 1
        heap = self._heap
        if self._live == 0:
            heap.clear()
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None
        elif len(heap) > 1024 and len(heap) > 2 * self._live and not self._firing:
            self._heap = [entry for entry in heap if entry[2][0] is not None]
            heapq.heapify(self._heap)

    def _arm(self, when: float) -> None:
        """
        Have the reactor call L{_fire} at C{when}.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._armed_for = when
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._fire)

    def _fire(self) -> None:
        """
        Run every deadline that has come, in deadline order, then wait for
        the next one.
        """
        self._call = None
        heap = self._heap
        now = self._clock.seconds()
        # Connections re-add themselves while this runs; arm once, after.
        self._firing = True
        try:
            for _ in range(len(heap)):
                if not heap or heap[0][0] > now:
                    break
                _, _, handle = heapq.heappop(heap)
                protocol = handle[0]
                if protocol is not None:
                    handle[0] = None
                    self._live -= 1
                    protocol._tick()
        finally:
            self._firing = False
            if self._live == 0:
                heap.clear()
            if heap:
                self._arm(heap[0][0])


@implementer(ILocalSocket)
class PusherProtocol(WebSocketServerProtocol):
    """
    One client connection.

    @ivar session: the protocol state, once the connection is accepted.
    """

    _log = Logger()
    factory: PusherFactory

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self.socket_id = ""
        self._handshake: tuple[str, dict[str, list[str]], str | None] | None = None
        self._timer: list[PusherProtocol | None] | None = None
        self._gone = False
        self._early: list[tuple[bytes, bool]] | None = []
        self._backpressure = _Backpressure()

    # -- Autobahn hooks -------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        """
        Remember the path, query and origin; always complete the upgrade so
        that a refusal can be told in Pusher terms after it.
        """
        try:
            self._handshake = (
                request.path or "",
                dict(request.params or {}),
                request.headers.get("origin"),
            )
        except Exception:
            self._log.failure("Reading the WebSocket request failed")

    def onOpen(self) -> None:
        """
        Decide whether to accept the connection (asynchronously: the app
        store and the adapter may be remote).
        """
        try:
            self._shed_handshake()
            self._watch_buffer()
            d = Deferred.fromCoroutine(self._open())
        except Exception:
            self._log.failure("Opening the connection failed")
            self._abandon()
            return
        d.addErrback(self._open_failed)

    def onMessage(self, payload: bytes, is_binary: bool) -> None:
        """
        Hand a message to the session (or keep it until the session exists).
        """
        try:
            session = self.session
            if session is None:
                if self._early is not None and len(self._early) < MAX_EARLY_MESSAGES:
                    self._early.append((payload, is_binary))
                return
            self._handle(session, payload, is_binary)
        except Exception:
            self._log.failure("Handling a message failed")

    def onPing(self, payload: bytes) -> None:
        """
        A WebSocket ping is activity and counts against the message rate;
        Autobahn answers it unless messages are being dropped.
        """
        session = self.session
        if session is not None:
            dropped = session.receive_control(self.factory.reactor.seconds())
            if dropped is not None:
                self._apply(session, dropped)
                return
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        """
        A WebSocket pong is activity and counts against the message rate.
        """
        session = self.session
        if session is not None:
            dropped = session.receive_control(self.factory.reactor.seconds())
            if dropped:
                self._apply(session, dropped)

    def onClose(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        """
        The connection is gone: stop timers and queue the cleanup.
        """
        if self._gone:
            return
        self._gone = True
        self._early = None
        if self._timer is not None:
            self.factory._deadlines.cancel(self._timer)
        self._timer = None
        session = self.session
        if session is not None:
            session.closing = True
            self.factory._connection_lost(self, session.app)

    def sendData(  # noqa: N802 (Autobahn's name)
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """
        Every other write (handshake, control and close frames, Autobahn's
        queue) goes here: send this connection's corked frames first so that
        nothing overtakes them.
        """
        self._uncork()
        super().sendData(data, sync, chopsize)

    def dropConnection(self, abort: bool = False) -> None:  # noqa: N802 (Autobahn's name)
        """
        Send the corked frames before a graceful drop (C{loseConnection}
        delivers what Twisted holds); an abort discards them.
        """
        if abort:
            self.factory._corked.pop(self, None)
        else:
            self._uncork()
        super().dropConnection(abort)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Forget frames corked for a connection that is gone.
        """
        self.factory._corked.pop(self, None)
        super().connectionLost(reason)

    def _uncork(self) -> None:
        """
        Write this connection's corked frames now.
        """
        frames = self.factory._corked.pop(self, None)
        if frames is not None:
            write_now(self.transport, b"".join(frames))  # one frame: joined without a copy

    # -- accepting ------------------------------------------------------------

    def _shed_handshake(self) -> None:
        """
        Drop what only the opening handshake needed, and Autobahn's empty
        C{deque}, then rebuild the instance C{__dict__} at its new size:
        together about 2.7 KiB less for each held connection.
        """
        attributes = self.__dict__
        for name in _HANDSHAKE_STATE:
            attributes.pop(name, None)
        if not self.send_queue:
            self.send_queue = _SendQueue()  # type: ignore[assignment]
        self.__dict__ = dict(attributes)

    def _watch_buffer(self) -> None:
        """
        Become the transport's producer so a full write buffer pauses us.
        (An HTTP channel that handed the transport over may still be
        registered; it is done with the transport, so replace it.)
        """
        transport: Any = self.transport
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        try:
            transport.registerProducer(self._backpressure, True)
        except Exception:
            self._log.debug("Transport does not take a producer; buffer unbounded")

    async def _open(self) -> None:
        factory = self.factory
        path, params, origin = self._handshake or ("", {}, None)
        self._handshake = None
        key = parse_app_key(path)
        if key is None:
            self._reject(None, PusherError(PusherErrorCode.PATH_NOT_FOUND, "Path not found"))
            return
        error = check_protocol(params)
        if error is not None:
            self._reject(None, error)
            return
        app = await factory.app_store.find_by_key(key)
        if app is None:
            self._reject(
                None,
                PusherError(
                    PusherErrorCode.APP_NOT_FOUND,
                    f"App key {key[:64]} not in this cluster. "
                    "Did you forget to specify the cluster?",
                ),
            )
            return
        if not app.enabled:
            self._reject(app, PusherError(PusherErrorCode.APP_DISABLED, "Application disabled"))
            return
        if not origin_allowed(origin, app.allowed_origins):
            self._reject(app, PusherError(PusherErrorCode.UNAUTHORIZED, "Origin not allowed"))
            return
        if app.max_connections:
            count = await factory.adapter.app_connection_count(app.id)
            if count >= app.max_connections:
                self._reject(
                    app,
                    PusherError(
                        PusherErrorCode.OVER_CONNECTION_QUOTA,
                        "Application is over connection quota",
                    ),
                )
                return
        if self._gone or self.state != self.STATE_OPEN:
            return
        socket_id = new_socket_id()
        while factory.adapter.has_socket(socket_id):
            socket_id = new_socket_id()
        now = factory.reactor.seconds()
        session = Session(
            app,
            socket_id,
            now,
            activity_timeout=factory.activity_timeout,
            pong_timeout=factory.pong_timeout,
            user_authentication_timeout=factory.user_authentication_timeout,
            max_subscriptions=factory.max_subscriptions,
            messages_per_second=factory.messages_per_second,
            message_burst=factory.message_burst,
        )
        self.socket_id = socket_id
        self.session = session
        factory.adapter.add_socket(app.id, self)
        factory.protocols.add(self)
        self._apply(session, session.open())
        factory.observer.connection_opened(app.id, socket_id)
        self._schedule(session)
        early, self._early = self._early, None
        for payload, is_binary in early or ():
            if self._gone:
                break
            self._handle(session, payload, is_binary)

    def _reject(self, app: App | None, error: PusherError) -> None:
        self._early = None
        self.factory.observer.connection_rejected(
            app.id if app is not None else None, error.code or 0
        )
        for effect in rejection(error):
            self._carry_out_basic(effect)

    def _open_failed(self, failure: Failure) -> None:
        self._log.failure("Accepting a connection failed", failure)
        self._abandon()

    def _abandon(self) -> None:
        """
        Close after an internal error (4200: reconnect now).
        """
        self._early = None
        try:
            if self.session is not None:
                self._apply(
                    self.session,
                    self.session.close(PusherErrorCode.RECONNECT_NOW, "Internal server error"),
                )
            else:
                self._carry_out_basic(
                    Send(events.error_frame(PusherErrorCode.RECONNECT_NOW, "Internal error"))
                )
                self._carry_out_basic(Close(PusherErrorCode.RECONNECT_NOW, "Internal error"))
        except Exception:
            self._log.failure("Closing after an error failed")
            self.dropConnection(abort=True)

    # -- input and timers -----------------------------------------------------

    def _handle(self, session: Session, payload: bytes, is_binary: bool) -> None:
        factory = self.factory
        factory.observer.message_received(session.app.id, len(payload))
        now = factory.reactor.seconds()
        if is_binary:
            effects = session.receive_binary(now, len(payload))
        else:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._invalid_utf8(session)
                return
            effects = session.receive(text, now)
        self._apply(session, effects)

    def _invalid_utf8(self, session: Session) -> None:
        """
        A text message that is not UTF-8: close with 1007 as RFC 6455
        (section 8.1) requires, logged once at info level. (Autobahn's own
        check is off: it logs each failure at warn level, twice, and the
        strict decode here validates anyway.)
        """
        self._log.info(
            "Closing {socket_id} of app {app_id} with 1007: a text message is not UTF-8",
            socket_id=self.socket_id,
            app_id=session.app.id,
        )
        session.closing = True
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(
                code=self.CLOSE_STATUS_CODE_INVALID_PAYLOAD,
                reasonUtf8=b"Invalid UTF-8 in a text message",
                isReply=False,
            )

    def _stop_reading(self) -> None:
        """
        Read nothing more from a client closed for flooding: its messages
        would only cost CPU until Autobahn's close handshake timeout drops
        the connection.
        """
        transport: Any = self.transport
        try:
            transport.pauseProducing()
        except Exception:
            self._log.debug("Transport cannot stop reading")

    def _schedule(self, session: Session) -> None:
        self._timer = self.factory._deadlines.add(session.next_deadline(), self)

    def _tick(self) -> None:
        self._timer = None
        session = self.session
        if self._gone or session is None:
            return
        try:
            self._apply(session, session.tick(self.factory.reactor.seconds()))
        except Exception:
            self._log.failure("Connection timer failed")
        if not session.closing and not self._gone:
            self._schedule(session)

    # -- effects --------------------------------------------------------------

    def _carry_out_basic(self, effect: Effect) -> None:
        """
        The effects that need no session: send, close, ping.
        """
        if isinstance(effect, Send):
            self.send_wire(text_frame(effect.frame))
        elif isinstance(effect, Close):
            if self.state == self.STATE_OPEN:
                self.sendClose(int(effect.code), effect.reason)
                if effect.code == PusherErrorCode.MESSAGE_RATE_LIMIT:
                    self._stop_reading()
        elif isinstance(effect, Ping):
            if self.state == self.STATE_OPEN:
                self.sendPing()
        elif isinstance(effect, Refused):
            session = self.session
            self._log.emit(
                LogLevel.info if effect.notable else LogLevel.debug,
                "Refused a message from {socket_id} of app {app_id}: {reason}",
                socket_id=self.socket_id,
                app_id=session.app.id if session is not None else None,
                reason=effect.reason,
            )

    def _apply(self, session: Session, effects: Iterable[Effect]) -> None:
        factory = self.factory
        app = session.app
        for effect in effects:
            if isinstance(effect, Send):
                factory.observer.message_sent(app.id, len(effect.frame))
                self.send_wire(text_frame(effect.frame))
            elif isinstance(effect, ClientEvent):
                factory.adapter.broadcast(app.id, effect.channel, effect.frame, self.socket_id)
                factory.observer.client_event(
                    app.id,
                    effect.channel,
                    effect.event,
                    effect.data,
                    self.socket_id,
                    effect.user_id,
                )
            elif isinstance(effect, Subscribe):
                d = factory.adapter.subscribe(
                    app.id, effect.channel, self.socket_id, effect.member, effect.max_members
                )
                d.addCallback(self._subscribed, session, effect)
                d.addErrback(self._failed, "subscribe")
            elif isinstance(effect, Unsubscribe):
                u = factory.adapter.unsubscribe(app.id, effect.channel, self.socket_id)
                u.addCallback(factory._channel_left, app, self.socket_id)
                u.addErrback(self._failed, "unsubscribe")
            elif isinstance(effect, SignIn):
                s = factory.adapter.sign_in(
                    app.id, self.socket_id, effect.user.user_id, effect.user.watchlist
                )
                s.addCallback(
                    lambda outcome: self._apply(
                        session, session.signed_in(outcome.online, outcome.offline)
                    )
                )
                s.addErrback(self._failed, "sign in")
            else:
                self._carry_out_basic(effect)

    def _failed(self, failure: Failure, what: str) -> None:
        self._log.failure("Adapter {what} failed", failure, what=what)

    def _subscribed(self, outcome: SubscribeOutcome, session: Session, effect: Subscribe) -> None:
        factory = self.factory
        app = session.app
        channel = effect.channel
        if not outcome.accepted:
            self._apply(
                session,
                session.refuse(
                    channel,
                    PusherErrorCode.OVER_CAPACITY,
                    f"Cannot join {channel}: the presence channel has reached its limit of "
                    f"{effect.max_members} members",
                ),
            )
            return
        if outcome.occupied:
            factory.observer.channel_occupied(app.id, channel)
        if outcome.member_added and effect.member is not None:
            member = effect.member
            factory.adapter.broadcast(
                app.id,
                channel,
                events.member_added(channel, member.user_id, member.user_info),
                self.socket_id,
            )
            factory.observer.member_added(app.id, channel, member.user_id)
        effects = session.confirm(channel, outcome.members)
        self._apply(session, effects)
        if any(isinstance(e, Unsubscribe) for e in effects):
            return
        factory.observer.subscribed(app.id, channel, self.socket_id)
        ctype = channel_type(channel)
        if app.enable_subscription_count and ctype.kind is not ChannelKind.PRESENCE:
            factory._count_changed(app, channel)
        if ctype.cache:
            c = factory.cache.fetch(app.id, channel)
            c.addCallback(self._cache_fetched, session, channel)
            c.addErrback(self._failed, "cache fetch")

    def _cache_fetched(
        self, entry: tuple[bytes, float] | None, session: Session, channel: str
    ) -> None:
        if self._gone or session.closing or not session.is_subscribed(channel):
            return
        if entry is None:
            self.factory.observer.cache_miss(session.app.id, channel)
            self._apply(session, [Send(events.cache_miss(channel))])
        else:
            self._apply(session, [Send(entry[0])])

    # -- ILocalSocket ---------------------------------------------------------

    def send_wire(self, wire: bytes) -> None:
        """
        Write a framed message: corked until the end of the reactor turn on
        an idle TCP connection (every frame for it this turn then leaves in
        one C{send()}), else straight to the transport; close 4100 when the
        client stopped reading and more than the factory's buffer limit
        piled up.
        """
        if self._gone or self.state != self.STATE_OPEN:
            return
        pressure = self._backpressure
        if pressure.paused:
            pressure.buffered += len(wire)
            if pressure.buffered > self.factory.max_buffer_bytes:
                self._over_capacity()
                return
        if self.send_queue:
            self.sendData(wire)
            return
        corked = self.factory._corked
        pending = corked.get(self)
        if pending is not None:
            pending.append(wire)
        elif not pressure.paused and idle_socket(self.transport):
            corked[self] = [wire]
            self.factory._schedule_uncork()
        else:
            transport: Any = self.transport
            transport.write(wire)

    def send_frame(self, frame: bytes) -> None:
        """
        Frame and send one Pusher frame.
        """
        self.send_wire(text_frame(frame))

    def close(self, code: int, reason: str) -> None:
        """
        Close with C{pusher:error} and C{code}.
        """
        if self.session is not None:
            self._apply(self.session, self.session.close(code, reason))
        elif self.state == self.STATE_OPEN:
            self.sendClose(int(code), reason)

    def _over_capacity(self) -> None:
        self._log.warn(
            "Closing slow client {socket_id}: over {limit} bytes buffered",
            socket_id=self.socket_id,
            limit=self.factory.max_buffer_bytes,
        )
        self._backpressure.buffered = 0
        self._backpressure.paused = False
        if self.session is not None:
            self.factory.observer.slow_consumer_closed(self.session.app.id, self.socket_id)
        # The close frame moves the state to closing, so nothing more is
        # written; Autobahn's close handshake timeout then drops the TCP
        # connection if the client never reads it.
        self.close(PusherErrorCode.OVER_CAPACITY, "Over capacity")


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
        limit = max_payload_kb * 1024
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            webStatus=False,
            # Text messages are validated by the strict decode in _handle.
            utf8validateIncoming=False,
            maxMessagePayloadSize=limit,
            maxFramePayloadSize=limit,
            autoPingInterval=0,
            failByDrop=False,
            perMessageCompressionAccept=lambda offers: None,
        )
        self._use_reactor_for_timers(reactor)
        _defer_autobahn_log_formatting()
        self._deadlines = _Deadlines(reactor)
        self._cleanup: deque[tuple[App, str]] = deque()
        self._cleanup_call: IDelayedCall | None = None
        # Ordered set of (app id, channel) whose count changed this turn.
        self._dirty_counts: dict[tuple[str, str], None] = {}
        self._counts_call: IDelayedCall | None = None
        self._all_closed: list[Deferred[None]] = []
        # Frames waiting for the end of the turn, per idle TCP connection
        # (here rather than on the protocol, whose __dict__ is kept small).
        self._corked: dict[PusherProtocol, list[bytes]] = {}
        self._uncork_call: IDelayedCall | None = None

    def _use_reactor_for_timers(self, reactor: IReactorTime) -> None:
        """
        Autobahn's handshake and close timers use txaio's global loop; point
        them at our reactor so tests drive them with a clock.
        """
        try:
            from txaio._common import _BatchedTimer

            self._batched_timer = _BatchedTimer(  # type: ignore[no-untyped-call]
                200.0,
                1000,
                seconds_provider=reactor.seconds,
                delayed_call_creator=reactor.callLater,
            )
        except Exception:
            self._log.debug("Autobahn timers stay on the global reactor")

    def _schedule_uncork(self) -> None:
        """
        Have the corked frames written at the end of this reactor turn.
        """
        if self._uncork_call is None:
            self._uncork_call = self.reactor.callLater(0, self._uncork)

    def _uncork(self) -> None:
        """
        Write each corked connection's frames with one C{send()}.
        """
        self._uncork_call = None
        corked, self._corked = self._corked, {}
        for protocol, frames in corked.items():
            try:
                write_now(protocol.transport, b"".join(frames))
            except Exception:
                self._log.failure("Writing to {socket_id} failed", socket_id=protocol.socket_id)

    def websocket_resource(self) -> WebSocketResource:
        """
        The resource to mount at C{/app/} on the Site.
        """
        return WebSocketResource(self)  # type: ignore[no-untyped-call]

    def close_connections(self, code: int, reason: str) -> Deferred[None]:
        """
        Close every accepted connection (graceful shutdown: 4200 "Server
        shutting down"); fires once they are all gone.
        """
        for protocol in list(self.protocols):
            protocol.close(code, reason)
        if not self.protocols and not self._cleanup:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._all_closed.append(d)
        return d

    # -- disconnect cleanup, in chunks ---------------------------------------

    def _connection_lost(self, protocol: PusherProtocol, app: App) -> None:
        self.protocols.discard(protocol)
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
            self._channel_left(outcome, app, socket_id)

    def _channel_left(self, outcome: UnsubscribeOutcome, app: App, socket_id: str) -> None:
        """
        Carry out what leaving a channel changed: member_removed to the
        others, vacated, or a new subscription count.
        """
        if not outcome.removed:
            return
        channel = outcome.channel
        self.observer.unsubscribed(app.id, channel, socket_id)
        if outcome.member_removed is not None:
            self.adapter.broadcast(
                app.id, channel, events.member_removed(channel, outcome.member_removed), None
            )
            self.observer.member_removed(app.id, channel, outcome.member_removed)
        if outcome.vacated:
            self.observer.channel_vacated(app.id, channel)
        elif (
            app.enable_subscription_count and channel_type(channel).kind is not ChannelKind.PRESENCE
        ):
            self._count_changed(app, channel)

    # -- subscription_count, coalesced per reactor turn -----------------------

    def _count_changed(self, app: App, channel: str) -> None:
        self._dirty_counts[(app.id, channel)] = None
        if self._counts_call is None:
            self._counts_call = self.reactor.callLater(0, self._send_counts)

    def _send_counts(self) -> None:
        self._counts_call = None
        dirty, self._dirty_counts = self._dirty_counts, {}
        for app_id, channel in dirty:
            d = self.adapter.channel_subscription_count(app_id, channel)
            d.addCallback(self._count_known, app_id, channel)
            d.addErrback(self._cleanup_failed)

    def _count_known(self, count: int, app_id: str, channel: str) -> None:
        if count <= 0:
            return
        self.adapter.broadcast(app_id, channel, events.subscription_count(channel, count), None)
        self.observer.subscription_count(app_id, channel, count)
