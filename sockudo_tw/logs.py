# -*- test-case-name: tests.test_service -*-
"""
The daemon's log observer: human text or JSON lines, filtered by level; and
what the daemon says about itself at start.

C{debug} (config key, C{DEBUG}/C{DEBUG_MODE}) lowers the threshold from
C{info} to C{debug}. C{LOG_OUTPUT_FORMAT=json} (or C{logging.output_format})
writes one JSON object per line, with every structured field of the event,
for log shippers.

L{StartupSummary} is the start banner: each listener as a URL an operator
can paste (C{http://0.0.0.0:6001}, C{unix:///run/sockudo/sockudo.sock}),
the version, the app count and the adapter, and a warning when there is no
app at all (every connection and API call would be refused).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Sequence
from typing import IO, Any

import attrs
from twisted.internet.abstract import isIPv6Address
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

__all__ = [
    "JsonLinesObserver",
    "StartupSummary",
    "listener_url",
    "make_log_observer",
    "package_version",
]

DISTRIBUTION = "sockudo-tw"
"""
The name sockudo-tw is installed under (its version is read from there).
"""

_SCALARS = (str, int, float, bool, type(None))


@implementer(ILogObserver)
class JsonLinesObserver:
    """
    One flat JSON object per event: C{time}, C{level}, C{namespace}, the
    formatted C{message}, every scalar structured field (C{app_id},
    C{channel}, ...) and C{traceback} for failures.
    """

    def __init__(self, output: IO[str]) -> None:
        self._output = output

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": event.get("log_time"),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in record and isinstance(value, _SCALARS):
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._output.write(json.dumps(record, default=str) + "\n")
        self._output.flush()


def make_log_observer(output: IO[str], output_format: str, debug: bool) -> ILogObserver:
    """
    An observer writing to C{output} in C{output_format} (C{"human"} or
    C{"json"}) that drops events below C{info}, or below C{debug} when
    C{debug} is true.
    """
    inner: ILogObserver
    if output_format == "json":
        inner = JsonLinesObserver(output)
    else:
        inner = textFileLogObserver(output)
    predicate = LogLevelFilterPredicate(LogLevel.debug if debug else LogLevel.info)
    return FilteringLogObserver(inner, [predicate])


def package_version() -> str:
    """
    sockudo-tw's version: the installed distribution's, else (running from a
    source tree that was never installed) the package's C{__version__}.
    """
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        from sockudo_tw import __version__

        return f"{__version__} (not installed)"


def _strport_parts(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    Split a strports description into its type, positional arguments and
    keyword arguments, undoing backslash escapes the way Twisted does.
    """
    parts: list[list[str]] = [[""]]
    chars = iter(description)
    for char in chars:
        if char == "\\":
            parts[-1][-1] += next(chars, "")
        elif char == ":":
            parts.append([""])
        elif char == "=":
            parts[-1].append("")
        else:
            parts[-1][-1] += char
    kind = "=".join(parts[0]).lower()
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        if len(part) == 1:
            args.append(part[0])
        else:
            kwargs[part[0]] = "=".join(part[1:])
    return kind, args, kwargs


def _host_port(scheme: str, host: str, port: str, path: str) -> str:
    """
    C{scheme://host:port/path}, with an IPv6 host in brackets.
    """
    if isIPv6Address(host):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def listener_url(description: str, path: str = "") -> str:
    """
    The URL a listener given by a strports C{description} serves, for logs:
    C{tcp:}/C{tcp6:} as C{http://host:port}, C{ssl:} as C{https://host:port},
    C{unix:} as C{unix:///absolute/path}. Anything else (C{systemd:}, a
    plugin's endpoint) is shown as the description itself.

    @param path: appended to C{http}/C{https} URLs (C{/metrics}).
    """
    kind, args, kwargs = _strport_parts(description)
    if kind in ("tcp", "tcp6", "ssl") and args:
        default = "::" if kind == "tcp6" else "0.0.0.0"
        # tcp's second positional argument is the interface; the others'
        # are not, and nobody writes them positionally anyway.
        interface = kwargs.get("interface") or (args[1] if kind == "tcp" and args[1:] else "")
        scheme = "https" if kind == "ssl" else "http"
        return _host_port(scheme, interface or default, args[0], path)
    if kind == "unix" and args:
        return "unix://" + os.path.abspath(args[0])
    return description


@attrs.frozen
class StartupSummary:
    """
    What the daemon announces once its listeners are bound.

    @ivar listeners: C{(role, strports description, URL path)} of every
        listener, in order (the main listeners first).
    @ivar app_count: how many apps the app store serves.
    @ivar adapter: the adapter driver (C{local}, C{redis}).
    @ivar app_store: where apps come from when not from the config (a
        database store's description), else L{None}.
    """

    listeners: Sequence[tuple[str, str, str]]
    app_count: int
    adapter: str
    app_store: str | None = None

    def log(self, log: Logger) -> None:
        """
        Log one line per listener and a summary line at info level, after a
        warning when there is no app.
        """
        if self.app_count == 0 and self.app_store is None:
            log.warn(
                "No apps are configured: every WebSocket connection and API request will be"
                " refused. Add an app under app_manager.array.apps in the --config file, or set"
                " SOCKUDO_DEFAULT_APP_ID, SOCKUDO_DEFAULT_APP_KEY and SOCKUDO_DEFAULT_APP_SECRET.",
                apps=0,
            )
        for role, description, path in self.listeners:
            log.info(
                "Listening on {url} ({role})",
                url=listener_url(description, path),
                role=role,
            )
        if self.app_store is not None:
            log.info(
                "sockudo-tw {version} started: apps from {store}, {adapter} adapter",
                version=package_version(),
                store=self.app_store,
                adapter=self.adapter,
            )
            return
        log.info(
            "sockudo-tw {version} started: {apps} {noun}, {adapter} adapter",
            version=package_version(),
            apps=self.app_count,
            noun="app" if self.app_count == 1 else "apps",
            adapter=self.adapter,
        )
