# -*- test-case-name: tests.test_websocket_tcp -*-
"""
A connection's write back-pressure: the transport tells us when its buffer
is full, and the protocol counts what it writes meanwhile (close 4100
beyond the factory's limit).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["Backpressure"]


@implementer(IPushProducer)
class Backpressure:
    """
    Registered as the transport's producer: the transport pauses it when its
    write buffer is full, and bytes written while paused are counted.
    """

    __slots__ = ("buffered", "paused", "socket")

    paused: bool
    buffered: int
    socket: Any
    """
    The connection's socket while frames may be written straight to it
    (the connection is open and nothing is held by Twisted or Autobahn), so
    a broadcast frame costs one dict entry; else L{None}, and the next
    frame takes the checked path (L{sockudo_tw.websocket.writing}).
    """

    def __init__(self) -> None:
        self.paused = False
        self.buffered = 0
        self.socket = None

    def pauseProducing(self) -> None:
        """
        The transport's write buffer is full (it holds bytes, so no more
        straight writes).
        """
        self.paused = True
        self.socket = None

    def resumeProducing(self) -> None:
        """
        The transport drained its write buffer.
        """
        self.paused = False
        self.buffered = 0

    def stopProducing(self) -> None:
        """
        The transport is closing.
        """
        self.paused = False
