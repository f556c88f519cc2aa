"""
Tests for L{sockudo_tw.queues}: the memory queue on a L{Clock}, and the Redis
reliable queue against the Redis server on 127.0.0.1:6379 (required when
C{CI=true}, skipped with a message otherwise).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from sockudo_tw.queues import IJobQueue, MemoryJobQueue, RedisJobQueue
from tests.interop_harness import unavailable

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379


def require_redis(test: SynchronousTestCase) -> None:
    """
    Fail (in CI) or skip (elsewhere) when Redis is not listening.
    """
    try:
        socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1).close()
    except OSError:
        unavailable(test, f"Redis is not running on {REDIS_HOST}:{REDIS_PORT}")


async def connect_redis(test: TestCase) -> Any:
    """
    A txredisapi connection for a test, closed and cleaned of the test's
    keys (all under C{test.prefix}) when the test ends.
    """
    redis = await txredisapi.Connection(
        REDIS_HOST, REDIS_PORT, reconnect=False, convertNumbers=False
    )

    async def cleanup() -> None:
        keys = await redis.execute_command("KEYS", test.prefix + "*")  # type: ignore[attr-defined]
        if keys:
            await redis.execute_command("DEL", *keys)
        await redis.disconnect()

    test.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return redis


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """
    Wait until C{check()} is true, polling every 20 ms, for at most
    C{within} seconds.
    """
    for _ in range(int(within / 0.02)):
        if await check():
            return
        await deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]
    raise AssertionError("condition not met in time")


async def true(value: bool) -> bool:
    """
    Lift a plain condition into an awaitable for L{eventually}.
    """
    return value


class MemoryJobQueueTests(SynchronousTestCase):
    """
    L{MemoryJobQueue} on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.handled: list[str] = []
        self.pending: list[Deferred[bool]] = []

    def handler(self, job: str) -> Deferred[bool]:
        """
        Record the job; leave it in progress.
        """
        self.handled.append(job)
        d: Deferred[bool] = Deferred()
        self.pending.append(d)
        return d

    def test_interface(self) -> None:
        """
        The memory queue provides L{IJobQueue}.
        """
        verifyObject(IJobQueue, MemoryJobQueue(self.clock))

    def test_handed_out_on_next_turn(self) -> None:
        """
        C{enqueue} never runs the handler in the caller's stack.
        """
        queue = MemoryJobQueue(self.clock)
        queue.start(self.handler)
        queue.enqueue("a")
        self.assertEqual(self.handled, [])
        self.clock.advance(0)
        self.assertEqual(self.handled, ["a"])

    def test_max_in_progress(self) -> None:
        """
        At most C{max_in_progress} jobs are handed out; finishing one hands
        out the next.
        """
        queue = MemoryJobQueue(self.clock, max_in_progress=2)
        queue.start(self.handler)
        for job in "abc":
            queue.enqueue(job)
        self.clock.advance(0)
        self.assertEqual(self.handled, ["a", "b"])
        self.pending[0].callback(True)
        self.clock.advance(0)
        self.assertEqual(self.handled, ["a", "b", "c"])

    def test_handler_failure_does_not_stall(self) -> None:
        """
        A failing handler is logged and the queue carries on.
        """
        queue = MemoryJobQueue(self.clock, max_in_progress=1)
        queue.start(lambda job: fail(RuntimeError(job)))
        queue.enqueue("a")
        queue.enqueue("b")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_full_queue_drops(self) -> None:
        """
        Beyond C{max_length} waiting jobs, new ones are dropped and counted.
        """
        queue = MemoryJobQueue(self.clock, max_length=2)
        for job in "abc":
            queue.enqueue(job)
        self.assertEqual(queue.dropped, 1)

    def test_stop_drains(self) -> None:
        """
        Stopping keeps handing out queued jobs and fires once they are done.
        """
        queue = MemoryJobQueue(self.clock)
        queue.start(lambda job: succeed(self.handled.append(job) is None))
        queue.enqueue("a")
        d = queue.stop()
        self.assertNoResult(d)
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(self.handled, ["a"])

    def test_stop_gives_up_after_grace(self) -> None:
        """
        A job that does not finish within the grace is counted as lost and
        the stop completes.
        """
        queue = MemoryJobQueue(self.clock, max_in_progress=1, drain_grace=5)
        queue.start(self.handler)
        queue.enqueue("a")
        queue.enqueue("b")
        self.clock.advance(0)
        d = queue.stop()
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(queue.dropped, 1)


class RedisJobQueueTests(TestCase):
    """
    L{RedisJobQueue} against a real Redis, every key under a prefix unique
    to the test.
    """

    def setUp(self) -> Deferred[None]:
        require_redis(self)
        self.prefix = f"sockudo_tw_test_{uuid.uuid4().hex}"
        self.handled: list[str] = []
        self.pending: list[Deferred[bool]] = []

        async def connect() -> None:
            self.redis = await connect_redis(self)

        return Deferred.fromCoroutine(connect())

    def make_queue(self, clock: Any = reactor, **kwargs: Any) -> RedisJobQueue:
        """
        A queue under the test prefix, stopped at the end of the test.
        """
        queue = RedisJobQueue(self.redis, clock, prefix=self.prefix, poll_interval=0.05, **kwargs)
        self.addCleanup(self._stop, queue)
        return queue

    def _stop(self, queue: RedisJobQueue) -> Deferred[None]:
        for d in self.pending:
            if not d.called:
                d.callback(False)
        return queue.stop()

    def keep(self, job: str) -> Deferred[bool]:
        """
        A handler that records the job and leaves it in progress.
        """
        self.handled.append(job)
        d: Deferred[bool] = Deferred()
        self.pending.append(d)
        return d

    def done(self, job: str) -> Deferred[bool]:
        """
        A handler that records the job and finishes it.
        """
        self.handled.append(job)
        return succeed(True)

    async def llen(self, key: str) -> int:
        """
        The length of a list.
        """
        return int(await self.redis.execute_command("LLEN", key))

    async def test_delivers_and_acknowledges(self) -> None:
        """
        An enqueued job reaches the handler and, once finished, is in
        neither the queue nor the processing list.
        """
        queue = self.make_queue()
        self.assertTrue(verifyObject(IJobQueue, queue))
        queue.start(self.done)
        queue.enqueue('{"job":1}')
        await eventually(lambda: true(self.handled == ['{"job":1}']))

        async def drained() -> bool:
            return await self.llen(queue.queue_key) == 0 == await self.llen(queue.processing_key)

        await eventually(drained)

    async def test_unfinished_job_handed_back_on_stop(self) -> None:
        """
        A job abandoned at shutdown goes back on the queue, and the worker
        unregisters.
        """
        queue = self.make_queue()
        queue.start(self.keep)
        queue.enqueue("j1")
        await eventually(lambda: true(self.handled == ["j1"]))
        self.assertEqual(await self.llen(queue.processing_key), 1)
        self.pending[0].callback(False)
        await queue.stop()
        self.assertEqual(await self.redis.execute_command("LRANGE", queue.queue_key, 0, -1), ["j1"])
        self.assertEqual(await self.llen(queue.processing_key), 0)
        members = await self.redis.execute_command("SMEMBERS", queue.queue_key + ":workers")
        self.assertNotIn(queue.worker_id, members)

    async def test_dead_worker_jobs_redelivered(self) -> None:
        """
        Jobs in the processing list of a registered worker without a
        liveness key (killed mid-job) are delivered by a new worker.
        """
        base = f"{self.prefix}:queue:webhooks"
        await self.redis.execute_command("LPUSH", base + ":processing:dead", "orphan")
        await self.redis.execute_command("SADD", base + ":workers", "dead")
        queue = self.make_queue()
        queue.start(self.done)
        await eventually(lambda: true(self.handled == ["orphan"]))

        async def forgotten() -> bool:
            members = await self.redis.execute_command("SMEMBERS", base + ":workers")
            return "dead" not in members and await self.llen(base + ":processing:dead") == 0

        await eventually(forgotten)

    async def test_live_worker_jobs_kept(self) -> None:
        """
        A worker whose liveness key is present keeps its jobs.
        """
        base = f"{self.prefix}:queue:webhooks"
        await self.redis.execute_command("LPUSH", base + ":processing:alive", "mine")
        await self.redis.execute_command("SADD", base + ":workers", "alive")
        await self.redis.execute_command("SET", base + ":alive:alive", "1", "PX", "60000")
        queue = self.make_queue()
        queue.start(self.done)
        moved = await queue.recover_dead_workers()
        # A marker pushed now is taken after anything recovery put back at the
        # consuming end (FIFO), so once it is handled nothing else came.
        queue.enqueue("marker")
        await eventually(lambda: true(self.handled == ["marker"]))
        self.assertEqual((moved, self.handled), (0, ["marker"]))
        self.assertEqual(await self.llen(base + ":processing:alive"), 1)

    async def test_max_in_progress(self) -> None:
        """
        A worker holds at most C{max_in_progress} jobs; finishing one lets it
        take the next.
        """
        clock = Clock()  # no poll or heartbeat runs unless the test says so
        queue = self.make_queue(clock, max_in_progress=2)
        queue.start(self.keep)
        for job in ("a", "b", "c"):
            queue.enqueue(job)
        await eventually(lambda: true(len(self.handled) == 2))
        # Redis answers in order on the one connection: a third LMOVE sent
        # with the second would be answered before this LLEN.
        self.assertEqual(await self.llen(queue.queue_key), 1)
        self.assertEqual(len(self.handled), 2)
        clock.advance(1)  # a due poll, if any, cannot take a third job either
        self.assertEqual(await self.llen(queue.queue_key), 1)
        self.assertEqual(len(self.handled), 2)
        self.pending[0].callback(True)
        await eventually(lambda: true(len(self.handled) == 3))
        self.assertEqual(sorted(self.handled), ["a", "b", "c"])
