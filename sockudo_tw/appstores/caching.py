# -*- test-case-name: tests.test_appstore_caching -*-
"""
The app store in front of a database (L{IAppSource}): lookups by id and by
key are cached for C{app_manager.cache.ttl} seconds, so the hot path does
not wait on the database for an app it has seen.

How an entry lives (C{ttl} = T):
  - younger than T/2: served from memory;
  - between T/2 and T: served from memory, and one refresh starts in the
    background (so an app in use never expires, and a change made in the
    database is seen within T);
  - older than T: the lookup waits for the database (one query however
    many lookups wait: "single flight").
An unknown id or key is cached as unknown for T as well (a flood of
connection attempts with a bad key makes one query per T, not one each),
in a bounded table.

When the database cannot answer, known apps are served from what was last
read (however old), unknown ones fail with L{AppStoreUnavailableError}, the
outage is logged once, L{CachedAppStore.reachable} says so (for C{/up}
and the metrics), and no name is asked again for C{retry_seconds}: the
store reconnects by itself when a later query succeeds. There is no
fallback to an empty store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockudo_tw.appstores import AppStoreUnavailableError, IAppSource, IAppStore
from sockudo_tw.pusher.app import App

__all__ = ["AppStoreUnavailableError", "CachedAppStore"]

_BY_ID = "id"
_BY_KEY = "key"


@attrs.define
class _Entry:
    """
    What the database last said about one id or key (C{app} L{None}:
    no such app): served until C{expires_at}, refreshed in the background
    from C{refresh_at} on (clock seconds); C{unavailable} marks an unknown
    name the database could not be asked about.
    """

    app: App | None
    expires_at: float
    refresh_at: float = float("inf")
    unavailable: bool = False


@implementer(IAppStore)
class CachedAppStore:
    """
    L{IAppStore} over an L{IAppSource}, caching as the module docstring
    says.

    @ivar reachable: whether the last query to the database succeeded.
    @ivar on_reachability: called with the new L{reachable} each time it
        changes (the metrics listen).
    """

    _log = Logger()

    def __init__(
        self,
        source: IAppSource,
        clock: IReactorTime,
        ttl: float = 300,
        retry_seconds: float = 5,
        max_unknown: int = 10_000,
    ) -> None:
        """
        @param ttl: seconds an answer from the database is used for.
        @param retry_seconds: during an outage, how long an id or key is
            not asked again, and how often L{start} retries preparing.
        @param max_unknown: how many unknown ids and keys are remembered
            (the oldest go first).
        """
        self.source = source
        self._clock = clock
        self._ttl = ttl
        self._retry = min(retry_seconds, ttl) if ttl > 0 else retry_seconds
        self._max_unknown = max_unknown
        self._tables: dict[str, dict[str, _Entry]] = {_BY_ID: {}, _BY_KEY: {}}
        self._unknown: dict[tuple[str, str], None] = {}  # insertion-ordered set
        self._waiting: dict[tuple[str, str], list[Deferred[App | None]]] = {}
        self._all: _Entry | None = None
        self._all_apps: list[App] = []
        self._prepared = False
        self._preparing: Deferred[None] | None = None
        self._prepare_call: IDelayedCall | None = None
        self._stopped = False
        self.reachable = True
        self.on_reachability: Callable[[bool], None] = lambda reachable: None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Prepare the database (create or complete the table); fires after
        the first attempt either way. A failed attempt is an outage, and is
        retried every C{retry_seconds} until one succeeds.
        """
        return self._prepare()

    def _prepare(self) -> Deferred[None]:
        self._prepare_call = None
        if self._stopped or self._preparing is not None:
            return succeed(None)
        d = self._call(self.source.prepare)
        done: Deferred[None] = Deferred()
        self._preparing = done

        def prepared(_: object) -> None:
            self._prepared = True
            self._reached()

        def failed(failure: Failure) -> None:
            self._unreached(failure)
            if not self._stopped:
                self._prepare_call = self._clock.callLater(self._retry, self._prepare)

        def finished(_: object) -> None:
            self._preparing = None
            done.callback(None)  # lookups that waited for the table go on

        return d.addCallbacks(prepared, failed).addBoth(finished)

    def stop(self) -> Deferred[None]:
        """
        Stop retrying and release the source's connections.
        """
        self._stopped = True
        if self._prepare_call is not None and self._prepare_call.active():
            self._prepare_call.cancel()
        self._prepare_call = None
        return self._call(self.source.close)

    # -- IAppStore -----------------------------------------------------------

    def find_by_id(self, app_id: str) -> Deferred[App | None]:
        return self._find(_BY_ID, app_id)

    def find_by_key(self, key: str) -> Deferred[App | None]:
        return self._find(_BY_KEY, key)

    def all_apps(self) -> Deferred[list[App]]:
        """
        Every app, read at most once per C{ttl}; during an outage the last
        list read (empty if none was).
        """
        entry = self._all
        if entry is not None and self._clock.seconds() < entry.expires_at:
            return succeed(list(self._all_apps))
        d = self._call(self.source.fetch_all)

        def read(apps: list[App]) -> list[App]:
            self._reached()
            # No apps yet is asked again soon: the first app inserted must
            # not wait a whole TTL to count (for /up).
            life = self._ttl if apps else self._retry
            self._all = _Entry(None, self._clock.seconds() + life)
            self._all_apps = list(apps)
            return list(apps)

        def failed(failure: Failure) -> list[App]:
            self._unreached(failure)
            self._all = _Entry(None, self._clock.seconds() + self._retry)
            return list(self._all_apps)

        return d.addCallbacks(read, failed)

    # -- lookups -------------------------------------------------------------

    def _find(self, kind: str, name: str) -> Deferred[App | None]:
        entry = self._tables[kind].get(name)
        if entry is not None:
            now = self._clock.seconds()
            if now < entry.expires_at:
                if now >= entry.refresh_at:
                    entry.refresh_at = float("inf")  # one refresh at a time
                    self._ask(kind, name).addErrback(lambda _: None)  # refresh ahead
                elif entry.unavailable:
                    return fail(self._unavailable(kind, name))
                return succeed(entry.app)
        return self._ask(kind, name)

    def _ask(self, kind: str, name: str) -> Deferred[App | None]:
        """
        The database's answer for C{name}, one query for every caller that
        asks while it runs.
        """
        d: Deferred[App | None] = Deferred()
        waiting = self._waiting.get((kind, name))
        if waiting is not None:
            waiting.append(d)
            return d
        self._waiting[(kind, name)] = [d]
        fetch = self.source.fetch_by_id if kind == _BY_ID else self.source.fetch_by_key
        if self._preparing is not None:
            # The table may not exist yet: ask once it does (or once
            # preparing failed, which is then the outage it reports).
            self._preparing.addCallback(lambda _: self._call(fetch, name)).addBoth(
                self._answered, kind, name
            )
            return d
        self._call(fetch, name).addBoth(self._answered, kind, name)
        return d

    def _answered(self, result: App | Failure | None, kind: str, name: str) -> None:
        waiting = self._waiting.pop((kind, name), [])
        outcome: App | AppStoreUnavailableError | None
        if isinstance(result, Failure):
            self._unreached(result)
            outcome = self._outage_answer(kind, name)
        else:
            self._reached()
            self._remember(kind, name, result)
            outcome = result
        for d in waiting:
            if isinstance(outcome, AppStoreUnavailableError):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def _outage_answer(self, kind: str, name: str) -> App | AppStoreUnavailableError | None:
        """
        During an outage: the app last read for C{name} (asked again only
        after C{retry_seconds}), else a failure.
        """
        now = self._clock.seconds()
        table = self._tables[kind]
        entry = table.get(name)
        if entry is not None and entry.app is not None:
            entry.expires_at = entry.refresh_at = max(entry.expires_at, now + self._retry)
            return entry.app
        # Unknown during an outage: refuse, and do not ask again at once.
        self._remember_unknown(kind, name, _Entry(None, now + self._retry, unavailable=True))
        return self._unavailable(kind, name)

    def _unavailable(self, kind: str, name: str) -> AppStoreUnavailableError:
        return AppStoreUnavailableError(
            f"{self.source.description} is unavailable; cannot look up app {kind} {name[:64]!r}"
        )

    def _remember(self, kind: str, name: str, app: App | None) -> None:
        now = self._clock.seconds()
        if app is None:
            self._remember_unknown(kind, name, _Entry(None, now + self._ttl))
            return
        self._unknown.pop((kind, name), None)
        for other_kind, other_name in ((_BY_ID, app.id), (_BY_KEY, app.key)):
            self._tables[other_kind][other_name] = _Entry(app, now + self._ttl, now + self._ttl / 2)
            self._unknown.pop((other_kind, other_name), None)

    def _remember_unknown(self, kind: str, name: str, entry: _Entry) -> None:
        self._tables[kind][name] = entry
        self._unknown.pop((kind, name), None)
        self._unknown[(kind, name)] = None
        while len(self._unknown) > self._max_unknown:
            oldest_kind, oldest_name = next(iter(self._unknown))
            del self._unknown[(oldest_kind, oldest_name)]
            gone = self._tables[oldest_kind].get(oldest_name)
            if gone is not None and gone.app is None:
                del self._tables[oldest_kind][oldest_name]

    # -- reachability --------------------------------------------------------

    def _call(self, method: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        """
        C{method(*args)}, any exception it raises as a failed Deferred.
        """
        try:
            return method(*args)
        except Exception:
            return fail()

    def _reached(self) -> None:
        if self.reachable:
            return
        self.reachable = True
        self._log.info("App store {store} is reachable again", store=self.source.description)
        if not self._prepared and not self._stopped:
            # The outage began before the table was prepared: prepare now.
            if self._prepare_call is not None and self._prepare_call.active():
                self._prepare_call.cancel()
            self._prepare()
        self.on_reachability(True)

    def _unreached(self, failure: Failure) -> None:
        if not self.reachable:
            return
        self.reachable = False
        self._log.error(
            "App store {store} is unreachable ({error}); serving the apps read before,"
            " refusing others, retrying every {retry} s",
            store=self.source.description,
            error=failure.getErrorMessage(),
            retry=self._retry,
        )
        self.on_reachability(False)
