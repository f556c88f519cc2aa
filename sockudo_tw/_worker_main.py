# -*- test-case-name: tests.test_workers -*-
"""
Entry point of a child worker process (see L{sockudo_tw.workers}).

The parent passes the shared listening sockets the way systemd does, but it
cannot know the child's pid in advance, so C{LISTEN_PID} is set here, before
Twisted reads the C{LISTEN_*} variables (when L{twisted.internet.endpoints}
is first imported); then this is plain C{twistd}.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """
    Claim the inherited sockets for this process and run twistd.
    """
    os.environ["LISTEN_PID"] = str(os.getpid())
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
