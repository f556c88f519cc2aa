"""
The sans-IO Pusher Channels protocol core.

Nothing in this package imports Twisted (a test asserts it): it parses and
serialises frames, classifies channels, checks signatures and runs one
connection's state machine with time passed in explicitly.
"""
