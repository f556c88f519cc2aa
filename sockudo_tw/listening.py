# -*- test-case-name: tests.test_workers -*-
"""
Learning where a listener is bound, through public API only.

A C{StreamServerEndpointService} keeps the port it bound to itself (its
C{_waitingForPort} is private), so its public C{endpoint} is wrapped before
it listens: the wrapper passes the outcome of each C{listen} on. The worker
pool uses it to hand bound sockets to its children, and the service to say
which port a listener bound (for C{tcp:0}).
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorFDSet,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["AcceptCeiling", "ReportingEndpoint", "descriptor_ceiling", "reporting_endpoint"]


def descriptor_ceiling(soft_limit: int | None = None) -> int | None:
    """
    How many client connections this process may hold: its open-file limit
    (C{RLIMIT_NOFILE}, soft) less a reserve for everything else it opens
    (HTTP API connections, Redis and database links, logs, handshakes in
    flight): 1/16 of the limit, between 64 and 1,024. L{None} when
    unlimited.
    """
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        return None
    reserve = max(64, min(1024, soft_limit // 16))
    return max(1, soft_limit - reserve)


class AcceptCeiling:
    """
    Stops accepting connections while this process holds C{ceiling} of
    them, and accepts again once they fall 1 % below.

    Without it a process out of descriptors accepts each new connection
    only to close it (Twisted's C{EMFILE} handling), and it could not open
    a Redis or database connection any more. With several workers on one
    shared socket a worker at its ceiling leaves new connections to the
    others, so uneven sharing never drops a client. The listening ports
    are only taken out of the reactor's read set (public
    L{IReactorFDSet}); they stay bound, so queued connections wait.

    @ivar count: the connections held now (told through L{update}).
    @ivar paused: whether accepting is stopped.
    """

    log = Logger()

    def __init__(self, reactor: IReactorFDSet, ceiling: int | None) -> None:
        self._reactor = reactor
        self.ceiling = ceiling
        self.resume_at = None if ceiling is None else ceiling - max(1, ceiling // 100)
        self.count = 0
        self.paused = False
        self._ports: list[IReadDescriptor] = []

    def watch(self, port: IListeningPort) -> IListeningPort:
        """
        Pause and resume this listening port with the others (a port that
        is not a reactor read descriptor is left alone).
        """
        if IReadDescriptor.providedBy(port):
            self._ports.append(port)
            if self.paused:
                self._reactor.removeReader(port)
        return port

    def update(self, count: int) -> None:
        """
        The process now holds C{count} connections.
        """
        self.count = count
        if self.ceiling is None:
            return
        if not self.paused and count >= self.ceiling:
            self.paused = True
            self.log.warn(
                "Holding {count} connections, the most this process's open-file limit allows;"
                " not accepting new ones until some close",
                count=count,
            )
            for port in self._ports:
                self._reactor.removeReader(port)
        elif self.paused and self.resume_at is not None and count <= self.resume_at:
            self.paused = False
            self.log.info("Accepting connections again ({count} held)", count=count)
            for port in self._ports:
                if getattr(port, "connected", True):
                    self._reactor.addReader(port)


@implementer(IStreamServerEndpoint)
class ReportingEndpoint:
    """
    Wraps a listener's endpoint to learn its listening port when it binds.

    @ivar bound: fires with the port of the latest C{listen}, or its failure.
    """

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self.endpoint = endpoint
        self.bound: Deferred[IListeningPort] = Deferred()

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen with the wrapped endpoint, and pass the outcome on to
        L{bound} as well as to the caller.
        """
        if self.bound.called:
            self.bound = Deferred()
        return self.endpoint.listen(factory).addBoth(_pass_on, self.bound)

    def port(self) -> Deferred[IListeningPort]:
        """
        A new Deferred for the listening port of the latest C{listen} (so
        several callers can each wait without taking the result from the
        others).
        """
        result: Deferred[IListeningPort] = Deferred()
        self.bound.addBoth(_pass_on, result)
        return result


def _pass_on(outcome: Any, to: Deferred[IListeningPort]) -> Any:
    """
    Fire C{to} with C{outcome} (a port or a failure) and keep C{outcome}
    for the callbacks after this one.
    """
    if isinstance(outcome, Failure):
        to.errback(outcome)
    else:
        to.callback(outcome)
    return outcome


def reporting_endpoint(listener: IService) -> ReportingEndpoint:
    """
    Wrap the endpoint of a C{StreamServerEndpointService} (its public
    C{endpoint} attribute) before it listens, once.

    @raise ValueError: if C{listener} has no endpoint.
    """
    service: Any = listener
    endpoint = getattr(service, "endpoint", None)
    if not IStreamServerEndpoint.providedBy(endpoint):
        raise ValueError(f"{listener!r} has no listening port")
    if not isinstance(endpoint, ReportingEndpoint):
        endpoint = ReportingEndpoint(endpoint)
        service.endpoint = endpoint
    return endpoint
