# -*- test-case-name: tests.test_service -*-
"""
The daemon's log observer: human text or JSON lines, filtered by level.

C{debug} (config key, C{DEBUG}/C{DEBUG_MODE}) lowers the threshold from
C{info} to C{debug}. C{LOG_OUTPUT_FORMAT=json} (or C{logging.output_format})
writes one JSON object per line, with every structured field of the event,
for log shippers.
"""

from __future__ import annotations

from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

__all__ = ["make_log_observer"]


def make_log_observer(output: IO[str], output_format: str, debug: bool) -> ILogObserver:
    """
    An observer writing to C{output} in C{output_format} (C{"human"} or
    C{"json"}) that drops events below C{info}, or below C{debug} when
    C{debug} is true.
    """
    inner: ILogObserver
    if output_format == "json":
        inner = jsonFileLogObserver(output, recordSeparator="")
    else:
        inner = textFileLogObserver(output)
    predicate = LogLevelFilterPredicate(LogLevel.debug if debug else LogLevel.info)
    return FilteringLogObserver(inner, [predicate])
