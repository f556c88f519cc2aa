# -*- test-case-name: tests.test_queue -*-
"""
The memory queue driver (C{queue.driver: memory}, the default: it needs no
Redis): jobs held in this process, lost on restart.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockudo_tw.queues import IJobQueue, JobHandler

__all__ = ["MemoryJobQueue"]


@implementer(IJobQueue)
class MemoryJobQueue:
    """
    Jobs held in this process, handed out on the next reactor turn.

    @ivar dropped: jobs refused because the queue was full, plus jobs still
        pending when the queue stopped.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_in_progress: int = 1000,
        max_length: int = 100_000,
        drain_grace: float = 5.0,
    ) -> None:
        """
        @param max_in_progress: jobs handed to the handler and not yet
            finished (including jobs waiting for a retry).
        @param max_length: jobs waiting beyond that; more are dropped.
        @param drain_grace: seconds L{stop} keeps delivering what is queued.
        """
        self._clock = clock
        self._max_in_progress = max_in_progress
        self._max_length = max_length
        self._drain_grace = drain_grace
        self._jobs: deque[str] = deque()
        self._handler: JobHandler | None = None
        self._in_progress = 0
        self._kick_call: IDelayedCall | None = None
        self._stopping = False
        self._idle: list[Deferred[None]] = []
        self.dropped = 0

    def depth(self) -> int:
        """
        Jobs waiting or being delivered (retries included), for the
        C{webhook_queue_depth} gauge.
        """
        return len(self._jobs) + self._in_progress

    def enqueue(self, job: str) -> None:
        if len(self._jobs) >= self._max_length:
            self.dropped += 1
            self._log.warn(
                "webhook queue full ({length} jobs): job dropped", length=len(self._jobs)
            )
            return
        self._jobs.append(job)
        self._schedule()

    def start(self, handler: JobHandler) -> None:
        self._handler = handler
        self._schedule()

    def _schedule(self) -> None:
        if self._handler is not None and self._kick_call is None and self._jobs:
            self._kick_call = self._clock.callLater(0, self._kick)

    def _kick(self) -> None:
        self._kick_call = None
        handler = self._handler
        if handler is None:
            return
        while self._jobs and self._in_progress < self._max_in_progress:
            job = self._jobs.popleft()
            self._in_progress += 1
            d: Deferred[bool] = maybeDeferred(handler, job)
            d.addCallbacks(self._finished, self._failed)

    def _finished(self, done: bool) -> None:
        if not done:
            self.dropped += 1
            self._log.warn("webhook job abandoned at shutdown (memory queue)")
        self._release()

    def _failed(self, failure: Failure) -> None:
        self._log.failure("webhook job handler failed", failure)
        self._release()

    def _release(self) -> None:
        self._in_progress -= 1
        self._schedule()
        self._check_idle()

    def _check_idle(self) -> None:
        if self._stopping and self._in_progress == 0 and not self._jobs:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def stop(self) -> Deferred[None]:
        """
        Keep delivering queued jobs for up to C{drain_grace} seconds, then
        drop what is left (a memory queue cannot keep it).
        """
        self._stopping = True
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        self._check_idle()
        if d.called:
            return d
        timer = self._clock.callLater(self._drain_grace, self._give_up)
        d.addBoth(lambda r: _cancel_pending(timer, r))
        return d

    def _give_up(self) -> None:
        lost = len(self._jobs)
        if lost:
            self.dropped += lost
            self._log.warn("{lost} webhook jobs lost at shutdown (memory queue)", lost=lost)
        self._jobs.clear()
        self._handler = None
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)


def _cancel_pending(call: IDelayedCall, result: object) -> object:
    if call.active():
        call.cancel()
    return result
