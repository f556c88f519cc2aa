# -*- test-case-name: tests.test_tls -*-
"""
TLS listeners as browsers use them, over real loopback sockets: ALPN offered
with C{["h2", "http/1.1"]} selects C{http/1.1}; C{/up}, a C{wss://}
WebSocket and pusher-js (Node, C{forceTLS}) work; a certificate file holding
the chain (leaf, then intermediate) is served whole; the listener's log line
names no internal class.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from sockudo_tw.config import ServerConfig, parse_config
from sockudo_tw.service import config_listeners, make_service
from tests.interop_harness import INTEROP_DIR, require_node
from tests.test_endpoints import _Client, _client_factory, _Running

reactor: Any = _global_reactor

ALPN = [b"h2", b"http/1.1"]

SAMPLE = INTEROP_DIR.parent.parent / "etc" / "sockudo" / "config.json"


class _FirstMessageClient(_Client):
    """
    A test client whose factory's C{first_message} Deferred fires with the
    first frame received, so a test waits on the event, not on a timer.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N803
        super().onMessage(payload, isBinary)
        if not self.factory.first_message.called:
            self.factory.first_message.callback(payload)


Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: Key, issuer: str, issuer_key: Key, ca: bool
) -> x509.Certificate:
    """
    A certificate for C{subject} signed by C{issuer_key}; a leaf names
    C{localhost} and 127.0.0.1.
    """
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_chain(directory: str) -> tuple[str, str, bytes]:
    """
    Write a leaf certificate signed by an intermediate CA signed by a root
    CA: C{fullchain.pem} (leaf then intermediate, as Let's Encrypt's) and
    C{key.pem}. Return their paths and the root's PEM (what clients trust).
    """
    os.makedirs(directory)
    root_key, middle_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate("Test Root CA", root_key, "Test Root CA", root_key, ca=True)
    middle = _certificate("Test Intermediate CA", middle_key, "Test Root CA", root_key, ca=True)
    leaf = _certificate("localhost", leaf_key, "Test Intermediate CA", middle_key, ca=False)
    cert_path = os.path.join(os.path.abspath(directory), "fullchain.pem")
    key_path = os.path.join(os.path.abspath(directory), "key.pem")
    with open(cert_path, "wb") as f:
        f.write(_pem(leaf) + _pem(middle))
    with open(key_path, "wb") as f:
        f.write(
            leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    root_path = os.path.join(os.path.abspath(directory), "root.pem")
    with open(root_path, "wb") as f:
        f.write(_pem(root))
    return cert_path, key_path, _pem(root)


def _config(cert_path: str, key_path: str) -> ServerConfig:
    app = {"id": "app-id", "key": "app-key", "secret": "app-secret"}
    return parse_config(
        {
            "host": "127.0.0.1",
            "metrics": {"enabled": False},
            "shutdown_grace_period": 2,
            "app_manager": {"array": {"apps": [app]}},
            "ssl": {"enabled": True, "cert_path": cert_path, "key_path": key_path},
        },
        {},
    )


class _Response(Protocol):
    """
    Collects a whole HTTP/1.0 response until the server closes, and the
    protocol ALPN selected.
    """

    def __init__(self) -> None:
        self.data = b""
        self.alpn: bytes | None = None
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.alpn is None:
            self.alpn = getattr(self.transport, "negotiatedProtocol", None)
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.done.callback(self.data)


class AlpnTests(TestCase):
    """
    A TLS listener from C{ssl.enabled} with a chain file, reached by clients
    that offer ALPN and trust only the root CA.
    """

    async def start(self) -> tuple[int, bytes, str]:
        """
        Serve on a fresh port; return it, the root CA PEM and the root's path.
        """
        cert_path, key_path, root_pem = make_chain(self.mktemp())
        config = _config(cert_path, key_path)
        (description,) = config_listeners(attrs.evolve(config, port=0))
        self.assertIn(":extraCertChain=", description)
        running = _Running(self, make_service(config, reactor, listen=[description]))
        self.running = running
        return await running.port(), root_pem, os.path.join(os.path.dirname(cert_path), "root.pem")

    def endpoint(self, port: int, root_pem: bytes) -> Any:
        tls = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(root_pem), acceptableProtocols=ALPN
        )
        return wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port))

    async def test_up(self) -> None:
        """
        C{GET /up} over TLS offering h2 and http/1.1 is 200, with
        C{http/1.1} selected, verified through the intermediate.
        """
        port, root_pem, _ = await self.start()
        protocol = _Response()
        await self.endpoint(port, root_pem).connect(Factory.forProtocol(lambda: protocol))
        assert protocol.transport is not None
        protocol.transport.write(b"GET /up HTTP/1.0\r\nHost: localhost\r\n\r\n")
        body = await protocol.done
        self.assertTrue(body.startswith(b"HTTP/1.0 200 "), body)
        self.assertTrue(body.endswith(b"\r\n\r\nOK"), body)
        self.assertEqual(protocol.alpn, b"http/1.1")

    async def test_trigger(self) -> None:
        """
        The trigger fast path answers over TLS too (an unsigned trigger: 401
        in Pusher's JSON form).
        """
        port, root_pem, _ = await self.start()
        protocol = _Response()
        await self.endpoint(port, root_pem).connect(Factory.forProtocol(lambda: protocol))
        assert protocol.transport is not None
        protocol.transport.write(
            b"POST /apps/app-id/events HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\nContent-Length: 2\r\n\r\n{}"
        )
        body = await protocol.done
        self.assertTrue(body.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), body)
        self.assertIn(b'{"error":', body)

    async def test_wss(self) -> None:
        """
        A C{wss://} client offering ALPN gets C{pusher:connection_established}.
        """
        port, root_pem, _ = await self.start()
        factory = _client_factory(f"wss://localhost:{port}/app/app-key?protocol=7")
        factory.protocol = _FirstMessageClient
        factory.first_message = Deferred()
        await self.endpoint(port, root_pem).connect(factory)
        await factory.opened
        first = await factory.first_message.addTimeout(10, reactor)
        self.assertEqual(first, factory.messages[0])
        message = json.loads(first)
        self.assertEqual(message["event"], "pusher:connection_established")
        await self.running.service.stopService()
        await factory.closed

    async def test_pusher_js_force_tls(self) -> None:
        """
        pusher-js (Node) with C{forceTLS} connects, and a Node TLS socket
        offering C{["h2", "http/1.1"]} gets C{http/1.1}, both trusting only
        the root CA (C{NODE_EXTRA_CA_CERTS}).
        """
        require_node(self)
        port, _, root_path = await self.start()
        script = """
const tls = require('tls');
const Pusher = require('pusher-js');
const port = Number(process.argv[1]);
const out = {};
const done = () => { console.log(JSON.stringify(out)); process.exit(0); };
setTimeout(() => { out.timeout = true; done(); }, 10000);
const socket = tls.connect({host: 'localhost', port, ALPNProtocols: ['h2', 'http/1.1']}, () => {
  out.alpn = socket.alpnProtocol;
  socket.end();
  const pusher = new Pusher('app-key', {
    cluster: 'mt1', wsHost: 'localhost', wsPort: port, wssPort: port,
    forceTLS: true, enabledTransports: ['ws', 'wss'], disableStats: true,
  });
  pusher.connection.bind('connected', () => {
    out.socket_id = pusher.connection.socket_id;
    pusher.disconnect();
    done();
  });
  pusher.connection.bind('error', (e) => { out.error = JSON.stringify(e); });
});
socket.on('error', (e) => { out.tls_error = String(e); done(); });
"""
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=root_path)
        out, err, code = await getProcessOutputAndValue(
            "node", ["-e", script, str(port)], env=env, path=str(INTEROP_DIR), reactor=reactor
        )
        self.assertEqual(code, 0, err)
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.assertEqual(result.get("alpn"), "http/1.1", result)
        self.assertRegex(result.get("socket_id", ""), r"^\d+\.\d+$", result)


class SampleTests(TestCase):
    """
    The sample config's C{ssl} section, enabled with a chain file as the
    README says, serves browsers' TLS.
    """

    async def test_sample(self) -> None:
        """
        C{etc/sockudo/config.json} with C{ssl.enabled} and a full chain:
        C{/up} is 200 over TLS with ALPN, verified from the root.
        """
        cert_path, key_path, root_pem = make_chain(self.mktemp())
        data = json.loads(SAMPLE.read_text(encoding="utf-8"))
        data["ssl"].update(enabled=True, cert_path=cert_path, key_path=key_path)
        data["metrics"]["enabled"] = False
        data["host"] = "127.0.0.1"
        config = parse_config(data, {})
        (description,) = config_listeners(attrs.evolve(config, port=0))
        running = _Running(self, make_service(config, reactor, listen=[description]))
        port = await running.port()
        tls = optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(root_pem), acceptableProtocols=ALPN
        )
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        protocol = _Response()
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
        assert protocol.transport is not None
        protocol.transport.write(b"GET /up HTTP/1.0\r\nHost: localhost\r\n\r\n")
        body = await protocol.done
        self.assertTrue(body.startswith(b"HTTP/1.0 200 "), body)
        self.assertEqual(protocol.alpn, b"http/1.1")


class ListenerLogTests(TestCase):
    """
    The listener's start line names the server, not an internal class.
    """

    async def test_start_line(self) -> None:
        """
        Starting TCP and TLS listeners logs C{sockudo-tw HTTP starting on}
        and C{sockudo-tw HTTP (TLS) starting on}; no C{_QuietSite}.
        """
        cert_path, key_path, _ = make_chain(self.mktemp())
        config = _config(cert_path, key_path)
        (tls,) = config_listeners(attrs.evolve(config, port=0))
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for listen in (tls, "tcp:0:interface=127.0.0.1"):
            running = _Running(self, make_service(config, reactor, listen=[listen]))
            await running.port()
        text = "\n".join(lines)
        self.assertIn("sockudo-tw HTTP (TLS) starting on", text)
        self.assertIn("sockudo-tw HTTP starting on", text)
        self.assertNotIn("_QuietSite", text)
        self.assertNotIn("TriggerChannelFactory", text)
