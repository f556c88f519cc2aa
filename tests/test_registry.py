"""
Tests for L{sockudo_tw.registry}: the node index and the transitions it
reports.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher.presence import PresenceMember
from sockudo_tw.registry import Registry


def registry(*socket_ids: str, app_id: str = "1") -> Registry[str]:
    """
    A registry with these sockets (each socket object is its id).
    """
    r: Registry[str] = Registry()
    for sid in socket_ids:
        r.add_socket(app_id, sid, sid)
    return r


class ChannelTests(SynchronousTestCase):
    """
    Channel membership.
    """

    def test_occupied_vacated(self) -> None:
        """
        The first subscriber occupies, the last one leaving vacates.
        """
        r = registry("a", "b")
        first = r.subscribe("1", "c", "a")
        self.assertTrue(first.occupied)
        self.assertEqual(first.count, 1)
        second = r.subscribe("1", "c", "b")
        self.assertFalse(second.occupied)
        self.assertEqual(second.count, 2)
        self.assertEqual(dict(r.subscribers("1", "c")), {"a": "a", "b": "b"})
        self.assertEqual(r.channel_counts("1"), {"c": 2})
        out = r.unsubscribe("1", "c", "a")
        self.assertEqual((out.removed, out.vacated, out.count), (True, False, 1))
        out = r.unsubscribe("1", "c", "b")
        self.assertEqual((out.removed, out.vacated, out.count), (True, True, 0))
        self.assertEqual(r.channel_counts("1"), {})

    def test_idempotent(self) -> None:
        """
        Subscribing twice counts once; unsubscribing a stranger changes
        nothing and vacates nothing (Sockudo's bug).
        """
        r = registry("a", "b")
        r.subscribe("1", "c", "a")
        self.assertEqual(r.subscribe("1", "c", "a").count, 1)
        out = r.unsubscribe("1", "c", "b")
        self.assertEqual((out.removed, out.vacated, out.count), (False, False, 1))
        out = r.unsubscribe("1", "nowhere", "b")
        self.assertFalse(out.vacated)

    def test_unknown_socket(self) -> None:
        """
        An unregistered socket or another app's socket is refused.
        """
        r = registry("a")
        self.assertFalse(r.subscribe("1", "c", "zz").accepted)
        self.assertFalse(r.subscribe("2", "c", "a").accepted)

    def test_apps_apart(self) -> None:
        """
        Channels of different apps do not mix.
        """
        r = registry("a")
        r.add_socket("2", "b", "b")
        r.subscribe("1", "c", "a")
        r.subscribe("2", "c", "b")
        self.assertEqual(list(r.subscribers("1", "c")), ["a"])
        self.assertEqual(r.socket_count("1"), 1)
        self.assertEqual(r.socket_count("3"), 0)


class PresenceTests(SynchronousTestCase):
    """
    Presence members, counted per user.
    """

    def test_per_user(self) -> None:
        """
        member_added on a user's first socket only; member_removed on the last.
        """
        r = registry("a", "b", "c")
        out = r.subscribe("1", "p", "a", PresenceMember("u", {"n": 1}))
        self.assertTrue(out.member_added)
        self.assertEqual(out.members, {"u": {"n": 1}})
        out = r.subscribe("1", "p", "b", PresenceMember("u", {"n": 2}))
        self.assertFalse(out.member_added)
        self.assertEqual(out.members, {"u": {"n": 2}})
        out = r.subscribe("1", "p", "c", PresenceMember("v"))
        self.assertTrue(out.member_added)
        self.assertEqual(r.members("1", "p"), {"u": {"n": 2}, "v": {}})
        self.assertIsNone(r.unsubscribe("1", "p", "a").member_removed)
        self.assertEqual(r.unsubscribe("1", "p", "b").member_removed, "u")
        self.assertEqual(r.members("1", "p"), {"v": {}})

    def test_limit(self) -> None:
        """
        A full channel refuses new users but not another socket of a member.
        """
        r = registry("a", "b", "c")
        r.subscribe("1", "p", "a", PresenceMember("u"), max_members=1)
        self.assertFalse(r.subscribe("1", "p", "b", PresenceMember("v"), max_members=1).accepted)
        self.assertTrue(r.subscribe("1", "p", "c", PresenceMember("u"), max_members=1).accepted)
        self.assertEqual(r.members("1", "p"), {"u": {}})


class SocketTests(SynchronousTestCase):
    """
    Removing sockets and users.
    """

    def test_remove(self) -> None:
        """
        Removing a socket leaves every channel and reports each outcome.
        """
        r = registry("a", "b")
        r.subscribe("1", "c", "a")
        r.subscribe("1", "p", "a", PresenceMember("u"))
        r.subscribe("1", "c", "b")
        removal = r.remove_socket("a")
        assert removal is not None
        outcomes = {o.channel: o for o in removal.unsubscribed}
        self.assertEqual(outcomes["c"].count, 1)
        self.assertTrue(outcomes["p"].vacated)
        self.assertEqual(outcomes["p"].member_removed, "u")
        self.assertFalse(r.has_socket("a"))
        self.assertIsNone(r.remove_socket("a"))

    def test_users_and_watchers(self) -> None:
        """
        Sign-in reports online transitions to watchers and the watched ids'
        state; the last socket leaving reports offline.
        """
        r = registry("w", "u1", "u2")
        out = r.sign_in("1", "w", "watcher", ["u", "x"])
        self.assertEqual((out.online, out.offline), ((), ("u", "x")))
        out = r.sign_in("1", "u1", "u")
        self.assertTrue(out.came_online)
        self.assertEqual(out.watchers, ("w",))
        out = r.sign_in("1", "u2", "u")
        self.assertFalse(out.came_online)
        self.assertEqual(sorted(r.user_sockets("1", "u")), ["u1", "u2"])
        removal = r.remove_socket("u1")
        assert removal is not None
        self.assertIsNone(removal.went_offline)
        removal = r.remove_socket("u2")
        assert removal is not None
        self.assertEqual(removal.went_offline, "u")
        self.assertEqual(removal.watchers, ("w",))
        r.remove_socket("w")
        self.assertEqual(r.socket_count("1"), 0)
