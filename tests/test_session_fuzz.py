"""
Property tests: arbitrary client frames never make the session raise, and
what it emits always keeps the protocol's invariants.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher.app import App
from sockudo_tw.pusher.channels import channel_type
from sockudo_tw.pusher.session import (
    ClientEvent,
    Close,
    Effect,
    Send,
    Session,
    SignIn,
    Subscribe,
    Unsubscribe,
)
from sockudo_tw.pusher.signing import token

KEY = "k"
SECRET = "s"
SOCKET = "1.2"

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
_channels = st.sampled_from(
    [
        "a",
        "cache-a",
        "private-a",
        "private-cache-a",
        "private-encrypted-a",
        "presence-a",
        "presence-cache-a",
        "#server-to-user-1",
        "#x",
        "",
        "bad name",
    ]
) | st.text(max_size=30)
_events = st.sampled_from(
    [
        "pusher:ping",
        "pusher:pong",
        "pusher:subscribe",
        "pusher:unsubscribe",
        "pusher:signin",
        "client-x",
        "pusher_internal:member_added",
    ]
) | st.text(max_size=30)


@st.composite
def _subscribe_data(draw: st.DrawFn) -> Any:
    channel = draw(_channels)
    data: dict[str, Any] = {"channel": channel}
    channel_data = draw(
        st.none()
        | st.just('{"user_id":"1","user_info":{"a":1}}')
        | st.just('{"user_id":2}')
        | st.text(max_size=20)
    )
    if channel_data is not None:
        data["channel_data"] = channel_data
    if draw(st.booleans()):
        signed = f"{SOCKET}:{channel}" + (f":{channel_data}" if channel_data is not None else "")
        data["auth"] = token(KEY, SECRET, signed)
    else:
        data["auth"] = draw(st.none() | st.text(max_size=10) | st.integers())
    return data


@st.composite
def _signin_data(draw: st.DrawFn) -> Any:
    user_data = draw(
        st.just('{"id":"1","watchlist":["2","3"]}') | st.just('{"id":"2"}') | st.text(max_size=20)
    )
    if draw(st.booleans()):
        return {"user_data": user_data, "auth": token(KEY, SECRET, f"{SOCKET}::user::{user_data}")}
    return {"user_data": draw(_json), "auth": draw(_json)}


@st.composite
def _frames(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(max_size=60))
    if kind == 1:
        return json.dumps(draw(_json))
    event = draw(_events)
    frame: dict[str, Any] = {"event": event}
    if kind == 2:
        frame["data"] = draw(_subscribe_data())
        frame["event"] = "pusher:subscribe"
    elif kind == 3:
        frame["data"] = draw(_signin_data())
        frame["event"] = "pusher:signin"
    elif kind == 4:
        frame["event"] = "client-" + draw(st.text(max_size=10))
        frame["channel"] = draw(_channels | _json)
        if draw(st.booleans()):
            frame["data"] = draw(_json)
    else:
        if draw(st.booleans()):
            frame["data"] = draw(_json)
        if draw(st.booleans()):
            frame["channel"] = draw(_json)
    text = json.dumps(frame)
    if draw(st.booleans()) and event == "pusher:subscribe":
        text = json.dumps({"event": event, "data": json.dumps(frame.get("data"))})
    return text


_apps = st.builds(
    App,
    id=st.just("1"),
    key=st.just(KEY),
    secret=st.just(SECRET),
    enable_client_messages=st.booleans(),
    max_client_events_per_second=st.integers(0, 3),
    max_presence_members_per_channel=st.integers(0, 2),
    max_presence_member_size_in_kb=st.integers(0, 1),
    max_channel_name_length=st.integers(0, 40),
    max_event_name_length=st.integers(0, 20),
    max_event_payload_in_kb=st.integers(0, 1),
    enable_user_authentication=st.booleans(),
    enable_watchlist_events=st.booleans(),
)

_CLOSE_CODES = {4009, 4201, 4100, 4200}


class SessionFuzzTests(SynchronousTestCase):
    """
    Drive a session with arbitrary frames, times and adapter answers.
    """

    def check(self, effects: list[Effect], session: Session) -> None:
        """
        The invariants every batch of effects keeps.
        """
        for effect in effects:
            if isinstance(effect, Send):
                frame = json.loads(effect.frame)
                self.assertIsInstance(frame, dict)
                self.assertIsInstance(frame["event"], str)
                if frame["event"] == "pusher:error":
                    self.assertIsInstance(frame["data"], dict)
                    self.assertIsInstance(frame["data"]["message"], str)
                    self.assertIn(type(frame["data"]["code"]), (int, type(None)))
                elif "data" in frame:
                    self.assertIsInstance(frame["data"], str)
                    if frame["event"].startswith("pusher"):
                        json.loads(frame["data"])
            elif isinstance(effect, Close):
                self.assertIn(effect.code, _CLOSE_CODES)
                self.assertTrue(session.closing)
            elif isinstance(effect, ClientEvent):
                self.assertTrue(session.is_subscribed(effect.channel))
                self.assertTrue(channel_type(effect.channel).allows_client_events)
                self.assertTrue(session.app.enable_client_messages)
            elif isinstance(effect, Subscribe):
                ctype = channel_type(effect.channel)
                self.assertEqual(effect.member is not None, ctype.kind.value == "presence")
                if ctype.kind.value == "server_to_user":
                    assert session.user is not None
                    self.assertEqual(effect.channel, "#server-to-user-" + session.user.user_id)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        app=_apps,
        steps=st.lists(st.tuples(_frames(), st.floats(0, 200), st.integers(0, 3)), max_size=25),
    )
    def test_arbitrary_frames(self, app: App, steps: list[tuple[str, float, int]]) -> None:
        """
        Whatever arrives, the session answers with well-formed effects and
        never raises; after a close it stays silent.
        """
        session = Session(app, SOCKET, 0.0, user_authentication_timeout=50)
        now = 0.0
        self.check(session.open(), session)
        for text, dt, answer in steps:
            now += dt
            was_closing = session.closing
            effects = session.receive(text, now)
            if was_closing:
                self.assertEqual(effects, [])
            self.check(effects, session)
            for effect in effects:
                if isinstance(effect, Subscribe):
                    if answer == 0:
                        more = session.refuse(effect.channel, 4100, "full")
                    else:
                        more = session.confirm(
                            effect.channel, {"1": {}} if effect.member is not None else None
                        )
                    self.check(more, session)
                elif isinstance(effect, SignIn):
                    self.check(session.signed_in(["2"], ["3"]), session)
                elif isinstance(effect, Unsubscribe):
                    self.assertFalse(session.is_subscribed(effect.channel))
            self.check(session.tick(now), session)
            self.assertGreaterEqual(session.next_deadline(), 0)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """
        Arbitrary (decoded) bytes never raise.
        """
        session = Session(App(id="1", key=KEY, secret=SECRET), SOCKET, 0.0)
        self.check(session.receive(data.decode("utf-8", "replace"), 1.0), session)
        self.check(session.receive_binary(2.0), session)
