# -*- test-case-name: tests.test_workers -*-
"""
Several processes on one machine: C{workers: N} (or C{--workers N}).

One Twisted process uses one core. With N > 1 the C{twistd} process is
worker 0: it binds every listener as usual, then starts N-1 child processes
that inherit the bound listening sockets as file descriptors and accept on
them too (the kernel gives each new connection to one of the processes
waiting in C{accept}). The children are ordinary C{twistd sockudo} processes
started with C{--listen systemd:domain=...:name=...}: the descriptors are
handed over the way systemd socket activation does it (C{LISTEN_FDS},
C{LISTEN_FDNAMES}, C{LISTEN_PID}), so no new listener code is needed and
the same daemon also runs under systemd socket units.

All workers join one cluster through the Redis adapter (a worker is a node),
so N > 1 requires C{adapter.driver: redis}. Only worker 0 serves metrics and
the HTTP-to-HTTPS redirect; TLS listeners are not shared (a child would
inherit a plain TCP socket), so N > 1 with C{ssl.enabled} is refused.

The parent supervises: a child that exits unexpectedly is restarted with
backoff, its output is logged by the parent line by line, and at shutdown
each child gets SIGTERM (its own graceful shutdown: close clients with
4200, leave the cluster) and SIGKILL if it outlives the grace period.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockudo_tw.listening import ReportingEndpoint, reporting_endpoint

__all__ = ["WorkerPool", "child_arguments", "inherited_listen_descriptions"]

_FIRST_FD = 3  # systemd's SD_LISTEN_FDS_START


def _family(port: IListeningPort) -> str:
    """
    The C{socket} module's name of a listening port's address family, as
    the C{systemd:domain=} endpoint wants it.
    """
    host = port.getHost()
    if isinstance(host, IPv6Address):
        return "INET6"
    if isinstance(host, IPv4Address):
        return "INET"
    if isinstance(host, UNIXAddress):
        return "UNIX"
    raise ValueError(f"cannot share a listener on {host!r}")


def inherited_listen_descriptions(families: Sequence[str]) -> list[str]:
    """
    The C{--listen} descriptions of a child for its inherited sockets, in
    the order they are passed (named C{l0}, C{l1}, ...).
    """
    return [f"systemd:domain={family}:name=l{i}" for i, family in enumerate(families)]


def child_arguments(twistd_args: Sequence[str], families: Sequence[str], worker: int) -> list[str]:
    """
    The argument list of child C{worker}: the parent's own C{twistd} options
    and plugin options minus C{--listen}/C{--workers}/daemonising, plus the
    inherited listeners and C{--workers 1}.

    @param twistd_args: the plugin's options as the parent received them
        (everything after C{sockudo}).
    """
    kept: list[str] = []
    skip_next = False
    for arg in twistd_args:
        if skip_next:
            skip_next = False
            continue
        if arg in ("--listen", "-l", "--workers"):
            skip_next = True
            continue
        if arg.startswith(("--listen=", "--workers=")) or (arg.startswith("-l") and arg != "-l"):
            continue
        kept.append(arg)
    listens = [x for d in inherited_listen_descriptions(families) for x in ("--listen", d)]
    return [
        sys.executable,
        "-m",
        "sockudo_tw._worker_main",
        "--nodaemon",
        "--pidfile=",
        "--logfile=-",
        "sockudo",
        *kept,
        *listens,
        "--workers",
        "1",
    ]


class _ChildOutput(ProcessProtocol):
    """
    Relays a child's output into the parent's log and notices its end.
    """

    def __init__(self, pool: WorkerPool, worker: int) -> None:
        self.pool = pool
        self.worker = worker
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted hook)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > 65536:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            if line.strip():
                self.pool.log.info(
                    "[worker {worker}] {line}",
                    worker=self.worker,
                    line=line.decode("utf-8", "replace"),
                )

    errReceived = outReceived  # noqa: N815 (Twisted hook)

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 (Twisted hook)
        if self._partial.strip():
            self.outReceived(b"\n")
        self.pool._ended(self.worker, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Starts and supervises the child workers once the parent's listeners are
    bound.

    @ivar children: worker number -> its process transport, while running.
    @ivar restarts: how many times a child was restarted after a crash.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        count: int,
        listeners: Sequence[IService],
        twistd_args: Sequence[str],
        environ: Mapping[str, str] | None = None,
        grace_period: float = 10.0,
        spawn: Callable[..., Any] | None = None,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.listeners = list(listeners)
        self._shared = [self._share(listener) for listener in self.listeners]
        self.twistd_args = list(twistd_args)
        self.environ = dict(os.environ if environ is None else environ)
        self.grace_period = grace_period
        self._spawn = spawn
        self.children: dict[int, Any] = {}
        self._outputs: dict[int, _ChildOutput] = {}
        self._fds: list[int] = []
        self._families: list[str] = []
        self._stopping = False
        self._failures: dict[int, int] = {}
        self._restart_calls: dict[int, IDelayedCall] = {}
        self.restarts = 0

    def startService(self) -> None:
        """
        Wait for the parent's listeners, then start the children.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._stopping = False
        waiting = [shared.port() for shared in self._shared]
        d: Deferred[list[IListeningPort]] = gatherResults(waiting, consumeErrors=True)
        d.addCallbacks(self._listening, self._cannot_share)

    @staticmethod
    def _share(listener: IService) -> ReportingEndpoint:
        """
        Wrap the endpoint of a listener before it listens, to learn its port.
        """
        try:
            return reporting_endpoint(listener)
        except ValueError:
            raise ValueError(f"{listener!r} has no listening port to share") from None

    def _cannot_share(self, failure: Failure) -> None:
        self.log.failure("Not starting worker processes: a listener did not bind", failure)

    def _listening(self, ports: list[IListeningPort]) -> None:
        if self._stopping:
            return
        self._fds = [port.fileno() for port in ports]  # type: ignore[attr-defined]
        self._families = [_family(port) for port in ports]
        for fd in self._fds:
            os.set_inheritable(fd, True)
        self.log.info(
            "Starting {n} more worker processes sharing {listeners} listening sockets",
            n=self.count - 1,
            listeners=len(self._fds),
        )
        for worker in range(1, self.count):
            self._start_child(worker)

    def _start_child(self, worker: int) -> None:
        """
        Spawn child C{worker} with the shared sockets at descriptors 3...
        """
        self._restart_calls.pop(worker, None)
        if self._stopping:
            return
        env = dict(self.environ)
        env.update(
            {
                "LISTEN_FDS": str(len(self._fds)),
                "LISTEN_FDNAMES": ":".join(f"l{i}" for i in range(len(self._fds))),
                "METRICS_ENABLED": "false",
                "SOCKUDO_WORKER": str(worker),
            }
        )
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for i, fd in enumerate(self._fds):
            child_fds[_FIRST_FD + i] = fd
        argv = child_arguments(self.twistd_args, self._families, worker)
        output = _ChildOutput(self, worker)
        self._outputs[worker] = output
        spawn = self._spawn if self._spawn is not None else self.reactor.spawnProcess
        self.children[worker] = spawn(
            output, sys.executable, argv, env=env, path=os.getcwd(), childFDs=child_fds
        )

    def _ended(self, worker: int, reason: Failure) -> None:
        """
        A child exited: restart it with backoff unless we are stopping.
        """
        self.children.pop(worker, None)
        if self._stopping:
            return
        failures = self._failures.get(worker, 0) + 1
        self._failures[worker] = failures
        delay = min(30.0, 0.5 * 2 ** min(failures - 1, 6))
        self.log.warn(
            "Worker {worker} exited ({why}); restarting it in {delay:.1f}s",
            worker=worker,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self.restarts += 1
        self._restart_calls[worker] = self.reactor.callLater(delay, self._start_child, worker)

    def stopService(self) -> Deferred[None]:
        """
        SIGTERM every child (each shuts down gracefully), SIGKILL those
        still running after the grace period, and wait for all of them.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        for call in self._restart_calls.values():
            if call.active():
                call.cancel()
        self._restart_calls.clear()
        waiting = [self._outputs[w].ended for w in list(self.children)]
        for worker, process in list(self.children.items()):
            self._signal(worker, process, "TERM")
        if not waiting:
            return Deferred.fromCoroutine(_nothing())
        kill = self.reactor.callLater(self.grace_period, self._kill_all)
        done: Deferred[Any] = DeferredList(waiting, consumeErrors=True)

        def finished(_: object) -> None:
            if kill.active():
                kill.cancel()

        return done.addCallback(finished)

    def _kill_all(self) -> None:
        for worker, process in list(self.children.items()):
            self.log.warn("Worker {worker} did not stop in time; killing it", worker=worker)
            self._signal(worker, process, "KILL")

    def _signal(self, worker: int, process: Any, name: str) -> None:
        try:
            process.signalProcess(name)
        except Exception:
            self.log.debug("Worker {worker} already gone", worker=worker)


async def _nothing() -> None:
    """
    An already-finished stop.
    """
