"""
Tests for L{sockudo_tw.queues.sqs}: the SQS webhook queue against moto's
server mode on a loopback port (L{tests.moto_harness}; required when
C{CI=true}, skipped with a message otherwise).

Each test uses its own queue name and deletes its queues in cleanup. Waits
are on events, or polls with a bound where SQS state must be read back.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.protocols import portforward
from twisted.python import threadable
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sockudo_tw.awscalls import MissingAwsLibraryError, load_aws_libraries
from sockudo_tw.config import ServerConfig
from sockudo_tw.config.schema import QueueConfig, SqsConfig
from sockudo_tw.queues import (
    DRIVERS,
    SUPPORTED_QUEUE_DRIVERS,
    IJobQueue,
    build_queue,
    validate_queue_driver,
)
from sockudo_tw.queues.sqs import SqsJobQueue, sqs_client
from tests.moto_harness import MOTO_REGION, start_moto, use_aws_test_env


def job(n: int) -> str:
    """
    A job as the webhook code queues them: JSON text of an object.
    """
    return json.dumps({"n": n, "id": uuid.uuid4().hex})


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    """
    Wait until C{check()} is true, polling every 50 ms, for at most
    C{within} seconds.
    """
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await deferLater(reactor, 0.05, lambda: None)


async def within(d: Deferred[Any], seconds: float) -> Any:
    """
    The result of C{d}, failing the test if it takes more than C{seconds}.
    """
    d.addTimeout(seconds, reactor)
    return await d


@implementer(ILogObserver)
@attrs.define
class LogRecorder:
    """
    Keeps the text of every log event (of any namespace) while a test runs.
    """

    texts: list[str] = attrs.Factory(list)

    def __call__(self, event: LogEvent) -> None:
        self.texts.append(formatEvent(event) or "")

    def saw(self, fragment: str) -> bool:
        """
        Whether some event's text contains C{fragment}.
        """
        return any(fragment in text for text in self.texts)


@attrs.define
class Handler:
    """
    A job handler that records jobs and answers with C{answers} in turn
    (then C{True}); an answer may be a Deferred, an exception, or a bool.
    """

    answers: list[Any] = attrs.Factory(list)
    jobs: list[str] = attrs.Factory(list)
    threads: list[bool] = attrs.Factory(list)
    arrived: list[Deferred[None]] = attrs.Factory(list)

    def __call__(self, body: str) -> Deferred[bool]:
        self.jobs.append(body)
        self.threads.append(threadable.isInIOThread())
        waiting, self.arrived = self.arrived, []
        for d in waiting:
            d.callback(None)
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(bool(answer))

    def next_job(self) -> Deferred[None]:
        """
        Fires when the handler is next called.
        """
        d: Deferred[None] = Deferred()
        self.arrived.append(d)
        return d


class _TrackedProxyServer(portforward.ProxyServer):
    """
    A proxied connection its factory can cut.
    """

    def connectionMade(self) -> None:
        self.factory.open.add(self)  # type: ignore[attr-defined]
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class Outage:
    """
    A TCP proxy in front of moto that can be taken down (stop listening and
    cut every connection: calls see "connection refused") and brought back
    on the same port.
    """

    def __init__(self, host: str, port: int) -> None:
        factory: Any = portforward.ProxyFactory(host, port)
        factory.protocol = _TrackedProxyServer
        factory.open = set()
        self.factory = factory
        listening: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port: IListeningPort | None = listening
        self.number: int = listening.getHost().port

    @property
    def url(self) -> str:
        """
        The proxy's endpoint URL.
        """
        return f"http://127.0.0.1:{self.number}"

    def down(self) -> Deferred[None]:
        """
        Stop listening and cut the connections.
        """
        port, self.port = self.port, None
        for server in list(self.factory.open):
            server.transport.abortConnection()
            if server.peer is not None:
                server.peer.transport.abortConnection()
        return port.stopListening() if port is not None else succeed(None)  # type: ignore[return-value]

    def up(self) -> None:
        """
        Listen again on the same port.
        """
        self.port = reactor.listenTCP(self.number, self.factory, interface="127.0.0.1")

    def close(self) -> Deferred[None]:
        """
        Cleanup: down, whatever the state.
        """
        return self.down()


class SqsJobQueueTests(TestCase):
    """
    L{SqsJobQueue} against moto: queue resolution, delivery, deletion,
    redelivery, outages and stopping.
    """

    timeout = 90

    def setUp(self) -> None:
        self.endpoint = start_moto(self)
        use_aws_test_env(self)
        self.aws = load_aws_libraries("tests")
        self.sqs = self.aws.boto3.session.Session().client(
            "sqs", endpoint_url=self.endpoint, region_name=MOTO_REGION
        )
        self.name = f"t{uuid.uuid4().hex[:16]}"
        self.calls: list[tuple[str, dict[str, Any], bool]] = []
        self.logs = LogRecorder()
        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)
        self.addCleanup(self.delete_queues)

    def delete_queues(self) -> None:
        """
        Delete every queue of this test.
        """
        listed = self.sqs.list_queues(QueueNamePrefix=self.name)
        for url in listed.get("QueueUrls", []):
            self.sqs.delete_queue(QueueUrl=url)

    def make_queue(self, endpoint: str | None = None, **options: Any) -> SqsJobQueue:
        """
        A queue of this test on moto (or on C{endpoint}), with short polls
        and back-offs; every boto3 call it makes is recorded in
        C{self.calls} with whether it ran on the reactor thread.
        """
        settings: dict[str, Any] = {
            "region": MOTO_REGION,
            "endpoint_url": endpoint or self.endpoint,
            "wait_time_seconds": 1,
            "visibility_timeout": 5,
            "concurrency": 2,
        }
        for key in list(options):
            if key in attrs.fields_dict(SqsConfig):
                settings[key] = options.pop(key)
        config = SqsConfig(**settings)
        queue_options: dict[str, Any] = {
            "queue_name": self.name,
            "retry_initial_delay": 0.1,
            "retry_max_delay": 0.5,
            "stop_grace": 5.0,
        }
        queue_options.update(options)

        def client() -> Any:
            made = sqs_client(config, self.aws)
            self.calls.append(("client", {}, threadable.isInIOThread()))

            def record(params: dict[str, Any], model: Any, **kwargs: Any) -> None:
                self.calls.append((model.name, dict(params), threadable.isInIOThread()))

            made.meta.events.register("provide-client-params.sqs", record)
            return made

        queue = SqsJobQueue(config, reactor, client_factory=client, **queue_options)
        self.addCleanup(queue.stop)
        return queue

    def operations(self) -> list[str]:
        """
        The names of the boto3 operations the queue called so far.
        """
        return [name for name, _, _ in self.calls]

    def counts(self, url: str) -> tuple[int, int]:
        """
        Visible and in-flight messages of a queue.
        """
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    async def test_creates_missing_queue(self) -> None:
        """
        Without a prefix, a missing queue is created (after a failed
        lookup); a job enqueued reaches the handler and is deleted once
        the handler is finished.
        """
        queue = self.make_queue()
        self.assertTrue(verifyObject(IJobQueue, queue))
        handler = Handler()
        queue.start(handler)
        url = await within(queue.when_ready(), 15)
        self.assertEqual(self.sqs.get_queue_url(QueueName=self.name)["QueueUrl"], url)
        self.assertEqual(self.operations()[:3], ["client", "GetQueueUrl", "CreateQueue"])
        self.assertTrue(self.logs.saw(f"created SQS queue {self.name}"))
        sent = job(1)
        arrived = handler.next_job()
        queue.enqueue(sent)
        await within(arrived, 15)
        self.assertEqual(handler.jobs, [sent])
        await eventually(lambda: "DeleteMessage" in self.operations())
        await eventually(lambda: self.counts(url) == (0, 0), within=15)

    async def test_looks_up_existing_queue(self) -> None:
        """
        An existing queue is found by name and not created again.
        """
        url = self.sqs.create_queue(QueueName=self.name)["QueueUrl"]
        queue = self.make_queue()
        queue.start(Handler())
        self.assertEqual(await within(queue.when_ready(), 15), url)
        self.assertIn("GetQueueUrl", self.operations())
        self.assertNotIn("CreateQueue", self.operations())

    async def test_prefix_url(self) -> None:
        """
        With C{queue_url_prefix}, the queue URL is the prefix and the name
        (Sockudo's C{webhooks}), used without any lookup.
        """
        own = f"{self.name}-webhooks"
        url = self.sqs.create_queue(QueueName=own)["QueueUrl"]
        prefix = url[: -len("webhooks")]
        queue = self.make_queue(queue_url_prefix=prefix, queue_name="webhooks")
        self.assertEqual(queue.queue_name, "webhooks")
        handler = Handler()
        queue.start(handler)
        self.assertEqual(await within(queue.when_ready(), 15), url)
        arrived = handler.next_job()
        queue.enqueue(job(1))
        await within(arrived, 15)
        self.assertNotIn("GetQueueUrl", self.operations())
        self.assertNotIn("CreateQueue", self.operations())
        self.assertTrue(
            all(params.get("QueueUrl", url) == url for _, params, _ in self.calls),
            self.calls,
        )

    async def test_fifo(self) -> None:
        """
        With C{fifo}, the queue is C{<name>.fifo}, created as a FIFO queue
        with content-based deduplication; every message carries the
        configured group id and jobs arrive in order.
        """
        queue = self.make_queue(fifo=True, message_group_id="group-7")
        self.assertEqual(queue.queue_name, self.name + ".fifo")
        handler = Handler()
        queue.start(handler)
        url = await within(queue.when_ready(), 15)
        self.assertTrue(url.endswith(self.name + ".fifo"))
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        self.assertEqual(attributes["Attributes"]["FifoQueue"], "true")
        self.assertEqual(attributes["Attributes"]["ContentBasedDeduplication"], "true")
        sent = [job(i) for i in range(5)]
        for each in sent:
            queue.enqueue(each)
        await eventually(lambda: len(handler.jobs) == 5, within=15)
        self.assertEqual(handler.jobs, sent)
        batches = [params for name, params, _ in self.calls if name == "SendMessageBatch"]
        self.assertTrue(batches)
        for params in batches:
            for entry in params["Entries"]:
                self.assertEqual(entry["MessageGroupId"], "group-7")

    async def test_redelivery_after_failure(self) -> None:
        """
        A job whose handler fails is left in SQS and delivered again once
        its visibility timeout is over; it is deleted when a later delivery
        succeeds.
        """
        queue = self.make_queue(visibility_timeout=1)
        handler = Handler(answers=[RuntimeError("target exploded")])
        queue.start(handler)
        url = await within(queue.when_ready(), 15)
        sent = job(1)
        queue.enqueue(sent)
        await eventually(lambda: len(handler.jobs) >= 2, within=15)
        self.assertEqual(handler.jobs[:2], [sent, sent])
        self.assertEqual(
            self.flushLoggedErrors(RuntimeError)[0].getErrorMessage(), "target exploded"
        )
        await eventually(lambda: "DeleteMessage" in self.operations())
        await eventually(lambda: self.counts(url) == (0, 0), within=15)
        self.assertEqual(len(handler.jobs), 2)

    async def test_visibility_extended_while_handling(self) -> None:
        """
        While a handler runs longer than the visibility timeout, the
        message stays hidden (no second delivery) and is deleted once the
        handler is finished.
        """
        queue = self.make_queue(visibility_timeout=1)
        finished: Deferred[bool] = Deferred()
        handler = Handler(answers=[finished])
        queue.start(handler)
        url = await within(queue.when_ready(), 15)
        arrived = handler.next_job()
        queue.enqueue(job(1))
        await within(arrived, 15)
        await deferLater(reactor, 2.5, lambda: None)
        self.assertEqual(len(handler.jobs), 1)
        self.assertIn("ChangeMessageVisibility", self.operations())
        finished.callback(True)
        await eventually(lambda: "DeleteMessage" in self.operations())
        await eventually(lambda: self.counts(url) == (0, 0), within=15)

    async def test_malformed_deleted(self) -> None:
        """
        A message that is not a job (not JSON text of an object) is deleted
        and logged without reaching the handler.
        """
        url = self.sqs.create_queue(QueueName=self.name)["QueueUrl"]
        self.sqs.send_message(QueueUrl=url, MessageBody="this is not json")
        self.sqs.send_message(QueueUrl=url, MessageBody="[1, 2]")
        good = job(1)
        self.sqs.send_message(QueueUrl=url, MessageBody=good)
        queue = self.make_queue()
        handler = Handler()
        queue.start(handler)
        await eventually(lambda: self.operations().count("DeleteMessage") >= 3, within=15)
        self.assertEqual(handler.jobs, [good])
        # The hook records a delete as it is sent: wait for SQS to have done it.
        await eventually(lambda: self.counts(url) == (0, 0), within=15)
        self.assertTrue(self.logs.saw("malformed webhook job"))
        self.assertTrue(self.logs.saw("this is not json"))

    async def test_refused_job_dropped(self) -> None:
        """
        A job SQS refuses on its own merits (larger than the queue's largest
        message) is dropped with an error, and blocks neither the jobs
        queued around it nor the queue.
        """
        queue = self.make_queue()
        handler = Handler()
        queue.start(handler)
        await within(queue.when_ready(), 15)
        small = [job(1), job(2)]
        huge = json.dumps({"n": 0, "pad": "x" * (1024 * 1024 + 10)})
        queue.enqueue(small[0])
        queue.enqueue(huge)
        queue.enqueue(small[1])
        await eventually(lambda: len(handler.jobs) == 2, within=15)
        self.assertEqual(sorted(handler.jobs), sorted(small))
        dropped = [t for t in self.logs.texts if "webhook job dropped: SQS refused it" in t]
        self.assertEqual(len(dropped), 1, self.logs.texts)
        self.assertFalse(self.logs.saw("SQS cannot take webhook jobs"))

    async def test_outage(self) -> None:
        """
        A job enqueued while SQS cannot be reached is held, the outage is
        logged once, and the job is sent and delivered when SQS is back.
        """
        host, port = self.endpoint.removeprefix("http://").split(":")
        outage = Outage(host, int(port))
        self.addCleanup(outage.close)
        queue = self.make_queue(endpoint=outage.url)
        handler = Handler()
        queue.start(handler)
        url = await within(queue.when_ready(), 15)
        await outage.down()
        sent = [job(1), job(2)]
        for each in sent:
            queue.enqueue(each)
        await eventually(lambda: self.logs.saw("SQS cannot take webhook jobs"), within=20)
        await eventually(lambda: self.logs.saw("receiving webhook jobs from SQS failed"), within=20)
        self.assertEqual(handler.jobs, [])
        outage.up()
        await eventually(lambda: len(handler.jobs) == 2, within=30)
        self.assertEqual(sorted(handler.jobs), sorted(sent))
        await eventually(lambda: self.counts(url) == (0, 0))
        warnings = [t for t in self.logs.texts if "SQS cannot take webhook jobs" in t]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertTrue(self.logs.saw("SQS takes webhook jobs again"))
        self.assertTrue(self.logs.saw("receiving webhook jobs from SQS again"))

    async def test_stop_bounded(self) -> None:
        """
        L{SqsJobQueue.stop} returns within its grace even when a handler
        never finishes; that job is not deleted, so SQS delivers it again.
        """
        queue = self.make_queue(visibility_timeout=1, stop_grace=1.0)
        handler = Handler(answers=[Deferred()])
        queue.start(handler)
        url = await within(queue.when_ready(), 15)
        arrived = handler.next_job()
        queue.enqueue(job(1))
        await within(arrived, 15)
        started = time.monotonic()
        await within(queue.stop(), 10)
        self.assertLess(time.monotonic() - started, 3.5)
        self.assertTrue(self.logs.saw("still busy"))
        self.assertNotIn("DeleteMessage", self.operations())
        again = self.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)
        self.assertEqual(len(again.get("Messages", [])), 1)

    async def test_stop_idle(self) -> None:
        """
        An idle queue (its loops in long polls) stops within about one poll.
        """
        queue = self.make_queue(wait_time_seconds=2)
        queue.start(Handler())
        await within(queue.when_ready(), 15)
        await deferLater(reactor, 0.3, lambda: None)
        started = time.monotonic()
        await within(queue.stop(), 10)
        self.assertLess(time.monotonic() - started, 4.0)
        self.assertFalse(self.logs.saw("still busy"))

    async def test_no_call_on_reactor_thread(self) -> None:
        """
        The client is made and every boto3 call runs in the queue's pool,
        never on the reactor thread; the handler runs on the reactor thread.
        """
        queue = self.make_queue()
        handler = Handler()
        queue.start(handler)
        await within(queue.when_ready(), 15)
        arrived = handler.next_job()
        queue.enqueue(job(1))
        await within(arrived, 15)
        await eventually(lambda: "DeleteMessage" in self.operations())
        await queue.stop()
        names = set(self.operations())
        for name in ("client", "GetQueueUrl", "SendMessageBatch", "ReceiveMessage"):
            self.assertIn(name, names)
        self.assertEqual([c for c in self.calls if c[2]], [])
        self.assertEqual(handler.threads, [True])


class SqsDriverTests(SynchronousTestCase):
    """
    The C{sqs} driver's registration, its start-up error without boto3, and
    the bounded buffer of jobs SQS has not taken.
    """

    def config(self, **sqs: Any) -> ServerConfig:
        """
        A server config with C{queue.driver: sqs}.
        """
        return ServerConfig(queue=QueueConfig(driver="sqs", sqs=SqsConfig(**sqs)))

    def test_registered(self) -> None:
        """
        C{sqs} is a supported driver building an L{SqsJobQueue} on the
        queue named C{webhooks} (C{webhooks.fifo} with C{fifo}).
        """
        validate_queue_driver("sqs")
        self.assertIn("sqs", SUPPORTED_QUEUE_DRIVERS)
        self.assertIn("sqs", DRIVERS)
        queue = build_queue(self.config(), reactor, lambda url: None)  # type: ignore[arg-type, return-value]
        self.assertIsInstance(queue, SqsJobQueue)
        assert isinstance(queue, SqsJobQueue)
        self.assertEqual(queue.queue_name, "webhooks")
        fifo = build_queue(self.config(fifo=True), reactor, lambda url: None)  # type: ignore[arg-type, return-value]
        assert isinstance(fifo, SqsJobQueue)
        self.assertEqual(fifo.queue_name, "webhooks.fifo")

    def test_missing_boto3(self) -> None:
        """
        Without boto3, building the queue fails with a config error naming
        the pip extra.
        """
        saved = sys.modules.get("boto3")
        sys.modules["boto3"] = None  # type: ignore[assignment]

        def restore() -> None:
            if saved is None:
                sys.modules.pop("boto3", None)
            else:
                sys.modules["boto3"] = saved

        self.addCleanup(restore)
        e = self.assertRaises(
            MissingAwsLibraryError, build_queue, self.config(), reactor, lambda url: None
        )
        self.assertIn("pip install 'sockudo-tw[aws]'", str(e))
        self.assertIn("queue.driver: sqs", str(e))

    def test_buffer_bound(self) -> None:
        """
        Jobs SQS has not taken (here: the queue is not started) are held up
        to the bound; past it they are dropped with an error naming it.
        """
        logs = LogRecorder()
        globalLogPublisher.addObserver(logs)
        self.addCleanup(globalLogPublisher.removeObserver, logs)
        queue = SqsJobQueue(SqsConfig(), reactor, max_unsent=2)
        for n in range(3):
            queue.enqueue(job(n))
        dropped = [t for t in logs.texts if "webhook job dropped" in t]
        self.assertEqual(len(dropped), 1)
        self.assertIn("the limit being 2 jobs", dropped[0])
        small = SqsJobQueue(SqsConfig(), reactor, max_unsent_bytes=100)
        small.enqueue(job(1))
        small.enqueue("x" * 100)
        self.assertEqual(len([t for t in logs.texts if "webhook job dropped" in t]), 2)
