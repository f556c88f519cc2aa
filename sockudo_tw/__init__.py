"""
sockudo-tw: a Pusher Channels server on Twisted.

The protocol core lives in L{sockudo_tw.pusher} and imports nothing of
Twisted; everything else is glue and backends around it.
"""

__version__ = "0.1.0"
