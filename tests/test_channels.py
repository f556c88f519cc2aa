"""
Channel classification by exact prefix and channel name rules.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher.channels import (
    ChannelKind,
    channel_type,
    server_to_user_id,
    validate_channel_name,
)


class ChannelTypeTests(SynchronousTestCase):
    """
    Kinds and cache flags.
    """

    def test_kinds(self) -> None:
        """
        Every prefix of pusher-protocol.md section 4.1, anchored.
        """
        cases = {
            "foo": (ChannelKind.PUBLIC, False),
            "cache-foo": (ChannelKind.PUBLIC, True),
            "private-foo": (ChannelKind.PRIVATE, False),
            "private-cache-foo": (ChannelKind.PRIVATE, True),
            "private-encrypted-foo": (ChannelKind.PRIVATE_ENCRYPTED, False),
            "private-encrypted-cache-foo": (ChannelKind.PRIVATE_ENCRYPTED, True),
            "presence-foo": (ChannelKind.PRESENCE, False),
            "presence-cache-foo": (ChannelKind.PRESENCE, True),
            "#server-to-user-1": (ChannelKind.SERVER_TO_USER, False),
            "foo-private-cache-x": (ChannelKind.PUBLIC, False),
            "my-presence-x": (ChannelKind.PUBLIC, False),
        }
        for name, (kind, cache) in cases.items():
            ctype = channel_type(name)
            self.assertEqual((ctype.kind, ctype.cache), (kind, cache), name)

    def test_auth_and_client_events(self) -> None:
        """
        Every private kind requires auth; client events only on private and
        presence (not encrypted).
        """
        self.assertTrue(channel_type("private-cache-a").requires_auth)
        self.assertTrue(channel_type("presence-cache-a").requires_auth)
        self.assertFalse(channel_type("cache-a").requires_auth)
        self.assertTrue(channel_type("presence-a").allows_client_events)
        self.assertFalse(channel_type("private-encrypted-a").allows_client_events)
        self.assertFalse(channel_type("a").allows_client_events)


class NameTests(SynchronousTestCase):
    """
    Name validation.
    """

    def test_valid(self) -> None:
        """
        Pusher's charset plus ":" and the server-to-user prefix pass.
        """
        for name in ("a", "A-z_0=9@,.;:", "private-App.User.1", "#server-to-user-42"):
            self.assertIsNone(validate_channel_name(name, 200), name)

    def test_invalid(self) -> None:
        """
        Empty, non-string, bad characters, other "#" names and long names fail.
        """
        for name in ("", None, 5, "a b", "a/b", "é", "#foo", "#server-to-user-"):
            self.assertIsNotNone(validate_channel_name(name, 200), repr(name))
        self.assertIsNotNone(validate_channel_name("a" * 165, 164))
        self.assertIsNone(validate_channel_name("a" * 5000, 0))

    def test_server_to_user_id(self) -> None:
        """
        The user id of a server-to-user channel.
        """
        self.assertEqual(server_to_user_id("#server-to-user-42"), "42")
        self.assertIsNone(server_to_user_id("private-x"))
