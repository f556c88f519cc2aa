"""
The layering rule of docs/architecture.rst, checked on the source: the
sans-IO Pusher core imports nothing from Twisted, Autobahn, Klein, txaio,
txredisapi, treq, zope or the glue around it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import sockudo_tw.pusher

CORE = Path(sockudo_tw.pusher.__file__).parent
FORBIDDEN_TOP = {"twisted", "autobahn", "klein", "txaio", "txredisapi", "treq", "zope", "hiredis"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """
    Every module C{path} imports, absolute, with its line: relative imports
    are resolved against the core package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.append((node.lineno, "sockudo_tw.pusher." + (node.module or "")))
            elif node.level > 1:
                found.append((node.lineno, "sockudo_tw." + (node.module or "")))
            elif node.module is not None:
                found.append((node.lineno, node.module))
    return found


def violations(root: Path) -> list[str]:
    """
    C{file:line module} for each import in C{root}'s modules that breaks the
    rule.
    """
    bad = []
    for path in sorted(root.rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            outside_core = module.startswith("sockudo_tw") and not (
                module == "sockudo_tw.pusher" or module.startswith("sockudo_tw.pusher.")
            )
            if top in FORBIDDEN_TOP or outside_core:
                bad.append(f"{path.relative_to(root.parent)}:{line} {module}")
    return bad


class CoreLayerTests(SynchronousTestCase):
    """
    L{sockudo_tw.pusher} stays sans-IO.
    """

    def test_core_imports(self) -> None:
        """
        No module of the core imports Twisted, Autobahn or the glue.
        """
        self.assertEqual(violations(CORE), [])

    def test_rule_catches(self) -> None:
        """
        The check itself sees a forbidden import, including a relative one
        that climbs out of the core.
        """
        root = Path(self.mktemp()) / "pusher"
        root.mkdir(parents=True)
        (root / "a.py").write_text("from twisted.internet import reactor\nimport json\n")
        (root / "b.py").write_text("from sockudo_tw.websocket import PusherProtocol\n")
        (root / "c.py").write_text("from . import events\nfrom ..web import SockudoSite\n")
        self.assertEqual(
            violations(root),
            [
                "pusher/a.py:1 twisted.internet",
                "pusher/b.py:1 sockudo_tw.websocket",
                "pusher/c.py:2 sockudo_tw.web",
            ],
        )
