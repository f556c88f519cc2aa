"""
Webhooks end to end over real loopback HTTP: a C{twisted.web} receiver on
127.0.0.1 (port 0) checks what real treq sends. The sink runs on a L{Clock}
so the batching window and the 3 s leave delay are stepped, not waited for.
The Redis tests use the server on 127.0.0.1:6379 (required when C{CI=true})
and a worker process killed with SIGKILL mid-delivery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import pusher
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

import sockudo_tw
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.config import AdapterConfig, AppManagerConfig, QueueConfig, ServerConfig
from sockudo_tw.pusher.app import App, WebhookTarget
from sockudo_tw.pusher.signing import channel_string_to_sign, token
from sockudo_tw.queues import IJobQueue, MemoryJobQueue, RedisJobQueue
from sockudo_tw.service import build_webhooks
from sockudo_tw.webhooks import (
    RedisPendingLeaves,
    WebhookEvents,
    WebhookSender,
    WebhookSettings,
)
from tests.interop_harness import ServerProcess, app_config
from tests.test_queue import connect_redis, eventually, require_redis, true
from tests.test_webhooks import RecordingQueue

ALL = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
)
HANG = 0
"""
A scripted status meaning "never answer this request".
"""

CHILD_WORKER = """
import json, sys
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import Agent
import txredisapi
from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.config import AdapterConfig, AppManagerConfig, QueueConfig, ServerConfig
from sockudo_tw.pusher.app import App, WebhookTarget
from sockudo_tw.pusher.signing import channel_string_to_sign, token
from sockudo_tw.queues import RedisJobQueue
from sockudo_tw.webhooks import WebhookSender

prefix, app_id, key, secret, url = sys.argv[1:6]
app = App(id=app_id, key=key, secret=secret, webhooks=(WebhookTarget(url=url, event_types=()),))

async def main():
    redis = await txredisapi.Connection("127.0.0.1", 6379, reconnect=False, convertNumbers=False)
    queue = RedisJobQueue(redis, reactor, prefix=prefix, liveness_ttl=1.0, poll_interval=0.05)
    sender = WebhookSender(MemoryAppStore([app]), HTTPClient(Agent(reactor)), reactor)
    def handler(job):
        print("taken", queue.worker_id, flush=True)
        return sender.deliver(job)
    queue.start(handler)

Deferred.fromCoroutine(main()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
reactor.callLater(60, reactor.stop)
reactor.run()
"""


def read(path: Path) -> str:
    """
    The text of a small file.
    """
    return path.read_text()


class Receiver(Resource):
    """
    A webhook endpoint that records each POST and answers with the next
    scripted status (200 once the script is used up; L{HANG} never answers).
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, *script: int) -> None:
        super().__init__()
        self.script = list(script)
        self.requests: list[tuple[dict[str, list[str]], bytes]] = []
        self.hung: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None
        body = request.content.read()
        headers = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((headers, body))
        code = self.script.pop(0) if self.script else 200
        if code == HANG:
            self.hung.append(request)
            return NOT_DONE_YET
        request.setResponseCode(code)
        return b"{}"


class WebhookIntegrationTests(TestCase):
    """
    Sink, queue and sender against a real HTTP receiver.
    """

    def setUp(self) -> None:
        self.app = App(
            id="42",
            key="278d425bdf160c739803",
            secret="7ad3773142a6692b25b8",
            webhooks=(),
        )
        self.sink_clock = Clock()
        self.sink_clock.advance(time.time())
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    def listen(self, *script: int) -> Receiver:
        """
        Start a receiver on 127.0.0.1:0 and point the app's webhook at it.
        """
        receiver = Receiver(*script)
        port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/webhook"
        target = WebhookTarget(url=url, event_types=ALL, headers={"X-Env": "test"})
        self.app = App(id=self.app.id, key=self.app.key, secret=self.app.secret, webhooks=(target,))
        self.store = MemoryAppStore([self.app])
        return receiver

    def pipeline(self, queue: IJobQueue | None = None, **settings: Any) -> WebhookEvents:
        """
        A sink on the test clock feeding C{queue} (a memory queue on the
        reactor by default), consumed by a treq sender with short retries.
        """
        settings.setdefault("retry_initial_delay", 0.05)
        settings.setdefault("retry_max_delay", 0.2)
        webhook_settings = WebhookSettings(**settings)
        if queue is None:
            queue = MemoryJobQueue(reactor)
        self.queue = queue
        sender = WebhookSender(self.store, self.http, reactor, webhook_settings)
        # Each job's outcome, once the sender is done with it (delivered or
        # given up): after that it sends nothing more for that job, so a
        # test waits on this instead of sleeping before a negative check.
        self.handed: list[str] = []
        self.finished: DeferredQueue[bool] = DeferredQueue()

        def deliver(job: str) -> Deferred[bool]:
            self.handed.append(job)
            d = sender.deliver(job)

            def record(done: bool) -> bool:
                self.finished.put(done)
                return done

            return d.addCallback(record)

        queue.start(deliver)

        def stop() -> Deferred[None]:
            sender.stop()
            return queue.stop()

        self.addCleanup(stop)
        return WebhookEvents(self.store, queue, self.sink_clock, webhook_settings)

    def queued(self) -> int:
        """
        Jobs in the pipeline's memory queue, waiting or being delivered.
        """
        assert isinstance(self.queue, MemoryJobQueue)
        return self.queue.depth()

    def verified(self, receiver: Receiver, index: int = 0) -> dict[str, Any]:
        """
        Check request C{index} as pusher-http-python does (key, signature,
        C{time_ms} within 5 minutes) and as pusher-http-node does (the exact
        content type); return its body.
        """
        headers, body = receiver.requests[index]
        self.assertEqual(headers["content-type"], ["application/json"])
        self.assertEqual(headers["x-env"], ["test"])
        client = pusher.Pusher(app_id=self.app.id, key=self.app.key, secret=self.app.secret)
        data = client.validate_webhook(
            headers["x-pusher-key"][0], headers["x-pusher-signature"][0], body
        )
        self.assertIsNotNone(data, "signature, key or time_ms refused")
        return dict(data)

    async def test_signed_batched_delivery(self) -> None:
        """
        Events within the batching window arrive as one signed POST.
        """
        receiver = self.listen()
        sink = self.pipeline()
        sink.channel_occupied("42", "private-a")
        sink.client_event("42", "private-a", "client-typing", '{"on":true}', "1.2", None)
        self.sink_clock.advance(0.05)
        await eventually(lambda: true(len(receiver.requests) == 1))
        body = self.verified(receiver)
        self.assertEqual([e["name"] for e in body["events"]], ["channel_occupied", "client_event"])
        self.assertEqual(body["events"][1]["data"], '{"on":true}')

    async def test_leave_delay_and_cancellation(self) -> None:
        """
        A vacated channel is reported after the 3 s delay; one re-occupied
        within the delay (a reload) is not reported at all.
        """
        receiver = self.listen()
        sink = self.pipeline()
        sink.channel_vacated("42", "gone")
        sink.channel_vacated("42", "reloaded")
        self.sink_clock.advance(1)
        sink.channel_occupied("42", "reloaded")
        self.sink_clock.advance(1.99)
        # Nothing was queued (the sink enqueues synchronously on its clock).
        self.assertEqual((self.queued(), self.handed), (0, []))
        self.assertEqual(receiver.requests, [])
        self.sink_clock.advance(0.01)
        self.sink_clock.advance(0.05)
        await eventually(lambda: true(len(receiver.requests) == 1))
        self.assertEqual(
            self.verified(receiver)["events"], [{"name": "channel_vacated", "channel": "gone"}]
        )
        self.assertTrue(await self.finished.get())
        self.sink_clock.advance(10)
        self.assertEqual((self.queued(), len(self.handed)), (0, 1))
        self.assertEqual(len(receiver.requests), 1)

    async def test_retries_until_success(self) -> None:
        """
        A receiver failing twice with 503 gets the same signed body a third
        time, and no more.
        """
        receiver = self.listen(503, 503)
        sink = self.pipeline()
        sink.member_added("42", "presence-a", "u1")
        self.sink_clock.advance(0.05)
        await eventually(lambda: true(len(receiver.requests) == 3))
        bodies = {body for _, body in receiver.requests}
        self.assertEqual(len(bodies), 1)
        self.verified(receiver, 2)
        self.assertTrue(await self.finished.get())  # the job is done: no more tries
        self.assertEqual(len(receiver.requests), 3)

    async def test_timeout_retried(self) -> None:
        """
        A request the receiver never answers times out and is sent again.
        """
        receiver = self.listen(HANG)
        sink = self.pipeline(request_timeout=0.3)
        sink.cache_miss("42", "cache-a")
        self.sink_clock.advance(0.05)
        await eventually(lambda: true(len(receiver.requests) == 2))
        self.verified(receiver, 1)

    async def test_no_retry_on_400(self) -> None:
        """
        A 400 answer is final: exactly one request.
        """
        receiver = self.listen(400)
        sink = self.pipeline()
        sink.channel_occupied("42", "a")
        self.sink_clock.advance(0.05)
        await eventually(lambda: true(len(receiver.requests) == 1))
        self.assertTrue(await self.finished.get())  # given up: no retry
        self.assertEqual(len(receiver.requests), 1)


class RedisDurabilityTests(TestCase):
    """
    The Redis queue keeps webhook jobs across a worker's death.
    """

    setUp = WebhookIntegrationTests.setUp
    listen = WebhookIntegrationTests.listen
    verified = WebhookIntegrationTests.verified

    async def redis_setup(self) -> None:
        """
        Require Redis and connect under a per-test prefix.
        """
        require_redis(self)
        self.prefix = f"sockudo_tw_test_{uuid.uuid4().hex}"
        self.redis = await connect_redis(self)

    def worker(self, **kwargs: Any) -> RedisJobQueue:
        """
        A Redis worker delivering with treq, stopped after the test.
        """
        queue = RedisJobQueue(self.redis, reactor, prefix=self.prefix, poll_interval=0.05, **kwargs)
        sender = WebhookSender(self.store, self.http, reactor)
        queue.start(sender.deliver)

        def stop() -> Deferred[None]:
            sender.stop()
            return queue.stop()

        self.addCleanup(stop)
        return queue

    async def test_job_of_dead_worker_delivered(self) -> None:
        """
        A job built by the sink and left unacknowledged in a dead worker's
        processing list is delivered, signed, by a new worker.
        """
        await self.redis_setup()
        receiver = self.listen()
        accepted = RedisJobQueue(self.redis, reactor, prefix=self.prefix, worker_id="dead")
        sink = WebhookEvents(self.store, accepted, self.sink_clock)
        sink.channel_occupied("42", "durable")
        self.sink_clock.advance(0.05)
        await eventually(lambda: self._llen(accepted.queue_key, 1))
        # The dead worker had taken the job and registered, then died.
        await self.redis.execute_command(
            "LMOVE", accepted.queue_key, accepted.processing_key, "RIGHT", "LEFT"
        )
        await self.redis.execute_command("SADD", accepted.queue_key + ":workers", "dead")
        self.worker()
        await eventually(lambda: true(len(receiver.requests) == 1))
        self.assertEqual(
            self.verified(receiver)["events"], [{"name": "channel_occupied", "channel": "durable"}]
        )
        await eventually(lambda: self._llen(accepted.processing_key, 0))

    async def _llen(self, key: str, expected: int) -> bool:
        return int(await self.redis.execute_command("LLEN", key)) == expected

    def spawn_worker(self, url: str) -> tuple[subprocess.Popen[bytes], Path]:
        """
        Start a worker process (a Redis queue and a treq sender, as the
        daemon builds them) whose output goes to a file.
        """
        root = str(Path(sockudo_tw.__file__).resolve().parent.parent)
        out = Path(self.mktemp())
        with out.open("w") as stdout:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CHILD_WORKER,
                    self.prefix,
                    self.app.id,
                    self.app.key,
                    self.app.secret,
                    url,
                ],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": root},
                cwd=root,
            )
        return child, out

    async def test_sigkill_mid_delivery(self) -> None:
        """
        A worker process killed with SIGKILL while its request hangs leaves
        the job in Redis; a new worker delivers it once the dead worker's
        liveness key expires.
        """
        await self.redis_setup()
        receiver = self.listen(HANG)
        url = self.app.webhooks[0].url
        assert url is not None
        child, out = self.spawn_worker(url)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        accepted = RedisJobQueue(self.redis, reactor, prefix=self.prefix)
        sink = WebhookEvents(self.store, accepted, self.sink_clock)
        sink.member_removed("42", "presence-room", "u7")
        self.sink_clock.advance(3)
        self.sink_clock.advance(0.05)
        await eventually(lambda: true(len(receiver.requests) == 1), within=15)
        self.assertIn("taken", read(out))
        os.kill(child.pid, signal.SIGKILL)
        self.assertEqual(child.wait(timeout=10), -signal.SIGKILL)
        processing = f"{self.prefix}:queue:webhooks:processing:{read(out).split()[1]}"
        self.assertTrue(await self._llen(processing, 1))
        self.worker(liveness_ttl=1.0)
        await eventually(lambda: true(len(receiver.requests) == 2), within=10)
        self.assertEqual(receiver.requests[0][1], receiver.requests[1][1])
        self.assertEqual(
            self.verified(receiver, 1)["events"],
            [{"name": "member_removed", "channel": "presence-room", "user_id": "u7"}],
        )
        await eventually(lambda: self._llen(processing, 0))

    async def test_built_from_config(self) -> None:
        """
        C{queue.driver: redis} from the config gives a daemon-shaped pipeline
        (one Redis link for the queue and the held leaves, treq with a
        connection pool) that delivers a signed webhook through Redis and
        leaves no job behind; with the Redis adapter, held leaves are kept
        in Redis.
        """
        await self.redis_setup()
        receiver = self.listen()
        config = attrs.evolve(
            ServerConfig(),
            queue=QueueConfig(
                driver="redis",
                redis_prefix=self.prefix,
                redis_url_override="redis://127.0.0.1:6379/0",
            ),
            app_manager=AppManagerConfig(apps=(self.app,)),
            adapter=AdapterConfig(
                driver="redis",
                redis_prefix=self.prefix + ":",
                redis_url="redis://127.0.0.1:6379/0",
            ),
        )
        parts = build_webhooks(config, reactor, self.store)
        assert isinstance(parts.events, WebhookEvents)
        self.assertIsInstance(parts.events.pending, RedisPendingLeaves)
        assert parts.service is not None
        service = parts.service
        service.startService()

        async def stop() -> None:
            await service.stopService()
            await parts.close()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        parts.events.channel_occupied("42", "from-config")
        await eventually(lambda: true(len(receiver.requests) == 1))
        self.assertEqual(
            self.verified(receiver)["events"],
            [{"name": "channel_occupied", "channel": "from-config"}],
        )
        await eventually(lambda: self._llen(f"{self.prefix}:queue:webhooks", 0))
        parts.events.channel_vacated("42", "from-config")
        hold = f"{self.prefix}:webhook_hold:vacated\x0042\x00from-config"

        async def held() -> bool:
            return bool(await self.redis.execute_command("EXISTS", hold))

        await eventually(held)


class OneRedisStackTests(TestCase):
    """
    Webhook delivery talks to Redis through the Redis adapter's client stack
    (L{RedisLink}), one link per server.
    """

    async def test_links_per_server(self) -> None:
        """
        The queue's and the held leaves' URLs naming one server share a
        link; each link selects its URL's database.
        """
        from sockudo_tw.adapters._redis_link import RedisLink
        from sockudo_tw.service import _RedisConnections

        require_redis(self)
        connections = _RedisConnections(reactor)
        db3 = connections("redis://127.0.0.1:6379/3")
        self.assertIsInstance(db3, RedisLink)
        self.assertIs(connections("redis://127.0.0.1:6379/3"), db3)
        db0 = connections("redis://127.0.0.1:6379/0")
        self.assertIsNot(db0, db3)
        self.addCleanup(lambda: Deferred.fromCoroutine(connections.close()))
        await connections.start(wait=True).addTimeout(5, reactor)
        key = f"sockudo_tw_test_{uuid.uuid4().hex}"
        await db3.execute_command("SET", key, "v", "PX", "5000")
        self.assertEqual(await db3.execute_command("GET", key), b"v")
        self.assertIsNone(await db0.execute_command("GET", key))

    async def test_jobs_held_while_unreachable(self) -> None:
        """
        Jobs queued while Redis cannot take them are kept in memory and
        pushed by the first heartbeat that reaches Redis.
        """
        require_redis(self)
        self.prefix = f"sockudo_tw_test_{uuid.uuid4().hex}"
        redis = await connect_redis(self)
        down = [True]

        class Flaky:
            def execute_command(self, *args: Any) -> Deferred[Any]:
                if down[0]:
                    return fail(ConnectionError("Redis command connection is down"))
                result: Deferred[Any] = redis.execute_command(*args)
                return result

        queue = RedisJobQueue(Flaky(), reactor, prefix=self.prefix, liveness_ttl=0.3)
        queue.enqueue("job-1")
        queue.enqueue("job-2")
        delivered: list[str] = []
        down[0] = False
        queue.start(lambda job: succeed(delivered.append(job) or True))
        self.addCleanup(queue.stop)
        await eventually(lambda: true(delivered == ["job-1", "job-2"]))


class SharedHoldTests(TestCase):
    """
    L{RedisPendingLeaves}: two nodes' sinks share held leaves, so a channel
    vacated on one node and re-occupied on another within the delay sends
    nothing, and a real vacate is sent once.
    """

    async def test_two_nodes(self) -> None:
        """
        Node A holds a vacate; node B's re-occupation cancels it (and is
        itself suppressed); a second vacate on A, not cancelled, is sent by A
        alone.
        """
        require_redis(self)
        self.prefix = f"sockudo_tw_test_{uuid.uuid4().hex}"
        redis = await connect_redis(self)
        store = MemoryAppStore(
            [
                App(
                    id="1",
                    key="k",
                    secret="s",
                    webhooks=(WebhookTarget(url="http://x/", event_types=ALL),),
                )
            ]
        )
        clock = Clock()
        nodes = []
        for _ in range(2):
            queue = RecordingQueue()
            pending = RedisPendingLeaves(redis, self.prefix + ":hold:")
            nodes.append((WebhookEvents(store, queue, clock, pending=pending), queue))
        (a, a_queue), (b, b_queue) = nodes

        async def answered() -> None:
            # One round trip on the shared connection: every hold, cancel or
            # claim sent before it has been answered and acted on.
            await redis.execute_command("PING")

        a.channel_vacated("1", "room")
        await answered()
        b.channel_occupied("1", "room")
        await answered()
        clock.advance(3)
        await answered()
        clock.advance(1)
        self.assertEqual((a_queue.jobs, b_queue.jobs), ([], []))
        a.channel_vacated("1", "room")
        await answered()
        clock.advance(3)
        await eventually(lambda: self._flushed(clock, a_queue))
        self.assertEqual(a_queue.events(), [[{"name": "channel_vacated", "channel": "room"}]])
        self.assertEqual(b_queue.jobs, [])

    async def _flushed(self, clock: Clock, queue: RecordingQueue) -> bool:
        clock.advance(0.05)
        return bool(queue.jobs)


class PusherClient(WebSocketClientProtocol):
    """
    A minimal Pusher WebSocket client: waits for C{connection_established},
    subscribes to public channels and records every frame.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.established: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N803
        frame = json.loads(payload)
        self.frames.append(frame)
        if frame.get("event") == "pusher:connection_established":
            self.established.callback(None)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N803
        if not self.closed.called:
            self.closed.callback(None)

    def subscribe(
        self, channel: str, auth: str | None = None, channel_data: str | None = None
    ) -> None:
        """
        Send C{pusher:subscribe}, with the signature and presence data if given.
        """
        data = {"channel": channel}
        if auth is not None:
            data["auth"] = auth
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.sendMessage(json.dumps({"event": "pusher:subscribe", "data": data}).encode())

    @property
    def socket_id(self) -> str:
        """
        The socket id from C{pusher:connection_established}.
        """
        socket_id: str = json.loads(self.frames[0]["data"])["socket_id"]
        return socket_id

    def subscribed(self, channel: str) -> bool:
        """
        Whether the subscription to C{channel} succeeded.
        """
        return any(
            f.get("event") == "pusher_internal:subscription_succeeded"
            and f.get("channel") == channel
            for f in self.frames
        )


async def connect_client(case: TestCase, port: int, key: str) -> PusherClient:
    """
    Connect a L{PusherClient} to a daemon on 127.0.0.1:C{port}; it is closed
    when the test ends.
    """
    url = f"ws://127.0.0.1:{port}/app/{key}?protocol=7&client=js&version=8.4.0"
    factory = WebSocketClientFactory(url)
    factory.protocol = PusherClient
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    client = await endpoint.connect(factory)
    assert isinstance(client, PusherClient)

    def close() -> Deferred[None]:
        if client.closed.called:
            return succeed(None)
        client.sendClose()
        return client.closed

    case.addCleanup(close)
    await client.established.addTimeout(10, reactor)
    return client


async def subscribe(
    client: PusherClient, channel: str, app: App | None = None, user_id: str | None = None
) -> None:
    """
    Subscribe and wait for C{pusher_internal:subscription_succeeded}; with
    C{app}, sign the subscription as an app server would (as C{user_id} on a
    presence channel).
    """
    auth = channel_data = None
    if app is not None:
        if user_id is not None:
            channel_data = json.dumps({"user_id": user_id, "user_info": {}})
        string = channel_string_to_sign(client.socket_id, channel, channel_data)
        auth = token(app.key, app.secret, string)
    client.subscribe(channel, auth, channel_data)
    await eventually(lambda: true(client.subscribed(channel)))


class DaemonTests(TestCase):
    """
    Real C{twistd sockudo} daemons with the Redis adapter and the Redis
    queue: each webhook fires once for the cluster, and a job taken by a
    daemon killed with SIGKILL is delivered after a daemon comes back.
    """

    setUp = WebhookIntegrationTests.setUp
    listen = WebhookIntegrationTests.listen
    verified = WebhookIntegrationTests.verified

    async def daemons(self, count: int, receiver: Receiver) -> list[ServerProcess]:
        """
        Start C{count} daemons sharing Redis (adapter and queue) under a
        fresh prefix, with the app's webhooks pointed at C{receiver}.
        """
        require_redis(self)
        self.prefix = f"sockudo_tw_test_{uuid.uuid4().hex}"
        self.redis = await connect_redis(self)
        target = self.app.webhooks[0]
        app = app_config(
            id=self.app.id,
            key=self.app.key,
            secret=self.app.secret,
            webhooks=[
                {
                    "url": target.url,
                    "event_types": [
                        "channel_occupied",
                        "channel_vacated",
                        "member_added",
                        "member_removed",
                        "client_event",
                    ],
                    "headers": {"X-Env": "test"},
                }
            ],
        )
        redis_url = "redis://127.0.0.1:6379/0"
        config = {
            "adapter": {
                "driver": "redis",
                "redis": {
                    "prefix": self.prefix + ":adapter:",
                    "redis_pub_options": {"url": redis_url},
                },
                "cluster_health": {
                    "enabled": True,
                    "heartbeat_interval_ms": 500,
                    "node_timeout_ms": 2000,
                    "cleanup_interval_ms": 1000,
                },
            },
            "queue": {
                "driver": "redis",
                "redis": {"prefix": self.prefix, "url_override": redis_url, "concurrency": 2},
            },
        }
        return [await ServerProcess.start(self, [app], config) for _ in range(count)]

    def bodies(self, receiver: Receiver) -> list[list[dict[str, Any]]]:
        """
        The verified C{events} of every request so far.
        """
        return [self.verified(receiver, i)["events"] for i in range(len(receiver.requests))]

    async def test_once_per_cluster(self) -> None:
        """
        Two daemons, one subscriber on each: one C{channel_occupied}; both
        leave: one C{channel_vacated}, after the delay; a reload (leave and
        come back on the other daemon) sends nothing.
        """
        receiver = self.listen()
        nodes = await self.daemons(2, receiver)
        first = await connect_client(self, nodes[0].port, self.app.key)
        second = await connect_client(self, nodes[1].port, self.app.key)
        await subscribe(first, "room")
        await subscribe(second, "room")
        await eventually(lambda: true(len(receiver.requests) == 1), within=10)
        await deferLater(reactor, 1.0, lambda: None)  # type: ignore[arg-type]
        self.assertEqual(self.bodies(receiver), [[{"name": "channel_occupied", "channel": "room"}]])

        reload = await connect_client(self, nodes[0].port, self.app.key)
        await subscribe(reload, "lobby")
        await eventually(lambda: true(len(receiver.requests) == 2), within=10)
        reload.sendClose()
        await reload.closed
        again = await connect_client(self, nodes[1].port, self.app.key)
        await subscribe(again, "lobby")

        first.sendClose()
        second.sendClose()
        await first.closed
        await second.closed
        await deferLater(reactor, 2.0, lambda: None)  # type: ignore[arg-type]
        self.assertEqual(len(receiver.requests), 2)
        await eventually(lambda: true(len(receiver.requests) == 3), within=10)
        await deferLater(reactor, 1.0, lambda: None)  # type: ignore[arg-type]
        self.assertEqual(
            self.bodies(receiver),
            [
                [{"name": "channel_occupied", "channel": "room"}],
                [{"name": "channel_occupied", "channel": "lobby"}],
                [{"name": "channel_vacated", "channel": "room"}],
            ],
        )

    async def test_sigkill_daemon_job_redelivered(self) -> None:
        """
        A daemon killed with SIGKILL while its webhook request hangs: once
        a daemon is back, the same signed body is delivered.
        """
        receiver = self.listen(HANG)
        (node,) = await self.daemons(1, receiver)
        client = await connect_client(self, node.port, self.app.key)
        await subscribe(client, "durable")
        await eventually(lambda: true(len(receiver.requests) == 1), within=10)
        node._transport.signalProcess("KILL")
        await node.restart(self)
        await eventually(lambda: true(len(receiver.requests) >= 2), within=15)
        self.assertEqual(receiver.requests[1][1], receiver.requests[0][1])
        self.assertEqual(
            self.verified(receiver, 1)["events"],
            [{"name": "channel_occupied", "channel": "durable"}],
        )

    async def test_presence_and_client_events_once(self) -> None:
        """
        One user on two daemons is added once; a second user is added once;
        a presence client event is reported once with the sender's socket id
        and user id.
        """
        receiver = self.listen()
        nodes = await self.daemons(2, receiver)
        clients = [await connect_client(self, nodes[i].port, self.app.key) for i in (0, 1, 1)]
        for client, user in zip(clients, ("u1", "u1", "u2"), strict=True):
            await subscribe(client, "presence-room", self.app, user)
        clients[0].sendMessage(
            json.dumps(
                {"event": "client-typing", "channel": "presence-room", "data": {"on": True}}
            ).encode()
        )

        def events() -> list[dict[str, Any]]:
            return [e for batch in self.bodies(receiver) for e in batch]

        await eventually(lambda: true(len(events()) >= 4), within=10)
        await deferLater(reactor, 1.0, lambda: None)  # type: ignore[arg-type]
        found = sorted(events(), key=lambda e: json.dumps(e, sort_keys=True))
        self.assertEqual(
            found,
            sorted(
                [
                    {"name": "channel_occupied", "channel": "presence-room"},
                    {"name": "member_added", "channel": "presence-room", "user_id": "u1"},
                    {"name": "member_added", "channel": "presence-room", "user_id": "u2"},
                    {
                        "name": "client_event",
                        "channel": "presence-room",
                        "event": "client-typing",
                        "data": '{"on":true}',
                        "socket_id": clients[0].socket_id,
                        "user_id": "u1",
                    },
                ],
                key=lambda e: json.dumps(e, sort_keys=True),
            ),
        )
