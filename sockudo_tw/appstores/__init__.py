"""
App stores (Sockudo's "app manager"): where apps are looked up by id or key.

L{IAppStore} is the seam; one module per driver, chosen by name in
L{DRIVERS}. L{MemoryAppStore} (C{memory.py}) serves apps from config and is
what single-node mode and the tests use. SQL and DynamoDB stores plug in
behind the same interface, as a module and a L{DRIVERS} entry each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

from sockudo_tw.pusher.app import App

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = ["DRIVERS", "IAppStore", "ISyncAppLookup", "MemoryAppStore", "build_app_store"]


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


class ISyncAppLookup(Interface):
    """
    An app store that holds its apps at hand (in memory) and can answer a
    lookup by id without a Deferred: the HTTP API's driver uses it, when
    the store provides it, to spare the trigger path a Deferred per
    request. Stores that must ask a remote service provide only
    L{IAppStore}.
    """

    def find_now(app_id: str) -> App | None:
        """
        The app with this id, or L{None}, at once.
        """


AppStoreFactory = Callable[["ServerConfig", IReactorTime], IAppStore]


def _memory(config: ServerConfig, reactor: IReactorTime) -> IAppStore:
    from sockudo_tw.appstores.memory import MemoryAppStore

    return MemoryAppStore(config.app_manager.apps)


DRIVERS: dict[str, AppStoreFactory] = {"memory": _memory}
"""
C{app_manager.driver} to the factory building the store from the config;
the config refuses the drivers sockudo-tw does not implement.
"""


def build_app_store(config: ServerConfig, reactor: IReactorTime) -> IAppStore:
    """
    The app store C{app_manager.driver} names.
    """
    return DRIVERS[config.app_manager.driver](config, reactor)


from sockudo_tw.appstores.memory import MemoryAppStore  # noqa: E402 (needs IAppStore)
