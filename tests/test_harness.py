"""
The rule every test that needs a service follows: fail in CI, skip elsewhere.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.interop_harness import unavailable


class UnavailableTests(SynchronousTestCase):
    """
    L{unavailable} fails under C{CI=true} and skips otherwise.
    """

    def test_fails_in_ci(self) -> None:
        """
        With C{CI=true} a missing service is a failure naming it.
        """
        self.patch(os, "environ", {**os.environ, "CI": "true"})
        with self.assertRaises(self.failureException) as e:
            unavailable(self, "needs redis-server")
        self.assertIn("needs redis-server", str(e.exception))

    def test_skips_elsewhere(self) -> None:
        """
        Outside CI it is a skip naming the service.
        """
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "CI"})
        with self.assertRaises(SkipTest) as e:
            unavailable(self, "needs redis-server")
        self.assertEqual(str(e.exception), "needs redis-server")
