# -*- test-case-name: tests.test_write_coalescing -*-
"""
The output side of a connection: the effects that need no session (send,
close, ping, log a refusal), and writing. Frames for an idle TCP connection are
corked until the end of the reactor turn and then leave in one C{send()}
(L{sockudo_tw.directwrite}); every other write (handshake, control and
close frames) sends the corked frames first; a client that stopped reading
is closed with 4100 once more than the factory's limit piled up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from sockudo_tw.compat.autobahn import QuietServerProtocol, writes_queued
from sockudo_tw.directwrite import idle_socket, write_now
from sockudo_tw.framing import text_frame
from sockudo_tw.pusher.errors import PusherErrorCode
from sockudo_tw.pusher.session import Close, Effect, Ping, Refused, Send, Session
from sockudo_tw.websocket.backpressure import Backpressure

if TYPE_CHECKING:
    from sockudo_tw.websocket.factory import PusherFactory

__all__ = ["CorkedWriter"]


class CorkedWriter(QuietServerProtocol):
    """
    Writes for L{sockudo_tw.websocket.protocol.PusherProtocol} (its
    L{ILocalSocket} send side); the protocol sets the attributes below.
    """

    _log = Logger()
    factory: PusherFactory
    session: Session | None
    socket_id: str
    _gone: bool
    _backpressure: Backpressure

    def close(self, code: int, reason: str) -> None:
        """
        Close with C{pusher:error} and C{code} (the protocol's).
        """
        raise NotImplementedError

    def _carry_out_basic(self, effect: Effect) -> None:
        """
        The effects that need no session: send, close, ping, and a
        refused message logged.
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

    def sendData(  # noqa: N802 (Autobahn's name)
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """
        Every other write (handshake, control and close frames, Autobahn's
        queue) goes here: send this connection's corked frames first so that
        nothing overtakes them.
        """
        self._uncork()
        self._backpressure.socket = None  # Twisted may hold bytes now
        super().sendData(data, sync, chopsize)

    def dropConnection(self, abort: bool = False) -> None:  # noqa: N802 (Autobahn's name)
        """
        Send the corked frames before a graceful drop (C{loseConnection}
        delivers what Twisted holds); an abort discards them.
        """
        self._backpressure.socket = None
        if abort:
            self.factory._corked.pop(self, None)
        else:
            self._uncork()
        super().dropConnection(abort)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Forget frames corked for a connection that is gone.
        """
        self._backpressure.socket = None
        self.factory._corked.pop(self, None)
        super().connectionLost(reason)

    def _uncork(self) -> None:
        """
        Write this connection's corked frames now.
        """
        frames = self.factory._corked.pop(self, None)
        if frames is not None:
            self.write_corked(frames)

    def write_corked(self, frames: list[bytes]) -> None:
        """
        Write corked C{frames} with one C{send()} on the socket kept in
        L{Backpressure.socket}; what the socket does not take (or all of
        it, should the socket have been dropped since) goes to
        C{transport.write}, and the connection takes the checked path
        again.
        """
        data = b"".join(frames)  # one frame: joined without a copy
        pressure = self._backpressure
        socket = pressure.socket
        if socket is None:
            write_now(self.transport, data)
            return
        try:
            sent = socket.send(data)
        except OSError:
            sent = 0
        if sent != len(data):
            pressure.socket = None
            transport: Any = self.transport
            transport.write(data[sent:])

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

    def send_wire(self, wire: bytes) -> None:
        """
        Write a framed message: corked until the end of the reactor turn on
        an idle TCP connection (every frame for it this turn then leaves in
        one C{send()}), else straight to the transport; close 4100 when the
        client stopped reading and more than the factory's buffer limit
        piled up.

        This is the broadcast hot path: once a connection was found idle
        its socket is kept on L{Backpressure.socket}, and frames for it are
        only corked until something else writes (C{sendData}), a send is
        partial, the buffer fills or the connection drops, each of which
        clears it.
        """
        if self._backpressure.socket is not None:
            corked = self.factory._corked
            frames = corked.get(self)
            if frames is None:
                if not corked:
                    self.factory._schedule_uncork()
                corked[self] = [wire]
            else:
                frames.append(wire)
            return
        self._send_wire_slowly(wire)

    def _send_wire_slowly(self, wire: bytes) -> None:
        """
        L{send_wire} when the connection is not known to be idle: check
        everything, and keep the socket when it is idle after all.
        """
        if self._gone or self.state != self.STATE_OPEN:
            return
        pressure = self._backpressure
        if pressure.paused:
            pressure.buffered += len(wire)
            if pressure.buffered > self.factory.max_buffer_bytes:
                self._over_capacity()
                return
        if writes_queued(self):
            self.sendData(wire)
            return
        transport: Any = self.transport
        if not pressure.paused and idle_socket(transport):
            pressure.socket = transport.getHandle()
            self.send_wire(wire)
        else:
            transport.write(wire)

    def send_frame(self, frame: bytes) -> None:
        """
        Frame and send one Pusher frame.
        """
        self.send_wire(text_frame(frame))

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
