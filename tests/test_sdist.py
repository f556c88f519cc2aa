"""
The source distribution is a real package: it carries everything its tests
need and nothing generated, installs into a fresh virtualenv with the
C{test} extra, and its own tests pass there.

One test builds the sdist with C{python -m build --sdist} (the C{build}
package is in the C{test} extra) from a copy of this tree seeded with the
generated files a working tree collects, checks the file list and the
metadata, installs it with C{pip install 'SDIST[test]'} in a new virtualenv
(40 to 90 s from pip's wheel cache, depending on the machine's load), runs
a few test modules from the unpacked sdist with that virtualenv's Python,
and runs the installed C{twistd sockudo --version}. One to two minutes in
all on the CI machine.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.interop_harness import REPO_ROOT, unavailable

_log = Logger()

#: Test modules run from the unpacked sdist: between them they read
#: README.rst, etc/, tests/data, the sans-IO core, the Grafana dashboard and
#: the test harness (a real daemon in tests.test_usage).
SDIST_TEST_MODULES = (
    "tests.test_config",
    "tests.test_sans_io",
    "tests.test_grafana",
    "tests.test_layers",
    "tests.test_usage",
)

#: Files the sdist must carry (paths inside its top directory), a sample
#: of each kind its tests and its users read; the full comparison is
#: against the tree in L{SdistTests.test_sdist}.
REQUIRED = (
    "PKG-INFO",
    "LICENSE",
    "README.rst",
    "pyproject.toml",
    "setup.cfg",
    "ruff.toml",
    "MANIFEST.in",
    "sockudo_tw/__init__.py",
    "sockudo_tw/py.typed",
    "sockudo_tw/adapters/redis_scripts/apply.lua",
    "twisted/plugins/sockudo_plugin.py",
    "tests/__init__.py",
    "tests/interop_harness.py",
    "tests/data/sockudo-config.json",
    "tests/interop/driver.js",
    "tests/interop/package.json",
    "tests/interop/package-lock.json",
    "bench/package.json",
    "bench/package-lock.json",
    "bench/run.js",
    "etc/sockudo/config.json",
    "etc/nginx/sockudo.conf",
    "etc/grafana/sockudo-tw.json",
    "systemd/sockudo.service",
    "docs/architecture.rst",
)

#: The directories and top-level files whose every (non-generated) file
#: must be in the sdist.
SHIPPED_DIRS = ("sockudo_tw", "twisted/plugins", "tests", "etc", "systemd", "bench", "docs")
SHIPPED_FILES = ("LICENSE", "README.rst", "pyproject.toml", "setup.cfg", "ruff.toml", "MANIFEST.in")

#: What a working tree collects and the copy is seeded with: none of it
#: may be shipped.
SEEDED_GENERATED = (
    "tests/interop/node_modules/pusher-js/package.json",
    "bench/node_modules/ws/index.js",
    "bench/results/run.json",
    "_trial_temp/test.log",
    "tests/_trial_temp/test.log",
    "sockudo_tw/__pycache__/web.cpython-311.pyc",
    "tests/__pycache__/test_config.cpython-311.pyc",
    "twisted/plugins/dropin.cache",
    ".ci-venv/bin/python",
    "tests/twistd.log",
    "tests/twistd.pid",
    ".coverage",
)

#: A generated path, wherever it is. The sdist's own
#: C{sockudo_tw.egg-info/} (setuptools writes it fresh for each build) is
#: allowed apart.
GENERATED = re.compile(
    r"(^|/)(node_modules|_trial_temp[^/]*|__pycache__|\.ci-venv|\.venv|\.git"
    r"|\.mypy_cache|\.ruff_cache|\.hypothesis)(/|$)"
    r"|\.py[cod]$|(^|/)dropin\.cache$|(^|/)twistd\.(log|pid)|(^|/)\.coverage"
    r"|^bench/results/|\.egg-info(/|$)"
)
EGG_INFO = frozenset(
    f"sockudo_tw.egg-info/{name}"
    for name in (
        "PKG-INFO",
        "SOURCES.txt",
        "dependency_links.txt",
        "not-zip-safe",
        "requires.txt",
        "top_level.txt",
    )
)

#: What is never copied from this tree: generated anywhere, or at the top.
_NEVER_COPIED = shutil.ignore_patterns(
    ".git",
    "node_modules",
    "_trial_temp*",
    "*.egg-info",
    "__pycache__",
    "*.py[cod]",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "dropin.cache",
    ".coverage*",
    "twistd.log*",
    "*.pid",
)
_NEVER_COPIED_AT_TOP = {".ci-venv", ".venv", "venv", "build", "dist", "htmlcov"}


def _copy_ignored(directory: str, names: list[str]) -> set[str]:
    """
    The entries of C{directory} that the copy of the tree leaves out.
    """
    ignored = set(_NEVER_COPIED(directory, names))
    if Path(directory).resolve() == REPO_ROOT:
        ignored.update(_NEVER_COPIED_AT_TOP.intersection(names))
    return ignored


REQUIRED_CLASSIFIERS = (
    "License :: OSI Approved :: MIT License",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Framework :: Twisted",
    "Topic :: Internet :: WWW/HTTP",
    "Topic :: Communications",
)


def _run(
    args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """
    Run one step, bounded in time, outside this process's virtualenv.
    """
    if env is None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    """
    The end of a step's output, for a failure message.
    """
    return (result.stdout + result.stderr)[-6000:]


class SdistTests(SynchronousTestCase):
    """
    Build, check, install and test the sdist (one test: each step needs the
    one before).
    """

    def setUp(self) -> None:
        if importlib.util.find_spec("build") is None:
            unavailable(self, "the `build` package (pip install build; it is in the test extra)")
        self.work = Path(self.mktemp()).resolve()
        self.work.mkdir(parents=True)
        self.timings: dict[str, float] = {}
        self.version = ""

    def step(self, name: str, args: list[str], cwd: Path, timeout: float) -> str:
        """
        Run and time one step; fail with its output when it fails.
        """
        started = time.monotonic()
        result = _run(args, cwd, timeout)
        self.timings[name] = time.monotonic() - started
        self.assertEqual(result.returncode, 0, f"{name} failed:\n{_output(result)}")
        return result.stdout

    def test_sdist(self) -> None:
        """
        The sdist has every shipped file and nothing generated, complete
        metadata, and installs and passes its own tests in a new virtualenv.
        """
        tree = self.work / "tree"
        shutil.copytree(REPO_ROOT, tree, ignore=_copy_ignored)
        for relative in SEEDED_GENERATED:
            path = tree / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("generated\n")

        self.check_packages(tree)
        dist = self.work / "dist"
        self.step(
            "build",
            [sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), "."],
            tree,
            300,
        )
        (sdist,) = dist.glob("sockudo_tw-*.tar.gz")
        top = self.check_file_list(sdist, tree)
        self.check_metadata(sdist, top)

        unpacked = self.work / "unpacked"
        with tarfile.open(sdist) as archive:
            archive.extractall(unpacked, filter="data")
        source = unpacked / top

        venv = self.work / "venv"
        python = str(venv / "bin" / "python")
        self.step("venv", [sys.executable, "-m", "venv", str(venv)], self.work, 120)
        self.step(
            "install",
            # No byte-compiling of every installed module (botocore alone
            # is large): a quarter of the time, and nothing the tests need.
            [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-compile",
                "--disable-pip-version-check",
                f"{sdist}[test]",
            ],
            self.work,
            600,
        )
        self.check_installed(python, source)
        self.step("tests", [python, "-m", "twisted.trial", *SDIST_TEST_MODULES], source, 300)
        version = self.step(
            "twistd --version",
            [str(venv / "bin" / "twistd"), "sockudo", "--version"],
            self.work,
            60,
        )
        self.assertRegex(version, rf"^sockudo-tw {re.escape(self.version)} \(Twisted \S+, ")
        _log.info(
            "sdist test steps took {timings}",
            timings={name: round(seconds, 1) for name, seconds in self.timings.items()},
        )

    def check_file_list(self, sdist: Path, tree: Path) -> str:
        """
        Every required and shipped file of C{tree} is in C{sdist}, and none
        of the generated ones; returns the sdist's top directory.
        """
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
        tops = {m.name.split("/", 1)[0] for m in members}
        self.assertEqual(len(tops), 1, tops)
        (top,) = tops
        names = {m.name.split("/", 1)[1] for m in members}

        missing = [name for name in REQUIRED if name not in names]
        self.assertEqual(missing, [], "required files missing from the sdist")
        expected = set(SHIPPED_FILES)
        for directory in SHIPPED_DIRS:
            for path in (tree / directory).rglob("*"):
                relative = path.relative_to(tree).as_posix()
                if path.is_file() and not GENERATED.search(relative):
                    expected.add(relative)
        self.assertEqual(sorted(expected - names), [], "tree files missing from the sdist")
        generated = sorted(n for n in names if GENERATED.search(n) and n not in EGG_INFO)
        self.assertEqual(generated, [], "generated files in the sdist")
        for seeded in SEEDED_GENERATED:
            self.assertNotIn(seeded, names)
        return top

    def check_packages(self, tree: Path) -> None:
        """
        setup.cfg lists every package of C{sockudo_tw}: an unlisted one is
        still installed as data, with a deprecation warning, and would
        vanish from the wheel when setuptools stops doing so.
        """
        config = configparser.ConfigParser()
        config.read(tree / "setup.cfg", encoding="utf-8")
        listed = set(config["options"]["packages"].split())
        found = {
            init.parent.relative_to(tree).as_posix().replace("/", ".")
            for init in (tree / "sockudo_tw").rglob("__init__.py")
        }
        self.assertEqual(sorted(found - listed), [], "packages missing from setup.cfg")

    def check_metadata(self, sdist: Path, top: str) -> None:
        """
        PKG-INFO has the URLs, classifiers, Python bound, license and the
        README as its long description.
        """
        with tarfile.open(sdist) as archive:
            member = archive.extractfile(f"{top}/PKG-INFO")
            assert member is not None
            metadata = email.parser.Parser().parsestr(member.read().decode("utf-8"))
        self.version = metadata["Version"]
        self.assertEqual(f"sockudo_tw-{self.version}", top)
        self.assertEqual(metadata["Name"], "sockudo-tw")
        self.assertEqual(metadata["Requires-Python"], ">=3.11")
        self.assertEqual(metadata["License"], "MIT")
        self.assertIn("LICENSE", metadata.get_all("License-File") or [])
        self.assertEqual(metadata["Home-page"], "https://github.com/sockudo-tw/sockudo-tw")
        self.assertEqual(metadata["Author"], "sockudo-tw contributors")
        self.assertTrue(metadata["Keywords"])
        urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
        self.assertEqual(sorted(urls), ["Documentation", "Issues", "Source"])
        for url in urls.values():
            self.assertTrue(url.startswith("https://github.com/sockudo-tw/sockudo-tw"), url)
        classifiers = metadata.get_all("Classifier") or []
        for classifier in REQUIRED_CLASSIFIERS:
            self.assertIn(classifier, classifiers)
        self.assertTrue(any(c.startswith("Development Status ::") for c in classifiers))
        self.assertEqual(metadata["Description-Content-Type"], "text/x-rst")
        readme = (REPO_ROOT / "README.rst").read_text(encoding="utf-8")
        self.assertIn(readme.splitlines()[0].strip(), metadata.get_payload())

    def check_installed(self, python: str, source: Path) -> None:
        """
        The install is a regular one (not the source tree), with every
        package and data file of the sdist's C{sockudo_tw}.
        """
        where = self.step(
            "locate",
            [python, "-c", "import sockudo_tw; print(sockudo_tw.__file__)"],
            self.work,
            60,
        )
        installed = Path(where.strip()).parent
        self.assertIn("site-packages", installed.parts)
        shipped = source / "sockudo_tw"
        for path in shipped.rglob("*"):
            relative = path.relative_to(shipped)
            if path.is_file() and (path.suffix != ".py" or path.name == "__init__.py"):
                self.assertTrue((installed / relative).exists(), f"{relative} not installed")
