# -*- test-case-name: tests.test_write_coalescing,tests.test_triggerchannel -*-
"""
Writing to an idle socket without the reactor's round trip.

C{transport.write} on a socket with nothing buffered registers it for
writing (C{epoll_ctl}), sends on the next reactor turn, then unregisters it
(C{epoll_ctl} again). For the server's many small writes (broadcast frames,
API answers) those two system calls cost about as much as the C{send()}
itself. L{write_now} sends at once when nothing can be overtaken and leaves
everything else to the transport.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection

__all__ = ["idle_socket", "write_now"]


def idle_socket(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP or UNIX connection (not TLS) with
    nothing in Twisted's write buffer, so that bytes sent straight to its
    socket cannot overtake bytes Twisted holds.

    Relies on L{twisted.internet.abstract.FileDescriptor}'s C{dataBuffer}
    and C{_tempDataBuffer} (pinned by C{tests.test_write_coalescing}).
    """
    return bool(
        isinstance(transport, Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    )


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} with a single C{send()} when C{transport} is an idle
    socket; whatever the socket does not take at once (a partial send,
    C{EAGAIN}, any error), or all of it on any other transport, goes to
    C{transport.write}, whose buffering and error handling (up to
    C{connectionLost}) then apply as usual.
    """
    if idle_socket(transport):
        try:
            sent = transport.getHandle().send(data)
        except OSError:
            sent = 0
        if sent >= len(data):
            return
        if sent:
            data = data[sent:]
    transport.write(data)
