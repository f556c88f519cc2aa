"""
Tests for L{sockudo_tw.redisurl}: the one Redis URL parser the config, the
adapter, the queue and the webhooks share.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sockudo_tw.redisurl import RedisUrl, parse_redis_url, redact_redis_url
from tests.interop_harness import free_port, unavailable


class ParseTests(SynchronousTestCase):
    """
    L{parse_redis_url} accepts C{redis://}, C{rediss://} and C{unix://}.
    """

    def test_plain(self) -> None:
        """
        A bare URL means port 6379, no database selection, no TLS.
        """
        self.assertEqual(parse_redis_url("redis://127.0.0.1"), RedisUrl("127.0.0.1"))
        self.assertEqual(parse_redis_url("redis://h:6380"), RedisUrl("h", 6380))

    def test_credentials_and_db(self) -> None:
        """
        User and password are percent-decoded; the database comes from the
        path or from C{?db=}.
        """
        self.assertEqual(
            parse_redis_url("redis://user:p%40ss%3Aw@h:7000/3"),
            RedisUrl("h", 7000, 3, "user", "p@ss:w"),
        )
        self.assertEqual(parse_redis_url("redis://:pw@h?db=2"), RedisUrl("h", db=2, password="pw"))

    def test_tls(self) -> None:
        """
        C{rediss://} is TLS.
        """
        url = parse_redis_url("rediss://default:secret@redis.example.com:6380/1")
        self.assertEqual(url, RedisUrl("redis.example.com", 6380, 1, "default", "secret", True))

    def test_unix(self) -> None:
        """
        C{unix://} names an absolute socket path, with optional credentials
        and C{?db=}.
        """
        self.assertEqual(
            parse_redis_url("unix:///run/redis/redis.sock?db=4"),
            RedisUrl(host=None, port=0, db=4, path="/run/redis/redis.sock"),
        )
        self.assertEqual(
            parse_redis_url("unix://:pw@/tmp/r.sock"),
            RedisUrl(host=None, port=0, password="pw", path="/tmp/r.sock"),
        )

    def test_ipv6(self) -> None:
        """
        A bracketed IPv6 address is the host.
        """
        self.assertEqual(parse_redis_url("redis://[::1]:6390"), RedisUrl("::1", 6390))

    def test_refused(self) -> None:
        """
        Every malformed URL raises L{ValueError} saying what is wrong.
        """
        cases = {
            "http://h": "unsupported Redis URL scheme 'http'",
            "redis+sentinel://h": "unsupported Redis URL scheme",
            "h:6379": "unsupported Redis URL scheme",
            "redis://": "missing host",
            "redis://h:0": "the port",
            "redis://h:70000": "the port",
            "redis://h:x": "the port",
            "redis://h/db0": "the database",
            "redis://h/1?db=2": "the database is given twice",
            "redis://h?timeout=3": "unsupported Redis URL parameter 'timeout'",
            "redis://h#x": "fragment",
            "unix://relative.sock": "must be absolute",
            "redis://[::1": "malformed Redis URL",
            "": "expected a Redis URL",
        }
        for url, message in cases.items():
            with self.assertRaises(ValueError, msg=url) as caught:
                parse_redis_url(url)
            self.assertIn(message, str(caught.exception), url)

    def test_password_never_shown(self) -> None:
        """
        Error messages and C{repr} never contain the password.
        """
        with self.assertRaises(ValueError) as caught:
            parse_redis_url("redis://u:hunter2@h:bad/0")
        self.assertNotIn("hunter2", str(caught.exception))
        self.assertIn("u:***@h", str(caught.exception))
        self.assertNotIn("hunter2", repr(parse_redis_url("redis://u:hunter2@h")))
        self.assertEqual(redact_redis_url("redis://h"), "redis://h")
        self.assertEqual(redact_redis_url("rediss://:x@h:1/2"), "rediss://:***@h:1/2")


class UseTests(SynchronousTestCase):
    """
    What a parsed URL gives its users.
    """

    def test_endpoints(self) -> None:
        """
        TCP, TLS and Unix URLs give the matching client endpoint.
        """
        reactor = MemoryReactor()
        self.assertIsInstance(parse_redis_url("redis://h").endpoint(reactor), HostnameEndpoint)
        self.assertIsInstance(
            parse_redis_url("unix:///tmp/r.sock").endpoint(reactor), UNIXClientEndpoint
        )
        tls = parse_redis_url("rediss://h").endpoint(reactor)
        self.assertTrue(IStreamClientEndpoint.providedBy(tls))
        self.assertNotIsInstance(tls, HostnameEndpoint)

    def test_describe(self) -> None:
        """
        L{RedisUrl.describe} is the URL for logs, password hidden.
        """
        self.assertEqual(
            parse_redis_url("rediss://u:pw@h:6380/2").describe(), "rediss://u:***@h:6380/2"
        )
        self.assertEqual(parse_redis_url("redis://[::1]").describe(), "redis://[::1]:6379")
        self.assertEqual(
            parse_redis_url("unix:///tmp/r.sock?db=1").describe(), "unix:///tmp/r.sock?db=1"
        )

    def test_hashable(self) -> None:
        """
        Equal URLs are one dictionary key (the webhooks share one pool per
        server).
        """
        pools = {parse_redis_url("redis://h/0"): 1, parse_redis_url("redis://h:6379?db=0"): 2}
        self.assertEqual(len(pools), 1)


class _Lines(Protocol):
    """
    Sends raw RESP commands on connect and collects the reply bytes.
    """

    def __init__(self, commands: bytes) -> None:
        self.commands = commands
        self.received = b""
        self.lost: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.commands)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.count(b"\r\n") >= self.commands.count(b"\r\n"):
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(self.received)


class RealRedisTests(TestCase):
    """
    The parsed URLs reach a real C{redis-server} over a Unix socket and over
    TLS, with a password and a database (fail under C{CI=true} without
    redis-server, skip otherwise).
    """

    timeout = 30

    def setUp(self) -> None:
        binary = shutil.which("redis-server")
        openssl = shutil.which("openssl")
        if binary is None or openssl is None:
            message = "the Redis URL tests need redis-server and openssl on PATH"
            unavailable(self, message)
        self.dir = tempfile.mkdtemp(prefix="sockudo-redisurl-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        d = self.dir

        def run(*argv: str) -> None:
            subprocess.run(argv, check=True, capture_output=True, cwd=d)

        run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA")  # fmt: skip
        run(openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=localhost")  # fmt: skip
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=DNS:localhost\n")
        run(openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem",
            "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "1",
            "-extfile", "ext.cnf")  # fmt: skip
        with open(os.path.join(d, "ca.pem"), "rb") as f:
            self.ca_pem = f.read()
        self.socket = os.path.join(d, "redis.sock")
        self.tls_port = free_port()
        self.process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
             "--requirepass", "s3cr@t", "--tls-port", str(self.tls_port),
             "--bind", "127.0.0.1", "--tls-cert-file", "server.pem",
             "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem",
             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", d],
            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.addCleanup(self.process.wait)
        self.addCleanup(self.process.kill)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.fail("private redis-server did not start")
            time.sleep(0.02)

    async def exchange(self, url: RedisUrl, commands: bytes, **kwargs: Any) -> bytes:
        """
        Connect through C{url}'s endpoint, send C{commands}, return the
        replies.
        """
        from twisted.internet import reactor

        protocol = _Lines(commands)
        await url.endpoint(reactor, **kwargs).connect(Factory.forProtocol(lambda: protocol))
        return await protocol.lost

    async def test_unix_endpoint(self) -> None:
        """
        A C{unix://} URL's endpoint reaches the socket (the adapter's path).
        """
        url = parse_redis_url(f"unix://:s3cr%40t@{self.socket}?db=3")
        self.assertEqual(url.password, "s3cr@t")
        reply = await self.exchange(url, b"AUTH s3cr@t\r\nPING\r\n")
        self.assertEqual(reply, b"+OK\r\n+PONG\r\n")

    async def test_tls_verified(self) -> None:
        """
        A C{rediss://} URL speaks TLS and checks the server certificate:
        trusted, it works; against the system store, the handshake fails.
        """
        from twisted.internet.ssl import Certificate

        ca = Certificate.loadPEM(self.ca_pem)
        url = parse_redis_url(f"rediss://:s3cr%40t@localhost:{self.tls_port}/2")
        reply = await self.exchange(url, b"AUTH s3cr@t\r\nPING\r\n", trust_root=ca)
        self.assertEqual(reply, b"+OK\r\n+PONG\r\n")
        self.assertEqual(await self.exchange(url, b"PING\r\n"), b"")

    async def test_command_link(self) -> None:
        """
        The one Redis client stack (the adapter's L{RedisLink}, which the
        webhooks' queue shares) logs in and selects the URL's database over
        a Unix socket.
        """
        from twisted.internet import reactor

        from sockudo_tw.adapters._redis_link import RedisLink

        waiting: list[Deferred[None]] = []

        def link(url: str) -> RedisLink:
            address = parse_redis_url(url)
            result = RedisLink(
                reactor,
                address.endpoint(reactor, timeout=5),
                b"sockudo-tw#test",
                lambda channel, message: None,
                password=address.password,
                username=address.username,
                db=address.db,
            )
            ready: Deferred[None] = Deferred()
            result.observe_command_ready(lambda: ready.called or ready.callback(None))
            result.startService()
            self.addCleanup(result.stopService)
            waiting.append(ready)
            return result

        db3 = link(f"unix://:s3cr%40t@{self.socket}?db=3")
        db0 = link(f"unix://:s3cr%40t@{self.socket}?db=0")
        for ready in waiting:
            await ready
        await db3.execute_command("SET", "k", "v")
        self.assertEqual(await db3.execute_command("GET", "k"), b"v")
        self.assertIsNone(await db0.execute_command("GET", "k"))
