# -*- test-case-name: tests.test_usage -*-
"""
Sockudo's operational endpoints besides C{/up}: C{/live}, a liveness probe
that consults nothing, and C{/usage}, the host's memory figures
(sockudo-reference.md section 3.7).

C{/usage} reads C{/proc/meminfo}, a small in-memory kernel file, on each
request; where that file does not exist (not Linux) it answers 501 rather
than figures it cannot know.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from twisted.logger import Logger
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request

__all__ = [
    "MEMINFO",
    "HostMemory",
    "HostMemoryUnavailableError",
    "LiveResource",
    "UsageResource",
    "mount_operational",
    "parse_meminfo",
    "read_host_memory",
]

MEMINFO = Path("/proc/meminfo")
"""
Where Linux publishes its memory counters.
"""


class HostMemoryUnavailableError(Exception):
    """
    The host's memory figures cannot be read here (no C{/proc/meminfo}).
    """


@attrs.frozen
class HostMemory:
    """
    The host's memory as Sockudo reports it, in bytes.

    @ivar total: all usable RAM (C{MemTotal}).
    @ivar free: what programs can still get without swapping
        (C{MemAvailable}: free pages plus reclaimable caches).
    @ivar used: C{total - free}.
    @ivar percent: C{used} as a percentage of C{total}.
    """

    total: int
    free: int
    used: int
    percent: float

    def as_json(self) -> dict[str, dict[str, int | float]]:
        """
        The C{/usage} body: C{{"memory": {free, used, total, percent}}}.
        """
        return {
            "memory": {
                "free": self.free,
                "used": self.used,
                "total": self.total,
                "percent": self.percent,
            }
        }


def parse_meminfo(text: str) -> HostMemory:
    """
    The figures of a C{/proc/meminfo} text (lines C{Name: value kB}).

    Kernels before 3.14 have no C{MemAvailable}; there it is estimated as
    C{MemFree + Buffers + Cached + SReclaimable - Shmem}, the figure
    C{free(1)} used on them.

    @raise ValueError: when C{MemTotal} or C{MemFree} is missing or a
        value is not a number.
    """
    kib: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        if fields:
            kib[name.strip()] = int(fields[0])
    if "MemTotal" not in kib or "MemFree" not in kib:
        raise ValueError("no MemTotal or MemFree line")
    total = kib["MemTotal"] * 1024
    if "MemAvailable" in kib:
        available = kib["MemAvailable"] * 1024
    else:
        estimate = (
            kib["MemFree"]
            + kib.get("Buffers", 0)
            + kib.get("Cached", 0)
            + kib.get("SReclaimable", 0)
            - kib.get("Shmem", 0)
        )
        available = max(estimate, kib["MemFree"]) * 1024
    free = min(available, total)
    used = total - free
    percent = used * 100.0 / total if total > 0 else 0.0
    return HostMemory(total=total, free=free, used=used, percent=percent)


def read_host_memory(path: Path = MEMINFO) -> HostMemory:
    """
    The host's memory now, from C{path}: one read of a few kilobytes that
    the kernel serves from memory, so it is done on the reactor thread.

    @raise HostMemoryUnavailableError: when C{path} cannot be read.
    @raise ValueError: when it is not in C{/proc/meminfo}'s format.
    """
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise HostMemoryUnavailableError(f"{path}: {e.strerror or e}") from None
    return parse_meminfo(text)


def _json(request: Request, code: int, body: object) -> bytes:
    """
    Answer C{code} with C{body} as uncached JSON.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")  # type: ignore[no-untyped-call]
    request.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
    return json.dumps(body).encode("utf-8")


class _Exact(Resource):
    """
    A route that answers only its own path (with or without a trailing
    slash), like Sockudo's exact routes; anything deeper is 404.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def getChild(self, path: bytes, request: Request) -> Resource:
        """
        Itself for a trailing slash, 404 below it.
        """
        if not path and not request.postpath:
            return self
        return NoResource()


class LiveResource(_Exact):
    """
    C{GET /live}: 200 with an empty body while the process serves HTTP,
    whatever the state of Redis, the app store or a drain in progress; for
    liveness and startup probes, where C{/up} would restart every node when
    a shared backend is slow.
    """

    def render_GET(self, request: Request) -> bytes:
        """
        200, empty.
        """
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")  # type: ignore[no-untyped-call]
        request.setHeader(b"cache-control", b"no-store")  # type: ignore[no-untyped-call]
        return b""

    render_HEAD = render_GET


class UsageResource(_Exact):
    """
    C{GET /usage}: C{{"memory": {"free", "used", "total", "percent"}}}, the
    host's (not the process's) memory in bytes, as Sockudo answers it.

    Without C{/proc/meminfo} the answer is 501 with a JSON C{error} naming
    the file, and a warning is logged on the first such request.
    """

    _log = Logger()

    def __init__(self, meminfo: Path = MEMINFO) -> None:
        super().__init__()
        self._meminfo = meminfo
        self._warned = False

    def render_GET(self, request: Request) -> bytes:
        """
        The figures, read now.
        """
        try:
            memory = read_host_memory(self._meminfo)
        except HostMemoryUnavailableError as e:
            if not self._warned:
                self._warned = True
                self._log.warn(
                    "GET /usage answers 501: host memory figures need {path} (Linux): {error}",
                    path=str(self._meminfo),
                    error=str(e),
                )
            message = f"Host memory figures need a readable {self._meminfo} (Linux only)"
            return _json(request, 501, {"error": message})
        except ValueError as e:
            self._log.error(
                "GET /usage: {path} is not in the expected format: {error}",
                path=str(self._meminfo),
                error=str(e),
            )
            return _json(request, 500, {"error": f"Unreadable {self._meminfo}"})
        return _json(request, 200, memory.as_json())

    render_HEAD = render_GET


def mount_operational(root: Resource, usage_enabled: bool = True) -> None:
    """
    Put C{/live} and, unless C{usage_enabled} is false (Sockudo's
    C{http_api.usage_enabled}), C{/usage} under C{root}.
    """
    root.putChild(b"live", LiveResource())
    if usage_enabled:
        root.putChild(b"usage", UsageResource())
