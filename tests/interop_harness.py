# -*- test-case-name: tests.test_interop_pusherjs -*-
"""
Shared machinery for the interop tests: a real C{twistd -n sockudo} process
and real Pusher client libraries (pusher-js, the Node and Python C{pusher}
SDKs) talking to it over loopback sockets.

The server runs as a subprocess so that the tests see exactly what a user of
the daemon sees: the twistd plugin, the JSON config file, the listening port.
Node libraries run in one C{tests/interop/driver.js} process per test, driven
by JSON-lines commands; everything the libraries observe comes back as
JSON-lines and is matched with L{NodeDriver.wait_for}.

Most tests share one daemon per test process (L{SharedServer}): it serves a
pool of apps and every test takes an app nobody used before, so channels,
presence members, caches and users of one test are invisible to the next.
Tests that need their own config, their own apps, or that stop or restart
the daemon get a private one (L{ServerProcess}).

No port is picked and bound later: the harness binds a listening socket on
port 0 itself and hands it to twistd as systemd socket activation does
(C{--listen systemd:domain=INET:index=0}), so the port is known before the
daemon starts and survives its restarts.

Outside CI a missing C{node} or a missing C{tests/interop/node_modules} makes
the tests skip, naming what is missing; with C{CI=true} the same condition is
a failure, so CI can never go green by running nothing.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import attrs
from twisted.internet import defer, protocol, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

__all__ = [
    "APP_ID",
    "APP_KEY",
    "APP_SECRET",
    "ENCRYPTION_MASTER_KEY_BASE64",
    "Interop",
    "NodeDriver",
    "ServerProcess",
    "SharedServer",
    "app_config",
    "daemon_argv",
    "listening_socket",
    "match",
    "require_node",
    "unavailable",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
INTEROP_DIR = REPO_ROOT / "tests" / "interop"
DRIVER_SCRIPT = INTEROP_DIR / "driver.js"

#: The Python SDK only accepts numeric app ids, so the one app every interop
#: test uses has one.
APP_ID = "123456"
APP_KEY = "interop-key"
APP_SECRET = "interop-secret"
#: 32 bytes, base64: the master key the SDKs derive encrypted channels' keys
#: from (the server never sees it).
ENCRYPTION_MASTER_KEY_BASE64 = "zyrm8pvV2C9fJcBfhyXzvxbJVN/H7QLmbe0xJi1GhPU="

#: Longest a single expectation waits; every node process is killed after
#: L{DRIVER_LIFETIME} seconds whatever happens.
DEFAULT_WAIT = 10.0
DRIVER_LIFETIME = 60
SERVER_START_TIMEOUT = 20.0


def in_ci() -> bool:
    """
    Whether we run under CI, where a missing dependency must fail, not skip.
    """
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing_node_dependencies() -> list[str]:
    """
    Name what the Node side of the interop tests lacks on this machine.

    @return: human-readable names of the missing pieces; empty when the
        tests can run.
    """
    missing = []
    if shutil.which("node") is None:
        missing.append("the `node` executable (install Node.js >= 18)")
    for package in ("pusher-js", "pusher"):
        if not (INTEROP_DIR / "node_modules" / package / "package.json").exists():
            missing.append(f"tests/interop/node_modules/{package} (run `npm ci` in tests/interop)")
    return missing


def unavailable(case: SynchronousTestCase, message: str) -> NoReturn:
    """
    A service or tool the test needs is missing: fail with C{CI=true}
    (where .ci/run provides everything), skip elsewhere; C{message} names
    what is missing.
    """
    if in_ci():
        case.fail(message + " (CI=true, so this is a failure, not a skip)")
    raise SkipTest(message)


def require_node(case: TestCase) -> None:
    """
    Skip (outside CI) or fail (with C{CI=true}) when node or the pinned npm
    packages are missing.

    @param case: the running test, failed through C{case.fail} in CI.
    """
    missing = missing_node_dependencies()
    if not missing:
        return
    unavailable(case, "interop tests need " + "; ".join(missing))


def free_port() -> int:
    """
    Pick a free TCP port on 127.0.0.1 by binding port 0 and closing it.

    Another process could take it before the server binds it: only for
    servers that cannot bind port 0 and report it, nor adopt a socket
    (C{redis-server}). Our daemon gets a L{listening_socket} instead.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_socket() -> socket.socket:
    """
    A TCP socket listening on 127.0.0.1, port 0: the kernel picks the port,
    nobody can take it before the daemon adopts the socket, and
    C{getsockname()} reports it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(511)
    except OSError:
        sock.close()
        raise
    return sock


#: What C{python -c} runs in the daemon process: move the inherited listening
#: socket (its number in C{SOCKUDO_TEST_LISTEN_FD}) to descriptor 3 and
#: describe it the way systemd does, before Twisted reads C{LISTEN_FDS}
#: (when C{twisted.internet.endpoints} is imported), then run twistd.
_DAEMON_BOOTSTRAP = """\
import os
fd = int(os.environ.pop("SOCKUDO_TEST_LISTEN_FD"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="pusher", LISTEN_PID=str(os.getpid()))
from twisted.scripts.twistd import run
run()
"""

#: The C{--listen} description of the socket L{_DAEMON_BOOTSTRAP} hands over.
ADOPTED_LISTENER = "systemd:domain=INET:index=0"


def daemon_argv(config_path: Path, *extra: str) -> list[str]:
    """
    The command line of C{twistd -n sockudo} on C{config_path}, listening on
    the socket passed as C{SOCKUDO_TEST_LISTEN_FD} (see L{listening_socket}).

    @param extra: more C{sockudo} plugin options.
    """
    return [
        sys.executable,
        "-c",
        _DAEMON_BOOTSTRAP,
        "-n",
        "--pidfile=",
        "sockudo",
        "--config",
        str(config_path),
        "--listen",
        ADOPTED_LISTENER,
        *extra,
    ]


def app_config(**overrides: Any) -> dict[str, Any]:
    """
    One app in Sockudo's C{app_manager.array.apps} format, with client
    events, watchlists and subscription counts enabled so every pusher-js
    feature can be exercised.

    @param overrides: fields replacing the defaults.
    """
    app: dict[str, Any] = {
        "id": APP_ID,
        "key": APP_KEY,
        "secret": APP_SECRET,
        "enabled": True,
        "max_connections": 0,
        "enable_client_messages": True,
        "max_client_events_per_second": 1000,
        "enable_user_authentication": False,
        "enable_watchlist_events": True,
        "enable_subscription_count": True,
    }
    app.update(overrides)
    return app


def server_config(
    port: int, apps: Iterable[Mapping[str, Any]], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """
    A complete Sockudo-format config for one local, memory-only node on
    127.0.0.1:C{port} (the port of the adopted socket, so that anything that
    reads C{port} from the config sees the real one), with everything that
    would bind another port or need another service turned off.

    @param overrides: top-level keys replacing the defaults.
    """
    config: dict[str, Any] = {
        "debug": False,
        "host": "127.0.0.1",
        "port": port,
        "adapter": {"driver": "local"},
        "app_manager": {"driver": "memory", "array": {"apps": list(apps)}},
        "cache": {"driver": "memory"},
        "queue": {"driver": "memory"},
        "rate_limiter": {"enabled": False},
        "metrics": {"enabled": False},
    }
    config.update(overrides or {})
    return config


def server_environment() -> dict[str, str]:
    """
    The daemon's environment: only what Python needs to run, so that none
    of the many Sockudo variables (C{PORT}, C{HOST}, C{REDIS_URL}, ...) that
    may be set on a developer's machine or in CI overrides the test config.
    """
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _OutputCollector(protocol.ProcessProtocol):
    """
    Collects a child's output and tells when it has ended.
    """

    def __init__(self, on_line: Callable[[bytes], None] | None = None) -> None:
        self.output = bytearray()
        self.errors = bytearray()
        self.has_ended = False
        self._end_waiters: list[defer.Deferred[None]] = []
        self._on_line = on_line
        self._partial = b""

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        """
        Keep stdout; hand complete lines to the line callback if there is
        one.
        """
        self.output += data
        if self._on_line is None:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._on_line(line)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        """
        Keep stderr for failure messages.
        """
        self.errors += data

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        """
        Wake whoever waits for the end.
        """
        self.has_ended = True
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def wait_ended(self, seconds: float) -> bool:
        """
        Wait up to C{seconds} for the process to end.

        @return: whether it has ended.
        """
        from twisted.internet import reactor

        if self.has_ended:
            return True
        waiter: defer.Deferred[None] = defer.Deferred()
        self._end_waiters.append(waiter)
        waiter.addTimeout(seconds, reactor)
        try:
            await waiter
        except defer.TimeoutError:
            if waiter in self._end_waiters:
                self._end_waiters.remove(waiter)
        return self.has_ended


async def _stop_process(collector: _OutputCollector, transport: Any, grace: float = 5.0) -> None:
    """
    SIGTERM a child, then SIGKILL it if it has not exited within C{grace}
    seconds; wait until it is reaped either way.
    """
    for sig in ("TERM", "KILL"):
        if collector.has_ended:
            return
        try:
            transport.signalProcess(sig)
        except Exception:
            # Already gone between the check and the signal.
            return
        await collector.wait_ended(grace)


def _tail(data: bytes | bytearray, lines: int = 40) -> str:
    """
    The last C{lines} lines of a child's output, for failure messages.
    """
    text = bytes(data).decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


async def _wait_until_up(
    port: int, has_ended: Callable[[], bool], describe: Callable[[], str]
) -> str | None:
    """
    Ask C{GET /up} until it answers 200; the listening socket exists before
    the daemon starts, so each request simply waits in the backlog until
    the daemon accepts it.

    @param has_ended: whether the daemon has exited (then give up).
    @param describe: the daemon's log, for the failure message.
    @return: L{None} when it is up, else why not (with its log).
    """
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if has_ended():
            return f"twistd sockudo exited during start-up:\n{describe()}"
        status, body = await http_get("127.0.0.1", port, "/up", within=1.0)
        if status == 200:
            return None
        last_error = f"status {status}: {body[:200]!r}"
    return (
        f"twistd sockudo did not answer GET /up on port {port} within "
        f"{SERVER_START_TIMEOUT} s (last: {last_error}):\n{describe()}"
    )


@attrs.define
class ServerProcess:
    """
    A real C{twistd -n sockudo --config FILE} process of one test, on a
    socket the test bound (see L{listening_socket}); for tests that need
    their own config or apps, or stop or restart the daemon.

    @ivar port: the port it listens on for WebSocket and REST alike.
    """

    port: int
    config_path: Path
    _socket: socket.socket
    _collector: _OutputCollector
    _transport: Any
    _earlier_logs: bytearray = attrs.field(factory=bytearray)

    @classmethod
    async def start(
        cls,
        case: TestCase,
        apps: Iterable[Mapping[str, Any]],
        config: Mapping[str, Any] | None = None,
    ) -> ServerProcess:
        """
        Write a config (top-level keys of C{config} replacing the defaults of
        L{server_config}), start the daemon, wait until C{GET /up} answers, and
        register its shutdown as a cleanup of C{case}.

        @raise AssertionError: (through C{case.fail}) when it does not come
            up within L{SERVER_START_TIMEOUT} seconds, with its log.
        """
        sock = listening_socket()
        case.addCleanup(sock.close)
        port: int = sock.getsockname()[1]
        workdir = Path(tempfile.mkdtemp(prefix="sockudo-interop-"))
        case.addCleanup(shutil.rmtree, workdir, True)
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(server_config(port, apps, config), indent=2))
        server = cls(port, config_path, sock, _OutputCollector(), None)
        server._spawn()
        case.addCleanup(server.stop)
        await server._wait_until_up(case)
        return server

    def _spawn(self) -> None:
        """
        Start one daemon process on L{config_path}, handing it the listening
        socket as descriptor 3.
        """
        from twisted.internet import reactor

        env = server_environment()
        env["SOCKUDO_TEST_LISTEN_FD"] = "3"
        self._collector = _OutputCollector()
        self._transport = reactor.spawnProcess(
            self._collector,
            sys.executable,
            daemon_argv(self.config_path),
            env=env,
            path=str(REPO_ROOT),
            childFDs={0: "w", 1: "r", 2: "r", 3: self._socket.fileno()},
        )

    async def restart(self, case: TestCase) -> None:
        """
        Stop the daemon and start it again on the same socket and config, as
        a deploy does; wait until it answers C{GET /up}.
        """
        await self.stop()
        self._earlier_logs += self._collector.output + self._collector.errors
        self._spawn()
        await self._wait_until_up(case)

    async def _wait_until_up(self, case: TestCase) -> None:
        """
        Wait until C{GET /up} answers 200; fail C{case} if the process dies
        or time runs out.
        """
        problem = await _wait_until_up(self.port, lambda: self._collector.has_ended, self.log_tail)
        if problem is not None:
            case.fail(problem)

    async def stop(self) -> None:
        """
        SIGTERM the daemon (SIGKILL if it hangs) and wait until it has exited.
        """
        await _stop_process(self._collector, self._transport, grace=10.0)

    def log_tail(self, lines: int = 60) -> str:
        """
        The end of the daemon's stdout and stderr, for failure messages.
        """
        earlier = ""
        if self._earlier_logs:
            earlier = f"--- twistd before restart (tail) ---\n{_tail(self._earlier_logs, 20)}\n"
        return earlier + (
            f"--- twistd stdout (tail) ---\n{_tail(self._collector.output, lines)}\n"
            f"--- twistd stderr (tail) ---\n{_tail(self._collector.errors, lines)}"
        )


#: How many apps a shared daemon serves; each test takes a new one.
SHARED_APPS = 200


class SharedServer:
    """
    One C{twistd -n sockudo} daemon shared by every interop test of the
    process that needs no config of its own: started by the first such test,
    stopped when the process exits.

    Tests stay independent because each takes an app of the pool that no
    test used before (L{take_app}): channels, members, caches, users and
    connection counts are per app in the server. It is a plain
    C{subprocess.Popen}, not a reactor process, so that trial's per-test
    reactor clean-up leaves it alone.

    @ivar port: the port it listens on for WebSocket and REST alike.
    """

    _current: SharedServer | None = None

    def __init__(self) -> None:
        self._socket = listening_socket()
        self.port: int = self._socket.getsockname()[1]
        self._workdir = Path(tempfile.mkdtemp(prefix="sockudo-interop-shared-"))
        self._log_path = self._workdir / "twistd.log"
        self.apps = [
            app_config(id=str(200000 + n), key=f"interop-key-{n}", secret=f"interop-secret-{n}")
            for n in range(SHARED_APPS)
        ]
        self._taken = 0
        config_path = self._workdir / "config.json"
        config_path.write_text(json.dumps(server_config(self.port, self.apps), indent=2))
        env = server_environment()
        env["SOCKUDO_TEST_LISTEN_FD"] = str(self._socket.fileno())
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                daemon_argv(config_path),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(self._socket.fileno(),),
            )
        atexit.register(self.stop)
        self.up = False

    @classmethod
    async def get(cls, case: TestCase) -> SharedServer:
        """
        The running shared daemon, started (and waited for) on first use, or
        again when it died or its apps are used up.

        @raise AssertionError: (through C{case.fail}) when it does not come
            up, with its log.
        """
        server = cls._current
        if server is None or server.has_ended() or server.exhausted():
            if server is not None:
                server.stop()
            server = cls._current = cls()
        if not server.up:
            problem = await _wait_until_up(server.port, server.has_ended, server.log_tail)
            if problem is not None:
                server.stop()
                cls._current = None
                case.fail(problem)
            server.up = True
        return server

    def exhausted(self) -> bool:
        """
        Whether every app of the pool has been taken.
        """
        return self._taken >= len(self.apps)

    def take_app(self) -> dict[str, Any]:
        """
        An app of the pool that no test has used.
        """
        app = self.apps[self._taken]
        self._taken += 1
        return dict(app)

    def has_ended(self) -> bool:
        """
        Whether the daemon process has exited.
        """
        return self._process.poll() is not None

    def stop(self) -> None:
        """
        SIGTERM the daemon, SIGKILL it after 10 s, close the socket and
        remove the work directory. Blocking: only at exit or before a
        replacement starts.
        """
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._socket.close()
        shutil.rmtree(self._workdir, True)

    def log_tail(self, lines: int = 60) -> str:
        """
        The end of the shared daemon's log (its output since the first test
        that used it), for failure messages.
        """
        try:
            data = self._log_path.read_bytes()
        except OSError:
            data = b"(log gone)"
        return f"--- shared twistd output (tail) ---\n{_tail(data, lines)}"


async def http_get(
    host: str, port: int, path: str, within: float = 5.0
) -> tuple[int | None, bytes]:
    """
    One plain HTTP/1.0 GET over a fresh connection, without blocking the
    reactor; C{(None, error text)} when the connection fails or no complete
    answer came within C{within} seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    class _Get(protocol.Protocol):
        def __init__(self) -> None:
            self.data = bytearray()
            self.done: defer.Deferred[bytes] = defer.Deferred()

        def connectionMade(self) -> None:
            self.transport.write(  # type: ignore[union-attr]
                f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode()
            )

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
            self.done.callback(bytes(self.data))

    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=2)
    proto: _Get | None = None
    try:
        proto = await connectProtocol(endpoint, _Get())
        raw = await proto.done.addTimeout(within, reactor)
    except Exception as error:
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()  # type: ignore[attr-defined]
        return None, repr(error).encode()
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, raw
    return status, body


class NodeDriver:
    """
    One C{node tests/interop/driver.js} process and everything it observed.

    Commands go in as JSON lines; observations (dicts with a C{type}) are
    appended to L{observations} in arrival order and never consumed, so a
    test can ask about anything seen so far.
    """

    def __init__(self, describe_server: Callable[[], str]) -> None:
        self.observations: list[dict[str, Any]] = []
        self._waiters: list[
            tuple[Callable[[dict[str, Any]], bool], defer.Deferred[dict[str, Any]]]
        ] = []
        self._collector = _OutputCollector(self._line_received)
        self._transport: Any = None
        self._describe_server = describe_server
        self._next_id = 0
        self._answered: set[int] = set()

    @classmethod
    async def start(cls, case: TestCase, describe_server: Callable[[], str]) -> NodeDriver:
        """
        Start the driver, wait for its C{ready} line and register its
        shutdown as a cleanup of C{case}.
        """
        from twisted.internet import reactor

        driver = cls(describe_server)
        node = shutil.which("node") or "node"
        driver._transport = reactor.spawnProcess(
            driver._collector,
            node,
            [node, str(DRIVER_SCRIPT), str(DRIVER_LIFETIME)],
            env=dict(os.environ),
            path=str(INTEROP_DIR),
        )
        case.addCleanup(driver.stop)
        await driver.wait_for(lambda o: o["type"] == "ready", "driver ready", within=15)
        return driver

    def _line_received(self, line: bytes) -> None:
        """
        Record one observation and wake the waiters it satisfies.
        """
        if not line.strip():
            return
        try:
            observation = json.loads(line)
        except ValueError:
            observation = {"type": "unparsed", "line": line.decode("utf-8", "replace")}
        self.observations.append(observation)
        for waiter in list(self._waiters):
            matches, deferred = waiter
            if matches(observation):
                self._waiters.remove(waiter)
                deferred.callback(observation)

    def send(self, **command: Any) -> None:
        """
        Send one command (see driver.js for the vocabulary).
        """
        self._transport.write(json.dumps(command).encode() + b"\n")

    def matching(self, matches: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """
        Every observation so far that satisfies C{matches}.
        """
        return [o for o in self.observations if _safe(matches, o)]

    async def wait_for(
        self,
        matches: Callable[[dict[str, Any]], bool],
        description: str,
        within: float = DEFAULT_WAIT,
    ) -> dict[str, Any]:
        """
        The first observation (already seen or still to come) satisfying
        C{matches}.

        @raise AssertionError: after C{within} seconds, with what was
            observed and the server's log.
        """
        from twisted.internet import reactor

        for observation in self.observations:
            if _safe(matches, observation):
                return observation
        deferred: defer.Deferred[dict[str, Any]] = defer.Deferred()
        entry = (lambda o: _safe(matches, o), deferred)
        self._waiters.append(entry)
        deferred.addTimeout(within, reactor)
        try:
            return await deferred
        except defer.TimeoutError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            raise AssertionError(
                f"timed out after {within} s waiting for: {description}\n" + self.report()
            ) from None

    async def wait_count(
        self,
        matches: Callable[[dict[str, Any]], bool],
        count: int,
        description: str,
        within: float = DEFAULT_WAIT,
    ) -> list[dict[str, Any]]:
        """
        Wait until at least C{count} observations satisfy C{matches}: woken
        by each observation, not by polling.
        """
        seen = 0

        def nth(observation: dict[str, Any]) -> bool:
            nonlocal seen
            if _safe(matches, observation):
                seen += 1
            return seen >= count

        try:
            await self.wait_for(nth, f"{count} x {description}", within=within)
        except AssertionError:
            found = len(self.matching(matches))
            raise AssertionError(
                f"expected {count} x {description}, saw {found} after {within} s\n" + self.report()
            ) from None
        return self.matching(matches)

    async def init_sdk(self, options: Mapping[str, Any], name: str = "default") -> None:
        """
        Create a Node C{pusher} SDK instance with C{options}, kept under
        C{name} (the instance called C{"default"} also signs auth requests
        of clients connected with auth C{"sdk"}).
        """
        self.send(op="sdk_init", sdk=name, options=dict(options))
        await self.wait_for(
            lambda o: o["type"] == "sdk_ready" and o["sdk"] == name, f"Node SDK {name!r} ready"
        )

    async def call_sdk(
        self, method: str, *args: Any, sdk: str = "default", within: float = DEFAULT_WAIT
    ) -> dict[str, Any]:
        """
        Call a method of a Node C{pusher} SDK instance and return its
        C{sdk_result}: C{ok}, C{status}, C{body} (parsed JSON when it is
        JSON) and, on a rejection, C{error}.
        """
        self._next_id += 1
        call_id = self._next_id
        self.send(op="sdk_call", id=call_id, sdk=sdk, method=method, args=list(args))
        return await self.wait_for(
            lambda o: o["type"] == "sdk_result" and o["id"] == call_id,
            f"Node SDK {method}{args!r} to answer",
            within=within,
        )

    async def answer_auth(
        self,
        client: str,
        kind: str,
        answer: Callable[[dict[str, Any]], Mapping[str, Any]],
    ) -> dict[str, Any]:
        """
        Wait for C{client}'s next unanswered auth request of C{kind}
        (C{"channel"} or C{"user"}, from a client connected with auth
        C{"ask"}), answer it with C{answer(request)} and return the request.
        """
        request = await self.wait_for(
            lambda o: (
                o["type"] == "auth_request"
                and o["client"] == client
                and o["kind"] == kind
                and o["req"] not in self._answered
            ),
            f"a {kind} auth request from {client!r}",
        )
        self._answered.add(request["req"])
        self.send(op="auth_response", req=request["req"], auth=dict(answer(request)))
        return request

    def stderr_text(self) -> str:
        """
        Everything the driver wrote to stderr: pusher-js's debug log.
        """
        return bytes(self._collector.errors).decode("utf-8", "replace")

    def report(self) -> str:
        """
        What the driver observed (last 40 lines), its stderr and the server's
        log: the context a failing interop assertion needs.
        """
        seen = "\n".join(json.dumps(o) for o in self.observations[-40:])
        return (
            f"--- node driver observations (last 40 of {len(self.observations)}) ---\n{seen}\n"
            f"--- node driver stderr (tail) ---\n{_tail(self._collector.errors, 30)}\n"
            + self._describe_server()
        )

    async def stop(self) -> None:
        """
        Ask the driver to exit (disconnecting its clients), then make sure it
        did.
        """
        if self._collector.has_ended:
            return
        try:
            self.send(op="exit")
            self._transport.closeStdin()
        except Exception:
            pass
        await self._collector.wait_ended(3.0)
        await _stop_process(self._collector, self._transport, grace=3.0)


def match(kind: str, client: str, /, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """
    A predicate on driver observations: type C{kind}, from client C{client},
    and every given field equal.
    """

    def matches(observation: dict[str, Any]) -> bool:
        return (
            observation["type"] == kind
            and observation.get("client") == client
            and all(observation.get(k) == v for k, v in fields.items())
        )

    return matches


def _safe(matches: Callable[[dict[str, Any]], bool], observation: dict[str, Any]) -> bool:
    """
    Apply a predicate, treating a KeyError/TypeError on an unexpected shape as
    "no match".
    """
    try:
        return bool(matches(observation))
    except (KeyError, TypeError, AttributeError, IndexError):
        return False


@attrs.define
class Interop:
    """
    A test's fixture: a server (shared or private) and one node driver.

    @ivar server: a L{SharedServer}, or the test's own L{ServerProcess}
        when it asked for one.
    @ivar app_id: the id of the test's app (its key and secret in
        L{app_key} and L{app_secret}): a fresh app of the shared daemon's
        pool, or L{APP_ID} on a private daemon.
    """

    case: TestCase
    server: ServerProcess | SharedServer
    node: NodeDriver
    app_id: str = APP_ID
    app_key: str = APP_KEY
    app_secret: str = APP_SECRET

    @classmethod
    async def start(
        cls,
        case: TestCase,
        apps: Iterable[Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        node_sdk: bool = True,
        private: bool = False,
    ) -> Interop:
        """
        Start the node driver and initialise the Node SDK against the
        server: the shared daemon with a fresh app of its pool, or, when
        C{apps}, C{config} or C{private} is given, a daemon of this test
        alone (with L{app_config} unless C{apps} is given, and the top-level
        C{config} overrides).

        @param private: a daemon of this test alone even with the default
            config, for tests that stop or restart it.
        """
        require_node(case)
        servers: list[ServerProcess | SharedServer] = []

        def describe_server() -> str:
            return servers[0].log_tail() if servers else "(server not started yet)"

        # Start both at once: each takes a few hundred milliseconds.
        starting_node = defer.Deferred.fromCoroutine(NodeDriver.start(case, describe_server))
        app = app_config()
        try:
            if apps is None and config is None and not private:
                shared = await SharedServer.get(case)
                app = shared.take_app()
                servers.append(shared)
            else:
                servers.append(
                    await ServerProcess.start(case, apps if apps is not None else [app], config)
                )
        finally:
            node = await starting_node
        fixture = cls(case, servers[0], node, app["id"], app["key"], app["secret"])
        if node_sdk:
            await node.init_sdk(fixture.sdk_options())
        return fixture

    def sdk_options(
        self, app_id: str | None = None, key: str | None = None, secret: str | None = None
    ) -> dict[str, Any]:
        """
        Options of the Node C{pusher} SDK pointed at our server, for the
        test's app unless told otherwise.
        """
        return {
            "appId": app_id if app_id is not None else self.app_id,
            "key": key if key is not None else self.app_key,
            "secret": secret if secret is not None else self.app_secret,
            "host": "127.0.0.1",
            "port": str(self.server.port),
            "useTLS": False,
            "encryptionMasterKeyBase64": ENCRYPTION_MASTER_KEY_BASE64,
        }

    def python_sdk(self) -> Any:
        """
        The official Python C{pusher} SDK pointed at our server.
        """
        import pusher

        return pusher.Pusher(
            app_id=self.app_id,
            key=self.app_key,
            secret=self.app_secret,
            ssl=False,
            host="127.0.0.1",
            port=self.server.port,
            timeout=5,
            encryption_master_key_base64=ENCRYPTION_MASTER_KEY_BASE64,
        )

    async def connect(
        self,
        client: str,
        key: str | None = None,
        auth: str = "sdk",
        presence: Mapping[str, Any] | None = None,
        user: Mapping[str, Any] | None = None,
        wait: bool = True,
        **options: Any,
    ) -> str | None:
        """
        Connect a pusher-js client and return its socket id.

        @param auth: C{"sdk"} to sign with the Node SDK in the driver,
            C{"ask"} to receive C{auth_request} observations and answer them.
        @param presence: the presence data the Node SDK signs for
            C{presence-} channels.
        @param user: the user data the Node SDK signs on sign-in.
        @param wait: wait for C{connected} (else return L{None} at once).
        @param options: extra pusher-js options.
        """
        self.node.send(
            op="connect",
            client=client,
            key=key if key is not None else self.app_key,
            host="127.0.0.1",
            port=self.server.port,
            auth=auth,
            presence=dict(presence) if presence is not None else None,
            user=dict(user) if user is not None else None,
            options=options,
        )
        if not wait:
            return None
        connected = await self.node.wait_for(
            lambda o: o["type"] == "connected" and o["client"] == client,
            f"pusher-js client {client!r} to connect",
        )
        socket_id: str = connected["socket_id"]
        return socket_id

    async def subscribe(
        self, client: str, channel: str, bind: Iterable[str] = ()
    ) -> dict[str, Any]:
        """
        Subscribe a client and wait for C{pusher:subscription_succeeded} as
        pusher-js reports it to the application.
        """
        self.node.send(op="subscribe", client=client, channel=channel, bind=list(bind))
        return await self.node.wait_for(
            lambda o: (
                o["type"] == "event"
                and o["client"] == client
                and o["channel"] == channel
                and o["event"] == "pusher:subscription_succeeded"
            ),
            f"{client!r} to get pusher:subscription_succeeded on {channel!r}",
        )

    async def event(
        self, client: str, channel: str, event: str, within: float = DEFAULT_WAIT
    ) -> dict[str, Any]:
        """
        Wait until pusher-js gives the application C{event} on C{channel}.
        """
        return await self.node.wait_for(
            lambda o: (
                o["type"] == "event"
                and o["client"] == client
                and o["channel"] == channel
                and o["event"] == event
            ),
            f"{client!r} to receive {event!r} on {channel!r}",
            within=within,
        )

    async def barrier(self, *clients: str) -> None:
        """
        For each client in turn, send C{pusher:ping} on its connection and
        wait for the server's C{pusher:pong}: the server handles a
        connection's frames in order and writes to it in order, so once the
        pong is back, every frame the server meant for that client because of
        anything it had handled before (an answered API call, an earlier
        frame of this or of an earlier-barriered client) has arrived. A
        deterministic replacement for L{settle} before asserting that
        something did I{not} arrive.
        """
        for client in clients:
            pongs = match("message", client, event="pusher:pong")
            before = len(self.node.matching(pongs))
            self.node.send(op="ping", client=client)
            await self.node.wait_count(pongs, before + 1, f"pusher:pong to {client!r}'s ping")

    async def settle(self, seconds: float = 0.3) -> None:
        """
        Give frames that should NOT arrive a chance to arrive, before
        asserting they did not: only where a timer of the server or of
        pusher-js decides (L{barrier} covers everything ordered by frames).
        """
        from twisted.internet import reactor

        await task.deferLater(reactor, seconds)

    async def in_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        Run a blocking SDK call (the Python SDK uses requests) off the
        reactor thread.
        """
        from twisted.internet import threads

        return await threads.deferToThread(function, *args, **kwargs)
