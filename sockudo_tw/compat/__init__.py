# -*- test-case-name: tests.test_compat -*-
"""
The one place where sockudo-tw relies on other projects' private internals.

Rule (issue 14): outside this package, no module of C{sockudo_tw} reads,
writes or overrides an underscore attribute of Twisted, txaio, txredisapi,
Klein, treq or Autobahn, nor behaviour they do not document. Where a
measured speed-up or a quieter log needs such an internal, the use lives
here, one module per project (L{sockudo_tw.compat.twisted},
L{sockudo_tw.compat.txredisapi}, L{sockudo_tw.compat.autobahn}; Twisted's
C{adbapi} has its own, L{sockudo_tw.compat.adbapi}, as only the SQL app
stores use it), and each use:

  - names the versions it was checked against (C{CHECKED_ON});
  - is guarded at import: the module checks that the installed version is
    in the range it knows and that the attributes it reads exist with the
    expected shape, and sets a module flag (e.g.
    L{sockudo_tw.compat.twisted.WRITE_BUFFERS}) instead of failing;
  - has a fallback on public API, taken when its flag is off, which keeps
    behaviour correct (perhaps slower or noisier), and is tested with the
    flag forced off (C{tests.test_compat});
  - is pinned by a test that asserts the guard recognises the installed
    version, so that an upgrade of a dependency turns CI red rather than
    silently taking the fallback in production.

Nothing here patches a third-party module or class process-wide: a speed-up
is scoped to our own subclasses and functions. C{install_requires} caps
each project used here (Twisted, Autobahn, txaio, txredisapi) below its next
release series not yet checked; Klein and treq are used through their public
API only and are not capped.
"""

from __future__ import annotations

__all__ = ["Range", "version_in_range"]

Range = tuple[tuple[int, int], tuple[int, int]]
"""
A range of releases as (major, minor): lower bound included, upper excluded.
"""


def version_in_range(version: str, known: Range) -> bool:
    """
    Whether the version string C{version} (C{"26.10.0"}) is a release in
    C{known}; a string that does not start with two numbers is not.
    """
    try:
        major, minor = version.split(".")[:2]
        release = (int(major), int(minor))
    except (AttributeError, ValueError):
        return False
    return known[0] <= release < known[1]
