"""
The protocol core and the registry import nothing of Twisted.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase


class SansIOTests(SynchronousTestCase):
    """
    Import the pure modules in a fresh interpreter and look at sys.modules.
    """

    def test_no_twisted(self) -> None:
        """
        C{sockudo_tw.pusher} (every module) and C{sockudo_tw.registry} load
        no C{twisted} module.
        """
        code = (
            "import sys, pkgutil, importlib\n"
            "import sockudo_tw.pusher as p\n"
            "for m in pkgutil.iter_modules(p.__path__):\n"
            "    importlib.import_module('sockudo_tw.pusher.' + m.name)\n"
            "import sockudo_tw.registry, sockudo_tw.framing\n"
            "bad = sorted(n for n in sys.modules if n == 'twisted' or n.startswith('twisted.'))\n"
            "print(len([n for n in sys.modules if n.startswith('sockudo_tw.pusher.')]))\n"
            "print(','.join(bad))\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            cwd=root,
            env=env,
        ).stdout.splitlines()
        self.assertGreaterEqual(int(out[0]), 7)
        self.assertEqual(out[1:], [""])
