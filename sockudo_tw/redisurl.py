# -*- test-case-name: tests.test_redisurl -*-
"""
The one parser of Redis URLs, used by the configuration (to check every URL
before anything binds), the Redis adapter, the webhook queue and the shared
webhook state.

Accepted forms::

    redis://[[user]:password@]host[:port][/db][?db=N]
    rediss://...                        (TLS, the server certificate verified)
    unix://[[user]:password@]/path/to/redis.sock[?db=N]

Credentials are percent-decoded. Anything else (another scheme, a bad port
or database, an unknown query parameter, a missing host or path) is refused
with a message that never repeats the password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

__all__ = ["REDIS_URL_SCHEMES", "RedisUrl", "parse_redis_url", "redact_redis_url"]

REDIS_URL_SCHEMES = ("redis", "rediss", "unix")


@attrs.frozen
class RedisUrl:
    """
    Where a Redis server is and how to log in to it.

    @ivar host: the host name or address (L{None} for a Unix socket).
    @ivar db: the database to C{SELECT}, or L{None} to leave the default (0).
    @ivar tls: C{rediss://}: connect with TLS and verify the certificate
        against the system trust store and C{host}.
    @ivar path: the Unix socket path of a C{unix://} URL, else L{None}.
    """

    host: str | None = "127.0.0.1"
    port: int = 6379
    db: int | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False
    path: str | None = None

    def endpoint(
        self, reactor: Any, timeout: float = 5, trust_root: Any = None
    ) -> IStreamClientEndpoint:
        """
        A client endpoint reaching this server (TCP, TLS over TCP, or a Unix
        socket).

        @param trust_root: for C{rediss://}, what the server certificate is
            checked against (L{twisted.internet.ssl.optionsForClientTLS});
            L{None} means the system trust store.
        """
        if self.path is not None:
            return UNIXClientEndpoint(  # type: ignore[no-untyped-call]
                reactor, self.path, timeout=timeout
            )
        host = self.host or "127.0.0.1"
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, host, self.port, timeout=timeout
        )
        if self.tls:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=trust_root), endpoint)
        return endpoint

    def describe(self) -> str:
        """
        The URL without its password, for logs.
        """
        user = f"{self.username}@" if self.username else ""
        if self.password is not None:
            user = f"{self.username or ''}:***@"
        db = f"/{self.db}" if self.db is not None else ""
        if self.path is not None:
            return f"unix://{user}{self.path}" + (f"?db={self.db}" if self.db is not None else "")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{user}{host}:{self.port}{db}"


def redact_redis_url(url: str) -> str:
    """
    C{url} with its password replaced by C{***}, for error messages and logs.
    """
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "(unparsable URL)"
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _number(text: str, what: str, shown: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"the {what} in {shown!r} must be a non-negative integer, got {text!r}")
    return int(text)


def parse_redis_url(url: str) -> RedisUrl:
    """
    Parse one Redis URL (see the module docstring for the forms).

    @raise ValueError: naming what is wrong; the password is never shown.
    """
    shown = redact_redis_url(url)
    if not isinstance(url, str) or not url.strip():
        raise ValueError("expected a Redis URL (redis://, rediss:// or unix://), got ''")
    try:
        parts = urlsplit(url.strip())
    except ValueError as e:
        raise ValueError(f"malformed Redis URL {shown!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in REDIS_URL_SCHEMES:
        raise ValueError(
            f"unsupported Redis URL scheme {parts.scheme!r} in {shown!r}:"
            " expected redis://, rediss:// (TLS) or unix://"
        )
    if parts.fragment:
        raise ValueError(f"unexpected '#' fragment in Redis URL {shown!r}")
    db: int | None = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "db":
            raise ValueError(
                f"unsupported Redis URL parameter {name!r} in {shown!r} (only db= is read)"
            )
        db = _number(value, "database", shown)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme == "unix":
        path = unquote(parts.path)
        if parts.hostname or not path.startswith("/"):
            raise ValueError(
                f"expected unix:///absolute/path/to/redis.sock, got {shown!r}"
                " (the socket path must be absolute)"
            )
        return RedisUrl(host=None, port=0, db=db, username=username, password=password, path=path)
    host = parts.hostname
    if not host:
        raise ValueError(f"missing host in Redis URL {shown!r}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"the port in {shown!r} must be an integer from 1 to 65535")
    path = parts.path.strip("/")
    if path:
        if db is not None:
            raise ValueError(f"the database is given twice in {shown!r}")
        db = _number(path, "database", shown)
    return RedisUrl(
        host=host,
        port=port or 6379,
        db=db,
        username=username,
        password=password,
        tls=scheme == "rediss",
    )
