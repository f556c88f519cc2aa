# -*- test-case-name: tests.test_service -*-
"""
The daemon's log observer: human text or JSON lines, filtered by level.

C{debug} (config key, C{DEBUG}/C{DEBUG_MODE}) lowers the threshold from
C{info} to C{debug}. C{LOG_OUTPUT_FORMAT=json} (or C{logging.output_format})
writes one JSON object per line, with every structured field of the event,
for log shippers.
"""

from __future__ import annotations

import json
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

__all__ = ["JsonLinesObserver", "make_log_observer"]

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
