"""
Tests for L{sockudo_tw.webhooks}: filtering, the leave delay, batching, job
contents, signing and the retry policy, all driven by a L{Clock}.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sockudo_tw.appstores import MemoryAppStore
from sockudo_tw.config import (
    AdapterConfig,
    AppManagerConfig,
    ConfigError,
    QueueConfig,
    ServerConfig,
    WebhooksConfig,
)
from sockudo_tw.hooks import IPusherEvents
from sockudo_tw.pusher.app import App, WebhookTarget
from sockudo_tw.pusher.signing import webhook_signature
from sockudo_tw.queues import (
    IJobQueue,
    JobHandler,
    MemoryJobQueue,
    UnsupportedQueueDriverError,
    validate_queue_driver,
)
from sockudo_tw.service import build_webhooks
from sockudo_tw.webhooks import (
    IWebhookEvents,
    IWebhookMetrics,
    NullWebhookEvents,
    UnsupportedWebhookTargetError,
    WebhookEvents,
    WebhookSender,
    WebhookService,
    WebhookSettings,
    target_wants,
    validate_webhook_targets,
)

ALL = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
)
URL = "http://127.0.0.1:9/hook"


def make_app(*targets: WebhookTarget, app_id: str = "1", secret: str = "s3cret") -> App:
    """
    An app with these webhook targets (by default one that wants everything).
    """
    if not targets:
        targets = (WebhookTarget(url=URL, event_types=ALL),)
    return App(id=app_id, key="key-" + app_id, secret=secret, webhooks=targets)


@implementer(IJobQueue)
class RecordingQueue:
    """
    A queue that keeps jobs in a list for inspection.
    """

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def enqueue(self, job: str) -> None:
        self.jobs.append(json.loads(job))

    def start(self, handler: JobHandler) -> None:
        self.handler = handler

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def events(self) -> list[list[dict[str, Any]]]:
        """
        The C{events} of each queued body.
        """
        return [json.loads(job["body"])["events"] for job in self.jobs]


class SinkTests(SynchronousTestCase):
    """
    L{WebhookEvents}: what reaches the queue, and when.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.queue = RecordingQueue()
        self.store = MemoryAppStore([make_app()])
        self.sink = WebhookEvents(self.store, self.queue, self.clock)

    def test_interfaces(self) -> None:
        """
        The sink provides both the webhook sink and H2's observer interface
        (same signatures), and so does the null sink.
        """
        verifyObject(IWebhookEvents, self.sink)
        verifyObject(IPusherEvents, self.sink)
        verifyObject(IWebhookEvents, NullWebhookEvents())

    def test_batched_within_window(self) -> None:
        """
        Events for one (app, URL) within the batching window become one job
        whose body carries C{time_ms} (built at flush) and the events in
        order; nothing is queued before the window ends.
        """
        self.sink.channel_occupied("1", "a")
        self.sink.client_event("1", "private-a", "client-x", '{"k":1}', "1.2", None)
        self.clock.advance(0.049)
        self.assertEqual(self.queue.jobs, [])
        self.clock.advance(0.001)
        self.assertEqual(len(self.queue.jobs), 1)
        body = json.loads(self.queue.jobs[0]["body"])
        self.assertEqual(body["time_ms"], 1000050)
        self.assertEqual(
            body["events"],
            [
                {"name": "channel_occupied", "channel": "a"},
                {
                    "name": "client_event",
                    "channel": "private-a",
                    "event": "client-x",
                    "data": '{"k":1}',
                    "socket_id": "1.2",
                },
            ],
        )

    def test_job_has_no_secret(self) -> None:
        """
        A job names the app and URL, never the app secret.
        """
        self.sink.channel_occupied("1", "a")
        self.clock.advance(1)
        job = self.queue.jobs[0]
        self.assertEqual((job["app_id"], job["url"], job["events"]), ("1", URL, 1))
        self.assertNotIn("s3cret", json.dumps(job))

    def test_batch_per_url(self) -> None:
        """
        Two targets with different URLs get a job each; two entries with the
        same URL get one.
        """
        other = "http://127.0.0.1:9/other"
        self.store.add(
            make_app(
                WebhookTarget(url=URL, event_types=ALL),
                WebhookTarget(url=URL, event_types=ALL),
                WebhookTarget(url=other, event_types=ALL),
            )
        )
        self.sink.cache_miss("1", "cache-a")
        self.clock.advance(1)
        self.assertEqual(sorted(j["url"] for j in self.queue.jobs), [URL, other])

    def test_batching_disabled(self) -> None:
        """
        Without batching each event is queued at once, one per job.
        """
        sink = WebhookEvents(
            self.store, self.queue, self.clock, WebhookSettings(batching_enabled=False)
        )
        sink.channel_occupied("1", "a")
        sink.channel_occupied("1", "b")
        self.assertEqual(
            self.queue.events(),
            [
                [{"name": "channel_occupied", "channel": "a"}],
                [{"name": "channel_occupied", "channel": "b"}],
            ],
        )

    def test_max_batch_events(self) -> None:
        """
        A full batch is queued at once, before the window ends.
        """
        sink = WebhookEvents(
            self.store, self.queue, self.clock, WebhookSettings(max_batch_events=2)
        )
        for name in ("a", "b", "c"):
            sink.channel_occupied("1", name)
        self.assertEqual(len(self.queue.jobs), 1)
        self.clock.advance(1)
        self.assertEqual([len(e) for e in self.queue.events()], [2, 1])

    def test_event_types_filter(self) -> None:
        """
        A target only gets the event types it lists.
        """
        self.store.add(make_app(WebhookTarget(url=URL, event_types=("member_added",))))
        self.sink.channel_occupied("1", "presence-a")
        self.sink.member_added("1", "presence-a", "u1")
        self.clock.advance(1)
        self.assertEqual(
            self.queue.events(),
            [[{"name": "member_added", "channel": "presence-a", "user_id": "u1"}]],
        )

    def test_channel_filters(self) -> None:
        """
        Prefix, suffix and pattern filters all have to pass; the pattern
        matches anywhere in the name.
        """
        target = WebhookTarget(
            url=URL,
            event_types=ALL,
            channel_prefix="private-",
            channel_suffix="-x",
            channel_pattern="[0-9]+",
        )
        self.assertTrue(target_wants(target, "channel_occupied", "private-12-x"))
        self.assertFalse(target_wants(target, "channel_occupied", "public-12-x"))
        self.assertFalse(target_wants(target, "channel_occupied", "private-12-y"))
        self.assertFalse(target_wants(target, "channel_occupied", "private-ab-x"))
        self.assertFalse(target_wants(target, "cache_miss_typo", "private-12-x"))
        self.store.add(make_app(target))
        self.sink.channel_occupied("1", "private-ab-x")
        self.sink.channel_occupied("1", "private-7-x")
        self.clock.advance(1)
        self.assertEqual(
            self.queue.events(), [[{"name": "channel_occupied", "channel": "private-7-x"}]]
        )

    def test_unknown_app_or_no_webhooks(self) -> None:
        """
        Events of an unknown app, or of an app without webhooks, queue nothing.
        """
        self.store.add(App(id="2", key="k2", secret="s2"))
        self.sink.channel_occupied("2", "a")
        self.sink.channel_occupied("404", "a")
        self.clock.advance(10)
        self.assertEqual(self.queue.jobs, [])

    def test_vacated_held(self) -> None:
        """
        C{channel_vacated} is held for the leave delay (3 s) before being
        batched.
        """
        self.sink.channel_vacated("1", "a")
        self.clock.advance(2.9)
        self.assertEqual(self.queue.jobs, [])
        self.clock.advance(0.1)
        self.clock.advance(0.05)
        self.assertEqual(self.queue.events(), [[{"name": "channel_vacated", "channel": "a"}]])

    def test_reload_sends_nothing(self) -> None:
        """
        Vacated then occupied again within the delay (a page reload): neither
        webhook is sent.
        """
        self.sink.channel_occupied("1", "a")
        self.clock.advance(1)
        self.queue.jobs.clear()
        self.sink.channel_vacated("1", "a")
        self.clock.advance(1)
        self.sink.channel_occupied("1", "a")
        self.clock.advance(10)
        self.assertEqual(self.queue.jobs, [])

    def test_hold_again_after_flip_back(self) -> None:
        """
        After a cancelled hold, a later vacate is held afresh and sent.
        """
        self.sink.channel_vacated("1", "a")
        self.sink.channel_occupied("1", "a")
        self.sink.channel_vacated("1", "a")
        self.clock.advance(3.1)
        self.clock.advance(0.05)
        self.assertEqual(self.queue.events(), [[{"name": "channel_vacated", "channel": "a"}]])

    def test_member_rejoin_sends_nothing(self) -> None:
        """
        C{member_removed} then C{member_added} of the same user within the
        delay sends neither; another user's join is unaffected.
        """
        self.sink.member_removed("1", "presence-a", "u1")
        self.sink.member_added("1", "presence-a", "u2")
        self.sink.member_added("1", "presence-a", "u1")
        self.clock.advance(10)
        self.assertEqual(
            self.queue.events(),
            [[{"name": "member_added", "channel": "presence-a", "user_id": "u2"}]],
        )

    def test_member_removed_after_delay(self) -> None:
        """
        A user who does not come back is reported removed after the delay.
        """
        self.sink.member_removed("1", "presence-a", "u1")
        self.clock.advance(2)
        self.assertEqual(self.queue.jobs, [])
        self.clock.advance(1.1)
        self.clock.advance(0.05)
        self.assertEqual(
            self.queue.events(),
            [[{"name": "member_removed", "channel": "presence-a", "user_id": "u1"}]],
        )

    def test_no_delay_setting(self) -> None:
        """
        With a leave delay of 0, leaves are sent like any other event.
        """
        sink = WebhookEvents(self.store, self.queue, self.clock, WebhookSettings(leave_delay=0))
        sink.channel_vacated("1", "a")
        sink.channel_occupied("1", "a")
        self.clock.advance(0.05)
        self.assertEqual(
            self.queue.events(),
            [
                [
                    {"name": "channel_vacated", "channel": "a"},
                    {"name": "channel_occupied", "channel": "a"},
                ]
            ],
        )

    def test_client_event_presence_user_id(self) -> None:
        """
        A presence client event carries the sender's C{user_id}.
        """
        self.sink.client_event("1", "presence-a", "client-e", "x", "1.1", "u9")
        self.clock.advance(1)
        self.assertEqual(
            self.queue.events()[0][0],
            {
                "name": "client_event",
                "channel": "presence-a",
                "event": "client-e",
                "data": "x",
                "socket_id": "1.1",
                "user_id": "u9",
            },
        )

    def test_cache_miss_deduplicated(self) -> None:
        """
        Several cache misses of one channel within a batch become one event.
        """
        for _ in range(3):
            self.sink.cache_miss("1", "cache-a")
        self.clock.advance(1)
        self.assertEqual(self.queue.events(), [[{"name": "cache_miss", "channel": "cache-a"}]])

    def test_subscription_count(self) -> None:
        """
        Counts within a batch collapse to the latest; presence channels get
        none.
        """
        self.sink.subscription_count("1", "a", 1)
        self.sink.subscription_count("1", "a", 2)
        self.sink.subscription_count("1", "presence-a", 2)
        self.clock.advance(1)
        self.assertEqual(
            self.queue.events(),
            [[{"name": "subscription_count", "channel": "a", "subscription_count": 2}]],
        )

    def test_busy_subscription_count_throttled(self) -> None:
        """
        Above 100 subscribers the count goes out at most every 5 s, with the
        latest value.
        """
        self.sink.subscription_count("1", "a", 101)
        self.clock.advance(1)
        self.sink.subscription_count("1", "a", 102)
        self.sink.subscription_count("1", "a", 103)
        self.clock.advance(1)
        self.assertEqual(len(self.queue.jobs), 1)
        self.clock.advance(3.1)
        self.clock.advance(0.05)
        counts = [e[0]["subscription_count"] for e in self.queue.events()]
        self.assertEqual(counts, [101, 103])

    def test_close_flushes(self) -> None:
        """
        Closing sends held leaves and pending batches at once; a leave
        reported after closing is queued at once too.
        """
        self.sink.channel_vacated("1", "a")
        self.sink.channel_occupied("1", "b")
        self.successResultOf(self.sink.close())
        names = sorted(e["name"] for batch in self.queue.events() for e in batch)
        self.assertEqual(names, ["channel_occupied", "channel_vacated"])
        self.clock.advance(10)
        self.assertEqual(len(self.queue.jobs), 1)
        self.sink.member_removed("1", "presence-a", "late")
        self.assertEqual(
            self.queue.events()[1],
            [{"name": "member_removed", "channel": "presence-a", "user_id": "late"}],
        )


class ValidationTests(SynchronousTestCase):
    """
    Config-time refusals of what sockudo-tw does not implement.
    """

    def test_lambda_targets(self) -> None:
        """
        A Lambda target in either spelling passes; a C{lambda} object
        without C{function_name} or C{region}, or an entry with neither a
        url nor a function, is refused naming the entry.
        """
        validate_webhook_targets(
            [
                make_app(
                    WebhookTarget(url=None, event_types=ALL, lambda_function="fn"),
                    WebhookTarget(
                        url=None,
                        event_types=ALL,
                        lambda_config={"function_name": "f", "region": "eu-west-1"},
                    ),
                )
            ]
        )
        for target, message in (
            (
                WebhookTarget(url=None, event_types=ALL, lambda_config={"region": "x"}),
                "lambda.function_name is missing",
            ),
            (
                WebhookTarget(url=None, event_types=ALL, lambda_config={"function_name": "f"}),
                "lambda.region is missing",
            ),
            (WebhookTarget(url=None, event_types=ALL), "expected a url, a lambda object"),
        ):
            e = self.assertRaises(
                UnsupportedWebhookTargetError, validate_webhook_targets, [make_app(target)]
            )
            self.assertIn(message, str(e))
            self.assertIn("app '1' webhooks[0]", str(e))

    def test_lambda_events(self) -> None:
        """
        Events for Lambda targets are batched per function name (two entries
        naming one function share a job addressed C{lambda:<name>}), with
        the body an HTTP target of the same app gets.
        """
        app = make_app(
            WebhookTarget(url=URL, event_types=ALL),
            WebhookTarget(url=None, event_types=ALL, lambda_function="fn"),
            WebhookTarget(
                url=None, event_types=ALL, lambda_config={"function_name": "fn", "region": "x"}
            ),
        )
        queue = RecordingQueue()
        events = WebhookEvents(
            MemoryAppStore([app]), queue, Clock(), WebhookSettings(batching_enabled=False)
        )
        events.cache_miss("1", "c")
        self.assertEqual([job["url"] for job in queue.jobs], [URL, "lambda:fn"])
        self.assertEqual(queue.jobs[0]["body"], queue.jobs[1]["body"])

    def test_bad_url_and_pattern(self) -> None:
        """
        A target without an http(s) URL, or with an invalid pattern, is
        refused; a good one passes.
        """
        self.assertRaises(
            UnsupportedWebhookTargetError,
            validate_webhook_targets,
            [make_app(WebhookTarget(url="ftp://x", event_types=ALL))],
        )
        e = self.assertRaises(
            UnsupportedWebhookTargetError,
            validate_webhook_targets,
            [make_app(WebhookTarget(url=URL, event_types=ALL, channel_pattern="(["))],
        )
        self.assertIn("channel_pattern", str(e))
        validate_webhook_targets([make_app()])

    def test_queue_drivers(self) -> None:
        """
        C{redis-cluster} is refused by name; memory, redis, sqs and none
        pass.
        """
        for driver in ("memory", "redis", "sqs", "none"):
            validate_queue_driver(driver)
        self.assertRaises(UnsupportedQueueDriverError, validate_queue_driver, "redis-cluster")
        self.assertRaises(UnsupportedQueueDriverError, validate_queue_driver, "kafka")


class FakeResponse:
    """
    Just enough of a treq response.
    """

    def __init__(self, code: int, headers: Mapping[str, str] | None = None) -> None:
        self.code = code
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})

    def content(self) -> Deferred[bytes]:
        return succeed(b"")


class FakeHTTP:
    """
    Records POSTs and answers each with the next scripted outcome (a status
    code, an exception, or L{None} for "never answers").
    """

    def __init__(self, *outcomes: int | Exception | FakeResponse | None) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[tuple[str, bytes, dict[str, list[str]]]] = []

    def post(self, url: str, /, *, data: bytes, headers: Headers) -> Deferred[Any]:
        raw = {k.decode(): [v.decode() for v in vs] for k, vs in headers.getAllRawHeaders()}
        self.requests.append((url, data, raw))
        outcome = self.outcomes.pop(0) if self.outcomes else 200
        if outcome is None:
            return Deferred()
        if isinstance(outcome, Exception):
            return fail(outcome)
        if isinstance(outcome, FakeResponse):
            return succeed(outcome)
        return succeed(FakeResponse(outcome))


@implementer(IWebhookMetrics)
class RecordingMetrics:
    """
    Keeps every metrics call.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def delivered(self, app_id: str, events: int, attempts: int) -> None:
        self.calls.append(("delivered", app_id, events, attempts))

    def attempt_failed(self, app_id: str, reason: str) -> None:
        self.calls.append(("attempt_failed", app_id, reason))

    def dropped(self, app_id: str, events: int, reason: str) -> None:
        self.calls.append(("dropped", app_id, events, reason))


def make_job(body: str = '{"time_ms":1,"events":[]}', app_id: str = "1", url: str = URL) -> str:
    """
    A job as the sink builds it.
    """
    return json.dumps({"id": "j", "app_id": app_id, "url": url, "events": 2, "body": body})


class SenderTests(SynchronousTestCase):
    """
    L{WebhookSender}: headers, signatures and the retry policy.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        headers = {"X-Custom": "yes", "x-pusher-signature": "forged", "Content-Type": "text/x"}
        self.store = MemoryAppStore(
            [make_app(WebhookTarget(url=URL, event_types=ALL, headers=headers))]
        )
        self.metrics = RecordingMetrics()

    def sender(self, http: FakeHTTP, **settings: Any) -> WebhookSender:
        """
        A sender on the test clock with a seeded random source.
        """
        return WebhookSender(
            self.store,
            http,
            self.clock,
            WebhookSettings(**settings),
            self.metrics,
            random.Random(4),
        )

    def test_signed_request(self) -> None:
        """
        The request carries the exact body, C{Content-Type:
        application/json}, the key, the HMAC-SHA256 of the body with the
        app's current secret, and the configured headers, which cannot
        replace ours.
        """
        http = FakeHTTP(200)
        body = '{"time_ms":5,"events":[{"name":"channel_occupied","channel":"a"}]}'
        self.assertTrue(self.successResultOf(self.sender(http).deliver(make_job(body))))
        [(url, data, headers)] = http.requests
        self.assertEqual(url, URL)
        self.assertEqual(data, body.encode())
        self.assertEqual(headers["Content-Type"], ["application/json"])
        self.assertEqual(headers["X-Pusher-Key"], ["key-1"])
        self.assertEqual(headers["X-Pusher-Signature"], [webhook_signature("s3cret", data)])
        self.assertEqual(headers["X-Custom"], ["yes"])
        self.assertNotIn("x-pusher-signature", headers)
        self.assertEqual(self.metrics.calls, [("delivered", "1", 2, 1)])

    def test_secret_resolved_at_send_time(self) -> None:
        """
        The signature uses the secret the app has when the job is sent.
        """
        self.store.add(make_app(secret="rotated"))
        http = FakeHTTP(200)
        self.successResultOf(self.sender(http).deliver(make_job()))
        _, data, headers = http.requests[0]
        self.assertEqual(headers["X-Pusher-Signature"], [webhook_signature("rotated", data)])

    def test_retries_5xx_with_backoff(self) -> None:
        """
        5xx, 429, connection errors and timeouts are retried with growing
        delays until a 2xx.
        """
        http = FakeHTTP(500, 429, ConnectionRefusedError(), None, 204)
        d = self.sender(http, request_timeout=10).deliver(make_job())
        times = []
        for _ in range(200):
            if d.called:
                break
            times.append(len(http.requests))
            self.clock.advance(0.5)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(len(http.requests), 5)
        reasons = [c[2] for c in self.metrics.calls if c[0] == "attempt_failed"]
        self.assertEqual(reasons, ["500", "429", "connection", "timeout"])
        self.assertEqual(self.metrics.calls[-1], ("delivered", "1", 2, 5))

    def test_backoff_grows_with_jitter(self) -> None:
        """
        Delays double up to the cap, each between half and all of it.
        """
        sender = self.sender(FakeHTTP(), retry_initial_delay=1, retry_max_delay=8)
        delays = [sender._backoff(n, None) for n in range(1, 7)]
        for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
            self.assertTrue(ceiling / 2 <= delay <= ceiling, (delay, ceiling))
        self.assertEqual(sender._backoff(1, 30.0), 8)

    def test_retry_after_honoured(self) -> None:
        """
        A 429 with C{Retry-After} waits at least that long.
        """
        http = FakeHTTP(FakeResponse(429, {"Retry-After": "7"}), 200)
        d = self.sender(http).deliver(make_job())
        self.clock.advance(6.9)
        self.assertEqual(len(http.requests), 1)
        self.clock.advance(0.2)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(len(http.requests), 2)

    def test_4xx_not_retried(self) -> None:
        """
        A 400 is final: one attempt, dropped with the status as reason.
        """
        http = FakeHTTP(400, 200)
        d = self.sender(http).deliver(make_job())
        self.assertTrue(self.successResultOf(d))
        self.clock.advance(600)
        self.assertEqual(len(http.requests), 1)
        self.assertEqual(self.metrics.calls[-1], ("dropped", "1", 2, "400"))

    def test_gives_up_after_max_duration(self) -> None:
        """
        A receiver that keeps failing is given up after the retry window,
        with a log line and a C{retries_exhausted} drop.
        """
        http = FakeHTTP(*([503] * 1000))
        d = self.sender(http).deliver(make_job())
        for _ in range(400):
            self.clock.advance(1)
        self.assertTrue(self.successResultOf(d))
        self.assertTrue(3 < len(http.requests) < 20, len(http.requests))
        self.assertEqual(self.metrics.calls[-1], ("dropped", "1", 2, "retries_exhausted"))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_concurrency_limit(self) -> None:
        """
        No more than C{concurrency} requests are in flight at once.
        """
        http = FakeHTTP(None, None, None)
        sender = self.sender(http, concurrency=2)
        for _ in range(3):
            sender.deliver(make_job())
        self.assertEqual(len(http.requests), 2)
        self.clock.advance(10)  # the first two time out; the third goes out
        self.assertEqual(len(http.requests), 3)

    def test_target_gone(self) -> None:
        """
        A job whose app or URL is no longer configured is dropped.
        """
        http = FakeHTTP()
        sender = self.sender(http)
        self.assertTrue(self.successResultOf(sender.deliver(make_job(app_id="9"))))
        self.assertTrue(self.successResultOf(sender.deliver(make_job(url="http://x/"))))
        self.assertEqual(http.requests, [])
        self.assertEqual([c[3] for c in self.metrics.calls], ["no_target", "no_target"])

    def test_malformed_job(self) -> None:
        """
        A job that is not what the sink writes is dropped, not retried.
        """
        self.assertTrue(self.successResultOf(self.sender(FakeHTTP()).deliver("{nope")))
        self.assertEqual(self.metrics.calls, [("dropped", "", 0, "malformed")])

    def test_stop_abandons_retries(self) -> None:
        """
        Stopping cancels a retry wait: the job is reported abandoned (so a
        durable queue keeps it) and no further attempt is made.
        """
        http = FakeHTTP(503, 200)
        sender = self.sender(http)
        d = sender.deliver(make_job())
        self.assertNoResult(d)
        sender.stop()
        self.assertFalse(self.successResultOf(d))
        self.clock.advance(60)
        self.assertEqual(len(http.requests), 1)


class ServiceTests(SynchronousTestCase):
    """
    L{WebhookService} starts the consumer and flushes on stop.
    """

    def test_start_and_stop(self) -> None:
        """
        Starting hands the sender to the queue; stopping queues what the sink
        still held.
        """
        clock = Clock()
        store = MemoryAppStore([make_app()])
        queue = RecordingQueue()
        sender = WebhookSender(store, FakeHTTP(), clock)
        sink = WebhookEvents(store, queue, clock)
        service = WebhookService(sink, sender, queue)
        service.startService()
        self.assertEqual(queue.handler, sender.deliver)
        sink.channel_vacated("1", "a")
        self.successResultOf(service.stopService())
        self.successResultOf(service.stopService())
        self.assertEqual(queue.events(), [[{"name": "channel_vacated", "channel": "a"}]])


class BuildTests(SynchronousTestCase):
    """
    L{build_webhooks} turns the config into wired parts, or refuses it.
    """

    def config(self, driver: str = "memory", *apps: App) -> ServerConfig:
        """
        The default config with this queue driver and these apps.
        """
        return attrs.evolve(
            ServerConfig(),
            queue=QueueConfig(driver=driver),
            app_manager=AppManagerConfig(apps=apps or (make_app(),)),
            webhooks=WebhooksConfig(batching_enabled=True, batching_duration_ms=200),
        )

    def test_memory(self) -> None:
        """
        The memory driver gives a sink batching for the configured window,
        feeding a memory queue that the service drains for its grace at stop.
        """
        clock = MemoryReactorClock()
        parts = build_webhooks(self.config(), clock, MemoryAppStore([make_app()]))
        self.assertIsInstance(parts.events, WebhookEvents)
        assert parts.service is not None
        queue = parts.service.queue
        assert isinstance(queue, MemoryJobQueue)
        parts.events.channel_occupied("1", "a")
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 0.2)
        stopped = parts.service.stopService()
        clock.advance(5)
        self.successResultOf(stopped)
        self.assertEqual(queue.dropped, 1)
        self.successResultOf(parts.close())

    def test_cluster_redis_keeps_holds(self) -> None:
        """
        With the Redis adapter, held leaves go through the adapter's own
        connection when the composition root passes it: the webhooks open
        no Redis connection of their own for them.
        """
        commands: list[tuple[Any, ...]] = []

        class Cluster:
            def execute_command(self, *args: Any) -> Deferred[Any]:
                commands.append(args)
                return succeed(1)

        config = attrs.evolve(self.config(), adapter=AdapterConfig(driver="redis"))
        clock = MemoryReactorClock()
        parts = build_webhooks(config, clock, MemoryAppStore([make_app()]), None, Cluster())
        assert parts.service is not None
        parts.service.startService()
        self.assertEqual(clock.tcpClients, [])
        parts.events.channel_vacated("1", "a")
        self.assertEqual(commands[0][:2], ("SET", "sockudo_adapter:webhook_hold:vacated\x001\x00a"))
        self.successResultOf(parts.close())

    def test_none(self) -> None:
        """
        C{queue.driver: none} disables webhooks.
        """
        parts = build_webhooks(self.config("none"), Clock(), MemoryAppStore())
        self.assertIsInstance(parts.events, NullWebhookEvents)
        self.assertIsNone(parts.service)

    def test_refused(self) -> None:
        """
        redis-cluster and incomplete Lambda targets are refused as config
        errors.
        """
        lam = make_app(WebhookTarget(url=None, event_types=ALL, lambda_config={"region": "x"}))
        for config in (
            self.config("redis-cluster"),
            self.config("memory", lam),
        ):
            self.assertRaises(ConfigError, build_webhooks, config, Clock(), MemoryAppStore())
