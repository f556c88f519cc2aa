# -*- test-case-name: tests.test_compat -*-
"""
The Twisted internals sockudo-tw relies on, each guarded, with a public
fallback (see L{sockudo_tw.compat} for the rule).

Checked on Twisted 26.10.0 (C{CHECKED_ON}); the guards accept the range
C{install_requires} allows (C{KNOWN_RANGE}). Each use has a flag, true when
the installed Twisted is in that range and the internal has the expected
shape:

  - L{WRITE_BUFFERS}: L{twisted.internet.abstract.FileDescriptor}'s write
    buffers (C{dataBuffer}, C{_tempDataBuffer}, C{_writeDisconnected}), read
    by L{write_buffer_empty} so that L{sockudo_tw.directwrite} can send on an
    idle socket without the reactor's round trip. Fallback: the buffers are
    reported non-empty, so every write goes through C{transport.write}
    (correct, about two C{epoll_ctl} calls per write slower).
  - L{CLIENT_SERVICE_LOG}: L{ClientService}'s class-level C{_log}, replaced
    in L{quiet_client_service} to drop its "Scheduling retry" line on every
    attempt (the Redis link logs each outage once itself). Fallback: a plain
    L{ClientService} subclass; it reconnects the same, and logs each retry.
  - L{REQUEST_DISCONNECTED}: L{twisted.web.http.Request}'s C{_disconnected},
    read by L{request_gone}. Fallback: the public C{channel} attribute, which
    C{Request.connectionLost} sets to L{None}.

The listening port of a C{StreamServerEndpointService} (formerly read from
its C{_waitingForPort}) needs no internal: L{sockudo_tw.listening} records it
through the public C{endpoint} attribute.

The internals of C{twisted.enterprise.adbapi} the SQL app stores use (a
connection's C{_connection} and C{_pool}) are guarded in
L{sockudo_tw.compat.adbapi}, against the same range.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.application.internet import ClientService
from twisted.copyright import version as twisted_version
from twisted.internet.abstract import FileDescriptor
from twisted.logger import ILogObserver, Logger
from twisted.web.http import Request

from sockudo_tw.compat import version_in_range

__all__ = [
    "ASYNCIO_LOOP",
    "CHECKED_ON",
    "CLIENT_SERVICE_LOG",
    "KNOWN_RANGE",
    "RECOGNISED",
    "REQUEST_DISCONNECTED",
    "WRITE_BUFFERS",
    "asyncio_loop_of",
    "quiet_client_service",
    "request_gone",
    "write_buffer_empty",
]

CHECKED_ON = "26.10.0"
"""
The Twisted release the uses below were read against and tested on.
"""

KNOWN_RANGE = ((24, 7), (27, 0))
"""
Twisted versions (major, minor), lower bound included, upper excluded, for
which the guards accept the internals; the same range as C{install_requires}.
"""


def _version_known(version: str) -> bool:
    """
    Whether a Twisted version string (C{"26.10.0"}) is in L{KNOWN_RANGE}.
    """
    return version_in_range(version, KNOWN_RANGE)


def _write_buffers_known() -> bool:
    """
    Whether a fresh L{FileDescriptor} has the write buffers we read, with
    the types and empty values of the checked release.
    """
    try:
        # A truthy stand-in reactor: FileDescriptor imports the global
        # reactor when given none, which library code must never do.
        fd = FileDescriptor(reactor=object())  # type: ignore[arg-type]
        return (
            fd.dataBuffer == b""
            and isinstance(fd._tempDataBuffer, list)
            and not fd._tempDataBuffer
            and fd._writeDisconnected is False
        )
    except Exception:
        return False


def _client_service_log_known() -> bool:
    """
    Whether L{ClientService} keeps its logger in a class-level C{_log}.
    """
    return isinstance(ClientService.__dict__.get("_log"), Logger)


def _request_disconnected_known() -> bool:
    """
    Whether L{Request} has a class-level boolean C{_disconnected}.
    """
    return Request.__dict__.get("_disconnected") is False


_NO_CHANNEL = object()

_KNOWN = _version_known(twisted_version)

RECOGNISED = _KNOWN
"""
Whether the installed Twisted is in L{KNOWN_RANGE} (asserted by the tests).
"""

WRITE_BUFFERS = _KNOWN and _write_buffers_known()
CLIENT_SERVICE_LOG = _KNOWN and _client_service_log_known()
REQUEST_DISCONNECTED = _KNOWN and _request_disconnected_known()


def _asyncio_loop_known() -> bool:
    """
    Whether Twisted's asyncio reactor keeps the loop it runs on in
    C{_asyncioEventloop} (set in its C{__init__}).
    """
    try:
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    except ImportError:
        return False
    return "_asyncioEventloop" in AsyncioSelectorReactor.__init__.__code__.co_names


ASYNCIO_LOOP = _KNOWN and _asyncio_loop_known()


def asyncio_loop_of(reactor: Any) -> asyncio.AbstractEventLoop | None:
    """
    The asyncio loop C{reactor} runs on when it is Twisted's asyncio
    reactor (its C{_asyncioEventloop}), so an asyncio client can share it;
    else L{None}.

    When L{ASYNCIO_LOOP} is off, always L{None}: the caller then runs its
    asyncio client on a loop thread of its own, which is correct, only
    slower.
    """
    if not ASYNCIO_LOOP:
        return None
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        return None
    loop = getattr(reactor, "_asyncioEventloop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def write_buffer_empty(transport: Any) -> bool:
    """
    Whether a L{FileDescriptor} transport holds no bytes waiting to be
    written and has not had its write side shut down, so that bytes sent
    straight to its socket cannot overtake bytes Twisted holds.

    When L{WRITE_BUFFERS} is off this says False: callers then write through
    C{transport.write}, which is always correct.
    """
    if not WRITE_BUFFERS:
        return False
    return not (transport._writeDisconnected or transport.dataBuffer or transport._tempDataBuffer)


def quiet_client_service(observer: ILogObserver) -> type[ClientService]:
    """
    A L{ClientService} subclass whose own log events go to C{observer}
    instead of the global log: its "Scheduling retry" line on every attempt.
    The override is scoped to the returned class; L{ClientService} itself is
    untouched.

    When L{CLIENT_SERVICE_LOG} is off, a plain subclass: retries are logged
    by Twisted as usual.
    """

    class QuietClientService(ClientService):
        """
        A L{ClientService} with its own logger, when Twisted keeps one.
        """

    if CLIENT_SERVICE_LOG:
        QuietClientService._log = Logger(observer=observer)
    return QuietClientService


def request_gone(request: Any) -> bool:
    """
    Whether a twisted.web request needs no answer any more: it was finished,
    or its client disconnected.

    Reads C{Request._disconnected} when L{REQUEST_DISCONNECTED}; otherwise
    (and for request objects without it) the public C{channel}, which
    C{Request.connectionLost} sets to L{None}.
    """
    if request.finished:
        return True
    if REQUEST_DISCONNECTED:
        disconnected = getattr(request, "_disconnected", None)
        if disconnected is not None:
            return bool(disconnected)
    # A stand-in request without a channel at all is not taken for gone.
    return getattr(request, "channel", _NO_CHANNEL) is None
