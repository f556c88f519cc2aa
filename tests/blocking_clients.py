"""
Blocking clients for tests that drive outside programs (C{nginx},
C{systemd-socket-activate}) through C{subprocess}: a Pusher WebSocket
client, plain HTTP requests and a signed REST trigger, over TCP or a Unix
socket, with or without TLS (and a self-signed certificate for it), plus a
daemon process run the way those programs run it.

No reactor is involved: the programs under test run in their own processes,
so a C{SynchronousTestCase} can wait on sockets with timeouts, and a failure
shows the daemon's log.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sockudo_tw.pusher.signing import sign_api_query

__all__ = [
    "Address",
    "DaemonProcess",
    "PusherSocket",
    "http_request",
    "open_socket",
    "self_signed",
    "trigger",
    "wait_until_answers",
]

#: A TCP C{(host, port)} or the path of a Unix socket.
Address = tuple[str, int] | str

TIMEOUT = 10.0


def self_signed(directory: Path) -> tuple[Path, Path]:
    """
    A certificate for C{localhost} and 127.0.0.1 signed by its own key; the
    paths of the certificate and the key (PEM).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
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
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def open_socket(
    address: Address,
    tls: ssl.SSLContext | None = None,
    server_hostname: str = "localhost",
    source: str | None = None,
) -> socket.socket:
    """
    Connect to C{address}, wrapping the connection in TLS when C{tls} is
    given (verifying the certificate against C{server_hostname}).

    @param source: the local IPv4 address to connect from (any of 127/8
        works on loopback), to appear as another client.
    """
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    if tls is None:
        return sock
    return tls.wrap_socket(sock, server_hostname=server_hostname)


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """
    Read an HTTP response head: status, lower-cased headers, and whatever
    bytes came after it.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def http_request(
    address: Address,
    method: str,
    target: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
    host: str = "localhost",
    source: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """
    One HTTP/1.1 request with C{Connection: close}; the status, the
    lower-cased headers and the body (read to the end of the connection).
    """
    with open_socket(address, tls, host, source) as sock:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status, response_headers, rest = _read_head(sock)
        chunks = [rest]
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    body = b"".join(chunks)
    if response_headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return status, response_headers, body


def _dechunk(data: bytes) -> bytes:
    """
    The body of a complete C{Transfer-Encoding: chunked} message.
    """
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]


def trigger(
    address: Address,
    app: Mapping[str, Any],
    channel: str,
    event: str,
    data: Any,
    tls: ssl.SSLContext | None = None,
    host: str = "localhost",
) -> tuple[int, bytes]:
    """
    C{POST /apps/{id}/events}, signed with the app's key and secret as the
    server SDKs sign it; the status and body of the answer.
    """
    body = json.dumps({"name": event, "channels": [channel], "data": json.dumps(data)}).encode()
    path = f"/apps/{app['id']}/events"
    query = sign_api_query(app["key"], app["secret"], "POST", path, [], body, int(time.time()))
    target = path + "?" + "&".join(f"{k}={v}" for k, v in query)
    headers = {"Content-Type": "application/json"}
    status, _, answer = http_request(address, "POST", target, body, headers, tls, host)
    return status, answer


def wait_until_answers(
    address: Address,
    process: subprocess.Popen[bytes] | None = None,
    tls: ssl.SSLContext | None = None,
    path: str = "/up",
    within: float = 20.0,
) -> tuple[int, bytes]:
    """
    Poll C{GET path} until it answers 200 (C{/up} answers 503 until the
    adapter is ready), and return the answer.

    @raise AssertionError: when C{process} exits first or time runs out,
        with the last answer or error.
    """
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited with {process.returncode}: {last!r}")
        try:
            status, _, body = http_request(address, "GET", path, tls=tls)
            if status == 200:
                return status, body
            last = (status, body)
        except (OSError, ConnectionError, ValueError, IndexError) as error:
            last = error
        time.sleep(0.1)
    raise AssertionError(f"no 200 from {address!r} within {within} s: {last!r}")


class PusherSocket:
    """
    A Pusher protocol 7 client on one WebSocket connection.

    @ivar socket_id: the id from C{pusher:connection_established}.
    @ivar close_code: the server's close code, once it closed.
    """

    def __init__(
        self,
        address: Address,
        key: str,
        tls: ssl.SSLContext | None = None,
        host: str = "localhost",
    ) -> None:
        self.sock = open_socket(address, tls, host)
        self.close_code: int | None = None
        request = (
            f"GET /app/{key}?protocol=7&client=blocking-test&version=1.0 HTTP/1.1\r\n"
            f"Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        status, _, self._buffer = _read_head(self.sock)
        if status != 101:
            raise AssertionError(f"WebSocket handshake answered {status}")
        established = self.receive()
        if established.get("event") != "pusher:connection_established":
            raise AssertionError(f"expected connection_established, got {established}")
        self.socket_id: str = json.loads(established["data"])["socket_id"]

    def close(self) -> None:
        """
        Drop the connection.
        """
        self.sock.close()

    def _read(self, count: int) -> bytes:
        """
        Exactly C{count} bytes from the connection.
        """
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-frame")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        """
        Send one masked frame, as clients must.
        """
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, message: Mapping[str, Any]) -> None:
        """
        Send a Pusher message as a text frame.
        """
        self._send_frame(1, json.dumps(message).encode())

    def receive(self) -> dict[str, Any]:
        """
        The next Pusher message (answering pings on the way).

        @raise ConnectionError: when the server closes the connection;
            L{close_code} then holds its close code.
        """
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            payload = self._read(length)
            opcode = first & 0x0F
            if opcode == 1:
                message: dict[str, Any] = json.loads(payload)
                return message
            if opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                raise ConnectionError(f"closed by the server with {self.close_code}")
            if opcode == 9:
                self._send_frame(10, payload)

    def wait_for(self, event: str) -> dict[str, Any]:
        """
        Skip messages until one named C{event}, and return it.
        """
        while True:
            message = self.receive()
            if message.get("event") == event:
                return message

    def subscribe(self, channel: str) -> None:
        """
        Subscribe to a public channel and wait until it succeeded.
        """
        self.send({"event": "pusher:subscribe", "data": {"channel": channel}})
        self.wait_for("pusher_internal:subscription_succeeded")

    def wait_closed(self) -> int | None:
        """
        Read until the server closes; its close code.
        """
        try:
            while True:
                self.receive()
        except (ConnectionError, OSError):
            return self.close_code


class DaemonProcess:
    """
    A program under test (C{twistd}, C{nginx}, C{systemd-socket-activate})
    run with C{subprocess}, its output kept in a file for failure messages.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                pass_fds=tuple(pass_fds),
            )

    def log(self, lines: int = 60) -> str:
        """
        The end of the program's output.
        """
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 15.0) -> int:
        """
        SIGTERM it (SIGKILL after C{grace} seconds) and wait; its exit status.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
