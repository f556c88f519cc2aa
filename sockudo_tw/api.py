# -*- test-case-name: tests.test_api -*-
"""
The Pusher HTTP API's glue: L{sockudo_tw.pusher.httpapi} (every route,
check and answer, without I/O) served over twisted.web, with its needs
answered by the app store, the adapter, the cache and the rate limiter.

L{PusherApi.serve} runs one parsed request to its response; the fast
trigger front (L{sockudo_tw.triggerchannel}) calls it directly, and
L{PusherApi.resource} is the twisted.web resource for every other request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from sockudo_tw.adapters import IAdapter
from sockudo_tw.appstores import AppStoreUnavailableError, IAppStore, ISyncAppLookup
from sockudo_tw.caches import IChannelCache
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.channels import channel_type
from sockudo_tw.pusher.httpapi import (
    CORS_HEADERS,
    CORS_METHODS,
    CORS_ORIGINS,
    ApiConfig,
    ApiError,
    CachedEvent,
    CountRate,
    FindApp,
    Flow,
    HttpRequest,
    HttpResponse,
    OccupiedChannels,
    PresenceMembers,
    Publish,
    SubscriptionCount,
    Terminate,
    handle,
    internal_error,
    parse_query,
)
from sockudo_tw.ratelimit import IRateLimiter

__all__ = ["ApiError", "PusherApi", "parse_query"]

_log = Logger()


class PusherApi:
    """
    The HTTP API with its collaborators injected.

    Serve L{resource} at the root of the site (the routes carry their full
    paths, C{/apps/...}, and the un-prefixed C{/users/...} the Python SDK
    uses); anything else it answers 404.

    @param clock: the time signatures are checked against.
    @param app_store: where apps are looked up.
    @param adapter: delivery and channel queries.
    @param cache: where cache channels keep their last event.
    @param rate_limiter: counts each app's publishes
        (C{max_backend_events_per_second}) and reads
        (C{max_read_requests_per_second}); L{None} enforces neither.
    @param request_limit_in_mb: the whole-request body cap
        (C{http_api.request_limit_in_mb}); 0 disables it.
    @param cors_origins: C{cors.origin}; C{["*"]} allows any. Empty
        answers no preflight.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        app_store: IAppStore,
        adapter: IAdapter,
        cache: IChannelCache,
        rate_limiter: IRateLimiter | None = None,
        request_limit_in_mb: float = 10,
        cors_origins: Iterable[str] = CORS_ORIGINS,
        cors_methods: Iterable[str] = CORS_METHODS,
        cors_headers: Iterable[str] = CORS_HEADERS,
        cors_credentials: bool = True,
    ) -> None:
        self._clock = clock
        self._app_store = app_store
        self._adapter = adapter
        self._cache = cache
        self._rate_limiter = rate_limiter
        # In-memory stores answer a lookup by id at once: no Deferred.
        self._find_now: Callable[[str], App | None] | None = (
            ISyncAppLookup(app_store).find_now if ISyncAppLookup.providedBy(app_store) else None
        )
        self.config = ApiConfig(
            body_limit=int(request_limit_in_mb * 1024 * 1024),
            rate_limited=rate_limiter is not None,
            cors_origins=cors_origins,
            cors_methods=cors_methods,
            cors_headers=cors_headers,
            cors_credentials=cors_credentials,
        )
        self._perform: dict[type, Callable[[Any], object]] = {
            FindApp: self._find_app,
            CountRate: self._count_rate,
            Publish: self._publish,
            Terminate: lambda n: adapter.terminate_user_connections(n.app_id, n.user_id),
            SubscriptionCount: lambda n: adapter.channel_subscription_count(n.app_id, n.channel),
            PresenceMembers: lambda n: adapter.presence_members(n.app_id, n.channel),
            CachedEvent: lambda n: cache.fetch(n.app_id, n.channel),
            OccupiedChannels: lambda n: adapter.channels(n.app_id),
        }

    def resource(self) -> IResource:
        """
        The twisted.web resource serving this API.
        """
        return _ApiResource(self)

    def serve(self, request: HttpRequest) -> HttpResponse | Deferred[HttpResponse]:
        """
        Answer C{request}: at once when every need is at hand (in-memory
        stores), else with a Deferred (cancel it if the client goes).
        """
        return self._run(handle(request, self.config, self._clock.seconds()), None, None)

    def _run(
        self, flow: Flow, answer: object, error: BaseException | None
    ) -> HttpResponse | Deferred[HttpResponse]:
        """
        Drive C{flow}: answer each need it yields, synchronously while the
        answers are at hand, then from the callback of the first that is not.
        """
        while True:
            try:
                need = flow.send(answer) if error is None else flow.throw(error)
            except StopIteration as done:
                response: HttpResponse = done.value
                if response.log is not None:
                    _log.info("{why}", why=response.log)
                return response
            except CancelledError:
                return internal_error()  # the client went; nobody reads it
            except Exception:
                self._log.failure("Unhandled error in the HTTP API")
                return internal_error()
            answer, error = None, None
            try:
                if type(need) is FindApp and need.app_id is not None and self._find_now:
                    answer = self._find_now(need.app_id)
                    continue
                result = self._perform[type(need)](need)
            except Exception as e:
                error = e
                continue
            # None first: isinstance on Deferred (an Awaitable) goes through
            # ABCMeta, slow for what is not one.
            if result is not None and isinstance(result, Deferred):
                # An in-memory store's Deferred has its value already: read
                # it without a callback (a measurable share of a trigger).
                value = result.result if result.called else None
                if value is None or isinstance(value, (Deferred, Failure)):
                    got: list[object] = []
                    result.addBoth(got.append)
                    if not got:
                        resume: Any = self._resume
                        waited: Deferred[HttpResponse] = result.addCallback(resume, flow, got)
                        return waited
                    value = got[0]
                    if isinstance(value, Failure):
                        error = value.value
                        continue
                result = value
            answer = result

    def _resume(
        self, _: None, flow: Flow, got: list[object]
    ) -> HttpResponse | Deferred[HttpResponse]:
        """
        Go on with C{flow} once a need's Deferred has fired, its outcome in
        C{got}.
        """
        outcome = got[0]
        if isinstance(outcome, Failure):
            return self._run(flow, None, outcome.value)
        return self._run(flow, outcome, None)

    def _find_app(self, need: FindApp) -> object:
        if need.app_id is not None:
            found = self._app_store.find_by_id(need.app_id)
        else:
            assert need.key is not None
            found = self._app_store.find_by_key(need.key)
        return found.addErrback(_store_unavailable)

    def _count_rate(self, need: CountRate) -> object:
        assert self._rate_limiter is not None
        return self._rate_limiter.hit(need.key, need.per_second, 1.0, need.cost)

    def _publish(self, need: Publish) -> Deferred[Any] | None:
        """
        Broadcast every frame, then keep cache-channel ones; a lost cache
        entry is logged, not the publisher's error (delivery happened).
        """
        app_id = need.app_id
        stores: list[Deferred[None]] = []
        for channel, frame, socket_id in need.frames:
            self._adapter.broadcast(app_id, channel, frame, socket_id)
            # Every cache channel's name holds "cache-": the cheap test first
            # spares the other channels a ChannelType per frame.
            if "cache-" in channel and channel_type(channel).cache:
                store = self._cache.store(app_id, channel, frame)
                store.addErrback(
                    lambda f: self._log.failure(
                        "Could not store cache channel event for {app_id}", f, app_id=app_id
                    )
                )
                stores.append(store)
        return gatherResults(stores) if stores else None


def http_request(request: IRequest) -> HttpRequest:
    """
    The core's view of a twisted.web request (whose body is in memory).
    """
    content = request.content
    body = b""
    if content is not None:
        content.seek(0)
        body = content.read()
    headers = {
        name.lower(): values[-1] for name, values in request.requestHeaders.getAllRawHeaders()
    }
    peer = request.getClientAddress()  # type: ignore[no-untyped-call]
    return HttpRequest(
        request.method,
        request.path,
        request.uri.partition(b"?")[2],
        headers,
        body,
        str(getattr(peer, "host", peer)),
    )


def write_response(request: IRequest, response: HttpResponse) -> bytes:
    """
    Set C{response}'s status and headers on C{request}; return its body.
    """
    request.setResponseCode(response.status)  # type: ignore[no-untyped-call]
    for name, value in response.headers:
        request.setHeader(name, value)  # type: ignore[no-untyped-call]
    return response.body


class _ApiResource(Resource):
    """
    Every API request that reaches twisted.web: served by L{PusherApi.serve}.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)

    def __init__(self, api: PusherApi) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._api = api

    def render(self, request: IRequest) -> bytes | int:
        """
        Answer now, or when the needs are answered unless the client went.
        """
        answer = self._api.serve(http_request(request))
        if isinstance(answer, HttpResponse):
            return write_response(request, answer)
        gone: list[bool] = []

        def went(failure: Failure) -> None:
            gone.append(True)
            answer.cancel()

        def done(response: HttpResponse) -> None:
            if not gone:
                request.write(write_response(request, response))  # type: ignore[no-untyped-call]
                request.finish()  # type: ignore[no-untyped-call]

        request.notifyFinish().addErrback(went)  # type: ignore[attr-defined]
        answer.addCallback(done)
        return NOT_DONE_YET


def _store_unavailable(failure: Failure) -> NoReturn:
    """
    A database of apps that cannot answer is the API's 503 (try again),
    not a 500 with a traceback.
    """
    if not isinstance(failure.value, AppStoreUnavailableError):
        failure.raiseException()
    raise ApiError(
        503,
        "The app store is unavailable; try again later",
        headers=((b"Retry-After", b"5"),),
        log=failure.getErrorMessage(),
    )
