# -*- test-case-name: tests.test_webhooks -*-
"""
Delivery of webhook jobs: L{WebhookSender} looks the app up again (the
secret is never stored in the queue), signs the body and POSTs it with
treq, retrying connection errors, timeouts, 5xx and 429 with exponential
back-off and jitter; other responses are final. A job addressed to a Lambda
target (C{lambda:<function>}, L{sockudo_tw.webhooks.lambda_target}) is
delivered by invoking the function asynchronously with the same body, with
the same retry policy.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from zope.interface import Interface, implementer

from sockudo_tw.appstores import IAppStore
from sockudo_tw.pusher.app import App, WebhookTarget
from sockudo_tw.pusher.signing import webhook_signature
from sockudo_tw.webhooks.lambda_target import (
    ILambdaInvoker,
    LambdaInvoker,
    lambda_function,
    target_address,
)
from sockudo_tw.webhooks.queue import WebhookJob
from sockudo_tw.webhooks.settings import WebhookSettings

__all__ = ["HTTPPoster", "IWebhookMetrics", "NullWebhookMetrics", "WebhookSender"]

# Headers we set ourselves; a target's configured headers cannot replace them.
_OWN_HEADERS = frozenset({"content-type", "x-pusher-key", "x-pusher-signature", "content-length"})


class IWebhookMetrics(Interface):
    """
    Counters of webhook delivery (the metrics module attaches here).
    """

    def delivered(app_id: str, events: int, attempts: int) -> None:
        """
        A request got a 2xx answer after C{attempts} attempts.
        """

    def attempt_failed(app_id: str, reason: str) -> None:
        """
        One attempt failed (C{reason}: C{timeout}, C{connection}, or the
        status code).
        """

    def dropped(app_id: str, events: int, reason: str) -> None:
        """
        A request was given up (C{reason}: C{retries_exhausted}, the status
        code of a final answer, C{no_target}, C{malformed}).
        """


@implementer(IWebhookMetrics)
class NullWebhookMetrics:
    """
    Counts nothing.
    """

    def delivered(self, app_id: str, events: int, attempts: int) -> None:
        pass

    def attempt_failed(self, app_id: str, reason: str) -> None:
        pass

    def dropped(self, app_id: str, events: int, reason: str) -> None:
        pass


class HTTPPoster(Protocol):
    """
    The part of C{treq.client.HTTPClient} the sender uses (StubTreq or a
    fake in tests).
    """

    def post(self, url: str, /, *, data: bytes, headers: Headers) -> Deferred[Any]: ...


@attrs.frozen
class _Outcome:
    ok: bool
    retry: bool
    reason: str
    retry_after: float | None = None
    detail: str = ""


class WebhookSender:
    """
    Delivers webhook jobs: signs each body with the app's current secret and
    POSTs it (or invokes a Lambda function with it), retrying transient
    failures with back-off.
    """

    _log = Logger()

    def __init__(
        self,
        apps: IAppStore,
        http: HTTPPoster,
        clock: IReactorTime,
        settings: WebhookSettings | None = None,
        metrics: IWebhookMetrics | None = None,
        rng: random.Random | None = None,
        lambdas: ILambdaInvoker | None = None,
    ) -> None:
        """
        @param clock: the reactor; with Lambda targets it must also take
            calls from threads (every real reactor does).
        @param lambdas: invokes Lambda targets; by default a
            L{LambdaInvoker} on C{clock}, made at the first Lambda job.
        """
        self._apps = apps
        self._http = http
        self._clock = clock
        self._settings = settings or WebhookSettings()
        self.metrics: IWebhookMetrics = metrics or NullWebhookMetrics()
        self._random = rng or random.Random()
        self._semaphore = DeferredSemaphore(self._settings.concurrency)
        self._sleeps: set[Deferred[None]] = set()
        self._stopping = False
        self._lambdas = lambdas
        self._own_lambdas = False

    def stop(self) -> None:
        """
        Stop retrying: jobs waiting for a retry are abandoned (a durable queue
        redelivers them) and new jobs get a single attempt.
        """
        self._stopping = True
        for sleep in list(self._sleeps):
            sleep.cancel()

    def close(self) -> Deferred[None]:
        """
        Release the Lambda invoker's threads, if this sender made one (last,
        after the queue is stopped).
        """
        if self._lambdas is not None and self._own_lambdas:
            return self._lambdas.stop()
        return succeed(None)

    def deliver(self, job: str) -> Deferred[bool]:
        """
        Deliver one job (the L{sockudo_tw.queues.JobHandler}).

        @return: fires C{True} when finished (delivered or given up),
            C{False} when abandoned because the sender is stopping.
        """
        return Deferred.fromCoroutine(self._deliver(job))

    async def _deliver(self, job: str) -> bool:
        try:
            parsed = WebhookJob.decode(job)
        except ValueError:
            self._log.error("malformed webhook job dropped: {job!r}", job=job[:200])
            self.metrics.dropped("", 0, "malformed")
            return True
        app_id, url, events = parsed.app_id, parsed.url, parsed.events
        body = parsed.body.encode("utf-8")
        started = self._clock.seconds()
        attempts = 0
        while True:
            app = await self._apps.find_by_id(app_id)
            target = None
            if app is not None:
                target = next((t for t in app.webhooks if target_address(t) == url), None)
            if app is None or target is None:
                self._log.warn(
                    "webhook for app {app_id} to {url} dropped: no longer configured",
                    app_id=app_id,
                    url=url,
                )
                self.metrics.dropped(app_id, events, "no_target")
                return True
            send = self._post if target.url is not None else self._invoke
            outcome = await self._semaphore.run(send, app, target, body)
            attempts += 1
            if outcome.ok:
                self.metrics.delivered(app_id, events, attempts)
                return True
            self.metrics.attempt_failed(app_id, outcome.reason)
            if not outcome.retry:
                self._log.warn(
                    "webhook for app {app_id} to {url} refused ({reason}{detail}); not retried",
                    app_id=app_id,
                    url=url,
                    reason=outcome.reason,
                    detail=f": {outcome.detail}" if outcome.detail else "",
                )
                self.metrics.dropped(app_id, events, outcome.reason)
                return True
            if self._stopping:
                return False
            delay = self._backoff(attempts, outcome.retry_after)
            if self._clock.seconds() + delay - started > self._settings.retry_max_duration:
                self._log.warn(
                    "webhook for app {app_id} to {url} dropped after {attempts} attempts "
                    "(last: {reason}{detail})",
                    app_id=app_id,
                    url=url,
                    attempts=attempts,
                    reason=outcome.reason,
                    detail=f": {outcome.detail}" if outcome.detail else "",
                )
                self.metrics.dropped(app_id, events, "retries_exhausted")
                return True
            sleep = deferLater(self._clock, delay, lambda: None)
            self._sleeps.add(sleep)
            try:
                await sleep
            except CancelledError:
                return False
            finally:
                self._sleeps.discard(sleep)

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """
        Exponential back-off with jitter (half fixed, half random), at least
        what a C{Retry-After} header asked for.
        """
        s = self._settings
        ceiling = min(s.retry_max_delay, s.retry_initial_delay * float(2 ** min(attempts - 1, 60)))
        delay = ceiling / 2 + self._random.random() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_max_delay))
        return delay

    def _post(self, app: App, target: WebhookTarget, body: bytes) -> Deferred[_Outcome]:
        return Deferred.fromCoroutine(self._post_async(app, target, body))

    async def _post_async(self, app: App, target: WebhookTarget, body: bytes) -> _Outcome:
        assert target.url is not None
        headers = Headers(
            {
                name: [value]
                for name, value in target.headers.items()
                if name.lower() not in _OWN_HEADERS
            }
        )
        headers.setRawHeaders("Content-Type", ["application/json"])
        headers.setRawHeaders("X-Pusher-Key", [app.key])
        headers.setRawHeaders("X-Pusher-Signature", [webhook_signature(app.secret, body)])
        timeout = self._settings.request_timeout
        try:
            d = self._http.post(target.url, data=body, headers=headers)
            d.addTimeout(timeout, self._clock)
            response = await d
        except (DeferredTimeoutError, CancelledError):
            return _Outcome(ok=False, retry=True, reason="timeout")
        except Exception as e:
            self._log.debug("webhook to {url} failed: {error}", url=target.url, error=e)
            return _Outcome(ok=False, retry=True, reason="connection")
        code = int(response.code)
        try:
            drained = response.content()
            drained.addTimeout(timeout, self._clock)
            await drained
        except Exception:
            pass
        if 200 <= code < 300:
            return _Outcome(ok=True, retry=False, reason=str(code))
        retry = code >= 500 or code == 429
        return _Outcome(ok=False, retry=retry, reason=str(code), retry_after=_retry_after(response))

    def _invoke(self, app: App, target: WebhookTarget, body: bytes) -> Deferred[_Outcome]:
        return Deferred.fromCoroutine(self._invoke_async(target, body))

    async def _invoke_async(self, target: WebhookTarget, body: bytes) -> _Outcome:
        """
        Invoke a Lambda target's function with the body as its payload.
        """
        try:
            function = lambda_function(target)
        except ValueError as e:
            return _Outcome(ok=False, retry=False, reason="error", detail=str(e))
        assert function is not None
        if self._lambdas is None:
            self._lambdas = LambdaInvoker(
                self._clock,
                read_timeout=self._settings.request_timeout,
                max_threads=max(1, min(self._settings.concurrency, 10)),
            )
            self._own_lambdas = True
        outcome = await self._lambdas.invoke(function, body)
        if not outcome.ok and outcome.retry:
            self._log.debug(
                "invoking Lambda function {function} failed: {reason} {detail}",
                function=function.name,
                reason=outcome.reason,
                detail=outcome.detail,
            )
        return _Outcome(
            ok=outcome.ok, retry=outcome.retry, reason=outcome.reason, detail=outcome.detail
        )


def _retry_after(response: Any) -> float | None:
    """
    The delay a C{Retry-After: <seconds>} header asks for, if any.
    """
    try:
        values = response.headers.getRawHeaders(b"retry-after") or []
        return max(0.0, float(values[0])) if values else None
    except (AttributeError, ValueError, TypeError):
        return None
