# -*- test-case-name: tests.test_websocket -*-
"""
One client connection: Autobahn's hooks feed the L{Session} and this class
carries out its effects (frames, closes, pings, adapter requests). What a
subscribe or unsubscribe means is decided in the core
(L{sockudo_tw.pusher.subscriptions}); channel effects are carried out by
the factory, which all connections share.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockudo_tw.adapters import ILocalSocket
from sockudo_tw.compat.autobahn import (
    close_invalid_payload,
    close_without_waiting,
    shed_handshake_state,
)
from sockudo_tw.framing import text_frame
from sockudo_tw.pusher import events
from sockudo_tw.pusher.errors import PusherError, PusherErrorCode
from sockudo_tw.pusher.session import (
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
    rejection,
)
from sockudo_tw.pusher.subscriptions import FetchCache, SubscribeOutcome
from sockudo_tw.websocket.admission import admit
from sockudo_tw.websocket.backpressure import Backpressure
from sockudo_tw.websocket.writing import CorkedWriter

if TYPE_CHECKING:
    from sockudo_tw.pusher.app import App
    from sockudo_tw.websocket.factory import PusherFactory

__all__ = ["MAX_EARLY_MESSAGES", "PusherProtocol"]

MAX_EARLY_MESSAGES = 32


@implementer(ILocalSocket)
class PusherProtocol(CorkedWriter):
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
        self._timer: list[Any] | None = None
        self._gone = False
        self._early: list[tuple[bytes, bool]] | None = []
        self._backpressure = Backpressure()

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
            shed_handshake_state(self)
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

    # -- accepting ------------------------------------------------------------

    async def _open(self) -> None:
        factory = self.factory
        path, params, origin = self._handshake or ("", {}, None)
        self._handshake = None
        app, error = await admit(path, params, origin, factory.app_store, factory.adapter)
        if error is not None or app is None:
            self._reject(app, error or PusherError(PusherErrorCode.GENERIC_ERROR, "Refused"))
            return
        if self._gone or self.state != self.STATE_OPEN:
            return
        session = factory.new_session(app)
        socket_id = session.socket_id
        self.socket_id = socket_id
        self.session = session
        factory.adapter.add_socket(app.id, self)
        factory.protocols.add(self)
        if factory.accept_ceiling is not None:
            factory.accept_ceiling.update(len(factory.protocols))
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
        check is off where L{close_invalid_payload} can send the 1007: it
        logs each failure at warn level, twice, and the strict decode here
        validates anyway.)
        """
        self._log.info(
            "Closing {socket_id} of app {app_id} with 1007: a text message is not UTF-8",
            socket_id=self.socket_id,
            app_id=session.app.id,
        )
        session.closing = True
        if self.state == self.STATE_OPEN:
            close_invalid_payload(self, b"Invalid UTF-8 in a text message")

    def _schedule(self, session: Session) -> None:
        self._timer = self.factory._deadlines.add(session.next_deadline(), self)

    def deadline_reached(self) -> None:
        """
        The session's next deadline has come: run its timers, then wait for
        the following one.
        """
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

    def _apply(self, session: Session, effects: Iterable[Effect]) -> None:
        """
        Carry out C{effects}: frames here, adapter requests with their
        answers fed back to the session, channel effects by the factory.
        """
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
                u.addCallback(factory.channel_left, app, self.socket_id)
                u.addErrback(self._failed, "unsubscribe")
            elif isinstance(effect, SignIn):
                s = factory.adapter.sign_in(
                    app.id, self.socket_id, effect.user.user_id, effect.user.watchlist
                )
                s.addCallback(self._signed_in, session)
                s.addErrback(self._failed, "sign in")
            elif isinstance(effect, FetchCache):
                c = factory.cache.fetch(app.id, effect.channel)
                c.addCallback(self._cache_fetched, session, effect.channel)
                c.addErrback(self._failed, "cache fetch")
            elif isinstance(effect, (Close, Ping, Refused)):
                self._carry_out_basic(effect)
            else:
                factory.carry_out(app, self.socket_id, effect)

    def _failed(self, failure: Failure, what: str) -> None:
        self._log.failure("Adapter {what} failed", failure, what=what)

    def _subscribed(self, outcome: SubscribeOutcome, session: Session, effect: Subscribe) -> None:
        self._apply(session, session.subscribed(effect, outcome))

    def _signed_in(self, outcome: Any, session: Session) -> None:
        self._apply(session, session.signed_in(outcome.online, outcome.offline))

    def _cache_fetched(
        self, entry: tuple[bytes, float] | None, session: Session, channel: str
    ) -> None:
        if self._gone:
            return
        self._apply(session, session.cache_fetched(channel, None if entry is None else entry[0]))

    # -- ILocalSocket ---------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """
        Close with C{pusher:error} and C{code}.
        """
        if self.session is not None:
            self._apply(self.session, self.session.close(code, reason))
        elif self.state == self.STATE_OPEN:
            self.sendClose(int(code), reason)

    def shut_down(self, code: int, reason: str) -> None:
        """
        L{close}, then close the TCP connection once what was written has
        gone, without waiting for the client's answering close frame: at
        shutdown, so that tens of thousands of connections end in one pass
        instead of each waiting for its client.

        Autobahn's closing-handshake timer is kept from starting first
        (L{close_without_waiting}): it could fire while the reactor is still
        writing other connections' close frames, and abort with a reset that
        can reach the client before the 4200 frame.
        """
        close_without_waiting(self)
        self.close(code, reason)
        if self.transport is not None and not self._gone:
            self.transport.loseConnection()
