# -*- test-case-name: tests.test_queue -*-
"""
The Redis queue driver (C{queue.driver: redis}): durable and at-least-once
with the reliable-queue pattern (see L{sockudo_tw.queues} for the keys and
the recovery of dead workers).
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockudo_tw.queues import IJobQueue, JobHandler, RedisCommands

__all__ = ["RedisJobQueue"]


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
        max_unsent: int = 100_000,
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
        @param max_unsent: jobs held in memory while Redis cannot take them
            (down, or the connection saturated); more are dropped.
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
        self._unsent: deque[str] = deque()
        self._max_unsent = max_unsent
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
            self._hold(job, failure)

        d.addCallbacks(pushed, failed)

    def _hold(self, job: str, failure: Failure) -> None:
        """
        Redis refused or could not take a job: keep it in memory (up to
        C{max_unsent} jobs) until a heartbeat finds Redis back.
        """
        if len(self._unsent) >= self._max_unsent:
            self._log.failure("webhook job could not be queued in Redis; dropped", failure)
            return
        if not self._unsent:
            self._log.warn(
                "webhook jobs held in memory until Redis takes them: {error}",
                error=failure.getErrorMessage(),
            )
        self._unsent.append(job)

    async def _push_unsent(self) -> None:
        """
        Queue the jobs held while Redis could not take them, oldest first.
        """
        while self._unsent:
            await self._redis.execute_command("LPUSH", self.queue_key, self._unsent[0])
            self._unsent.popleft()

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
            await self._push_unsent()
            await self.recover_dead_workers()
        except Exception as e:
            self._log.warn("webhook queue heartbeat failed (Redis down?): {error}", error=e)
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
            await self._push_unsent()
        except Exception:
            self._log.warn(
                "{count} webhook jobs lost at shutdown: Redis could not take them",
                count=len(self._unsent),
            )
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
