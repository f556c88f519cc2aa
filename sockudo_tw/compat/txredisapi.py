# -*- test-case-name: tests.test_compat -*-
"""
What sockudo-tw relies on in txredisapi beyond its documented API (see
L{sockudo_tw.compat} for the rule).

Checked on txredisapi 1.6.0 (C{CHECKED_ON}); the guard accepts 1.6.x
(C{KNOWN_RANGE}), the range C{install_requires} allows.

No underscore attribute of txredisapi is read any more: the cluster link
(L{sockudo_tw.adapters._redis_link}) counts the replies it awaits itself
instead of reading C{RedisProtocol.replyQueue}. What remains is undocumented
but public: the link builds C{RedisProtocol}/C{SubscriberProtocol} with its
own factory, which must offer the hooks their C{connectionMade} calls
(C{isLazy}, C{stopTrying}, C{connectionError}, see L{FACTORY_HOOKS}), and it
passes C{convertNumbers}/C{username} to their constructors. L{RECOGNISED}
checks the version and that the protocol classes still take those
arguments, so that a txredisapi release changing this contract turns
C{tests.test_compat} red before it reaches a user.
"""

from __future__ import annotations

import inspect

import txredisapi

from sockudo_tw.compat import version_in_range

__all__ = ["CHECKED_ON", "FACTORY_HOOKS", "KNOWN_RANGE", "RECOGNISED"]

CHECKED_ON = "1.6.0"
"""
The txredisapi release the contract below was read against and tested on.
"""

KNOWN_RANGE = ((1, 6), (1, 7))
"""
txredisapi versions (major, minor), lower bound included, upper excluded.
"""

FACTORY_HOOKS = ("isLazy", "stopTrying", "connectionError")
"""
The factory attributes txredisapi's protocols use on a failed AUTH/SELECT.
"""


def _version_known(version: str) -> bool:
    """
    Whether a txredisapi version string is in L{KNOWN_RANGE}.
    """
    return version_in_range(version, KNOWN_RANGE)


def _constructor_known() -> bool:
    """
    Whether the protocol classes take the keyword arguments the link passes,
    and their C{connectionMade} still uses the factory hooks we provide.
    """
    try:
        params = inspect.signature(txredisapi.BaseRedisProtocol.__init__).parameters
        source = inspect.getsource(txredisapi.BaseRedisProtocol.connectionMade)
    except (AttributeError, TypeError, ValueError, OSError):
        return False
    takes = {"password", "dbid", "convertNumbers", "username"} <= set(params)
    hooks = all(f"factory.{hook}" in source for hook in FACTORY_HOOKS)
    return takes and hooks


RECOGNISED = _version_known(str(getattr(txredisapi, "__version__", ""))) and _constructor_known()
"""
Whether the installed txredisapi is one this contract was checked on.
"""
