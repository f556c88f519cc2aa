"""
The twistd dropin: C{twistd sockudo} runs L{sockudo_tw.tap}.

Kept to one statement so the plugin scan stays cheap and cannot fail;
there is deliberately no C{__init__.py} anywhere under C{twisted/}.
"""

from twisted.application.service import ServiceMaker

sockudo = ServiceMaker(
    "sockudo-tw",
    "sockudo_tw.tap",
    "A Pusher Channels server (drop-in for Pusher, Soketi and Sockudo)",
    "sockudo",
)
