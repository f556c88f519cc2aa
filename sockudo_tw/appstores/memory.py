"""
The memory app store (C{app_manager.driver: memory}): the apps of the
config, indexed by id and by key.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from sockudo_tw.appstores import IAppStore, ISyncAppLookup
from sockudo_tw.pusher.app import App

__all__ = ["MemoryAppStore"]


@implementer(IAppStore, ISyncAppLookup)
class MemoryAppStore:
    """
    Apps held in memory, indexed by id and by key.

    It provides L{ISyncAppLookup}, so the HTTP API looks apps up with
    L{find_now}, not L{find_by_id}: a subclass that changes how apps are
    found by id should declare C{@implementer_only(IAppStore)}.
    """

    def __init__(self, apps: Iterable[App] = ()) -> None:
        self._by_id: dict[str, App] = {}
        self._by_key: dict[str, App] = {}
        for app in apps:
            self.add(app)

    def add(self, app: App) -> None:
        """
        Add or replace an app.
        """
        old = self._by_id.pop(app.id, None)
        if old is not None:
            self._by_key.pop(old.key, None)
        self._by_id[app.id] = app
        self._by_key[app.key] = app

    def find_by_id(self, app_id: str) -> Deferred[App | None]:
        return succeed(self._by_id.get(app_id))

    def find_now(self, app_id: str) -> App | None:
        """
        The app with this id, or L{None}, without a Deferred: the API's
        driver answers L{sockudo_tw.pusher.httpapi.FindApp} with it on
        every trigger (L{ISyncAppLookup}).
        """
        return self._by_id.get(app_id)

    def find_by_key(self, key: str) -> Deferred[App | None]:
        return succeed(self._by_key.get(key))

    def all_apps(self) -> Deferred[list[App]]:
        return succeed(list(self._by_id.values()))
