# -*- test-case-name: tests.test_websocket -*-
"""
Lazy per-connection timers: one heap of deadlines behind one reactor call.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Deadlines", "Ticking"]


class Ticking(Protocol):
    """
    What a deadline calls: a connection whose session has timers.
    """

    def deadline_reached(self) -> None:
        """
        The deadline this connection asked for has come.
        """


class Deadlines:
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
        self._heap: list[tuple[float, int, list[Ticking | None]]] = []
        self._order = count()
        self._call: IDelayedCall | None = None
        self._armed_for = 0.0
        self._firing = False
        self._live = 0

    def add(self, when: float, protocol: Ticking) -> list[Ticking | None]:
        """
        Call C{protocol.deadline_reached()} at C{when}.

        @return: the entry's handle; set its item to L{None} to cancel.
        """
        handle: list[Ticking | None] = [protocol]
        heapq.heappush(self._heap, (when, next(self._order), handle))
        self._live += 1
        if not self._firing and (self._call is None or when < self._armed_for):
            self._arm(when)
        return handle

    def cancel(self, handle: list[Ticking | None]) -> None:
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
                    protocol.deadline_reached()
        finally:
            self._firing = False
            if self._live == 0:
                heap.clear()
            if heap:
                self._arm(heap[0][0])
