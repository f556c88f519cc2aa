# -*- test-case-name: tests.test_webhooks_lambda -*-
"""
Lambda webhook targets: an app's C{webhooks} entry with C{lambda:
{function_name, region}}, or the legacy C{lambda_function} (region
C{us-east-1}), is delivered by invoking the function asynchronously
(C{InvocationType: Event}) with the very body an HTTP target gets as its
C{Payload}; AWS queues the event and answers 202 at once.

A Lambda target's jobs are addressed C{lambda:<function name>} (the job's
C{url} field, see L{target_address}), so two entries naming the same
function get one invocation per batch, as two entries with one URL get one
request.

L{LambdaInvoker} runs the boto3 calls in its own thread pool with one
client per region, short timeouts and bounded retries; the sender
(L{sockudo_tw.webhooks.sender}) retries what is worth retrying (throttling,
5xx, connection errors) with its back-off, like an HTTP request.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from sockudo_tw.awscalls import (
    AwsLibraries,
    BlockingCalls,
    MissingAwsLibraryError,
    load_aws_libraries,
)
from sockudo_tw.pusher.app import WebhookTarget

__all__ = [
    "DEFAULT_LAMBDA_REGION",
    "LAMBDA_ADDRESS_PREFIX",
    "ILambdaInvoker",
    "InvokeOutcome",
    "LambdaFunction",
    "LambdaInvoker",
    "lambda_function",
    "target_address",
]

#: The region of a legacy C{lambda_function} target (Sockudo's choice).
DEFAULT_LAMBDA_REGION = "us-east-1"

#: A Lambda target's address (a job's C{url}) is this and the function name;
#: HTTP targets' addresses are http(s) URLs, so the two never clash.
LAMBDA_ADDRESS_PREFIX = "lambda:"

# Error codes worth another attempt besides 5xx and 429 answers.
_RETRY_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "ServiceException",
        "ResourceNotReadyException",
        "EC2ThrottledException",
    }
)


@attrs.frozen
class LambdaFunction:
    """
    The function a Lambda target invokes.

    @ivar name: a function name, ARN or partial ARN (with a version or
        alias if wanted), as Lambda's C{FunctionName} takes it.
    """

    name: str
    region: str

    @property
    def address(self) -> str:
        """
        The address of this target's jobs.
        """
        return LAMBDA_ADDRESS_PREFIX + self.name


def lambda_function(target: WebhookTarget) -> LambdaFunction | None:
    """
    The function C{target} invokes: from C{lambda: {function_name, region}},
    else from the legacy C{lambda_function} in C{us-east-1}; L{None} for an
    HTTP target (a C{url} wins, as in Sockudo).

    @raise ValueError: for a C{lambda} object without a non-empty
        C{function_name} or C{region} (Sockudo requires both).
    """
    if target.url is not None:
        return None
    if target.lambda_config is not None:
        name = target.lambda_config.get("function_name")
        region = target.lambda_config.get("region")
        if not isinstance(name, str) or not name:
            raise ValueError("lambda.function_name is missing or empty")
        if not isinstance(region, str) or not region:
            raise ValueError("lambda.region is missing or empty")
        return LambdaFunction(name, region)
    if target.lambda_function:
        return LambdaFunction(target.lambda_function, DEFAULT_LAMBDA_REGION)
    return None


def target_address(target: WebhookTarget) -> str | None:
    """
    Where a target's jobs go: its URL, or C{lambda:<function name>} for a
    Lambda target; the batcher's key and the job's C{url}, so targets with
    one address share each batch. L{None} for an entry with neither, or an
    invalid C{lambda} object (refused at config load).
    """
    if target.url is not None:
        return target.url
    try:
        function = lambda_function(target)
    except ValueError:
        return None
    return function.address if function is not None else None


@attrs.frozen
class InvokeOutcome:
    """
    How one invocation went.

    @ivar reason: the HTTP status code (C{"202"} when accepted, C{"429"},
        C{"404"}...), or C{timeout}, C{connection}, C{credentials},
        C{no_boto3}, C{error}: the sender's failure reasons.
    @ivar detail: the error's code and message, for the log.
    """

    ok: bool
    retry: bool
    reason: str
    detail: str = ""


class ILambdaInvoker(Interface):
    """
    Invokes Lambda functions asynchronously.
    """

    def invoke(function: LambdaFunction, payload: bytes) -> Deferred[InvokeOutcome]:
        """
        Invoke C{function} with C{InvocationType: Event} and C{payload}.
        Never fails: errors are outcomes.
        """

    def stop() -> Deferred[None]:
        """
        Stop invoking and stop the threads (bounded wait).
        """


@implementer(ILambdaInvoker)
class LambdaInvoker:
    """
    Invokes functions with boto3 in its own thread pool (started at the
    first invocation), one client per region, created on first use.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        endpoint_url: str | None = None,
        max_threads: int = 10,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 2,
        stop_timeout: float = 5.0,
    ) -> None:
        """
        @param reactor: the reactor (it must take calls from threads).
        @param endpoint_url: another Lambda endpoint (tests, LocalStack);
            boto3 also honours C{AWS_ENDPOINT_URL_LAMBDA} and
            C{AWS_ENDPOINT_URL}.
        @param max_threads: invocations in flight at once.
        @param max_attempts: botocore's attempts per invocation (its own
            quick retries); the sender's back-off comes on top.
        """
        self._endpoint_url = endpoint_url
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_attempts = max_attempts
        self._max_threads = max_threads
        self._stop_timeout = stop_timeout
        self._calls = BlockingCalls(reactor, "sockudo-tw lambda", max_threads)
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self._aws: AwsLibraries | None = None
        self._missing: str | None = None
        self._stopped = False

    def invoke(self, function: LambdaFunction, payload: bytes) -> Deferred[InvokeOutcome]:
        if self._aws is None and self._missing is None:
            try:
                self._aws = load_aws_libraries("a Lambda webhook target")
            except MissingAwsLibraryError as e:
                self._missing = str(e)
        if self._aws is None:
            return succeed(InvokeOutcome(False, False, "no_boto3", self._missing or ""))
        if self._stopped:
            return succeed(InvokeOutcome(False, True, "error", "the Lambda invoker is stopped"))
        try:
            self._calls.start()
        except TypeError as e:  # a reactor that cannot take calls from threads
            return succeed(InvokeOutcome(False, False, "error", str(e)))
        d = self._calls.run(self._invoke, self._aws, function, payload)
        return d.addErrback(lambda f: InvokeOutcome(False, True, "error", f.getErrorMessage()))

    def _invoke(self, aws: AwsLibraries, function: LambdaFunction, payload: bytes) -> InvokeOutcome:
        """
        Invoke C{function} (blocking: in a pool thread).
        """
        errors = aws.exceptions
        try:
            client = self._client(aws, function.region)
            response = client.invoke(
                FunctionName=function.name, InvocationType="Event", Payload=payload
            )
        except errors.ClientError as e:
            error = e.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            retry = status >= 500 or status == 429 or code in _RETRY_CODES
            detail = f"{code}: {error.get('Message', '')}"
            return InvokeOutcome(False, retry, str(status) if status else "error", detail)
        except (errors.ConnectTimeoutError, errors.ReadTimeoutError) as e:
            return InvokeOutcome(False, True, "timeout", str(e))
        except (errors.NoCredentialsError, errors.PartialCredentialsError) as e:
            return InvokeOutcome(False, True, "credentials", str(e))
        except errors.ParamValidationError as e:
            return InvokeOutcome(False, False, "error", str(e))
        except (errors.BotoCoreError, OSError) as e:
            return InvokeOutcome(False, True, "connection", str(e))
        status = int(response.get("StatusCode") or 0)
        if 200 <= status < 300:
            return InvokeOutcome(True, False, str(status))
        return InvokeOutcome(False, status >= 500, str(status), "unexpected status")

    def _client(self, aws: AwsLibraries, region: str) -> Any:
        """
        The region's client, created once (boto3 clients may be shared by
        threads; sessions may not, so each client gets its own).
        """
        with self._clients_lock:
            client = self._clients.get(region)
            if client is None:
                session = aws.boto3.session.Session()
                client = self._clients[region] = session.client(
                    "lambda",
                    region_name=region,
                    endpoint_url=self._endpoint_url,
                    config=aws.config(
                        connect_timeout=self._connect_timeout,
                        read_timeout=self._read_timeout,
                        retries={"total_max_attempts": self._max_attempts, "mode": "standard"},
                        max_pool_connections=self._max_threads,
                    ),
                )
            return client

    def stop(self) -> Deferred[None]:
        self._stopped = True
        return self._calls.stop(self._stop_timeout)
