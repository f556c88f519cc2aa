# -*- test-case-name: tests.test_ratelimit -*-
"""
Rate limiting: how many requests a key (a client IP, an app) may make per
window, and a twisted.web wrapper that applies a limit per client IP.

L{IRateLimiter} is the seam; one module per driver (C{memory.py}; Redis
with the cluster), chosen by name in L{DRIVERS}. The
wrapper, L{RateLimitedResource}, answers over-limit requests as Sockudo's
middleware does (sockudo-reference.md section 5.7): 429 with
C{{"error":"Too Many Requests","message":"Rate limit exceeded. Please try
again later."}}, C{X-RateLimit-Limit}, C{X-RateLimit-Remaining},
C{X-RateLimit-Reset} (seconds until the window resets) and C{Retry-After};
admitted requests carry the three C{X-RateLimit-*} headers. Wrap the API
with the C{api_rate_limit} rule and the WebSocket endpoint with the
C{websocket_rate_limit} rule.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.util import DeferredResource
from zope.interface import Interface, implementer

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = [
    "DRIVERS",
    "IRateLimiter",
    "MemoryRateLimiter",
    "RateLimitResult",
    "RateLimitRule",
    "RateLimitedResource",
    "build_rate_limiter",
    "client_ip",
    "get_header",
    "rate_limit_headers",
    "set_header",
    "set_status",
]

TOO_MANY_REQUESTS_BODY = json.dumps(
    {"error": "Too Many Requests", "message": "Rate limit exceeded. Please try again later."},
    separators=(",", ":"),
).encode("utf-8")
BACKEND_ERROR_BODY = json.dumps(
    {"error": "Internal Server Error", "message": "Rate limiter backend unavailable."},
    separators=(",", ":"),
).encode("utf-8")


@attrs.frozen
class RateLimitRule:
    """
    One of Sockudo's C{rate_limiter.*_rate_limit} blocks.

    @ivar max_requests: requests admitted per window; 0 disables the rule.
    @ivar window_seconds: the window length.
    @ivar identifier: prefix of the limiter key (C{"api"},
        C{"websocket_connect"}), so rules sharing a backend do not collide.
    @ivar trust_hops: how many reverse proxies in front of us append to
        C{X-Forwarded-For}; 0 trusts no forwarding header.
    """

    max_requests: int = 100
    window_seconds: float = 60.0
    identifier: str = "api"
    trust_hops: int = 0


@attrs.frozen
class RateLimitResult:
    """
    The outcome of counting one request.

    @ivar allowed: whether the request is within the limit.
    @ivar limit: the window's maximum.
    @ivar remaining: requests still admitted in this window.
    @ivar reset_after: whole seconds until the window resets.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: int


class IRateLimiter(Interface):
    """
    Counts requests per key in fixed windows.
    """

    def hit(
        key: str, max_requests: int, window_seconds: float, cost: int = 1
    ) -> Deferred[RateLimitResult]:
        """
        Count C{cost} requests for C{key} and say whether they are admitted.

        A refused hit is not counted, so a client that backs off is admitted
        again as soon as the window allows. Exactly C{max_requests} requests
        are admitted per window (Sockudo's memory limiter admits one fewer).
        """


LimiterFactory = Callable[["ServerConfig", IReactorTime], IRateLimiter]


def _memory(config: ServerConfig, reactor: IReactorTime) -> IRateLimiter:
    from sockudo_tw.ratelimit.memory import MemoryRateLimiter

    return MemoryRateLimiter(reactor)


def _redis(config: ServerConfig, reactor: IReactorTime) -> IRateLimiter:
    if not config.rate_limiter.enabled:
        # Sockudo's shipped file names "redis" with the limiter off: the
        # per-app limits then stay in memory and nothing dials Redis.
        return _memory(config, reactor)
    from sockudo_tw.ratelimit.redis import redis_rate_limiter_from_config

    return redis_rate_limiter_from_config(config, reactor)


DRIVERS: dict[str, LimiterFactory] = {
    "memory": _memory,
    # A service: the composition root starts and stops it (its Redis link).
    "redis": _redis,
    # Sockudo keeps the memory limiter for "none"; the config warns about it.
    "none": _memory,
}
"""
C{rate_limiter.driver} to the factory building a limiter from the config;
the config refuses the drivers sockudo-tw does not implement.
"""


def build_rate_limiter(config: ServerConfig, reactor: IReactorTime) -> IRateLimiter:
    """
    A limiter of the kind C{rate_limiter.driver} names. The composition root
    builds one for every rule (each rule's keys start with its identifier)
    and starts it with the daemon when it is a service (the Redis one).
    """
    return DRIVERS[config.rate_limiter.driver](config, reactor)


from sockudo_tw.ratelimit.memory import MemoryRateLimiter  # noqa: E402 (needs IRateLimiter)

# IRequest's methods carry no annotations; these typed shims keep strict mypy
# honest everywhere else.


def get_header(request: IRequest, name: bytes) -> str | None:
    """
    A request header as text (latin-1 never fails), or L{None}.
    """
    value: bytes | None = request.getHeader(name)  # type: ignore[no-untyped-call]
    return None if value is None else value.decode("latin-1")


def set_header(request: IRequest, name: bytes, value: bytes) -> None:
    """
    Set a response header.
    """
    request.setHeader(name, value)  # type: ignore[no-untyped-call]


def set_status(request: IRequest, code: int) -> None:
    """
    Set the response status code.
    """
    request.setResponseCode(code)  # type: ignore[no-untyped-call]


def _valid_ip(text: str) -> str | None:
    """
    C{text} stripped, if it is an IPv4 or IPv6 address; else L{None}.
    """
    text = text.strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return text


def client_ip(request: IRequest, trust_hops: int) -> str:
    """
    The client address a limit is counted against.

    With C{trust_hops} > 0, the C{X-Forwarded-For} entry that many places from
    the end, then C{X-Real-IP}; otherwise (and when those are absent or not
    addresses) the peer address, or C{"unknown_ip"}.

    Sockudo reads C{X-Real-IP} even when C{trust_hops} is 0; we do not, since
    any client could then pick its own key and escape the limit.
    """
    if trust_hops > 0:
        forwarded = get_header(request, b"x-forwarded-for")
        if forwarded is not None:
            entries = [e.strip() for e in forwarded.split(",")]
            ip = _valid_ip(entries[max(0, len(entries) - trust_hops)])
            if ip is not None:
                return ip
        real = get_header(request, b"x-real-ip")
        if real is not None:
            ip = _valid_ip(real)
            if ip is not None:
                return ip
    peer = request.getClientAddress()  # type: ignore[no-untyped-call]
    host = getattr(peer, "host", None)
    if isinstance(host, str) and host:
        return host
    return "unknown_ip"


def rate_limit_headers(request: IRequest, result: RateLimitResult, refused: bool) -> None:
    """
    Set Sockudo's C{X-RateLimit-*} headers (and C{Retry-After} on a refusal).
    """
    set_header(request, b"X-RateLimit-Limit", str(result.limit).encode())
    set_header(request, b"X-RateLimit-Remaining", str(result.remaining).encode())
    set_header(request, b"X-RateLimit-Reset", str(result.reset_after).encode())
    if refused:
        set_header(request, b"Retry-After", str(result.reset_after).encode())


class _StaticJson(Resource):
    """
    A leaf answering every method with one JSON body and status.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._status = status
        self._body = body

    def render(self, request: IRequest) -> bytes:
        set_status(request, self._status)
        set_header(request, b"Content-Type", b"application/json")
        return self._body


@implementer(IResource)
class RateLimitedResource:
    """
    Wrap a resource so each request through it is first counted against the
    client IP under C{rule}; over the limit the wrapped resource never sees
    the request.

    Mount it where the wrapped resource would go (C{/apps}, C{/app}, or the
    root). Like L{twisted.web.guard.HTTPAuthSessionWrapper} it hands the path
    segment back to the wrapped resource, so routing below is unchanged.
    """

    isLeaf = False  # noqa: N815 (twisted.web's name)
    _log = Logger()

    def __init__(self, wrapped: IResource, limiter: IRateLimiter, rule: RateLimitRule) -> None:
        self._wrapped = wrapped
        self._limiter = limiter
        self._rule = rule

    def render(self, request: IRequest) -> bytes | int:
        """
        The request ends here: admit it to the wrapped resource's C{render}.
        """
        result: bytes | int = self._admitting(request).render(request)  # type: ignore[no-untyped-call]
        return result

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:  # noqa: N802
        """
        Give the segment back and continue traversal once the request is
        admitted.
        """
        request.postpath.insert(0, request.prepath.pop())
        return self._admitting(request)

    def putChild(self, path: bytes, child: IResource) -> None:  # noqa: N802
        """
        Children belong to the wrapped resource.
        """
        raise NotImplementedError("put children on the wrapped resource")

    def _admitting(self, request: IRequest) -> IResource:
        """
        The resource that renders C{request}: the wrapped one once admitted,
        or a JSON refusal.
        """
        if self._rule.max_requests <= 0:
            return self._wrapped
        admitted = Deferred.fromCoroutine(self._admit(request))
        return DeferredResource(admitted)  # type: ignore[no-untyped-call]

    async def _admit(self, request: IRequest) -> IResource:
        """
        Count the request against its client address and set the headers.
        """
        ip = client_ip(request, self._rule.trust_hops)
        key = f"{self._rule.identifier}:{ip}"
        try:
            result = await self._limiter.hit(
                key, self._rule.max_requests, self._rule.window_seconds
            )
        except Exception:
            # Fail closed, as Sockudo does: an unlimited API is the worse outcome.
            self._log.failure("Rate limiter backend failed for {key}", key=key)
            return _StaticJson(500, BACKEND_ERROR_BODY)
        if not result.allowed:
            self._log.info(
                "Rate limit {identifier} exceeded by {ip}",
                identifier=self._rule.identifier,
                ip=ip,
            )
            rate_limit_headers(request, result, refused=True)
            return _StaticJson(429, TOO_MANY_REQUESTS_BODY)
        rate_limit_headers(request, result, refused=False)
        return self._wrapped
