"""
Tests for L{sockudo_tw.usage}: Sockudo's C{/live} and C{/usage} endpoints,
in memory through L{RootResource} and once on a real daemon.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from sockudo_tw.appstores.memory import MemoryAppStore
from sockudo_tw.pusher.app import App
from sockudo_tw.usage import (
    HostMemory,
    HostMemoryUnavailableError,
    UsageResource,
    mount_operational,
    parse_meminfo,
    read_host_memory,
)
from sockudo_tw.web import HealthResource, Lifecycle, RootResource, always_healthy
from tests.interop_harness import SharedServer, http_get, unavailable

MEMINFO = """\
MemTotal:        8000000 kB
MemFree:         1000000 kB
MemAvailable:    6000000 kB
Buffers:          200000 kB
Cached:          3000000 kB
SwapCached:            0 kB
HugePages_Total:       0
"""


class ParseMeminfoTests(SynchronousTestCase):
    """
    L{parse_meminfo} turns C{/proc/meminfo} into Sockudo's figures.
    """

    def test_available(self) -> None:
        """
        C{free} is C{MemAvailable}, C{used} the rest of C{MemTotal}, all in
        bytes, and C{percent} is C{used} over C{total}.
        """
        memory = parse_meminfo(MEMINFO)
        self.assertEqual(
            memory,
            HostMemory(
                total=8_000_000 * 1024,
                free=6_000_000 * 1024,
                used=2_000_000 * 1024,
                percent=25.0,
            ),
        )

    def test_json(self) -> None:
        """
        The body nests the four figures under C{memory}.
        """
        self.assertEqual(
            parse_meminfo(MEMINFO).as_json(),
            {
                "memory": {
                    "free": 6_144_000_000,
                    "used": 2_048_000_000,
                    "total": 8_192_000_000,
                    "percent": 25.0,
                }
            },
        )

    def test_old_kernel(self) -> None:
        """
        Without C{MemAvailable} (kernels before 3.14), available memory is
        C{MemFree + Buffers + Cached + SReclaimable - Shmem}.
        """
        text = (
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 300 kB\n"
            "SReclaimable: 20 kB\nShmem: 70 kB\n"
        )
        memory = parse_meminfo(text)
        self.assertEqual((memory.free, memory.used), (400 * 1024, 600 * 1024))
        self.assertEqual(memory.percent, 60.0)

    def test_malformed(self) -> None:
        """
        A text without C{MemTotal}, or with a value that is not a number,
        is refused.
        """
        self.assertRaises(ValueError, parse_meminfo, "MemFree: 1 kB\n")
        self.assertRaises(ValueError, parse_meminfo, "MemTotal: x kB\nMemFree: 1 kB\n")

    def test_missing_file(self) -> None:
        """
        A missing file (not Linux) is L{HostMemoryUnavailableError}.
        """
        self.assertRaises(
            HostMemoryUnavailableError, read_host_memory, Path(self.mktemp()) / "meminfo"
        )

    def test_this_host(self) -> None:
        """
        On Linux the real C{/proc/meminfo} gives consistent figures.
        """
        if not sys.platform.startswith("linux"):
            unavailable(self, "Linux /proc/meminfo (the daemon answers 501 elsewhere)")
        memory = read_host_memory()
        self.assertGreater(memory.total, 0)
        self.assertEqual(memory.free + memory.used, memory.total)
        self.assertTrue(0.0 <= memory.percent <= 100.0)


class RoutesTests(SynchronousTestCase):
    """
    C{/live} and C{/usage} as mounted on every listener's L{RootResource}.
    """

    def setUp(self) -> None:
        self.lifecycle = Lifecycle()
        store = MemoryAppStore([App("1", "k1", "s1")])
        health = HealthResource(store, always_healthy, self.lifecycle, MemoryReactorClock())
        self.root = RootResource(Resource(), Resource(), health)
        self.meminfo = Path(self.mktemp())
        self.meminfo.write_text(MEMINFO)
        # The figures of a known file rather than of this host.
        self.root.putChild(b"usage", UsageResource(self.meminfo))

    def request(
        self, path: str, method: str = "GET", root: Resource | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """
        C{method} C{path}: the status, body and (last value of each) header.
        """
        treq = StubTreq(root if root is not None else self.root)
        response = self.successResultOf(treq.request(method, "http://127.0.0.1" + path))
        body = self.successResultOf(response.content())
        headers = {
            name.decode().lower(): values[-1].decode()
            for name, values in response.headers.getAllRawHeaders()
        }
        return response.code, body, headers

    def test_live(self) -> None:
        """
        C{GET /live} answers 200 with an empty body, never cached.
        """
        code, body, headers = self.request("/live")
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertEqual(self.request("/live", "HEAD")[:2], (200, b""))

    def test_live_while_draining(self) -> None:
        """
        C{/live} stays 200 while C{/up} answers 503 during a drain: a
        liveness probe must not kill a node that is shutting down cleanly.
        """
        self.lifecycle.draining = True
        self.assertEqual(self.request("/up")[0], 503)
        self.assertEqual(self.request("/live")[0], 200)

    def test_exact_paths(self) -> None:
        """
        A trailing slash is the same route; deeper paths are 404.
        """
        self.assertEqual(self.request("/live/")[0], 200)
        self.assertEqual(self.request("/usage/")[0], 200)
        self.assertEqual(self.request("/live/x")[0], 404)
        self.assertEqual(self.request("/usage/x/y")[0], 404)

    def test_methods(self) -> None:
        """
        Only GET and HEAD are served: POST is 405.
        """
        self.assertEqual(self.request("/live", "POST")[0], 405)
        self.assertEqual(self.request("/usage", "POST")[0], 405)

    def test_usage(self) -> None:
        """
        C{GET /usage} answers the JSON figures of the meminfo file.
        """
        code, body, headers = self.request("/usage")
        self.assertEqual(code, 200)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertEqual(json.loads(body), parse_meminfo(MEMINFO).as_json())

    def test_usage_default_path(self) -> None:
        """
        The mounted C{/usage} reads this host's C{/proc/meminfo}.
        """
        if not sys.platform.startswith("linux"):
            unavailable(self, "Linux /proc/meminfo (the daemon answers 501 elsewhere)")
        root = RootResource(Resource(), Resource(), Resource())
        code, body, _ = self.request("/usage", root=root)
        self.assertEqual(code, 200)
        memory = json.loads(body)["memory"]
        self.assertEqual(set(memory), {"free", "used", "total", "percent"})
        self.assertEqual(memory["free"] + memory["used"], memory["total"])

    def test_not_linux(self) -> None:
        """
        Without the meminfo file C{/usage} answers 501 naming it, and warns
        once in the log.
        """
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        missing = Path(self.mktemp())
        self.root.putChild(b"usage", UsageResource(missing))
        for _ in range(2):
            code, body, _ = self.request("/usage")
            self.assertEqual(code, 501)
            self.assertIn(str(missing), json.loads(body)["error"])
        warnings = [e for e in events if "/usage" in str(e.get("log_format", ""))]
        self.assertEqual(len(warnings), 1)

    def test_malformed_file(self) -> None:
        """
        A meminfo file in another format is a logged 500, not made-up figures.
        """
        self.meminfo.write_text("nothing here\n")
        code, body, _ = self.request("/usage")
        self.assertEqual(code, 500)
        self.assertIn("error", json.loads(body))

    def test_usage_disabled(self) -> None:
        """
        With C{usage_enabled} false (Sockudo's C{http_api.usage_enabled})
        only C{/live} is mounted.
        """
        root = Resource()
        mount_operational(root, usage_enabled=False)
        self.assertEqual(self.request("/live", root=root)[0], 200)
        self.assertEqual(self.request("/usage", root=root)[0], 404)


class DaemonTests(TestCase):
    """
    The endpoints on a real C{twistd sockudo} daemon.
    """

    async def test_live_and_usage(self) -> None:
        """
        The daemon answers C{/live} and, on Linux, C{/usage} with figures.
        """
        server = await SharedServer.get(self)
        self.assertEqual(await http_get("127.0.0.1", server.port, "/live"), (200, b""))
        code, body = await http_get("127.0.0.1", server.port, "/usage")
        if sys.platform.startswith("linux"):
            self.assertEqual(code, 200, body)
            memory = json.loads(body)["memory"]
            self.assertEqual(memory["free"] + memory["used"], memory["total"])
        else:
            self.assertEqual(code, 501, body)
