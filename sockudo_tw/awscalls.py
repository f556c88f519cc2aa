# -*- test-case-name: tests.test_queue_sqs,tests.test_webhooks_lambda -*-
"""
boto3 for the AWS drivers (the SQS queue, Lambda webhook targets): loading
it, with a start-up error naming the pip extra when it is missing, and
running its blocking calls in a component's own thread pool, never on the
reactor thread.

boto3 ships no type information, so it is loaded with
L{importlib.import_module} and its objects are typed L{Any}.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sockudo_tw.config import ConfigError

__all__ = ["AwsLibraries", "BlockingCalls", "MissingAwsLibraryError", "load_aws_libraries"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class MissingAwsLibraryError(ConfigError):
    """
    An AWS driver was chosen but boto3 is not installed.
    """


@attrs.frozen
class AwsLibraries:
    """
    The parts of boto3 and botocore the drivers use.

    @ivar boto3: the C{boto3} module (sessions and clients).
    @ivar config: C{botocore.config.Config} (timeouts, retries).
    @ivar exceptions: C{botocore.exceptions} (C{ClientError} and the
        transport errors).
    """

    boto3: ModuleType
    config: Any
    exceptions: ModuleType


def load_aws_libraries(feature: str) -> AwsLibraries:
    """
    Import boto3 and botocore for C{feature}.

    @param feature: what needs them, for the error (C{"queue.driver: sqs"}).
    @raise MissingAwsLibraryError: naming the pip extra that installs them.
    """
    try:
        boto3 = importlib.import_module("boto3")
        config = importlib.import_module("botocore.config")
        exceptions = importlib.import_module("botocore.exceptions")
    except ImportError as e:
        raise MissingAwsLibraryError(
            f"{feature} needs boto3, which is not installed ({e}); "
            "install it with: pip install 'sockudo-tw[aws]'"
        ) from None
    return AwsLibraries(boto3=boto3, config=config.Config, exceptions=exceptions)


class _DaemonThread(threading.Thread):
    """
    A pool thread that does not hold up the exit of the process: a boto3
    call still waiting for its timeout when the daemon stops is abandoned.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class BlockingCalls:
    """
    A component's own pool of threads for blocking library calls: started
    with the component, stopped (with a bounded wait) with it, so a slow
    AWS endpoint can neither stall the reactor nor starve the reactor's
    shared pool (DNS lookups use it).
    """

    _log = Logger()

    def __init__(self, reactor: IReactorTime, name: str, max_threads: int) -> None:
        """
        @param reactor: the reactor; it must also provide
            L{IReactorFromThreads} (every real reactor does) once started.
        @param name: the pool's name, seen in thread names and logs.
        @param max_threads: calls that may block at once; more wait.
        """
        self._clock = reactor
        self._threads: IReactorFromThreads | None = None
        self.name = name
        self._pool = ThreadPool(minthreads=0, maxthreads=max_threads, name=name)
        self._pool.threadFactory = _DaemonThread
        self._stopped = False

    @property
    def running(self) -> bool:
        """
        Whether calls are accepted.
        """
        return bool(self._pool.started)

    def start(self) -> None:
        """
        Start the pool (threads are created as calls need them).

        @raise TypeError: when the reactor cannot take calls from threads.
        """
        if not self._pool.started and not self._stopped:
            self._threads = IReactorFromThreads(self._clock)
            self._pool.start()

    def run(self, f: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        """
        Call C{f(*args, **kwargs)} in a pool thread.

        @return: fires, on the reactor thread, with the result or the
            exception; fails with L{RuntimeError} when the pool is not
            running.
        """
        if not self._pool.started or self._threads is None:
            return fail(RuntimeError(f"{self.name}: the thread pool is not running"))
        return deferToThreadPool(self._threads, self._pool, f, *args, **kwargs)

    def stop(self, timeout: float) -> Deferred[None]:
        """
        Stop taking calls and let the threads end once their current call
        returns; wait for that at most C{timeout} seconds. A thread still in
        a call then is left to finish on its own (it is a daemon thread).
        """
        self._stopped = True
        threads = self._threads
        if not self._pool.started or threads is None:
            return Deferred.fromCoroutine(_nothing())
        joined: Deferred[None] = Deferred()

        def join() -> None:
            self._pool.stop()
            threads.callFromThread(_fire, joined)

        # ThreadPool.stop joins its threads: never on the reactor thread.
        threading.Thread(target=join, name=f"{self.name} (stopping)", daemon=True).start()
        joined.addTimeout(timeout, self._clock)
        return Deferred.fromCoroutine(self._wait(joined, seconds=timeout))

    async def _wait(self, joined: Deferred[None], seconds: float) -> None:
        try:
            await joined
        except Exception:
            self._log.warn(
                "{name}: threads still in a call {timeout} s after stopping; left to end "
                "on their own",
                name=self.name,
                timeout=seconds,
            )


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


async def _nothing() -> None:
    return None
