"""relay.core.auth: JWT verification, API keys and channel patterns, as plain functions."""

from __future__ import annotations

import base64
import hashlib
import hmac
from fnmatch import fnmatchcase
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.auth import (
    ALL_CHANNELS,
    AlgorithmError,
    ApiKeyFileError,
    ChannelAccess,
    Grant,
    Method,
    Refusal,
    RefusalReason,
    api_key_digest,
    check_api_key,
    mint_jwt,
    parse_algorithms,
    parse_api_keys,
    verify_jwt,
    verify_token,
)

SECRET = b"k" * 32
OTHER = b"o" * 48
NOW = 1_800_000_000.0
HS256 = frozenset({"HS256"})
ALL_HS = frozenset({"HS256", "HS384", "HS512"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jwt(header: Any, claims: Any, secret: bytes = SECRET, digest: Any = hashlib.sha256) -> str:
    """A JWT with any header and payload, signed over exactly what it carries."""
    head = b64(orjson.dumps(header))
    body = b64(orjson.dumps(claims))
    signature = hmac.new(secret, f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64(signature)}"


def verify(
    token: str,
    *,
    secrets: tuple[bytes, ...] = (SECRET,),
    algorithms: frozenset[str] = HS256,
    now: float = NOW,
    leeway: float = 0.0,
) -> Grant | Refusal:
    return verify_jwt(token, secrets, algorithms, now=now, leeway=leeway)


def refused(outcome: Grant | Refusal) -> RefusalReason:
    assert isinstance(outcome, Refusal), outcome
    return outcome.reason


# -- valid tokens -----------------------------------------------------------------------


def test_a_valid_token_grants_its_claims() -> None:
    token = mint_jwt(
        SECRET,
        {"sub": "alice", "exp": NOW + 60, "channels": ["book.*"], "max_conns": 3, "iat": NOW},
    )
    grant = verify(token, leeway=5)
    assert isinstance(grant, Grant)
    assert grant.method is Method.JWT
    assert grant.subject == "alice"
    assert grant.channels.patterns == ("book.*",)
    assert grant.max_conns == 3
    assert grant.expires_at == NOW + 65  # exp plus the leeway: when the session ends
    assert token not in grant.key
    assert token.split(".")[2] not in grant.key


def test_without_a_channels_claim_a_token_reads_nothing_beyond_the_public_channels() -> None:
    grant = verify(mint_jwt(SECRET, {"exp": NOW + 60}))
    assert isinstance(grant, Grant)
    assert grant.channels.patterns == ()
    assert not grant.channels.allows("book.BTC-USD")
    assert grant.subject is None
    assert grant.max_conns is None


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_hs384_and_hs512_verify_when_configured(alg: str) -> None:
    token = mint_jwt(OTHER, {"exp": NOW + 60}, alg)
    assert isinstance(verify(token, secrets=(OTHER,), algorithms=ALL_HS), Grant)
    assert refused(verify(token, secrets=(OTHER,), algorithms=HS256)) is RefusalReason.ALGORITHM


def test_any_of_the_rotated_secrets_verifies() -> None:
    token = mint_jwt(OTHER, {"exp": NOW + 60})
    assert isinstance(verify(token, secrets=(SECRET, OTHER)), Grant)
    assert refused(verify(token, secrets=(SECRET,))) is RefusalReason.BAD_SIGNATURE


# -- time -------------------------------------------------------------------------------


def test_expiry_and_not_before_with_leeway() -> None:
    expired = mint_jwt(SECRET, {"exp": NOW - 10})
    assert refused(verify(expired)) is RefusalReason.EXPIRED
    assert refused(verify(mint_jwt(SECRET, {"exp": NOW}))) is RefusalReason.EXPIRED  # exp: before
    assert isinstance(verify(expired, leeway=11), Grant)
    early = mint_jwt(SECRET, {"exp": NOW + 60, "nbf": NOW + 10})
    assert refused(verify(early)) is RefusalReason.NOT_YET_VALID
    assert isinstance(verify(early, leeway=10), Grant)
    assert isinstance(verify(mint_jwt(SECRET, {"exp": NOW + 60, "nbf": NOW})), Grant)


@pytest.mark.parametrize(
    "claims",
    [
        {},  # exp is required
        {"exp": "1900000000"},
        {"exp": True},
        {"exp": NOW + 60, "nbf": "soon"},
        {"exp": NOW + 60, "sub": 7},
        {"exp": NOW + 60, "sub": "x" * 201},
        {"exp": NOW + 60, "channels": "book.*"},
        {"exp": NOW + 60, "channels": [1]},
        {"exp": NOW + 60, "channels": [""]},
        {"exp": NOW + 60, "channels": ["book.*"] * 65},
        {"exp": NOW + 60, "max_conns": 0},
        {"exp": NOW + 60, "max_conns": True},
        {"exp": NOW + 60, "max_conns": "3"},
    ],
)
def test_claims_of_the_wrong_type_are_malformed(claims: dict[str, Any]) -> None:
    assert refused(verify(mint_jwt(SECRET, claims))) is RefusalReason.MALFORMED


# -- algorithms and signatures ----------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "RS256", "ES256", "", None, 256])
def test_an_algorithm_not_configured_is_refused_whatever_the_signature(alg: Any) -> None:
    header = {"alg": alg, "typ": "JWT"}
    unsigned = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps({'exp': NOW + 60}))}."
    assert refused(verify(unsigned, algorithms=ALL_HS)) is RefusalReason.ALGORITHM
    assert refused(verify(raw_jwt(header, {"exp": NOW + 60}))) is RefusalReason.ALGORITHM


@pytest.mark.parametrize("names", [["none"], ["HS256", "none"], ["RS256"], [], [" "]])
def test_only_hmac_algorithms_can_be_configured(names: list[str]) -> None:
    with pytest.raises(AlgorithmError):
        parse_algorithms(names)


def test_a_tampered_payload_or_a_forged_signature_does_not_verify() -> None:
    token = mint_jwt(SECRET, {"exp": NOW + 60, "channels": ["trades.*"]})
    head, _, signature = token.split(".")
    wider = b64(orjson.dumps({"exp": NOW + 60, "channels": ["*"]}))
    assert refused(verify(f"{head}.{wider}.{signature}")) is RefusalReason.BAD_SIGNATURE
    assert refused(verify(f"{head}.{wider}.")) is RefusalReason.BAD_SIGNATURE
    assert refused(verify(mint_jwt(OTHER, {"exp": NOW + 60}))) is RefusalReason.BAD_SIGNATURE


def test_a_critical_header_extension_is_refused() -> None:
    token = raw_jwt({"alg": "HS256", "crit": ["b64"], "b64": False}, {"exp": NOW + 60})
    assert refused(verify(token)) is RefusalReason.MALFORMED


GOOD = mint_jwt(SECRET, {"exp": NOW + 60})


@pytest.mark.parametrize(
    "token",
    [
        "a.b",
        "a.b.c.d",
        "..",
        "%%%.e30.sig",
        GOOD.replace(".", "=.", 1),  # padding
        GOOD[:-1] + "é",  # not ASCII
        "eyJhbGciOiJIUzI1NiJ9" + "x" + GOOD[20:],  # base64 of something that is not JSON
        b64(b"[1,2]") + GOOD[GOOD.index(".") :],  # a header that is not an object
        "x" * 9000 + ".a.b",  # too long
    ],
)
def test_malformed_tokens_are_refused_as_such(token: str) -> None:
    assert refused(verify(token)) in {RefusalReason.MALFORMED, RefusalReason.ALGORITHM}


def test_a_payload_that_is_not_an_object_is_malformed_even_signed() -> None:
    assert refused(verify(raw_jwt({"alg": "HS256"}, [1, 2]))) is RefusalReason.MALFORMED


def test_no_secret_configured_refuses_every_jwt() -> None:
    assert refused(verify(GOOD, secrets=())) is RefusalReason.UNSUPPORTED


@given(st.text(max_size=300))
def test_arbitrary_text_never_verifies_and_is_never_echoed(token: str) -> None:
    for outcome in (
        verify(token, algorithms=ALL_HS),
        verify_token(token, secrets=(SECRET,), algorithms=ALL_HS, api_keys={}, now=NOW, leeway=0.0),
    ):
        assert isinstance(outcome, Refusal)
        if len(token) >= 6:
            assert token not in outcome.description


@given(
    sub=st.none() | st.text(max_size=50),
    channels=st.lists(st.from_regex(r"[a-z*?]{1,6}\.[A-Za-z0-9_*-]{1,10}", fullmatch=True)),
    max_conns=st.none() | st.integers(1, 10_000),
    ttl=st.integers(1, 10**8),
    alg=st.sampled_from(["HS256", "HS384", "HS512"]),
)
def test_what_is_minted_verifies_to_the_same_claims(
    sub: str | None, channels: list[str], max_conns: int | None, ttl: int, alg: str
) -> None:
    claims: dict[str, Any] = {"exp": NOW + ttl, "channels": channels}
    if sub is not None:
        claims["sub"] = sub
    if max_conns is not None:
        claims["max_conns"] = max_conns
    grant = verify(mint_jwt(SECRET, claims, alg), algorithms=ALL_HS)
    assert isinstance(grant, Grant)
    assert (grant.subject, grant.max_conns, grant.expires_at) == (sub, max_conns, NOW + ttl)
    assert grant.channels.patterns == tuple(dict.fromkeys(channels))


# -- channel patterns -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "channel", "allowed"),
    [
        (["book.*"], "book.BTC-USD", True),
        (["book.*"], "trades.BTC-USD", False),
        (["book.*"], "book", False),
        (["*.BTC-USD"], "trades.BTC-USD", True),
        (["*.BTC-USD"], "book.ETH-USD", False),
        (["trades.BTC-USD"], "trades.BTC-USD", True),
        (["trades.BTC-USD"], "trades.BTC-USDT", False),
        (["book.btc-usd"], "book.BTC-USD", False),  # case-sensitive
        (["book.???-USD"], "book.ETH-USD", True),
        (["book.[BE]*"], "book.SOL-USD", False),
        (["*"], "trades.X", True),
        ([], "book.BTC-USD", False),
        (["trades.*", "book.ETH-USD"], "book.ETH-USD", True),
    ],
)
def test_channel_patterns_have_fnmatch_semantics(
    patterns: list[str], channel: str, allowed: bool
) -> None:
    assert ChannelAccess(patterns).allows(channel) is allowed


def test_access_unions_keep_both_sides() -> None:
    union = ChannelAccess(["book.*"]) | ChannelAccess(["trades.BTC-USD"])
    assert union.allows("book.X")
    assert union.allows("trades.BTC-USD")
    assert not union.allows("trades.ETH-USD")
    assert ALL_CHANNELS.allows("book.ANYTHING")


@given(
    st.lists(st.from_regex(r"[a-z.*?\[\]A-Z-]{1,8}", fullmatch=True), max_size=5),
    st.from_regex(r"(book|trades)\.[A-Za-z0-9_-]{1,12}", fullmatch=True),
)
def test_one_compiled_expression_agrees_with_fnmatchcase_per_pattern(
    patterns: list[str], channel: str
) -> None:
    expected = any(fnmatchcase(channel, p) for p in patterns)
    assert ChannelAccess(patterns).allows(channel) is expected


# -- API keys ---------------------------------------------------------------------------

KEY = "rk_" + "A" * 43
KEY_FILE = orjson.dumps(
    [
        {
            "sha256": api_key_digest(KEY),
            "sub": "bob",
            "channels": ["trades.*"],
            "max_conns": 2,
            "exp": NOW + 60,
        },
        {"sha256": api_key_digest("rk_open")},
    ]
)


def test_an_api_key_is_found_by_its_hash_and_grants_its_entry() -> None:
    keys = parse_api_keys(KEY_FILE)
    grant = check_api_key(KEY, keys, now=NOW, leeway=0)
    assert isinstance(grant, Grant)
    assert grant.method is Method.API_KEY
    assert (grant.subject, grant.max_conns, grant.expires_at) == ("bob", 2, NOW + 60)
    assert grant.channels.allows("trades.BTC-USD")
    assert not grant.channels.allows("book.BTC-USD")
    assert KEY not in grant.key
    bare = check_api_key("rk_open", keys, now=NOW, leeway=0)
    assert isinstance(bare, Grant)
    assert bare.expires_at is None
    assert bare.channels.patterns == ()


def test_unknown_expired_and_unconfigured_api_keys_are_refused() -> None:
    keys = parse_api_keys(KEY_FILE)
    assert refused(check_api_key("rk_other", keys, now=NOW, leeway=0)) is RefusalReason.UNKNOWN_KEY
    assert refused(check_api_key(KEY, keys, now=NOW + 61, leeway=0)) is RefusalReason.EXPIRED
    assert refused(check_api_key(KEY, None, now=NOW, leeway=0)) is RefusalReason.UNSUPPORTED
    assert refused(check_api_key("", keys, now=NOW, leeway=0)) is RefusalReason.MALFORMED


def test_verify_token_reads_two_dots_as_a_jwt_and_anything_else_as_a_key() -> None:
    keys = parse_api_keys(KEY_FILE)

    def outcome(token: str) -> Grant | Refusal:
        return verify_token(
            token, secrets=(SECRET,), algorithms=HS256, api_keys=keys, now=NOW, leeway=0.0
        )

    jwt_grant = outcome(GOOD)
    key_grant = outcome(KEY)
    assert isinstance(jwt_grant, Grant)
    assert jwt_grant.method is Method.JWT
    assert isinstance(key_grant, Grant)
    assert key_grant.method is Method.API_KEY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"{", "not JSON"),
        (b"{}", "JSON list"),
        (b"[1]", "not an object"),
        (b'[{"sha256": "ABC"}]', "64 lowercase hex"),
        (orjson.dumps([{"sha256": "a" * 64, "chanels": ["*"]}]), "unknown field(s) chanels"),
        (orjson.dumps([{"sha256": "a" * 64}, {"sha256": "a" * 64}]), "duplicate"),
        (orjson.dumps([{"sha256": "a" * 64, "max_conns": 0}]), "entry 0: max_conns"),
        (orjson.dumps([{"sha256": "a" * 64, "exp": "2030"}]), "entry 0: exp"),
        (orjson.dumps([{"sha256": "a" * 64, "channels": "*"}]), "entry 0: channels"),
    ],
)
def test_a_bad_key_file_says_where(text: bytes, message: str) -> None:
    with pytest.raises(ApiKeyFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_api_keys(text)


@pytest.mark.parametrize(
    ("aud", "accepted"),
    [
        ("wss://md.example.com", True),
        (["other-service", "wss://md.example.com"], True),
        ("other-service", False),
        ([], False),
        ([1, None], False),
        (None, False),
    ],
)
def test_a_configured_audience_must_be_named_by_aud(aud: Any, accepted: bool) -> None:
    claims: dict[str, Any] = {"exp": NOW + 60}
    if aud is not None:
        claims["aud"] = aud
    token = mint_jwt(SECRET, claims)
    outcome = verify_jwt(
        token, (SECRET,), HS256, now=NOW, leeway=0, audience="wss://md.example.com"
    )
    if accepted:
        assert isinstance(outcome, Grant)
    else:
        assert refused(outcome) is RefusalReason.AUDIENCE
    assert isinstance(verify(token), Grant)  # no audience configured: aud is not read
