# -*- test-case-name: tests.test_queue -*-
"""
The webhook job queue: where built, not yet delivered webhook requests wait.

A job is an opaque JSON text built by L{sockudo_tw.webhooks}. A queue hands
each job to one handler, whose Deferred says whether the job is finished
(C{True}: delivered or given up, so it is acknowledged) or was abandoned
because the node is stopping (C{False}: it must be delivered later).

Two drivers (sockudo-reference.md section 5.6):

  - L{MemoryJobQueue}: in-process, lost on restart (the default: it needs
    no Redis).
  - L{RedisJobQueue}: durable and at-least-once with the reliable-queue
    pattern. Jobs are pushed to C{<prefix>:queue:webhooks}; a worker moves
    each one atomically (C{LMOVE}) to its own processing list and removes it
    (C{LREM}) only once the handler is finished. Each worker keeps a liveness
    key with a TTL; any worker that finds a registered worker whose liveness
    key has expired (it was killed, SIGKILL included) moves that worker's
    processing list back to the queue, so another node, or the same one
    restarted, delivers those jobs.

Unlike Sockudo, jobs carry the app id, never the app secret: the sender
looks the app up again when it signs the request.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

__all__ = [
    "SUPPORTED_QUEUE_DRIVERS",
    "IJobQueue",
    "JobHandler",
    "MemoryJobQueue",
    "RedisCommands",
    "RedisJobQueue",
    "UnsupportedQueueDriverError",
    "validate_queue_driver",
]

JobHandler = Callable[[str], "Deferred[bool]"]
"""
Delivers one job; fires C{True} when the job is finished, C{False} when it
was abandoned (the node is stopping) and must be delivered later.
"""

SUPPORTED_QUEUE_DRIVERS = ("memory", "redis", "none")


class UnsupportedQueueDriverError(ValueError):
    """
    A queue driver that Sockudo has and sockudo-tw refuses (C{sqs},
    C{redis-cluster}).
    """


def validate_queue_driver(driver: str) -> None:
    """
    Refuse, at config load, a C{queue.driver} that sockudo-tw does not
    implement, instead of silently dropping webhooks as Sockudo does when its
    queue cannot be built.

    @raise UnsupportedQueueDriverError: with a message naming the key and the
        supported drivers.
    """
    if driver in SUPPORTED_QUEUE_DRIVERS:
        return
    if driver == "sqs":
        raise UnsupportedQueueDriverError(
            'queue.driver: "sqs" is not supported by sockudo-tw yet; '
            'use "redis" for durable webhook jobs, or "memory"'
        )
    if driver == "redis-cluster":
        raise UnsupportedQueueDriverError(
            'queue.driver: "redis-cluster" is not supported by sockudo-tw yet; '
            'use "redis" (a single Redis server or a replicated primary)'
        )
    raise UnsupportedQueueDriverError(
        f"queue.driver: unknown driver {driver!r}; expected one of "
        + ", ".join(repr(d) for d in SUPPORTED_QUEUE_DRIVERS)
    )


class IJobQueue(Interface):
    """
    A queue of webhook jobs with its consumer.
    """

    def enqueue(job: str) -> None:
        """
        Accept a job. Returns at once; failures are logged, never raised.
        """

    def start(handler: JobHandler) -> None:
        """
        Begin handing queued jobs to C{handler}.
        """

    def stop() -> Deferred[None]:
        """
        Stop consuming; fires once jobs in progress are finished or put back.
        """


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


class RedisCommands(Protocol):
    """
    The part of a txredisapi connection handler the queue uses.
    """

    def execute_command(self, *args: Any) -> Deferred[Any]: ...


@implementer(IJobQueue)
class RedisJobQueue:
    """
    A durable, at-least-once job queue in Redis lists (see the module
    docstring for the keys and the recovery of dead workers).

    @ivar worker_id: this worker's id; its processing list and liveness key
        are named after it.
    """

    _log = Logger()

    def __init__(
        self,
        redis: RedisCommands,
        clock: IReactorTime,
        *,
        prefix: str = "sockudo_queue:",
        max_in_progress: int = 1000,
        poll_interval: float = 0.5,
        liveness_ttl: float = 30.0,
        worker_id: str | None = None,
        stop_grace: float = 15.0,
    ) -> None:
        """
        @param redis: a txredisapi connection (pool) with C{reconnect=True},
            C{convertNumbers=False} and the C{utf-8} charset.
        @param prefix: Sockudo's C{queue.redis.prefix}; keys are
            C{<prefix>:queue:webhooks...} as in Sockudo.
        @param max_in_progress: jobs this worker holds at once, waiting
            retries included.
        @param poll_interval: seconds between polls of an empty queue (jobs
            enqueued on this node are fetched at once).
        @param liveness_ttl: seconds after which a silent worker counts as
            dead and its jobs are redelivered.
        @param stop_grace: seconds L{stop} waits for jobs in progress.
        """
        self._redis = redis
        self._clock = clock
        base = f"{prefix}:queue:webhooks"
        self.worker_id = worker_id or uuid.uuid4().hex
        self.queue_key = base
        self._processing_prefix = f"{base}:processing:"
        self._alive_prefix = f"{base}:alive:"
        self._workers_key = f"{base}:workers"
        self.processing_key = self._processing_prefix + self.worker_id
        self._alive_key = self._alive_prefix + self.worker_id
        self._max_in_progress = max_in_progress
        self._poll_interval = poll_interval
        self._liveness_ttl = liveness_ttl
        self._stop_grace = stop_grace
        self._handler: JobHandler | None = None
        self._in_progress = 0
        self._fetching = False
        self._kicked = False
        self._poll_call: IDelayedCall | None = None
        self._heartbeat: LoopingCall | None = None
        self._pushes: set[Deferred[Any]] = set()
        self._idle: list[Deferred[None]] = []
        self._stopping = False

    def enqueue(self, job: str) -> None:
        d = self._redis.execute_command("LPUSH", self.queue_key, job)
        self._pushes.add(d)

        def pushed(result: object) -> None:
            self._pushes.discard(d)
            self._kick()

        def failed(failure: Failure) -> None:
            self._pushes.discard(d)
            self._log.failure("webhook job could not be queued in Redis", failure)

        d.addCallbacks(pushed, failed)

    def start(self, handler: JobHandler) -> None:
        self._handler = handler
        self._log.info(
            "Webhook queue worker {worker_id} consuming {queue}",
            worker_id=self.worker_id,
            queue=self.queue_key,
        )
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._clock
        beat = self._heartbeat.start(self._liveness_ttl / 3, now=True)
        beat.addErrback(lambda f: self._log.failure("webhook queue heartbeat stopped", f))

    def _beat(self) -> Deferred[None]:
        """
        Refresh this worker's liveness, redeliver dead workers' jobs, then
        poll.
        """
        return Deferred.fromCoroutine(self._beat_async())

    async def _beat_async(self) -> None:
        try:
            ttl_ms = str(int(self._liveness_ttl * 1000))
            await self._redis.execute_command("SET", self._alive_key, "1", "PX", ttl_ms)
            await self._redis.execute_command("SADD", self._workers_key, self.worker_id)
            await self.recover_dead_workers()
        except Exception:
            self._log.failure("webhook queue heartbeat failed (Redis down?)")
        self._kick()

    async def recover_dead_workers(self) -> int:
        """
        Move the processing lists of workers whose liveness key expired back
        to the queue.

        @return: how many jobs were put back.
        """
        members = await self._redis.execute_command("SMEMBERS", self._workers_key)
        moved = 0
        for other in sorted(members or ()):
            other = _text(other)
            if other == self.worker_id:
                continue
            alive = await self._redis.execute_command("EXISTS", self._alive_prefix + other)
            if alive:
                continue
            count = await self._requeue(self._processing_prefix + other)
            if count:
                self._log.warn(
                    "redelivering {count} webhook jobs of dead worker {worker}",
                    count=count,
                    worker=other,
                )
            moved += count
            if not await self._redis.execute_command("EXISTS", self._processing_prefix + other):
                await self._redis.execute_command("SREM", self._workers_key, other)
        return moved

    async def _requeue(self, processing: str) -> int:
        """
        Move every job of a processing list to the consuming end of the queue.
        """
        length = int(await self._redis.execute_command("LLEN", processing))
        moved = 0
        for _ in range(length):
            job = await self._redis.execute_command(
                "LMOVE", processing, self.queue_key, "LEFT", "RIGHT"
            )
            if job is None:
                break
            moved += 1
        return moved

    def _kick(self) -> None:
        if self._fetching:
            self._kicked = True
            return
        if self._handler is None or self._stopping:
            return
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        self._poll_call = None
        self._fetching = True
        Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> None:
        """
        Take jobs while there is room, then poll again later.
        """
        delay: float | None = self._poll_interval
        empty = False
        self._kicked = False
        try:
            while self._in_progress < self._max_in_progress and not self._stopping:
                job = await self._redis.execute_command(
                    "LMOVE", self.queue_key, self.processing_key, "RIGHT", "LEFT"
                )
                if job is None:
                    empty = True
                    break
                self._dispatch(_text(job))
            else:
                delay = None  # full or stopping: a finished job kicks again
        except Exception:
            self._log.failure("fetching webhook jobs from Redis failed")
        finally:
            self._fetching = False
        if empty and self._kicked:
            # A job was pushed while the last LMOVE came back empty.
            delay = 0
        if delay is not None and not self._stopping:
            self._poll_call = self._clock.callLater(delay, self._kick)

    def _dispatch(self, job: str) -> None:
        handler = self._handler
        assert handler is not None
        self._in_progress += 1
        d: Deferred[bool] = maybeDeferred(handler, job)

        def finished(done: bool) -> Deferred[Any] | None:
            if done:
                return self._redis.execute_command("LREM", self.processing_key, "1", job)
            return None

        def failed(failure: Failure) -> Deferred[Any]:
            self._log.failure("webhook job handler failed; job acknowledged", failure)
            return self._redis.execute_command("LREM", self.processing_key, "1", job)

        d.addCallbacks(finished, failed)
        d.addErrback(lambda f: self._log.failure("acknowledging a webhook job failed", f))
        d.addBoth(self._release)

    def _release(self, result: object) -> None:
        self._in_progress -= 1
        if self._stopping:
            if self._in_progress == 0:
                idle, self._idle = self._idle, []
                for d in idle:
                    if not d.called:
                        d.callback(None)
        else:
            self._kick()

    def stop(self) -> Deferred[None]:
        """
        Stop fetching, wait for jobs in progress (the sender abandons its
        retries when it stops), put unfinished jobs back on the queue and
        unregister this worker.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        if self._in_progress:
            d: Deferred[None] = Deferred()
            self._idle.append(d)
            d.addTimeout(self._stop_grace, self._clock)
            try:
                await d
            except Exception:
                self._log.warn(
                    "{count} webhook jobs still in progress at shutdown; requeued",
                    count=self._in_progress,
                )
        for push in list(self._pushes):
            try:
                await push
            except Exception:
                pass
        try:
            count = await self._requeue(self.processing_key)
            if count:
                self._log.info("{count} unfinished webhook jobs put back on the queue", count=count)
            await self._redis.execute_command("DEL", self._alive_key)
            await self._redis.execute_command("SREM", self._workers_key, self.worker_id)
        except Exception:
            self._log.failure(
                "could not hand back webhook jobs; they are redelivered once "
                "this worker's liveness key expires"
            )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)
