# -*- test-case-name: tests.test_queue_sqs -*-
"""
The SQS queue driver (C{queue.driver: sqs}): webhook jobs are SQS messages,
so they survive a restart of every node and any node may deliver them.

Queue: C{queue_url_prefix + "webhooks"} (C{"webhooks.fifo"} when C{fifo}),
used as is; without a prefix the queue is looked up by name and created
when missing (a FIFO queue with content-based deduplication; every message
then carries C{message_group_id}).

Producing: L{SqsJobQueue.enqueue} returns at once; jobs are sent in
batches of up to ten (C{SendMessageBatch}). A job SQS cannot take yet (not
started, the queue not resolved, an outage) waits in memory, bounded (see
L{SqsJobQueue}), and is sent again with back-off; the outage is logged
once, and a job is dropped, with an error, only past the bound or when SQS
refuses that very message (too large, for example).

Consuming: C{concurrency} loops, each long-polling C{ReceiveMessage}, hand
each message to the handler. A message is deleted once the handler is
finished with it; a handler failure leaves it, so SQS delivers it again
once its visibility timeout is over (a redrive policy on the queue bounds
how often). While a handler runs, the message's visibility is extended
every half timeout, so a job whose HTTP target is down, and is being
retried by the sender for minutes, is not delivered a second time
meanwhile. A job abandoned because the node is stopping is made visible at
once for another node; a message that is not a job (not JSON text) is
deleted and logged.

Every boto3 call runs in the queue's own thread pool (L{BlockingCalls}),
with short connect and read timeouts and bounded retries.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from sockudo_tw.awscalls import AwsLibraries, BlockingCalls, load_aws_libraries
from sockudo_tw.config.schema import SqsConfig
from sockudo_tw.queues import IJobQueue, JobHandler

__all__ = ["SqsJobQueue", "sqs_client"]

# SendMessageBatch takes at most 10 entries and (AWS's older, smaller
# limit) 256 KiB in all; a larger job goes alone.
_BATCH_ENTRIES = 10
_BATCH_BYTES = 256 * 1024

# Error codes of a send that will fail again however often it is tried:
# a message (or batch) too large or otherwise invalid.
_REFUSED = frozenset(
    {
        "InvalidParameterValue",
        "InvalidMessageContents",
        "BatchRequestTooLong",
        "AWS.SimpleQueueService.BatchRequestTooLong",
        "AWS.SimpleQueueService.InvalidParameterValue",
    }
)

# Error codes of GetQueueUrl for a queue that does not exist (the query
# and the JSON protocols name it differently).
_NO_SUCH_QUEUE = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)

# botocore: a connection is given up after this long; a call after this
# many attempts (the first one included), with botocore's own back-off.
CONNECT_TIMEOUT = 3.0
MAX_ATTEMPTS = 3


def sqs_client(config: SqsConfig, aws: AwsLibraries, max_connections: int = 10) -> Any:
    """
    A boto3 SQS client for C{config}: its region and endpoint, the default
    credential chain, short timeouts (the read timeout outlasts a long
    poll) and bounded retries. Blocking: call it off the reactor thread.
    """
    session = aws.boto3.session.Session()
    return session.client(
        "sqs",
        region_name=config.region,
        endpoint_url=config.endpoint_url,
        config=aws.config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=config.wait_time_seconds + 5,
            retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            max_pool_connections=max_connections,
        ),
    )


@implementer(IJobQueue)
class SqsJobQueue:
    """
    Webhook jobs in an SQS queue, at least once (see the module docstring).

    @ivar queue_name: the queue's name (C{webhooks}, or C{webhooks.fifo}).
    @ivar queue_url: the queue's URL, once resolved.
    """

    _log = Logger()

    def __init__(
        self,
        config: SqsConfig,
        reactor: IReactorTime,
        *,
        queue_name: str = "webhooks",
        client_factory: Callable[[], Any] | None = None,
        max_unsent: int = 10_000,
        max_unsent_bytes: int = 64 * 1024 * 1024,
        retry_initial_delay: float = 0.5,
        retry_max_delay: float = 10.0,
        stop_grace: float = 15.0,
    ) -> None:
        """
        @param config: C{queue.sqs}.
        @param reactor: the reactor (it must take calls from threads).
        @param queue_name: the name without C{.fifo}; Sockudo's is
            C{webhooks} (tests use their own).
        @param client_factory: builds the boto3 client (called once, in a
            pool thread); L{sqs_client} by default.
        @param max_unsent: jobs held in memory while SQS cannot take them;
            past this (or C{max_unsent_bytes}), new jobs are dropped with an
            error.
        @param retry_initial_delay: the first wait, in seconds, after a
            failed call; it doubles up to C{retry_max_delay}.
        @param stop_grace: seconds L{stop} waits for jobs in progress, long
            polls and held jobs.
        @raise sockudo_tw.awscalls.MissingAwsLibraryError: without boto3.
        """
        self._aws = load_aws_libraries("queue.driver: sqs")
        self._config = config
        self._clock = reactor
        self.queue_name = queue_name + (".fifo" if config.fifo else "")
        self.queue_url: str | None = None
        # FIFO: one batch in flight at a time, so jobs keep their order.
        self._max_senders = 1 if config.fifo else 4
        threads = config.concurrency + self._max_senders + 2
        self._calls = BlockingCalls(reactor, "sockudo-tw sqs", threads)
        self._client_factory = client_factory or (
            lambda: sqs_client(config, self._aws, max_connections=threads)
        )
        self._client: Any = None
        self._max_unsent = max_unsent
        self._max_unsent_bytes = max_unsent_bytes
        self._retry_initial = retry_initial_delay
        self._retry_max = retry_max_delay
        self._stop_grace = stop_grace
        self._handler: JobHandler | None = None
        self._outbox: deque[str] = deque()
        self._outbox_bytes = 0
        self._senders: set[Deferred[None]] = set()
        self._send_delay = retry_initial_delay
        self._send_retry: IDelayedCall | None = None
        self._send_outage = False
        self._gave_up = False
        self._singles = 0
        self._receive_outage = False
        self._dropped = 0
        self._loops: list[Deferred[None]] = []
        self._sleeps: set[Deferred[None]] = set()
        self._extenders: set[LoopingCall] = set()
        self._ready: list[Deferred[str]] = []
        self._main: Deferred[None] | None = None
        self._stopping = False
        self._stopped: Deferred[None] | None = None

    # Producing.

    def enqueue(self, job: str) -> None:
        if self._stopped is not None and self._stopped.called:
            self._drop(job, "the SQS queue is stopped")
            return
        size = len(job.encode("utf-8"))
        if (
            len(self._outbox) >= self._max_unsent
            or self._outbox_bytes + size > self._max_unsent_bytes
        ):
            self._drop_unheld(job)
            return
        self._outbox.append(job)
        self._outbox_bytes += size
        self._pump()

    def _drop(self, job: str, why: str) -> None:
        """
        Drop a job SQS refused, or that came after L{stop}: an error.
        """
        self._log.error("webhook job dropped: {why}", why=why, job=job[:200])

    def _drop_unheld(self, job: str) -> None:
        """
        Drop a job past the memory bound: an error naming the bound, with
        the count so far in this outage.
        """
        self._dropped += 1
        self._log.error(
            "webhook job dropped: SQS cannot take jobs and {held} jobs ({held_bytes} "
            "bytes) are held, the limit being {max_jobs} jobs or {max_bytes} bytes; "
            "{dropped} dropped so far",
            held=len(self._outbox),
            held_bytes=self._outbox_bytes,
            max_jobs=self._max_unsent,
            max_bytes=self._max_unsent_bytes,
            dropped=self._dropped,
            job=job[:200],
        )

    def _pump(self) -> None:
        """
        Send held jobs, in batches, while there are some, the queue URL is
        known, no back-off is running and a sender is free.
        """
        while (
            self._outbox
            and self.queue_url is not None
            and self._send_retry is None
            and not self._gave_up
            and len(self._senders) < self._max_senders
            and self._calls.running
        ):
            batch = self._take_batch()
            d = Deferred.fromCoroutine(self._send(batch))
            if not d.called:
                self._senders.add(d)
                d.addBoth(self._sender_done, d)

    def _sender_done(self, result: object, d: Deferred[None]) -> None:
        self._senders.discard(d)
        self._pump()

    def _take_batch(self) -> list[str]:
        batch: list[str] = []
        total = 0
        most = _BATCH_ENTRIES
        if self._singles > 0:  # a batch was refused: find the culprit alone
            self._singles -= 1
            most = 1
        while self._outbox and len(batch) < most:
            size = len(self._outbox[0].encode("utf-8"))
            if batch and total + size > _BATCH_BYTES:
                break
            batch.append(self._outbox.popleft())
            total += size
        self._outbox_bytes -= total
        return batch

    def _put_back(self, jobs: list[str]) -> None:
        """
        Return jobs SQS did not take to the front of the buffer, in order.
        """
        self._outbox.extendleft(reversed(jobs))
        self._outbox_bytes += sum(len(job.encode("utf-8")) for job in jobs)

    async def _send(self, batch: list[str]) -> None:
        url = self.queue_url
        entries: list[dict[str, str]] = []
        for i, job in enumerate(batch):
            entry = {"Id": str(i), "MessageBody": job}
            if self._config.fifo:
                entry["MessageGroupId"] = self._config.message_group_id
            entries.append(entry)
        try:
            result = await self._calls.run(
                self._client.send_message_batch, QueueUrl=url, Entries=entries
            )
        except self._aws.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code not in _REFUSED:
                self._put_back(batch)
                self._send_failed(str(e))
            elif len(batch) == 1:
                self._drop(batch[0], f"SQS refused it ({e})")
            else:
                self._put_back(batch)
                self._singles = len(batch)
            return
        except Exception as e:
            self._put_back(batch)
            self._send_failed(str(e))
            return
        retry: list[str] = []
        for failed in result.get("Failed") or ():
            job = batch[int(failed["Id"])]
            if failed.get("SenderFault"):
                self._drop(job, f"SQS refused it ({failed.get('Code')}: {failed.get('Message')})")
            else:
                retry.append(job)
        if retry:
            self._put_back(retry)
            self._send_failed(f"SQS failed {len(retry)} messages of a batch")
            return
        self._send_delay = self._retry_initial
        if self._send_outage:
            self._send_outage = False
            self._log.info(
                "SQS takes webhook jobs again ({held} still held, {dropped} dropped)",
                held=len(self._outbox),
                dropped=self._dropped,
            )
            self._dropped = 0

    def _send_failed(self, error: str) -> None:
        """
        A send failed: log it once per outage and try again after a
        back-off (held jobs wait in memory meanwhile).
        """
        if not self._send_outage:
            self._send_outage = True
            self._log.warn(
                "SQS cannot take webhook jobs ({error}); holding up to {max_jobs} jobs "
                "({max_bytes} bytes) in memory and retrying",
                error=error,
                max_jobs=self._max_unsent,
                max_bytes=self._max_unsent_bytes,
            )
        if self._stopping:
            self._gave_up = True  # no more tries: stop() counts what is left
            return
        if self._send_retry is not None:
            return
        delay = self._send_delay
        self._send_delay = min(self._retry_max, delay * 2)
        self._send_retry = self._clock.callLater(delay, self._retry_sends)

    def _retry_sends(self) -> None:
        self._send_retry = None
        self._pump()

    # Consuming.

    def start(self, handler: JobHandler) -> None:
        self._handler = handler
        self._calls.start()
        self._main = Deferred.fromCoroutine(self._run())

    def when_ready(self) -> Deferred[str]:
        """
        Fires with the queue URL once it is resolved (at once if it is).
        """
        d: Deferred[str] = Deferred()
        if self.queue_url is not None:
            d.callback(self.queue_url)
        else:
            self._ready.append(d)
        return d

    async def _run(self) -> None:
        """
        Resolve the queue (retrying until SQS answers), then send held jobs
        and start the consumer loops.
        """
        url = await self._resolve()
        if url is None:
            return
        self._log.info(
            "Webhook queue consuming SQS queue {url} with {loops} loops",
            url=self.queue_url,
            loops=self._config.concurrency,
        )
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(url)
        self._pump()
        self._loops = [
            Deferred.fromCoroutine(self._consume()) for _ in range(self._config.concurrency)
        ]

    async def _resolve(self) -> str | None:
        """
        Resolve the queue URL, retrying until SQS answers or the queue
        stops (L{None} then).
        """
        delay = self._retry_initial
        failing = False
        while not self._stopping:
            try:
                if self._client is None:
                    self._client = await self._calls.run(self._client_factory)
                url, created = await self._calls.run(self._queue_url)
            except Exception as e:
                if self._stopping:
                    break
                if not failing:
                    failing = True
                    self._log.warn(
                        "SQS queue {name} cannot be resolved yet ({error}); retrying",
                        name=self.queue_name,
                        error=e,
                    )
                await self._sleep(delay)
                delay = min(self._retry_max, delay * 2)
                continue
            if created:
                self._log.info("created SQS queue {name} ({url})", name=self.queue_name, url=url)
            self.queue_url = url
            return url
        return None

    def _queue_url(self) -> tuple[str, bool]:
        """
        The queue URL, and whether the queue was created (blocking: run in
        the pool).
        """
        prefix = self._config.queue_url_prefix
        if prefix:
            return prefix + self.queue_name, False
        try:
            response = self._client.get_queue_url(QueueName=self.queue_name)
            return str(response["QueueUrl"]), False
        except self._aws.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") not in _NO_SUCH_QUEUE:
                raise
        attributes: dict[str, str] = {}
        if self._config.fifo:
            attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
        response = self._client.create_queue(QueueName=self.queue_name, Attributes=attributes)
        return str(response["QueueUrl"]), True

    async def _consume(self) -> None:
        """
        One consumer loop: long-poll, hand every message of a batch to the
        handler, poll again once they are all finished.
        """
        config = self._config
        delay = self._retry_initial
        while not self._stopping:
            try:
                response = await self._calls.run(
                    self._client.receive_message,
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=config.max_messages,
                    WaitTimeSeconds=config.wait_time_seconds,
                    VisibilityTimeout=config.visibility_timeout,
                )
            except Exception as e:
                if self._stopping:
                    break
                if not self._receive_outage:
                    self._receive_outage = True
                    self._log.warn(
                        "receiving webhook jobs from SQS failed ({error}); retrying", error=e
                    )
                await self._sleep(delay)
                delay = min(self._retry_max, delay * 2)
                continue
            delay = self._retry_initial
            if self._receive_outage:
                self._receive_outage = False
                self._log.info("receiving webhook jobs from SQS again")
            messages = response.get("Messages") or []
            if self._stopping:
                await self._release(messages)
                break
            if messages:
                await DeferredList(
                    [Deferred.fromCoroutine(self._process(m)) for m in messages],
                    consumeErrors=True,
                )
            elif config.wait_time_seconds == 0:
                await self._sleep(1.0)  # short polling: at most once a second

    async def _process(self, message: dict[str, Any]) -> None:
        receipt = message.get("ReceiptHandle")
        body = message.get("Body")
        message_id = message.get("MessageId")
        if not isinstance(receipt, str):
            self._log.error("SQS message {id} without a receipt handle ignored", id=message_id)
            return
        if not _is_job(body):
            self._log.error(
                "malformed webhook job {id} deleted from SQS: {body!r}",
                id=message_id,
                body=str(body)[:200],
            )
            await self._delete(receipt)
            return
        assert self._handler is not None and isinstance(body, str)
        extender = LoopingCall(self._extend, receipt)
        extender.clock = self._clock
        self._extenders.add(extender)
        extender.start(max(0.5, self._config.visibility_timeout / 2), now=False)
        try:
            done = await maybeDeferred(self._handler, body)
        except Exception:
            self._log.failure(
                "webhook job handler failed; SQS delivers message {id} again after its "
                "visibility timeout",
                id=message_id,
            )
            return
        finally:
            self._extenders.discard(extender)
            if extender.running:
                extender.stop()
        if done:
            await self._delete(receipt)
        else:
            # Abandoned (the node is stopping): another node may take it now.
            await self._set_visibility(receipt, 0)

    def _extend(self, receipt: str) -> Deferred[None]:
        """
        Keep a message in progress hidden for another visibility timeout.
        """
        return Deferred.fromCoroutine(
            self._set_visibility(receipt, self._config.visibility_timeout)
        )

    async def _set_visibility(self, receipt: str, seconds: int) -> None:
        try:
            await self._calls.run(
                self._client.change_message_visibility,
                QueueUrl=self.queue_url,
                ReceiptHandle=receipt,
                VisibilityTimeout=seconds,
            )
        except Exception as e:
            self._log.warn(
                "could not set a webhook job's SQS visibility to {seconds} s: {error}",
                seconds=seconds,
                error=e,
            )

    async def _delete(self, receipt: str) -> None:
        try:
            await self._calls.run(
                self._client.delete_message, QueueUrl=self.queue_url, ReceiptHandle=receipt
            )
        except Exception as e:
            self._log.warn(
                "could not delete a finished webhook job from SQS ({error}); it will be "
                "delivered again",
                error=e,
            )

    async def _release(self, messages: Iterable[dict[str, Any]]) -> None:
        """
        Messages received while stopping: visible again at once.
        """
        for message in messages:
            receipt = message.get("ReceiptHandle")
            if isinstance(receipt, str):
                await self._set_visibility(receipt, 0)

    async def _sleep(self, delay: float) -> None:
        sleep = deferLater(self._clock, delay, lambda: None)
        self._sleeps.add(sleep)
        try:
            await sleep
        except CancelledError:
            pass
        finally:
            self._sleeps.discard(sleep)

    # Stopping.

    def stop(self) -> Deferred[None]:
        """
        Stop consuming: wait (at most C{stop_grace} seconds) for jobs in
        progress, long polls and the sending of held jobs, then stop the
        thread pool. Jobs still in progress then are left to SQS, which
        delivers them again after their visibility timeout; held jobs that
        could not be sent are lost, and counted in a warning.
        """
        if self._stopped is None:
            self._stopped = Deferred.fromCoroutine(self._stop())
        return Deferred.fromCoroutine(_wait(self._stopped))

    async def _stop(self) -> None:
        self._stopping = True
        deadline = self._clock.seconds() + self._stop_grace
        for sleep in list(self._sleeps):
            sleep.cancel()
        if self._send_retry is not None and self._send_retry.active():
            self._send_retry.cancel()
        self._send_retry = None
        self._pump()  # one last try for held jobs, alongside the work in progress
        while True:
            main = [self._main] if self._main is not None else []
            busy = [d for d in (*main, *self._loops, *self._senders) if not d.called]
            if not busy:
                break
            remaining = deadline - self._clock.seconds()
            # A Deferred of our own: a timeout must not cancel the work.
            everything: Deferred[None] = Deferred()
            DeferredList(busy, consumeErrors=True).addBoth(_fire_with, everything)
            everything.addTimeout(max(0.0, remaining), self._clock)
            try:
                await everything
            except Exception:
                self._log.warn(
                    "SQS webhook queue still busy {grace} s after stopping; jobs in "
                    "progress are delivered again after their visibility timeout",
                    grace=self._stop_grace,
                )
                break
        for extender in list(self._extenders):
            if extender.running:
                extender.stop()
        self._extenders.clear()
        if self._outbox:
            self._log.warn(
                "{count} webhook jobs lost at shutdown: SQS did not take them",
                count=len(self._outbox),
            )
        await self._calls.stop(max(1.0, deadline - self._clock.seconds()))


def _fire_with(result: object, d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


async def _wait(d: Deferred[None]) -> None:
    await d


def _is_job(body: object) -> bool:
    """
    Whether a message body can be a job: JSON text of an object.
    """
    if not isinstance(body, str):
        return False
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False
