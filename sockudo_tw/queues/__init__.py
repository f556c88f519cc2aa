# -*- test-case-name: tests.test_queue -*-
"""
The webhook job queue: where built, not yet delivered webhook requests wait.

A job is an opaque JSON text built by L{sockudo_tw.webhooks}. A queue hands
each job to one handler, whose Deferred says whether the job is finished
(C{True}: delivered or given up, so it is acknowledged) or was abandoned
because the node is stopping (C{False}: it must be delivered later).

Three drivers (sockudo-reference.md section 5.6), one module each, chosen by
name in L{DRIVERS}:

  - L{MemoryJobQueue}: in-process, lost on restart (the default: it needs
    no Redis).
  - L{RedisJobQueue}: durable and at-least-once with the reliable-queue
    pattern. Jobs are pushed to C{<prefix>:queue:webhooks}; a worker moves
    each one atomically (C{LMOVE}) to its own processing list and removes it
    (C{LREM}) only once the handler is finished. Each worker keeps a liveness
    key with a TTL; any worker that finds a registered worker whose liveness
    key has expired (it was killed, SIGKILL included) moves that worker's
    processing list back to the queue, so another node, or the same one
    restarted, delivers those jobs. Jobs Redis cannot take (not connected
    yet, an outage) wait in memory, bounded, for the next heartbeat.
  - L{sockudo_tw.queues.sqs.SqsJobQueue}: Amazon SQS (or any endpoint that
    speaks it), long-polled by C{concurrency} loops; a message is deleted
    once its job is finished and otherwise comes back after the visibility
    timeout. Jobs SQS cannot take wait in memory, bounded, and are retried.

Unlike Sockudo, jobs carry the app id, never the app secret: the sender
looks the app up again when it signs the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = [
    "DRIVERS",
    "SUPPORTED_QUEUE_DRIVERS",
    "IJobQueue",
    "JobHandler",
    "MemoryJobQueue",
    "RedisCommands",
    "RedisJobQueue",
    "UnsupportedQueueDriverError",
    "build_queue",
    "validate_queue_driver",
]

JobHandler = Callable[[str], "Deferred[bool]"]
"""
Delivers one job; fires C{True} when the job is finished, C{False} when it
was abandoned (the node is stopping) and must be delivered later.
"""

SUPPORTED_QUEUE_DRIVERS = ("memory", "redis", "sqs", "none")  # DRIVERS, and "none"


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


class RedisCommands(Protocol):
    """
    The part of a Redis connection the Redis queue and the held webhook
    leaves use: the composition root gives them an
    L{sockudo_tw.adapters._redis_link.RedisLink} (the adapter's client
    stack); any txredisapi connection fits too.
    """

    def execute_command(self, *args: Any) -> Deferred[Any]: ...


QueueFactory = Callable[["ServerConfig", IReactorTime, "RedisConnections"], IJobQueue]
RedisConnections = Callable[[str], RedisCommands]
"""
The composition root's Redis connections: one per URL, shared by whoever
asks for the same URL.
"""


def _memory(config: ServerConfig, reactor: IReactorTime, redis: RedisConnections) -> IJobQueue:
    from sockudo_tw.queues.memory import MemoryJobQueue

    return MemoryJobQueue(reactor)


def _redis(config: ServerConfig, reactor: IReactorTime, redis: RedisConnections) -> IJobQueue:
    from sockudo_tw.queues.redis import RedisJobQueue

    # A worker counts as dead, and its jobs are redelivered, after the
    # cluster's notion of a dead node.
    return RedisJobQueue(
        redis(config.queue.redis_url_override or config.database_redis.url),
        reactor,
        prefix=config.queue.redis_prefix,
        liveness_ttl=config.adapter.cluster_health.node_timeout_ms / 1000,
    )


def _sqs(config: ServerConfig, reactor: IReactorTime, redis: RedisConnections) -> IJobQueue:
    from sockudo_tw.queues.sqs import SqsJobQueue

    # Raises MissingAwsLibraryError (a ConfigError) without boto3.
    return SqsJobQueue(config.queue.sqs, reactor)


DRIVERS: dict[str, QueueFactory] = {"memory": _memory, "redis": _redis, "sqs": _sqs}
"""
C{queue.driver} to the factory building the queue from the config
(C{none}, no webhooks, builds no queue).
"""


def build_queue(config: ServerConfig, reactor: IReactorTime, redis: RedisConnections) -> IJobQueue:
    """
    The queue C{queue.driver} names (not C{none}).
    """
    return DRIVERS[config.queue.driver](config, reactor, redis)


from sockudo_tw.queues.memory import MemoryJobQueue  # noqa: E402 (needs IJobQueue)
from sockudo_tw.queues.redis import RedisJobQueue  # noqa: E402 (needs IJobQueue)
