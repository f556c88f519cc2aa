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

from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["ReportingEndpoint", "reporting_endpoint"]


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
