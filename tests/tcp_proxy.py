"""
A TCP forwarder that a test can cut and restore, to play a database (or
any TCP service) going away and coming back.

The proxy listens on C{127.0.0.1}, port 0 (the kernel picks a free port,
read back as L{TcpProxy.port}), in the test process on the real reactor,
and forwards each connection to the target:

  - L{TcpProxy.cut} drops every forwarded connection at once, and each new
    one as soon as it is accepted (the client sees its connection closed,
    at once, as when a server dies);
  - L{TcpProxy.freeze} keeps every connection open but stops forwarding:
    nothing is read on either side, as when the server process is stopped
    (SIGSTOP): the client's bytes are accepted, no answer comes;
  - L{TcpProxy.restore} forwards again (what a freeze held back is
    delivered then).

The listening port stays open throughout, so nobody else can take it while
the proxy is cut.

Usage, in a C{twisted.trial.unittest.TestCase}::

    proxy = start_proxy(self, 3306)   # closed in the test's cleanup
    connect("127.0.0.1", proxy.port) ...
    proxy.cut()                       # "the database is down"
    proxy.restore()                   # "the database is back"
    proxy.freeze()                    # "the database hangs"
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

__all__ = ["TcpProxy", "start_proxy"]


class _Outbound(protocol.Protocol):
    """
    The proxy's connection to the target, relaying to its L{_Inbound}.
    """

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.inbound.transport.write(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.inbound.transport.loseConnection()
        self.lost.callback(None)


class _Inbound(protocol.Protocol):
    """
    A client's connection to the proxy: connects out to the target, holds
    what the client sends until then, relays both ways after.
    """

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.outbound: _Outbound | None = None
        self.pending: list[bytes] = []
        self.connecting: Deferred[_Outbound] | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.proxy._connections.add(self)
        if self.proxy.is_cut:
            self.transport.abortConnection()
            return
        if self.proxy.is_frozen:
            self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(
            self.proxy._reactor, self.proxy.target_host, self.proxy.target_port
        )
        self.connecting = endpoint.connect(protocol.Factory.forProtocol(lambda: _Outbound(self)))
        self.connecting.addCallbacks(self._connected, self._not_connected)

    def _connected(self, outbound: _Outbound) -> None:
        self.connecting = None
        self.outbound = outbound
        if self.proxy.is_frozen:
            outbound.transport.pauseProducing()
        for data in self.pending:
            outbound.transport.write(data)
        self.pending = []

    def _not_connected(self, failure: Failure) -> None:
        self.connecting = None
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.outbound is None:
            self.pending.append(data)
        else:
            self.outbound.transport.write(data)

    def pause(self, paused: bool) -> None:
        """
        Stop (or resume) reading from both sides.
        """
        for transport in (self.transport, self.outbound and self.outbound.transport):
            if transport is not None:
                if paused:
                    transport.pauseProducing()
                else:
                    transport.resumeProducing()

    def abort(self) -> None:
        """
        Drop both sides at once.
        """
        if self.connecting is not None:
            self.connecting.cancel()
        if self.outbound is not None:
            self.outbound.transport.abortConnection()
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.proxy._connections.discard(self)
        if self.connecting is not None:
            self.connecting.cancel()
        if self.outbound is not None:
            self.outbound.transport.loseConnection()
        self.lost.callback(None)


class TcpProxy:
    """
    Forwards connections from C{127.0.0.1:}L{port} to the target, until
    L{cut} or L{freeze}.

    @ivar port: the port the proxy listens on.
    @ivar is_cut: whether connections are being dropped.
    @ivar is_frozen: whether connections are held without forwarding.
    """

    def __init__(
        self, reactor: IReactorTCP, target_port: int, target_host: str = "127.0.0.1"
    ) -> None:
        self._reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.is_cut = False
        self.is_frozen = False
        self._connections: set[_Inbound] = set()
        self._listening: IListeningPort = reactor.listenTCP(
            0, protocol.Factory.forProtocol(lambda: _Inbound(self)), interface="127.0.0.1"
        )
        self.port: int = self._listening.getHost().port  # type: ignore[attr-defined]

    @property
    def connections(self) -> int:
        """
        How many client connections are open through the proxy.
        """
        return len(self._connections)

    def cut(self) -> None:
        """
        Drop every connection now, and every new one until L{restore}.
        """
        self.is_cut = True
        for inbound in list(self._connections):
            inbound.abort()

    def freeze(self) -> None:
        """
        Stop forwarding on every connection, open or new, until L{restore};
        connections stay open.
        """
        self.is_frozen = True
        for inbound in list(self._connections):
            inbound.pause(True)

    def restore(self) -> None:
        """
        Forward again: new connections after a L{cut}, and everything held
        back after a L{freeze}.
        """
        self.is_cut = False
        if self.is_frozen:
            self.is_frozen = False
            for inbound in list(self._connections):
                inbound.pause(False)

    def close(self) -> Deferred[None]:
        """
        Stop listening and drop every connection; fires when all are gone.
        """
        self.is_cut = True
        waits: list[Deferred[None]] = []
        for inbound in list(self._connections):
            waits.append(inbound.lost)
            if inbound.outbound is not None:
                waits.append(inbound.outbound.lost)
            inbound.abort()
        stopped = self._listening.stopListening()
        if stopped is not None:
            waits.append(stopped)
        return DeferredList(waits).addCallback(lambda _: None)


def start_proxy(case: TestCase, target_port: int, target_host: str = "127.0.0.1") -> TcpProxy:
    """
    A L{TcpProxy} to C{target_host:target_port} on the global reactor,
    closed in C{case}'s cleanup.
    """
    from twisted.internet import reactor

    proxy = TcpProxy(reactor, target_port, target_host)  # type: ignore[arg-type]
    case.addCleanup(proxy.close)
    return proxy
