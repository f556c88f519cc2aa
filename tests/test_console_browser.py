"""
The live debug console end to end, in headless Chromium (Debian's
C{/usr/bin/chromium} driven by playwright-core from tests/interop): a real
daemon with C{console.enabled}; the page refuses a visitor without
credentials, logs in, shows an event triggered through the HTTP API, sends
one from its form that a pusher-js client receives, and shows the live
counts; and, with the Redis adapter, a node's console showing an event
another node published. The page's screenshot is kept as C{console.png} in trial's working
directory (C{_trial_temp/console.png}).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from typing import Any

import pusher
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.interop_harness import (
    APP_ID,
    APP_KEY,
    APP_SECRET,
    INTEROP_DIR,
    ServerProcess,
    app_config,
    free_port,
    require_node,
    unavailable,
)

CHROMIUM = "/usr/bin/chromium"
SCRIPT = INTEROP_DIR / "console_check.js"
SCREENSHOT = "console.png"


def _fresh_screenshot_path() -> str:
    """
    Where the screenshot goes (trial's working directory: C{_trial_temp},
    or C{_trial_temp-N} while another trial run holds it), cleared.
    """
    path = os.path.abspath(SCREENSHOT)
    if os.path.exists(path):
        os.unlink(path)
    return path


def _size(path: str) -> int:
    return os.path.getsize(path)


class ConsoleBrowserTests(TestCase):
    """
    The console as an operator uses it, in a browser.
    """

    timeout = 120

    def _require_browser(self) -> None:
        require_node(self)
        if not os.access(CHROMIUM, os.X_OK):
            unavailable(self, f"the console browser test needs Chromium at {CHROMIUM}")
        if not (INTEROP_DIR / "node_modules" / "playwright-core" / "package.json").exists():
            unavailable(
                self,
                "the console browser test needs tests/interop/node_modules/playwright-core"
                " (run `npm ci` in tests/interop)",
            )

    async def test_console_in_chromium(self) -> None:
        """
        Every step of C{console_check.js} passes, and the screenshot exists.
        """
        self._require_browser()
        console_port = free_port()
        server = await ServerProcess.start(
            self,
            [app_config()],
            {
                "console": {
                    "enabled": True,
                    "host": "127.0.0.1",
                    "port": console_port,
                    "username": "operator",
                    "password": "console-test-password",
                }
            },
        )
        screenshot = _fresh_screenshot_path()
        settings = {
            "consoleUrl": f"http://127.0.0.1:{console_port}/",
            "username": "operator",
            "password": "console-test-password",
            "wsHost": "127.0.0.1",
            "wsPort": server.port,
            "appId": APP_ID,
            "appKey": APP_KEY,
            "appSecret": APP_SECRET,
            "screenshot": screenshot,
        }
        node = shutil.which("node")
        assert node is not None
        out, err, code = await getProcessOutputAndValue(
            node,
            [str(SCRIPT), json.dumps(settings)],
            env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
            path=str(INTEROP_DIR),
        )
        steps: dict[str, dict[str, Any]] = {}
        for line in out.decode().splitlines():
            if line.startswith("{"):
                step = json.loads(line)
                steps[step["step"]] = step
        context = f"node exit {code}\nstdout:\n{out.decode()}\nstderr:\n{err.decode()[-3000:]}"
        context += "\n" + server.log_tail(30)
        for name in ("refused", "login", "api", "form", "counts", "screenshot", "done"):
            self.assertIn(name, steps, context)
            self.assertTrue(steps[name]["ok"], context)
        self.assertEqual(steps["refused"]["status"], 401)
        self.assertEqual(steps["form"]["data"], {"hello": "form"})
        self.assertEqual(code, 0, context)
        self.assertTrue(_size(screenshot) > 0)


class _Stream(protocol.Protocol):
    """
    A raw HTTP client reading the console's event stream as it comes.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = bytearray()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ConsoleClusterTests(TestCase):
    """
    With the Redis adapter, a node's console shows what another node saw.
    """

    timeout = 90

    async def test_other_node_in_tail(self) -> None:
        """
        A viewer on node A sees an event published through node B's HTTP
        API, marked with B's node id, once B learned (within one poll) that
        someone watches.
        """
        from tests.test_redis_cluster import SHARED_REDIS, delete_keys, require_redis

        require_redis(self)
        prefix = f"sockudo_test_{uuid.uuid4().hex[:10]}:"
        self.addCleanup(delete_keys, SHARED_REDIS[1], prefix)
        adapter = {
            "driver": "redis",
            "redis": {
                "prefix": prefix,
                "redis_pub_options": {"url": f"redis://127.0.0.1:{SHARED_REDIS[1]}/0"},
            },
        }
        servers = []
        consoles = []
        for _ in range(2):
            port = free_port()
            console = {"enabled": True, "port": port, "username": "op", "password": "pw"}
            servers.append(
                await ServerProcess.start(
                    self, [app_config()], {"adapter": adapter, "console": console}
                )
            )
            consoles.append(port)
        token = base64.b64encode(b"op:pw").decode()
        request = (
            f"GET /feed?app={APP_ID} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Basic {token}\r\n\r\n"
        ).encode()
        stream = _Stream(request)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", consoles[0])
        connected = await connectProtocol(endpoint, stream)
        self.addCleanup(connected.transport.loseConnection)
        sdk = pusher.Pusher(
            app_id=APP_ID,
            key=APP_KEY,
            secret=APP_SECRET,
            host="127.0.0.1",
            port=servers[1].port,
            ssl=False,
        )
        for attempt in range(40):
            await deferLater(reactor, 0.25, lambda: None)
            if b"from-node-b" in stream.received:
                break
            if attempt % 4 == 0:
                await deferToThread(sdk.trigger, "cluster-demo", "from-node-b", {"n": attempt})
        records = [
            json.loads(line[6:])
            for line in bytes(stream.received).split(b"\n")
            if line.startswith(b"data: {") and b"from-node-b" in line
        ]
        logs = "\n".join(s.log_tail(20) for s in servers)
        self.assertTrue(records, f"no relayed record; stream: {bytes(stream.received)!r}\n{logs}")
        self.assertEqual(records[0]["kind"], "api")
        self.assertEqual(records[0]["channel"], "cluster-demo")
        self.assertIn("node", records[0])
