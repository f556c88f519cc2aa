# -*- test-case-name: tests.test_websocket -*-
"""
Whether to accept a connection to C{/app/{key}}: the path, the protocol
version, the app (found, enabled, origin allowed, under its connection
quota). The refusals are Pusher errors (4001, 4003, 4004, 4005, 4007,
4008, 4009), told to the client after the upgrade.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sockudo_tw.adapters import IAdapter
from sockudo_tw.appstores import AppStoreUnavailableError, IAppStore
from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.errors import PusherError, PusherErrorCode
from sockudo_tw.pusher.session import check_protocol, origin_allowed, parse_app_key

__all__ = ["admit"]


async def admit(
    path: str,
    params: Mapping[str, Sequence[str]],
    origin: str | None,
    app_store: IAppStore,
    adapter: IAdapter,
) -> tuple[App | None, PusherError | None]:
    """
    Decide on a connection request.

    @return: the app and L{None} to accept; else the app (when known) and
        the error to refuse the connection with.
    """
    key = parse_app_key(path)
    if key is None:
        return None, PusherError(PusherErrorCode.PATH_NOT_FOUND, "Path not found")
    error = check_protocol(params)
    if error is not None:
        return None, error
    try:
        app = await app_store.find_by_key(key)
    except AppStoreUnavailableError:
        return None, PusherError(
            PusherErrorCode.APP_STORE_UNAVAILABLE,
            "The app store is unavailable; reconnect later",
        )
    if app is None:
        return None, PusherError(
            PusherErrorCode.APP_NOT_FOUND,
            f"App key {key[:64]} not in this cluster. Did you forget to specify the cluster?",
        )
    if not app.enabled:
        return app, PusherError(PusherErrorCode.APP_DISABLED, "Application disabled")
    if not origin_allowed(origin, app.allowed_origins):
        return app, PusherError(PusherErrorCode.UNAUTHORIZED, "Origin not allowed")
    if app.max_connections:
        count = await adapter.app_connection_count(app.id)
        if count >= app.max_connections:
            return app, PusherError(
                PusherErrorCode.OVER_CONNECTION_QUOTA, "Application is over connection quota"
            )
    return app, None
