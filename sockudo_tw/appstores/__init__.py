"""
App stores (Sockudo's "app manager"): where apps are looked up by id or key.

L{IAppStore} is the seam; one module per driver, chosen by name in
L{DRIVERS}. L{MemoryAppStore} (C{memory.py}) serves apps from config and is
what single-node mode and the tests use. SQL and DynamoDB stores plug in
behind the same interface, as a module and a L{DRIVERS} entry each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from sockudo_tw.pusher.app import App

if TYPE_CHECKING:
    from sockudo_tw.config import ServerConfig

__all__ = [
    "DRIVERS",
    "AppStoreUnavailableError",
    "IAppSource",
    "IAppStore",
    "ISyncAppLookup",
    "MemoryAppStore",
    "build_app_store",
]


class AppStoreUnavailableError(Exception):
    """
    The database of apps cannot answer and the app asked for is not known
    from before: connections are refused with 4102 (back off, reconnect)
    and API requests with 503.
    """


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


class IAppSource(Interface):
    """
    A table of apps in a database (SQL, DynamoDB), asked only through
    L{sockudo_tw.appstores.caching.CachedAppStore}, which keeps the hot
    path off it. Every method runs its I/O off the reactor thread; a
    Deferred fails (with any exception) when the database cannot answer,
    and fires with L{None} for an app that is not there. A row that does
    not make a valid app is logged by the source and treated as absent.
    """

    description: str
    """
    What to call this source in logs and errors (C{"MySQL applications at
    127.0.0.1:3306/sockudo"}), without secrets.
    """

    def prepare() -> Deferred[None]:
        """
        Connect, create the table if it is missing and add the columns it
        lacks, so that a table Sockudo made or we made works unchanged.
        """

    def fetch_by_id(app_id: str) -> Deferred[App | None]:
        """
        The app with this id, from the database.
        """

    def fetch_by_key(key: str) -> Deferred[App | None]:
        """
        The app with this key, from the database.
        """

    def fetch_all() -> Deferred[list[App]]:
        """
        Every valid app in the table.
        """

    def close() -> Deferred[None]:
        """
        Release connections and threads (at shutdown).
        """


AppStoreFactory = Callable[["ServerConfig", Any], IAppStore]
"""
Builds a store from the config and the reactor (its time, and for
database stores its threads).
"""


def _memory(config: ServerConfig, reactor: Any) -> IAppStore:
    from sockudo_tw.appstores.memory import MemoryAppStore

    return MemoryAppStore(config.app_manager.apps)


def _cached(source: IAppSource, config: ServerConfig, reactor: Any) -> IAppStore:
    """
    A database's apps behind the cache every database store has.
    """
    from sockudo_tw.appstores.caching import CachedAppStore

    return CachedAppStore(source, reactor, ttl=config.app_manager.cache_ttl)


def _mysql(config: ServerConfig, reactor: Any) -> IAppStore:
    from sockudo_tw.appstores.mysql import source_from_config

    return _cached(source_from_config(config, reactor), config, reactor)


def _postgres(config: ServerConfig, reactor: Any) -> IAppStore:
    from sockudo_tw.appstores.postgres import source_from_config

    return _cached(source_from_config(config, reactor), config, reactor)


def _dynamodb(config: ServerConfig, reactor: Any) -> IAppStore:
    from sockudo_tw.appstores.dynamodb import source_from_config

    return _cached(source_from_config(config, reactor), config, reactor)


DRIVERS: dict[str, AppStoreFactory] = {
    "memory": _memory,
    "mysql": _mysql,
    "pgsql": _postgres,
    "dynamodb": _dynamodb,
}
"""
C{app_manager.driver} to the factory building the store from the config;
the config refuses the drivers sockudo-tw does not implement.
"""


def build_app_store(config: ServerConfig, reactor: Any) -> IAppStore:
    """
    The app store C{app_manager.driver} names.
    """
    return DRIVERS[config.app_manager.driver](config, reactor)


from sockudo_tw.appstores.memory import MemoryAppStore  # noqa: E402 (needs IAppStore)
