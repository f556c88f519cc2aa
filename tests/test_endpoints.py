"""
Integration tests of the listeners L{sockudo_tw.service.make_service} builds
from config, over real loopback sockets: TLS with a real wss handshake and a
certificate made here, Unix sockets with each permission_mode form, and a
stale socket file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import stat
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from sockudo_tw.config import ServerConfig, parse_config
from sockudo_tw.service import (
    SockudoService,
    config_listeners,
    make_service,
    prepare_unix_socket,
)

reactor: Any = _global_reactor


def _make_cert(directory: str) -> tuple[str, str, bytes]:
    """
    Write a self-signed certificate for C{localhost} and 127.0.0.1 and its
    key into C{directory}; return the cert path, key path and cert PEM.
    """
    directory = os.path.abspath(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path = os.path.join(directory, "cert:1.pem")  # a colon, to test escaping
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path, cert_pem


def _leave_stale_socket(path: str) -> None:
    """
    Bind a socket file at C{path} and close it without removing the file,
    as a killed process would.
    """
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(path)
    leftover.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)


class _Client(WebSocketClientProtocol):
    """
    Reports open, messages and close to its factory's Deferreds.
    """

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N803
        self.factory.messages.append(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N803
        if not self.factory.opened.called:
            self.factory.opened.errback(Failure(ConnectionError(f"closed: {code} {reason}")))
        self.factory.closed.callback((code, reason))


def _client_factory(url: str) -> WebSocketClientFactory:
    """
    An Autobahn client factory for C{url} with result Deferreds.
    """
    factory = WebSocketClientFactory(url, reactor=reactor)
    factory.protocol = _Client
    factory.opened = Deferred()
    factory.closed = Deferred()
    factory.messages = []
    return factory


class _HttpResponse(Protocol):
    """
    Collects a whole HTTP/1.0 response until the server closes.
    """

    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.done.callback(self.data)


async def _http_get(endpoint: Any, path: bytes) -> bytes:
    """
    A raw HTTP/1.0 GET over C{endpoint}; the whole response.
    """
    protocol = _HttpResponse()
    await endpoint.connect(Factory.forProtocol(lambda: protocol))
    assert protocol.transport is not None
    protocol.transport.write(b"GET " + path + b" HTTP/1.0\r\nHost: localhost\r\n\r\n")
    return await protocol.done


class _Running:
    """
    Start a built service on the real reactor and stop it at cleanup.
    """

    def __init__(self, test: TestCase, service: SockudoService) -> None:
        self.service = service
        service.startService()
        test.addCleanup(self.stop)

    def stop(self) -> Deferred[None] | None:
        """
        Stop the service if a test has not already.
        """
        if self.service.running:
            result: Deferred[None] = self.service.stopService()
            return result
        return None

    async def port(self, index: int = 0) -> int:
        """
        The TCP port listener C{index} is bound to.
        """
        bound = await self.service.listening_port(index)
        port: int = bound.getHost().port
        return port


def _config(data: dict[str, Any]) -> ServerConfig:
    """
    Parse C{data} with no environment and quiet, short shutdown.
    """
    app = {"id": "app-id", "key": "app-key", "secret": "app-secret"}
    data = dict(
        data,
        metrics={"enabled": False},
        shutdown_grace_period=2,
        app_manager={"array": {"apps": [app]}},
    )
    return parse_config(data, {})


class TlsTests(TestCase):
    """
    C{ssl.enabled} serves HTTPS and wss on one port.
    """

    async def test_wss_handshake(self) -> None:
        """
        A real wss client verifying our self-signed certificate completes
        the handshake at C{/app/{key}}, and shutdown closes it with 4200.
        """
        cert_path, key_path, cert_pem = _make_cert(self.mktemp())
        config = _config(
            {
                "host": "127.0.0.1",
                "ssl": {"enabled": True, "cert_path": cert_path, "key_path": key_path},
            }
        )
        (description,) = config_listeners(attrs.evolve(config, port=0))
        self.assertTrue(description.startswith("ssl:0:interface=127.0.0.1:"))
        running = _Running(self, make_service(config, reactor, listen=[description]))
        port = await running.port()

        tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_pem))
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        body = await _http_get(endpoint, b"/up")
        self.assertTrue(body.startswith(b"HTTP/1.0 200 "), body)
        self.assertTrue(body.endswith(b"\r\n\r\nOK"), body)

        factory = _client_factory(f"wss://localhost:{port}/app/app-key?protocol=7")
        await endpoint.connect(factory)
        await factory.opened
        await running.service.stopService()
        code, reason = await factory.closed
        self.assertEqual((code, reason), (4200, "Server shutting down"))

    async def test_untrusted_rejected(self) -> None:
        """
        A client that does not trust the certificate fails the handshake,
        so the listener really is TLS.
        """
        cert_path, key_path, _ = _make_cert(self.mktemp())
        other_pem = _make_cert(self.mktemp())[2]
        config = _config({"ssl": {"enabled": True, "cert_path": cert_path, "key_path": key_path}})
        (description,) = config_listeners(attrs.evolve(config, port=0, host="127.0.0.1"))
        running = _Running(self, make_service(config, reactor, listen=[description]))
        port = await running.port()
        tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(other_pem))
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        factory = _client_factory(f"wss://localhost:{port}/app/app-key?protocol=7")
        await endpoint.connect(factory)
        with self.assertRaises(ConnectionError):
            await factory.opened


class TcpTests(TestCase):
    """
    Plain TCP: WebSocket and HTTP on one listener.
    """

    async def test_ws_and_http(self) -> None:
        """
        ws handshake at C{/app/{key}}; plain GET there is 426; C{/} is OK.
        """
        config = _config({"host": "127.0.0.1"})
        running = _Running(
            self, make_service(config, reactor, listen=["tcp:0:interface=127.0.0.1"])
        )
        port = await running.port()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self.assertTrue((await _http_get(endpoint, b"/")).endswith(b"\r\n\r\nOK"))
        self.assertTrue((await _http_get(endpoint, b"/app/app-key")).startswith(b"HTTP/1.1 426 "))
        factory = _client_factory(f"ws://127.0.0.1:{port}/app/app-key?protocol=7")
        await endpoint.connect(factory)
        await factory.opened


class UnixSocketTests(TestCase):
    """
    C{unix_socket.enabled} listens on a socket file with the configured
    mode, replacing TCP.
    """

    def socket_path(self) -> str:
        """
        A short absolute socket path (AF_UNIX paths are limited to ~108
        bytes, trial's temp paths can be longer).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        if len(directory) > 80:
            import tempfile

            directory = tempfile.mkdtemp(prefix="sockudo-")
            self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "s.sock")

    async def serve(self, mode: object, path: str) -> bytes:
        """
        Start on C{path} with C{permission_mode} C{mode}; GET C{/up} there.
        """
        config = _config({"unix_socket": {"enabled": True, "path": path, "permission_mode": mode}})
        running = _Running(self, make_service(config, reactor))
        await running.service.listening_port(0)
        self.assertEqual(len(running.service.listeners), 1)
        return await _http_get(UNIXClientEndpoint(reactor, path), b"/up")

    async def test_modes(self) -> None:
        """
        C{"755"}, C{755} and C{493} all give the socket mode 0o755.
        """
        for mode in ("755", 755, 493):
            path = self.socket_path()
            body = await self.serve(mode, path)
            self.assertTrue(body.endswith(b"\r\n\r\nOK"), body)
            st = os.stat(path)
            self.assertTrue(stat.S_ISSOCK(st.st_mode))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o755, mode)

    async def test_stale_socket(self) -> None:
        """
        A socket file left behind by a dead process does not stop start-up.
        """
        path = self.socket_path()
        _leave_stale_socket(path)
        body = await self.serve("660", path)
        self.assertTrue(body.endswith(b"\r\n\r\nOK"), body)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)


class PrepareUnixSocketTests(TestCase):
    """
    L{prepare_unix_socket} removes only dead socket files.
    """

    def directory(self) -> str:
        """
        A short fresh directory for socket files.
        """
        import tempfile

        directory = tempfile.mkdtemp(prefix="sockudo-")
        self.addCleanup(shutil.rmtree, directory, True)
        return directory

    def test_live_socket_kept(self) -> None:
        """
        A socket someone is listening on is left in place.
        """
        path = os.path.join(self.directory(), "live.sock")
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(live.close)
        live.bind(path)
        live.listen(1)
        prepare_unix_socket(path)
        self.assertTrue(os.path.exists(path))

    def test_regular_file_kept(self) -> None:
        """
        A regular file at the path is never removed.
        """
        path = os.path.join(self.directory(), "file.sock")
        with open(path, "w") as f:
            f.write("x")
        prepare_unix_socket(path)
        self.assertTrue(os.path.exists(path))

    def test_stale_removed_and_directory_made(self) -> None:
        """
        A dead socket file is removed; a missing directory is created 0755.
        """
        base = self.directory()
        path = os.path.join(base, "s.sock")
        _leave_stale_socket(path)
        prepare_unix_socket(path)
        self.assertFalse(os.path.exists(path))
        nested = os.path.join(base, "sub", "s.sock")
        prepare_unix_socket(nested)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(nested)).st_mode) & 0o700, 0o700)
