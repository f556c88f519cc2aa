"""
App stores (Sockudo's "app manager"): where apps are looked up by id or key.

L{IAppStore} is the seam; L{MemoryAppStore} serves apps from config and is
what single-node mode and the tests use. SQL and DynamoDB stores plug in
behind the same interface.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from sockudo_tw.pusher.app import App

__all__ = ["IAppStore", "MemoryAppStore"]


class IAppStore(Interface):
    """
    A source of apps.
    """

    def find_by_id(app_id: str) -> Deferred[App | None]:
        """
        The app with this id, or L{None}.
        """

    def find_by_key(key: str) -> Deferred[App | None]:
        """
        The app with this key, or L{None}.
        """

    def all_apps() -> Deferred[list[App]]:
        """
        Every app (for health checks and metrics).
        """


@implementer(IAppStore)
class MemoryAppStore:
    """
    Apps held in memory, indexed by id and by key.
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

    def find_by_key(self, key: str) -> Deferred[App | None]:
        return succeed(self._by_key.get(key))

    def all_apps(self) -> Deferred[list[App]]:
        return succeed(list(self._by_id.values()))
