"""
Tests for the twistd dropin: found by L{twisted.plugin.getPlugins} from the
source tree, from a built wheel, and from the installed environment.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

import sockudo_tw
from sockudo_tw import tap
from tests.interop_harness import unavailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LIST_PLUGINS = (
    "from twisted.application.service import IServiceMaker\n"
    "from twisted.plugin import getPlugins\n"
    "import sys\n"
    "for p in getPlugins(IServiceMaker):\n"
    "    if p.tapname == 'sockudo':\n"
    "        print(sys.modules[p.module].__file__ if p.module in sys.modules else p.module)\n"
    "        print(sys.modules['twisted.plugins.sockudo_plugin'].__file__)\n"
)


def _run(args: list[str], cwd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """
    Run a short helper process, bounded in time.
    """
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


class PluginTests(SynchronousTestCase):
    """
    Discovery of the C{sockudo} tap.
    """

    def test_discovered(self) -> None:
        """
        C{getPlugins(IServiceMaker)} yields the C{sockudo} tap, whose
        options and service maker are L{sockudo_tw.tap}'s.
        """
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "sockudo"]
        self.assertEqual(len(makers), 1)
        (maker,) = makers
        self.assertIs(maker.options, tap.Options)
        self.assertEqual(maker.module, "sockudo_tw.tap")

    def test_no_init_under_twisted(self) -> None:
        """
        No C{__init__.py} anywhere under C{twisted/}: one there would
        replace Twisted's own on install.
        """
        for directory, _, files in os.walk(os.path.join(ROOT, "twisted")):
            self.assertNotIn("__init__.py", files, directory)

    def test_wheel_install(self) -> None:
        """
        A regular (non-editable) install of the project ships the dropin
        where Twisted finds it.
        """
        source = self.mktemp()
        os.makedirs(source)
        for name in ("setup.cfg", "pyproject.toml", "README.rst"):
            shutil.copy(os.path.join(ROOT, name), source)
        for name in ("sockudo_tw", "twisted"):
            shutil.copytree(
                os.path.join(ROOT, name),
                os.path.join(source, name),
                ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"),
            )
        target = os.path.abspath(self.mktemp())
        result = _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                target,
                ".",
            ],
            cwd=source,
            env=dict(os.environ),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        # The version has one source, sockudo_tw.__version__ (setup.cfg's attr:).
        (installed,) = importlib.metadata.distributions(path=[target], name="sockudo-tw")
        self.assertEqual(installed.version, sockudo_tw.__version__)
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "plugins", "__init__.py")))
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        listed = _run(
            [sys.executable, "-c", _LIST_PLUGINS],
            cwd=elsewhere,
            env=dict(os.environ, PYTHONPATH=target),
        )
        self.assertEqual(listed.returncode, 0, listed.stderr)
        lines = listed.stdout.splitlines()
        self.assertEqual(len(lines), 2, listed.stdout + listed.stderr)
        self.assertTrue(lines[1].startswith(target), lines)

    def test_installed_environment(self) -> None:
        """
        Where the project is installed (CI installs it editable, as the
        README says), the dropin is found from any working directory.
        """
        # The source tree itself (on sys.path as trial's cwd) may hold build
        # metadata; only an installation elsewhere counts.
        path = [p for p in sys.path if os.path.abspath(p or ".") != ROOT]
        found = [
            d
            for d in importlib.metadata.distributions(path=path)
            if d.metadata["Name"] == "sockudo-tw"
        ]
        if not found:
            unavailable(self, "sockudo-tw is not installed here (pip install -e); run .ci/run")
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        listed = _run([sys.executable, "-c", _LIST_PLUGINS], cwd=elsewhere, env=env)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertEqual(len(listed.stdout.splitlines()), 2, listed.stdout + listed.stderr)
