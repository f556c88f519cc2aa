"""
Tests for Lambda webhook targets (L{sockudo_tw.webhooks.lambda_target} and
their delivery by L{sockudo_tw.webhooks.sender.WebhookSender}).

moto cannot run a Lambda function without Docker, so these tests check the
exact request boto3 makes: a small twisted.web server on 127.0.0.1 stands
in for the Lambda endpoint (boto3 takes its URL as C{endpoint_url}, or
from C{AWS_ENDPOINT_URL_LAMBDA}) and records the path, the invocation-type
header, the SigV4 credential scope (which names the region) and the body,
which must be byte-identical to what an HTTP target gets.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from sockudo_tw.appstores.memory import MemoryAppStore
from sockudo_tw.pusher.app import App, WebhookTarget
from sockudo_tw.pusher.signing import webhook_signature
from sockudo_tw.webhooks import WebhookBatcher, WebhookSender, WebhookSettings
from sockudo_tw.webhooks.lambda_target import (
    LambdaFunction,
    LambdaInvoker,
    lambda_function,
    target_address,
)
from tests.moto_harness import use_aws_test_env
from tests.test_webhooks import ALL, RecordingMetrics

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/lambda/aws4_request")


@attrs.frozen
class Seen:
    """
    One request the fake endpoint got.
    """

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def region(self) -> str:
        """
        The region of the SigV4 credential scope.
        """
        match = _SCOPE.search(self.headers.get("authorization", ""))
        assert match is not None, self.headers
        return match.group(1)


class FakeAws(Resource):
    """
    The Lambda invoke API and an HTTP webhook endpoint (C{/hook}): records
    every request and answers by function name: C{missing} 404, C{flaky}
    500 twice (botocore retries once itself) then 202, C{slow} only when
    released, anything else 202.
    """

    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self.held: list[Request] = []
        self.flaky_failures = 2
        self.arrived: list[Deferred[None]] = []

    def render_POST(self, request: Request) -> Any:
        path = request.path.decode("utf-8")
        headers = {
            k.decode("latin-1").lower(): v[0].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        assert request.content is not None
        self.seen.append(Seen(path, headers, request.content.read()))
        waiting, self.arrived = self.arrived, []
        for d in waiting:
            d.callback(None)
        if path == "/hook":
            return b"ok"
        name = path.split("/")[3]
        if name == "missing":
            return self.error(request, 404, "ResourceNotFoundException", "Function not found")
        if name == "flaky" and self.flaky_failures > 0:
            self.flaky_failures -= 1
            return self.error(request, 500, "ServiceException", "try again")
        if name == "slow":
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(202)
        return b""

    def error(self, request: Request, code: int, kind: str, message: str) -> bytes:
        """
        An error as the Lambda API sends it.
        """
        request.setResponseCode(code)
        request.setHeader(b"x-amzn-errortype", kind.encode())
        request.setHeader(b"content-type", b"application/json")
        return f'{{"Type":"User","message":"{message}"}}'.encode()

    def release(self) -> None:
        """
        Answer every held C{slow} request with 202.
        """
        held, self.held = self.held, []
        for request in held:
            request.setResponseCode(202)
            request.finish()

    def next_request(self) -> Deferred[None]:
        """
        Fires at the next request.
        """
        d: Deferred[None] = Deferred()
        self.arrived.append(d)
        return d

    def invocations(self) -> list[Seen]:
        """
        The Lambda requests only.
        """
        return [s for s in self.seen if s.path != "/hook"]


@implementer(ILogObserver)
@attrs.define
class LogRecorder:
    """
    Keeps the text of every log event while a test runs.
    """

    texts: list[str] = attrs.Factory(list)

    def __call__(self, event: LogEvent) -> None:
        self.texts.append(formatEvent(event) or "")


@attrs.define
class JobList:
    """
    The part of a queue the batcher uses: keeps each job as queued.
    """

    jobs: list[str] = attrs.Factory(list)

    def enqueue(self, job: str) -> None:
        self.jobs.append(job)


def jobs_for(app: App, addresses: list[str], events: list[dict[str, Any]]) -> list[str]:
    """
    The jobs the batcher makes for the same events to each address, built
    at the same instant (so their bodies are what each target would get).
    """
    queue = JobList()
    clock = Clock()
    clock.advance(1700000000)
    batcher = WebhookBatcher(queue, clock, WebhookSettings(batching_enabled=False))  # type: ignore[arg-type]
    for event in events:
        for address in addresses:
            batcher.add(app.id, address, event)
    return list(queue.jobs)


class LambdaDeliveryTests(TestCase):
    """
    Lambda targets delivered by the sender through a real
    L{LambdaInvoker} to a fake Lambda endpoint.
    """

    timeout = 60

    def setUp(self) -> None:
        use_aws_test_env(self)
        self.aws = FakeAws()
        port = reactor.listenTCP(0, Site(self.aws), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.logs = LogRecorder()
        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)
        self.metrics = RecordingMetrics()

    def sender(self, app: App, *, invoker: LambdaInvoker | None = None) -> WebhookSender:
        """
        A sender for C{app} on the real reactor, with an invoker pointed at
        the fake endpoint (or, without one, the sender's own).
        """
        sender = WebhookSender(
            MemoryAppStore([app]),
            HTTPClient(Agent(reactor)),
            reactor,
            WebhookSettings(retry_initial_delay=0.05, retry_max_delay=0.1),
            self.metrics,
            lambdas=invoker,
        )
        self.addCleanup(sender.close)
        return sender

    def invoker(self) -> LambdaInvoker:
        """
        An invoker pointed at the fake endpoint, stopped in cleanup.
        """
        invoker = LambdaInvoker(reactor, endpoint_url=self.url)
        self.addCleanup(invoker.stop)
        return invoker

    async def test_same_body_as_http(self) -> None:
        """
        The function is invoked asynchronously (C{X-Amz-Invocation-Type:
        Event}) on C{/2015-03-31/functions/<name>/invocations}, signed for
        the target's region, with a payload byte-identical to the body an
        HTTP target of the same app gets.
        """
        app = App(
            id="1",
            key="key-1",
            secret="s3cret",
            webhooks=(
                WebhookTarget(url=self.url + "/hook", event_types=ALL),
                WebhookTarget(
                    url=None,
                    event_types=ALL,
                    lambda_config={"function_name": "pusher-hooks", "region": "eu-west-2"},
                ),
            ),
        )
        addresses = [target_address(t) for t in app.webhooks]
        self.assertEqual(addresses, [self.url + "/hook", "lambda:pusher-hooks"])
        events = [{"name": "channel_occupied", "channel": "presence-é"}]
        http_job, lambda_job = jobs_for(app, addresses, events)  # type: ignore[arg-type]
        sender = self.sender(app, invoker=self.invoker())
        self.assertTrue(await sender.deliver(http_job))
        self.assertTrue(await sender.deliver(lambda_job))
        [hook] = [s for s in self.aws.seen if s.path == "/hook"]
        [call] = self.aws.invocations()
        self.assertEqual(call.path, "/2015-03-31/functions/pusher-hooks/invocations")
        self.assertEqual(call.headers["x-amz-invocation-type"], "Event")
        self.assertEqual(call.region, "eu-west-2")
        self.assertEqual(call.body, hook.body)
        self.assertIn(b"presence-\\u00e9", call.body)
        self.assertEqual(hook.headers["x-pusher-signature"], webhook_signature("s3cret", hook.body))
        self.assertEqual(
            [c[0] for c in self.metrics.calls], ["delivered", "delivered"], self.metrics.calls
        )

    async def test_legacy_function_us_east_1(self) -> None:
        """
        A legacy C{lambda_function} target is invoked in C{us-east-1}; an
        entry naming the same function is the same address, served by the
        first entry.
        """
        app = App(
            id="1",
            key="key-1",
            secret="s3cret",
            webhooks=(
                WebhookTarget(url=None, event_types=ALL, lambda_function="legacy-fn"),
                WebhookTarget(
                    url=None,
                    event_types=ALL,
                    lambda_config={"function_name": "legacy-fn", "region": "ap-south-1"},
                ),
            ),
        )
        self.assertEqual({target_address(t) for t in app.webhooks}, {"lambda:legacy-fn"})
        [job] = jobs_for(app, ["lambda:legacy-fn"], [{"name": "cache_miss", "channel": "c"}])
        self.assertTrue(await self.sender(app, invoker=self.invoker()).deliver(job))
        [call] = self.aws.invocations()
        self.assertEqual(call.path, "/2015-03-31/functions/legacy-fn/invocations")
        self.assertEqual(call.region, "us-east-1")

    async def test_endpoint_from_environment(self) -> None:
        """
        The sender's own invoker (none given) honours
        C{AWS_ENDPOINT_URL_LAMBDA}, as boto3 does; closing the sender stops
        its threads.
        """
        saved = os.environ.get("AWS_ENDPOINT_URL_LAMBDA")
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = self.url
        self.addCleanup(
            lambda: (
                os.environ.pop("AWS_ENDPOINT_URL_LAMBDA", None)
                if saved is None
                else os.environ.__setitem__("AWS_ENDPOINT_URL_LAMBDA", saved)
            )
        )
        app = App(
            id="1",
            key="key-1",
            secret="s",
            webhooks=(WebhookTarget(url=None, event_types=ALL, lambda_function="env-fn"),),
        )
        [job] = jobs_for(app, ["lambda:env-fn"], [{"name": "cache_miss", "channel": "c"}])
        sender = self.sender(app)
        self.assertTrue(await sender.deliver(job))
        [call] = self.aws.invocations()
        self.assertEqual(call.path, "/2015-03-31/functions/env-fn/invocations")
        await sender.close()

    async def test_failure_logged_not_blocking(self) -> None:
        """
        A refused invocation (404) is logged and dropped like a refused HTTP
        request; a throttled or failing one (5xx) is retried; a slow one
        blocks neither the reactor nor the app's other targets.
        """
        app = App(
            id="1",
            key="key-1",
            secret="s",
            webhooks=(
                WebhookTarget(url=self.url + "/hook", event_types=ALL),
                WebhookTarget(url=None, event_types=ALL, lambda_function="missing"),
                WebhookTarget(url=None, event_types=ALL, lambda_function="flaky"),
                WebhookTarget(url=None, event_types=ALL, lambda_function="slow"),
            ),
        )
        addresses = [target_address(t) for t in app.webhooks]
        http_job, missing_job, flaky_job, slow_job = jobs_for(
            app,
            addresses,  # type: ignore[arg-type]
            [{"name": "cache_miss", "channel": "c"}],
        )
        sender = self.sender(app, invoker=self.invoker())
        slow_arrived = self.aws.next_request()
        slow = sender.deliver(slow_job)
        await slow_arrived
        self.assertTrue(await sender.deliver(missing_job))
        self.assertTrue(await sender.deliver(http_job))
        self.assertTrue(await sender.deliver(flaky_job))
        self.assertFalse(slow.called)
        self.aws.release()
        self.assertTrue(await slow)
        refused = [t for t in self.logs.texts if "lambda:missing refused" in t]
        self.assertEqual(len(refused), 1, self.logs.texts)
        self.assertIn("404: ResourceNotFoundException: Function not found", refused[0])
        self.assertIn(("dropped", "1", 1, "404"), self.metrics.calls)
        self.assertIn(("attempt_failed", "1", "500"), self.metrics.calls)
        flaky = [s for s in self.aws.invocations() if "/flaky/" in s.path]
        self.assertEqual(len(flaky), 3)
        self.assertEqual({s.body for s in flaky}, {flaky[0].body})
        self.assertIn(("delivered", "1", 1, 2), self.metrics.calls)


class LambdaTargetTests(SynchronousTestCase):
    """
    Reading Lambda targets from an app's C{webhooks} entries.
    """

    def test_forms(self) -> None:
        """
        C{lambda: {function_name, region}} names its region; the legacy
        C{lambda_function} is in C{us-east-1}; a C{url} makes it an HTTP
        target; an incomplete C{lambda} object is refused.
        """
        new = WebhookTarget(
            url=None, event_types=ALL, lambda_config={"function_name": "f", "region": "eu-west-1"}
        )
        self.assertEqual(lambda_function(new), LambdaFunction("f", "eu-west-1"))
        legacy = WebhookTarget(url=None, event_types=ALL, lambda_function="g")
        self.assertEqual(lambda_function(legacy), LambdaFunction("g", "us-east-1"))
        http = WebhookTarget(url="https://x/h", event_types=ALL, lambda_function="g")
        self.assertIsNone(lambda_function(http))
        self.assertEqual(target_address(http), "https://x/h")
        for broken in ({"region": "eu-west-1"}, {"function_name": "f"}, {"function_name": ""}):
            target = WebhookTarget(url=None, event_types=ALL, lambda_config=broken)
            self.assertRaises(ValueError, lambda_function, target)
            self.assertIsNone(target_address(target))
        self.assertIsNone(target_address(WebhookTarget(url=None, event_types=ALL)))
