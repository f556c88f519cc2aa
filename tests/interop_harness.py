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

Outside CI a missing C{node} or a missing C{tests/interop/node_modules} makes
the tests skip, naming what is missing; with C{CI=true} the same condition is
a failure, so CI can never go green by running nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer, protocol, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

__all__ = [
    "APP_ID",
    "APP_KEY",
    "APP_SECRET",
    "ENCRYPTION_MASTER_KEY_BASE64",
    "Interop",
    "NodeDriver",
    "ServerProcess",
    "app_config",
    "match",
    "require_node",
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


def require_node(case: TestCase) -> None:
    """
    Skip (outside CI) or fail (with C{CI=true}) when node or the pinned npm
    packages are missing.

    @param case: the running test, failed through C{case.fail} in CI.
    """
    missing = missing_node_dependencies()
    if not missing:
        return
    message = "interop tests need " + "; ".join(missing)
    if in_ci():
        case.fail(message + " (CI=true, so this is a failure, not a skip)")
    raise SkipTest(message)


def free_port() -> int:
    """
    Pick a free TCP port on 127.0.0.1 by binding port 0 and closing it.

    Another process could take it before the server binds it; on loopback in
    a test run that race is rare enough, and the failure is loud.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    127.0.0.1:C{port}, with everything that would bind another port or need
    another service turned off.

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


@attrs.define
class ServerProcess:
    """
    A real C{twistd -n sockudo --config FILE} process on 127.0.0.1.

    @ivar port: the port it listens on for WebSocket and REST alike.
    """

    port: int
    config_path: Path
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

        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="sockudo-interop-"))
        case.addCleanup(shutil.rmtree, workdir, True)
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(server_config(port, apps, config), indent=2))
        server = cls(port, config_path, _OutputCollector(), None)
        server._spawn()
        case.addCleanup(server.stop)
        await server._wait_until_up(case)
        return server

    def _spawn(self) -> None:
        """
        Start one daemon process on L{config_path}.
        """
        from twisted.internet import reactor

        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "sockudo",
            "--config",
            str(self.config_path),
        ]
        self._collector = _OutputCollector()
        self._transport = reactor.spawnProcess(
            self._collector, sys.executable, argv, env=server_environment(), path=str(REPO_ROOT)
        )

    async def restart(self, case: TestCase) -> None:
        """
        Stop the daemon and start it again on the same port and config, as
        a deploy does; wait until it answers C{GET /up}.
        """
        await self.stop()
        self._earlier_logs += self._collector.output + self._collector.errors
        self._spawn()
        await self._wait_until_up(case)

    async def _wait_until_up(self, case: TestCase) -> None:
        """
        Poll C{GET /up} until it answers 200, the process dies, or time runs
        out.
        """
        from twisted.internet import reactor

        deadline = time.monotonic() + SERVER_START_TIMEOUT
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self._collector.has_ended:
                case.fail(f"twistd sockudo exited during start-up:\n{self.log_tail()}")
            status, body = await http_get("127.0.0.1", self.port, "/up")
            if status == 200:
                return
            last_error = f"status {status}: {body[:200]!r}"
            await task.deferLater(reactor, 0.1)
        case.fail(
            f"twistd sockudo did not answer GET /up on port {self.port} within "
            f"{SERVER_START_TIMEOUT} s (last: {last_error}):\n{self.log_tail()}"
        )

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


async def http_get(host: str, port: int, path: str) -> tuple[int | None, bytes]:
    """
    One plain HTTP/1.0 GET over a fresh connection, without blocking the
    reactor; C{(None, error text)} when the connection fails.
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
    try:
        proto = await connectProtocol(endpoint, _Get())
        raw = await proto.done.addTimeout(5, reactor)
    except Exception as error:
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
        Wait until at least C{count} observations satisfy C{matches}.
        """
        from twisted.internet import reactor

        deadline = time.monotonic() + within
        while True:
            found = self.matching(matches)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline or self._collector.has_ended:
                raise AssertionError(
                    f"expected {count} x {description}, saw {len(found)} after {within} s\n"
                    + self.report()
                )
            await task.deferLater(reactor, 0.05)

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
    A test's fixture: one server process and one node driver.
    """

    case: TestCase
    server: ServerProcess
    node: NodeDriver

    @classmethod
    async def start(
        cls,
        case: TestCase,
        apps: Iterable[Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        node_sdk: bool = True,
    ) -> Interop:
        """
        Start the server (with L{app_config} unless C{apps} is given, and the
        top-level C{config} overrides) and the node driver, and initialise
        the Node SDK against the server.
        """
        require_node(case)
        servers: list[ServerProcess] = []

        def describe_server() -> str:
            return servers[0].log_tail() if servers else "(server not started yet)"

        # Start both at once: each takes a few hundred milliseconds, and
        # every interop test pays for them.
        starting_node = defer.Deferred.fromCoroutine(NodeDriver.start(case, describe_server))
        try:
            servers.append(
                await ServerProcess.start(
                    case, apps if apps is not None else [app_config()], config
                )
            )
        finally:
            node = await starting_node
        fixture = cls(case, servers[0], node)
        if node_sdk:
            await node.init_sdk(fixture.sdk_options())
        return fixture

    def sdk_options(
        self, app_id: str = APP_ID, key: str = APP_KEY, secret: str = APP_SECRET
    ) -> dict[str, Any]:
        """
        Options of the Node C{pusher} SDK pointed at our server.
        """
        return {
            "appId": app_id,
            "key": key,
            "secret": secret,
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
            app_id=APP_ID,
            key=APP_KEY,
            secret=APP_SECRET,
            ssl=False,
            host="127.0.0.1",
            port=self.server.port,
            timeout=5,
            encryption_master_key_base64=ENCRYPTION_MASTER_KEY_BASE64,
        )

    async def connect(
        self,
        client: str,
        key: str = APP_KEY,
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
            key=key,
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

    async def settle(self, seconds: float = 0.3) -> None:
        """
        Give frames that should NOT arrive a chance to arrive, before
        asserting they did not.
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
