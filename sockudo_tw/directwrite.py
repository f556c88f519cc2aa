# -*- test-case-name: tests.test_write_coalescing,tests.test_triggerchannel -*-
"""
Writing to an idle socket without the reactor's round trip.

C{transport.write} on a socket with nothing buffered registers it for
writing (C{epoll_ctl}), sends on the next reactor turn, then unregisters it
(C{epoll_ctl} again). For the server's many small writes (broadcast frames,
API answers) those two system calls cost about as much as the C{send()}
itself. L{write_now} sends at once when nothing can be overtaken and leaves
everything else to the transport.

Whether Twisted holds buffered bytes is read through
L{sockudo_tw.compat.twisted.write_buffer_empty} (a guarded internal); when
that guard does not recognise the installed Twisted, no socket counts as
idle and every write goes through C{transport.write}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection

from sockudo_tw.compat.twisted import write_buffer_empty

__all__ = ["idle_socket", "plain_socket", "write_now"]


def plain_socket(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP or UNIX connection (not TLS): one
    that L{write_now} may send on directly while it is idle.
    """
    return isinstance(transport, Connection) and not transport.TLS


def idle_socket(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP or UNIX connection (not TLS) with
    nothing in Twisted's write buffer, so that bytes sent straight to its
    socket cannot overtake bytes Twisted holds.

    Twisted's write buffers are read by
    L{sockudo_tw.compat.twisted.write_buffer_empty} (pinned by
    C{tests.test_compat} and C{tests.test_write_coalescing}).
    """
    return bool(
        plain_socket(transport)
        and transport.connected
        and not transport.disconnecting
        and write_buffer_empty(transport)
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
