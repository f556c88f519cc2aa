# -*- test-case-name: tests.test_metrics -*-
"""
L{MeteredResource}: counting REST API calls (calls, bytes each way and
duration) around the HTTP API's resource tree.
"""

from __future__ import annotations

from urllib.parse import unquote

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, getChildForRequest
from zope.interface import implementer

from sockudo_tw.appstores import IAppStore
from sockudo_tw.metrics.collector import PusherMetrics
from sockudo_tw.metrics.counts import UNKNOWN_APP
from sockudo_tw.pusher.app import App


@implementer(IResource)
class MeteredResource:
    """
    Count every REST call through a wrapped resource: Sockudo's
    C{http_calls_received_total}, C{http_received_bytes} (request body) and
    C{http_transmitted_bytes} (response body), plus our
    C{http_request_duration_ms}.

    The C{app_id} label is the app named by the path (C{/apps/{id}/...},
    C{/up/{id}}) or by C{auth_key} (C{/users/...}) only if the app store
    knows it, otherwise L{UNKNOWN_APP}: random ids in URLs cannot grow the
    series set.
    """

    isLeaf = True  # noqa: N815 (twisted.web's name)
    _log = Logger()

    def __init__(
        self,
        wrapped: IResource,
        metrics: PusherMetrics,
        clock: IReactorTime,
        app_store: IAppStore,
    ) -> None:
        self._wrapped = wrapped
        self._metrics = metrics
        self._clock = clock
        self._app_store = app_store

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:  # noqa: N802
        """
        Never consulted (a leaf); the wrapped tree is walked in L{render}.
        """
        return self

    def putChild(self, path: bytes, child: IResource) -> None:  # noqa: N802
        """
        Children belong to the wrapped resource.
        """
        raise NotImplementedError("add children to the wrapped resource")

    def render(self, request: IRequest) -> bytes | int:
        """
        Find the wrapped resource for the rest of the path as C{Site} would,
        render it, and count the call when the response is finished.
        """
        started = self._clock.seconds()
        # The body is whole before rendering starts, and gone after finish.
        received = _body_size(request)
        finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
        finished.addBoth(lambda _: self.count_call(request, started, received))
        resource: IResource = getChildForRequest(self._wrapped, request)  # type: ignore[no-untyped-call]
        rendered: bytes | int = resource.render(request)  # type: ignore[no-untyped-call]
        return rendered

    def count_call(self, request: IRequest, started: float, received: int) -> None:
        """
        Record one call served, here or on another path to the same API
        (L{sockudo_tw.triggerchannel}), once its app is known; a client
        that went away still counts: C{received} body bytes, the response's
        C{sentLength}, and the time since C{started}.
        """
        elapsed_ms = (self._clock.seconds() - started) * 1000.0
        transmitted: int = getattr(request, "sentLength", 0)
        # A plain Deferred chain, not a coroutine: with an app in memory the
        # lookup has fired already and this runs at once (a coroutine and
        # its Deferred cost several microseconds per call on the trigger
        # path).
        d = self._app(request)

        def record(app: App | None) -> None:
            app_id = UNKNOWN_APP if app is None else app.id
            self._metrics.app(app_id).http_call(received, transmitted, elapsed_ms)

        d.addCallback(record)
        d.addErrback(lambda failure: self._log.failure("Counting an API call failed", failure))

    def _app(self, request: IRequest) -> Deferred[App | None]:
        """
        The app the request is for, if the app store knows it.
        """
        parts = bytes(request.path).split(b"/")
        try:
            if len(parts) > 2 and parts[1] in (b"apps", b"up") and parts[2]:
                return self._app_store.find_by_id(unquote(parts[2].decode("utf-8")))
            if len(parts) > 1 and parts[1] == b"users":
                keys = (request.args or {}).get(b"auth_key") or [b""]
                return self._app_store.find_by_key(keys[0].decode("utf-8"))
        except UnicodeDecodeError:
            pass
        return succeed(None)


def _body_size(request: IRequest) -> int:
    """
    The request body's length in bytes.
    """
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    size = content.seek(0, 2)
    content.seek(position)
    return int(size)
