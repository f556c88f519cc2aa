"""
A twisted.web site of one test on 127.0.0.1, port 0: what the browser and
Laravel Echo tests serve from the test process (a page and pusher-js's
browser build, or a Laravel app's C{/broadcasting/auth}).

Clients keep HTTP connections alive (Node's agent, Chromium), so stopping
the site also closes every open connection and waits until each is gone:
trial then finds the reactor clean.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site

__all__ = ["LoopbackSite"]


class _TrackedChannel(HTTPChannel):
    """
    An HTTP channel that tells its site when its connection is gone.
    """

    site: LoopbackSite

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.site.channel_gone(self)


class LoopbackSite(Site):
    """
    A C{Site} on 127.0.0.1 that knows its open connections.

    @ivar port: the port it listens on, once L{start}ed.
    """

    protocol = _TrackedChannel  # type: ignore[assignment]
    noisy = False

    def __init__(self, root: IResource) -> None:
        super().__init__(root)
        self.port = 0
        self._listening: IListeningPort | None = None
        self._channels: dict[_TrackedChannel, defer.Deferred[None]] = {}

    @classmethod
    def start(cls, case: TestCase, root: IResource) -> LoopbackSite:
        """
        Serve C{root} on 127.0.0.1, a port the kernel picks, until C{case}
        ends.
        """
        from twisted.internet import reactor

        site = cls(root)
        site._listening = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        site.port = site._listening.getHost().port  # type: ignore[union-attr]
        case.addCleanup(site.stop)
        return site

    @property
    def url(self) -> str:
        """
        C{http://127.0.0.1:PORT}, without a trailing slash.
        """
        return f"http://127.0.0.1:{self.port}"

    def buildProtocol(self, addr: Any) -> Any:
        """
        A channel registered as open until its connection is lost.
        """
        channel = super().buildProtocol(addr)
        if channel is not None:
            self._channels[channel] = defer.Deferred()
        return channel

    def channel_gone(self, channel: _TrackedChannel) -> None:
        """
        Forget a closed channel and wake whoever waits for it.
        """
        gone = self._channels.pop(channel, None)
        if gone is not None:
            gone.callback(None)

    async def stop(self) -> None:
        """
        Stop listening, abort every open connection and wait until all are
        closed.
        """
        if self._listening is not None:
            await self._listening.stopListening()
            self._listening = None
        waits = list(self._channels.values())
        for channel in list(self._channels):
            if channel.transport is not None:
                channel.transport.abortConnection()  # type: ignore[attr-defined]
        if waits:
            await defer.gatherResults(waits)
