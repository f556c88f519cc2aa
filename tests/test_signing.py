"""
The documented signature vectors (pusher-protocol.md sections 5.7 and 6.1).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from sockudo_tw.pusher.signing import (
    ApiAuthError,
    api_string_to_sign,
    channel_string_to_sign,
    hmac_sha256_hex,
    sign_api_query,
    token,
    user_string_to_sign,
    verify_api_request,
    verify_token,
)

KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"


class VectorTests(SynchronousTestCase):
    """
    Computed vectors from section 5.7.
    """

    def test_private(self) -> None:
        """
        The private-channel vector.
        """
        s = channel_string_to_sign("1234.1234", "private-foobar", None)
        self.assertEqual(s, "1234.1234:private-foobar")
        self.assertEqual(
            hmac_sha256_hex(SECRET, s),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
        )

    def test_signin(self) -> None:
        """
        The user sign-in vector.
        """
        s = user_string_to_sign("1234.1234", '{"id":"12345"}')
        self.assertEqual(
            hmac_sha256_hex(SECRET, s),
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
        )

    def test_presence(self) -> None:
        """
        The presence vector (not the doc's stale C{afaed369...} value).
        """
        cd = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
        s = channel_string_to_sign("1234.1234", "presence-foobar", cd)
        self.assertEqual(
            hmac_sha256_hex(SECRET, s),
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
        )

    def test_encrypted(self) -> None:
        """
        pusher-http-node's encrypted-channel vector (JSON-quoted data).
        """
        s = channel_string_to_sign("123.456", "private-encrypted-bla", '"foo"')
        self.assertEqual(
            token("f00d", "tofu", s),
            "f00d:962c48b78bf93d98ff4c92ee7dff04865821455b7b401e9d60a9e0a90af2c105",
        )

    def test_verify_token(self) -> None:
        """
        Tokens verify only with the right key, signature and a string.
        """
        s = "1234.1234:private-foobar"
        good = token(KEY, SECRET, s)
        self.assertTrue(verify_token(KEY, SECRET, s, good))
        self.assertFalse(verify_token(KEY, SECRET, s, "other:" + good.split(":")[1]))
        self.assertFalse(verify_token(KEY, SECRET, s, good[:-1] + "0"))
        self.assertFalse(verify_token(KEY, SECRET, s, None))
        self.assertFalse(verify_token(KEY, SECRET, s, "\udcff"))


class ApiTests(SynchronousTestCase):
    """
    HTTP API request signing (section 6.1).
    """

    def test_canonical(self) -> None:
        """
        Keys are lower-cased and sorted; auth_signature is left out.
        """
        self.assertEqual(
            api_string_to_sign(
                "post", "/apps/3/events", [("b", "2"), ("A", "1"), ("auth_signature", "x")]
            ),
            "POST\n/apps/3/events\na=1&b=2",
        )

    def test_round_trip(self) -> None:
        """
        A query signed like the SDKs verifies; the 600 s window is exclusive.
        """
        body = b'{"name":"e"}'
        query = sign_api_query(KEY, SECRET, "POST", "/apps/3/events", [], body, 1000)
        verify_api_request(
            key=KEY,
            secret=SECRET,
            method="POST",
            paths=["/apps/3/events"],
            query=query,
            body=body,
            now=1599,
        )
        e = self.assertRaises(
            ApiAuthError,
            verify_api_request,
            key=KEY,
            secret=SECRET,
            method="POST",
            paths=["/apps/3/events"],
            query=query,
            body=body,
            now=1600,
        )
        self.assertEqual(e.status, 401)


class HmacTests(SynchronousTestCase):
    """
    L{hmac_sha256_hex} keeps each secret's hashed pads; its digests stay
    the standard library's.
    """

    def test_matches_hmac(self) -> None:
        """
        Secrets shorter than, as long as and longer than SHA-256's 64-byte
        block, and non-ASCII ones, give C{hmac}'s digest, first and again.
        """
        import hmac as stdlib_hmac

        for secret in ("", "s", "x" * 63, "x" * 64, "x" * 65, "y" * 200, "sécret-é日本"):
            for message in (b"", b"POST\n/apps/3/events\na=1", "é" * 100):
                raw = message.encode() if isinstance(message, str) else message
                expected = stdlib_hmac.new(secret.encode(), raw, "sha256").hexdigest()
                self.assertEqual(hmac_sha256_hex(secret, message), expected)
                self.assertEqual(hmac_sha256_hex(secret, message), expected)

    def test_cache_bounded(self) -> None:
        """
        Past L{signing._PADS_KEPT} secrets the cache starts over, and every
        secret still signs right.
        """
        from sockudo_tw.pusher import signing

        self.patch(signing, "_PADS_KEPT", 3)
        self.patch(signing, "_pads", {})
        import hmac as stdlib_hmac

        for n in range(10):
            secret = f"secret-{n}"
            self.assertEqual(
                hmac_sha256_hex(secret, b"m"),
                stdlib_hmac.new(secret.encode(), b"m", "sha256").hexdigest(),
            )
            self.assertLessEqual(len(signing._pads), 3)


class TimestampTests(SynchronousTestCase):
    """
    C{auth_timestamp} must be plain ASCII digits, at most twelve.
    """

    def test_refused_spellings(self) -> None:
        """
        Signs, spaces, underscores, other scripts' digits and over-long
        numbers are refused as expired, though C{int()} takes some of them.
        """
        for given in (
            "+1000",
            " 1000",
            "1_000",
            "\uff11\uff10\uff10\uff10",
            "\u0663",
            "0000000001000",
            "1e3",
            "-5",
        ):
            query = sign_api_query(KEY, SECRET, "POST", "/apps/3/events", [], b"", 1000)
            query = [(k, given if k == "auth_timestamp" else v) for k, v in query]
            e = self.assertRaises(
                ApiAuthError,
                verify_api_request,
                key=KEY,
                secret=SECRET,
                method="POST",
                paths=["/apps/3/events"],
                query=query,
                body=b"",
                now=1000,
            )
            self.assertTrue(e.message.startswith("Timestamp expired"), (given, e.message))

    def test_repeated_names(self) -> None:
        """
        The first value of a repeated parameter (names compared lower-cased)
        is the one checked; the signature covers all of them, repeated
        names in the order sent.
        """
        signed = sign_api_query(
            KEY, SECRET, "POST", "/apps/3/events", [("x", "2"), ("X", "1")], b"", 1000
        )

        def verify(query: list[tuple[str, str]]) -> None:
            verify_api_request(
                key=KEY,
                secret=SECRET,
                method="POST",
                paths=["/apps/3/events"],
                query=query,
                body=b"",
                now=1000,
            )

        verify(signed)
        swapped = [signed[1], signed[0], *signed[2:]]
        e = self.assertRaises(ApiAuthError, verify, swapped)
        self.assertTrue(e.message.startswith("Invalid signature"), e.message)
        e = self.assertRaises(ApiAuthError, verify, [*signed, ("AUTH_KEY", "other")])
        self.assertTrue(e.message.startswith("Invalid signature"), e.message)
