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
so N > 1 requires C{adapter.driver: redis}. Only worker 0 serves the
HTTP-to-HTTPS redirect; TLS listeners are not shared (a child would
inherit a plain TCP socket), so N > 1 with C{ssl.enabled} is refused.

The workers share a runtime directory (C{$RUNTIME_DIRECTORY} under
systemd, else a fresh private temporary directory), which gives them one
view of the group without another connection between them:

  - every worker writes a beacon there every L{BEAT} seconds (its pid and
    its connections), which each worker's C{/up} reads (L{WorkersView});
  - each child serves its metrics on a Unix socket there, which worker 0
    merges into the one metrics port.

The parent supervises: a child that exits unexpectedly is restarted with
backoff, its output is logged by the parent line by line, and the state
its clients had in the cluster (presence members, subscription counts) is
removed at once through the adapter, under the node id the parent gave it.
At shutdown each child gets SIGTERM (its own graceful shutdown: close
clients with 4200, leave the cluster) and SIGKILL if it outlives the grace
period. A child whose parent is gone shuts itself down.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.service import IService, Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockudo_tw.listening import ReportingEndpoint, reporting_endpoint

__all__ = [
    "BEAT",
    "WorkerBeacon",
    "WorkerPool",
    "WorkerRole",
    "WorkersStatus",
    "WorkersView",
    "child_arguments",
    "inherited_listen_descriptions",
    "metrics_socket",
]

_FIRST_FD = 3  # systemd's SD_LISTEN_FDS_START

BEAT = 2.0
"""
Seconds between a worker's beacons.
"""

STALE = 3 * BEAT
"""
A beacon older than this means its worker is not running (or is stuck).
"""

DOWN_GRACE = 10.0
"""
Seconds a worker may be missing (a crash and its restart) before C{/up}
answers C{ERROR}: a quick restart does not take the whole box out of a
load balancer, a worker that stays down does.
"""

# What the parent tells a child through its environment.
_ENV_NUMBER = "SOCKUDO_WORKER"
_ENV_COUNT = "SOCKUDO_WORKER_COUNT"
_ENV_DIR = "SOCKUDO_WORKER_DIR"
_ENV_NODE = "SOCKUDO_WORKER_NODE_ID"
_ENV_PARENT = "SOCKUDO_WORKER_PARENT"


@attrs.frozen
class WorkerRole:
    """
    What a child worker process knows of its group, from the environment
    its parent set.

    @ivar number: this worker's number (1 to C{count} - 1; the parent is 0).
    @ivar count: how many workers the group has, the parent included.
    @ivar runtime_dir: the group's runtime directory.
    @ivar node_id: this worker's node id in the cluster.
    @ivar parent_pid: the supervising process.
    """

    number: int
    count: int
    runtime_dir: str
    node_id: str
    parent_pid: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        """
        The role the parent gave this process, or L{None} for a process
        that is not a child worker.

        @raise ValueError: if the variables are there but malformed.
        """
        if _ENV_NUMBER not in environ:
            return None
        try:
            return cls(
                number=int(environ[_ENV_NUMBER]),
                count=int(environ[_ENV_COUNT]),
                runtime_dir=environ[_ENV_DIR],
                node_id=environ[_ENV_NODE],
                parent_pid=int(environ[_ENV_PARENT]),
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"incomplete worker environment ({_ENV_NUMBER} ...): {e}") from None


def metrics_socket(runtime_dir: str, worker: int) -> str:
    """
    The Unix socket on which child C{worker} serves its metrics.
    """
    return os.path.join(runtime_dir, f"metrics-{worker}.sock")


def _beacon_path(runtime_dir: str, worker: int) -> str:
    return os.path.join(runtime_dir, f"worker-{worker}.json")


class WorkerBeacon(Service):
    """
    Writes this worker's beacon into the group's runtime directory every
    L{BEAT} seconds; in a child, also notices that the parent is gone
    (the child then stops itself: its clients get 4200, nobody would
    restart it or scrape it).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        runtime_dir: Callable[[], str | None],
        number: int,
        connections: Callable[[], int],
        parent_pid: int | None = None,
        orphaned: Callable[[], object] | None = None,
        getppid: Callable[[], int] = os.getppid,
    ) -> None:
        self._clock = clock
        self._runtime_dir = runtime_dir
        self.number = number
        self._connections = connections
        self._parent_pid = parent_pid
        self._orphaned = orphaned
        self._getppid = getppid
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock
        self._failing = False

    def startService(self) -> None:
        """
        Beat now and every L{BEAT} seconds.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._loop.start(BEAT, now=True)

    def stopService(self) -> None:
        """
        Stop beating and take the beacon away (a clean stop is not a crash).
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop.running:
            self._loop.stop()
        directory = self._runtime_dir()
        if directory is not None:
            try:
                os.unlink(_beacon_path(directory, self.number))
            except OSError:
                pass

    def beat(self) -> None:
        """
        Write the beacon (atomically: readers see the old or the new one).
        """
        if self._parent_pid is not None and self._getppid() != self._parent_pid:
            self.log.error(
                "The supervising process {pid} is gone; stopping this worker", pid=self._parent_pid
            )
            if self._loop.running:
                self._loop.stop()
            if self._orphaned is not None:
                self._orphaned()
            return
        directory = self._runtime_dir()
        if directory is None:
            return
        path = _beacon_path(directory, self.number)
        beacon = {
            "pid": os.getpid(),
            "at": self._clock.seconds(),
            "connections": self._connections(),
        }
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(beacon, f)
            os.replace(path + ".tmp", path)
        except OSError as e:
            if not self._failing:
                self.log.warn("Cannot write the worker beacon {path}: {error}", path=path, error=e)
            self._failing = True
        else:
            self._failing = False


@attrs.frozen
class WorkersStatus:
    """
    The group as C{/up} reports it.

    @ivar running: workers with a fresh beacon.
    @ivar expected: workers the group should have.
    @ivar healthy: False once a worker has been missing for L{DOWN_GRACE}.
    """

    running: int
    expected: int
    healthy: bool


class WorkersView:
    """
    Reads the group's beacons: which workers run, for C{/up}.
    """

    def __init__(
        self, clock: IReactorTime, runtime_dir: Callable[[], str | None], expected: int
    ) -> None:
        self._clock = clock
        self._runtime_dir = runtime_dir
        self.expected = expected
        self._missing_since: dict[int, float] = {}

    def status(self) -> WorkersStatus:
        """
        Read every beacon now (a few small files, once per C{/up}).
        """
        now = self._clock.seconds()
        directory = self._runtime_dir()
        running = 0
        healthy = True
        for worker in range(self.expected):
            beacon = _read_beacon(directory, worker) if directory is not None else None
            at = beacon.get("at") if beacon is not None else None
            if isinstance(at, (int, float)) and now - at <= STALE:
                running += 1
                self._missing_since.pop(worker, None)
                continue
            since = self._missing_since.setdefault(
                worker, at + STALE if isinstance(at, (int, float)) else now
            )
            if now - since >= DOWN_GRACE:
                healthy = False
        return WorkersStatus(running, self.expected, healthy)


def _read_beacon(directory: str, worker: int) -> dict[str, Any] | None:
    try:
        with open(_beacon_path(directory, worker)) as f:
            beacon = json.load(f)
    except (OSError, ValueError):
        return None
    return beacon if isinstance(beacon, dict) else None


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
    @ivar node_ids: worker number -> the node id its latest process was given.
    @ivar restarts: how many times a child was restarted after a crash.
    @ivar runtime_dir: the group's runtime directory, once started.
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
        forget_node: Callable[[str], object] | None = None,
        runtime_dir: str | None = None,
    ) -> None:
        """
        @param forget_node: removes a dead child's cluster state at once,
            given the node id it ran as.
        @param runtime_dir: the group's runtime directory (L{None}:
            C{$RUNTIME_DIRECTORY} if set, else a fresh temporary one,
            created at start and removed at stop).
        """
        self.reactor = reactor
        self.count = count
        self.listeners = list(listeners)
        self._shared = [self._share(listener) for listener in self.listeners]
        self.twistd_args = list(twistd_args)
        self.environ = dict(os.environ if environ is None else environ)
        self.grace_period = grace_period
        self._spawn = spawn
        self._forget_node = forget_node
        self._given_dir = runtime_dir
        self.runtime_dir: str | None = None
        self._made_dir = False
        self.children: dict[int, Any] = {}
        self.node_ids: dict[int, str] = {}
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
        self._make_runtime_dir()
        waiting = [shared.port() for shared in self._shared]
        d: Deferred[list[IListeningPort]] = gatherResults(waiting, consumeErrors=True)
        d.addCallbacks(self._listening, self._cannot_share)

    def _make_runtime_dir(self) -> None:
        """
        Choose the group's runtime directory: the given one, systemd's
        C{RuntimeDirectory=}, or a new private one (mode 0700).
        """
        if self.runtime_dir is not None:
            return
        given = self._given_dir or self.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if given:
            self.runtime_dir = given
        else:
            self.runtime_dir = tempfile.mkdtemp(prefix="sockudo-workers-")
            self._made_dir = True

    def metrics_sockets(self) -> list[str]:
        """
        The metrics sockets of every child, running or not (a missing one
        shows as C{workers_reporting} below C{workers_configured}).
        """
        if self.runtime_dir is None:
            return []
        return [metrics_socket(self.runtime_dir, worker) for worker in range(1, self.count)]

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
        node_id = f"w{worker}-{uuid.uuid4().hex}"
        self.node_ids[worker] = node_id
        env = dict(self.environ)
        env.update(
            {
                "LISTEN_FDS": str(len(self._fds)),
                "LISTEN_FDNAMES": ":".join(f"l{i}" for i in range(len(self._fds))),
                _ENV_NUMBER: str(worker),
                _ENV_COUNT: str(self.count),
                _ENV_DIR: self.runtime_dir or "",
                _ENV_NODE: node_id,
                _ENV_PARENT: str(os.getpid()),
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
        node_id = self.node_ids.pop(worker, None)
        if node_id is not None and self._forget_node is not None:
            # Its clients are gone with it: end their presence now rather
            # than when the cluster notices the missed heartbeats.
            self._forget_node(node_id)
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
            self._remove_runtime_dir()
            return Deferred.fromCoroutine(_nothing())
        kill = self.reactor.callLater(self.grace_period, self._kill_all)
        done: Deferred[Any] = DeferredList(waiting, consumeErrors=True)

        def finished(_: object) -> None:
            if kill.active():
                kill.cancel()
            self._remove_runtime_dir()

        return done.addCallback(finished)

    def _remove_runtime_dir(self) -> None:
        """
        Remove the runtime directory if this pool made it.
        """
        if self._made_dir and self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
            self._made_dir = False

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
