"""Who may connect: bearer-token verification and channel access, with no I/O and no clock.

Two kinds of credential, both presented as one bearer token (relay/auth.py takes it from
the request; docs/security.md is the user's view):

- a JWT (RFC 7519) in JWS compact form, signed with HMAC (``HS256``, ``HS384``, ``HS512``)
  under one of the configured secrets (several: rotation);
- an API key, looked up by its SHA-256 in the operator's key file (``parse_api_keys``).

A token with exactly two dots is read as a JWT, anything else as an API key.
Either check returns a value: a ``Grant`` (who, which channel patterns, how many
connections at once, until when) or a ``Refusal`` (a reason from a closed set, used as a
metric label, and a fixed description for the 401 body).

Invariants:
- The algorithm comes from the configured set only; ``none`` and non-HMAC algorithms can
  never be in it (``parse_algorithms``), whatever a token's header says (RFC 8725, 2.1).
- The signature is checked before a single claim is read: nothing from an unauthenticated
  payload is trusted or echoed.
- No part of a token ever goes into a ``Refusal`` or a ``Grant``: descriptions are fixed
  texts, and a grant names its credential only by a hash prefix (``Grant.key``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import translate
from typing import Any

import orjson

# RFC 7518 3.2: an HMAC key at least as long as the hash output. Checked at startup for
# HS256; longer hashes accept the same secrets (a key shorter than its hash output is
# padded by HMAC, not weakened below 256 bits).
MIN_SECRET_BYTES = 32
MAX_TOKEN_LENGTH = 8192  # a JWT carrying a few dozen channel patterns is well under 2 KB
MAX_PATTERNS = 64
MAX_PATTERN_LENGTH = 100
MAX_SUBJECT_LENGTH = 200

HMAC_ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class RefusalReason(StrEnum):
    """Why a handshake was refused; a closed set (the ``reason`` label of
    ``relay_auth_refusals_total``)."""

    MISSING = "missing"  # no token, and anonymous clients are not admitted
    MALFORMED = "malformed"  # not a JWT or key, bad base64/JSON, claims of the wrong type
    ALGORITHM = "algorithm"  # a JWT whose alg is not configured (``none`` included)
    BAD_SIGNATURE = "bad_signature"  # signed with no configured secret
    AUDIENCE = "audience"  # RELAY_JWT_AUDIENCE is set and the token's aud does not name it
    EXPIRED = "expired"  # exp (plus leeway) has passed
    NOT_YET_VALID = "not_yet_valid"  # nbf (minus leeway) is in the future
    UNKNOWN_KEY = "unknown_key"  # an API key not in the key file
    UNSUPPORTED = "unsupported"  # a JWT with no secret configured, or a key with no key file
    TOO_MANY_CONNECTIONS = "too_many_connections"  # the token's connection limit (HTTP 429)


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    description: str


class ChannelAccess:
    """Channel patterns with fnmatch semantics, case-sensitive (``fnmatch.fnmatchcase``).

    ``*`` matches any run of characters, dots included (``book.*`` is every book channel,
    ``*.BTC-USD`` both kinds of one symbol, ``*`` everything), ``?`` one character,
    ``[...]`` a set. The patterns are compiled once into one regular expression.
    """

    __slots__ = ("_match", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(dict.fromkeys(patterns))  # deduplicated, order kept
        if self.patterns:
            regex = re.compile("|".join(f"(?:{translate(p)})" for p in self.patterns))
            self._match: Callable[[str], object] | None = regex.match
        else:
            self._match = None

    def allows(self, channel: str) -> bool:
        return self._match is not None and self._match(channel) is not None

    def __or__(self, other: ChannelAccess) -> ChannelAccess:
        return ChannelAccess((*self.patterns, *other.patterns))

    def __repr__(self) -> str:
        return f"ChannelAccess({list(self.patterns)!r})"


ALL_CHANNELS = ChannelAccess(("*",))
NO_CHANNELS = ChannelAccess(())


class Method(StrEnum):
    JWT = "jwt"
    API_KEY = "apikey"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified credential allows.

    ``key`` names the credential for per-token connection counting: the method and a
    SHA-256 prefix of the token, never the token. ``expires_at`` is the instant (Unix
    seconds) the connection must end: ``exp`` plus the leeway; None: never.
    """

    method: Method
    subject: str | None
    channels: ChannelAccess
    max_conns: int | None  # None: the configured default
    expires_at: float | None
    key: str


ANONYMOUS = Grant(Method.ANONYMOUS, None, NO_CHANNELS, None, None, "anonymous")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of the API key file (docs/security.md, "API keys")."""

    sha256: str
    subject: str | None
    channels: tuple[str, ...]
    max_conns: int | None
    exp: float | None


class ApiKeyFileError(ValueError):
    """The API key file is not what docs/security.md describes."""


class AlgorithmError(ValueError):
    """An algorithm name that is not an HMAC JWS algorithm."""


# -- helpers ----------------------------------------------------------------------------


def token_key(method: Method, token: str) -> str:
    """The name a credential is counted under: never the token, a hash prefix of it."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{method.value}:{digest[:16]}"


def api_key_digest(key: str) -> str:
    """The SHA-256 (hex) of an API key, as the key file stores it."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def parse_algorithms(names: Iterable[str]) -> frozenset[str]:
    """The accepted JWS algorithms; only HMAC ones, never ``none``."""
    chosen = frozenset(name.strip() for name in names if name.strip())
    unknown = sorted(chosen - HMAC_ALGORITHMS.keys())
    if unknown:
        raise AlgorithmError(
            f"unsupported JWT algorithm(s) {', '.join(unknown)}: "
            f"choose from {', '.join(HMAC_ALGORITHMS)}"
        )
    if not chosen:
        raise AlgorithmError("at least one JWT algorithm is needed")
    return chosen


def _b64decode(segment: str) -> bytes | None:
    if _B64URL.fullmatch(segment) is None or len(segment) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_object(segment: str) -> dict[str, Any] | None:
    raw = _b64decode(segment)
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class _BadClaim(ValueError):
    """A claim (or key file field) of the wrong type; the message is a fixed text."""


def _patterns(value: object) -> tuple[str, ...]:
    """A ``channels`` claim: a list of at most MAX_PATTERNS short strings."""
    if (
        not isinstance(value, list)
        or len(value) > MAX_PATTERNS
        or not all(isinstance(p, str) and 0 < len(p) <= MAX_PATTERN_LENGTH for p in value)
    ):
        raise _BadClaim(f"channels is not a list of at most {MAX_PATTERNS} patterns")
    return tuple(value)


def _max_conns(value: object) -> int | None:
    """A ``max_conns`` claim: a positive integer, or absent."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise _BadClaim("max_conns is not a positive integer")


def _subject(value: object) -> str | None:
    if value is None or (isinstance(value, str) and len(value) <= MAX_SUBJECT_LENGTH):
        return value
    raise _BadClaim("sub is not a short string")


def _instant(name: str, value: object) -> float | None:
    """``exp``/``nbf``: NumericDate, Unix seconds (RFC 7519 2), or absent."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise _BadClaim(f"{name} is not a number of seconds")


def _names(aud: object, audience: str) -> bool:
    """``aud`` is one string or a list of them (RFC 7519 4.1.3)."""
    if isinstance(aud, str):
        return aud == audience
    return isinstance(aud, list) and audience in [a for a in aud if isinstance(a, str)]


_MALFORMED = Refusal(RefusalReason.MALFORMED, "the token is malformed")


# -- JWT --------------------------------------------------------------------------------


def is_jwt(token: str) -> bool:
    return token.count(".") == 2


def verify_jwt(
    token: str,
    secrets: Sequence[bytes],
    algorithms: frozenset[str],
    *,
    now: float,
    leeway: float,
    audience: str | None = None,
) -> Grant | Refusal:
    """Verify an HMAC-signed JWT and read its claims (docs/security.md, "Token format").

    Claims: ``exp`` (required), ``nbf``, ``sub``, ``channels`` (patterns; absent: none
    beyond the public channels), ``max_conns``; ``aud`` must name ``audience`` when one is
    configured (RFC 7519 4.1.3). Others (``iat``, ``jti``, ...) are ignored.
    """
    if not secrets:
        return Refusal(RefusalReason.UNSUPPORTED, "this relay accepts no JWT")
    if len(token) > MAX_TOKEN_LENGTH:
        return _MALFORMED
    parts = token.split(".")
    if len(parts) != 3:
        return _MALFORMED
    header = _json_object(parts[0])
    if header is None:
        return _MALFORMED
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        return Refusal(RefusalReason.ALGORITHM, "the token's algorithm is not accepted")
    if "crit" in header:  # RFC 7515 4.1.11: extensions we do not understand must fail
        return Refusal(RefusalReason.MALFORMED, "the token has critical header extensions")
    signature = _b64decode(parts[2])
    if signature is None:
        return _MALFORMED
    try:
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    except UnicodeEncodeError:
        return _MALFORMED
    digest = HMAC_ALGORITHMS[alg]
    if not any(
        hmac.compare_digest(hmac.new(secret, signing_input, digest).digest(), signature)
        for secret in secrets
    ):
        return Refusal(RefusalReason.BAD_SIGNATURE, "the token's signature does not verify")
    claims = _json_object(parts[1])
    if claims is None:
        return _MALFORMED
    if audience is not None and not _names(claims.get("aud"), audience):
        return Refusal(RefusalReason.AUDIENCE, "the token is not meant for this relay")
    return _grant_from_claims(Method.JWT, token, claims, now=now, leeway=leeway, exp_required=True)


def _grant_from_claims(
    method: Method,
    token: str,
    claims: Mapping[str, Any],
    *,
    now: float,
    leeway: float,
    exp_required: bool,
) -> Grant | Refusal:
    try:
        exp = _instant("exp", claims.get("exp"))
        nbf = _instant("nbf", claims.get("nbf"))
        subject = _subject(claims.get("sub"))
        raw_channels = claims.get("channels")
        channels = () if raw_channels is None else _patterns(raw_channels)
        max_conns = _max_conns(claims.get("max_conns"))
    except _BadClaim as exc:
        return Refusal(RefusalReason.MALFORMED, f"the token's {exc}")
    if exp is None and exp_required:
        return Refusal(RefusalReason.MALFORMED, "the token has no exp claim")
    # RFC 7519 4.1.4: the current time must be before exp; 4.1.5: not before nbf.
    expires_at = exp + leeway if exp is not None else None
    if expires_at is not None and now >= expires_at:
        return Refusal(RefusalReason.EXPIRED, "the token has expired")
    if nbf is not None and now + leeway < nbf:
        return Refusal(RefusalReason.NOT_YET_VALID, "the token is not valid yet")
    return Grant(
        method, subject, ChannelAccess(channels), max_conns, expires_at, token_key(method, token)
    )


def mint_jwt(secret: bytes, claims: Mapping[str, Any], algorithm: str = "HS256") -> str:
    """A signed JWT with these claims (``relay token``, tests)."""
    digest = HMAC_ALGORITHMS[algorithm]
    header = _b64encode(orjson.dumps({"alg": algorithm, "typ": "JWT"}))
    payload = _b64encode(orjson.dumps(dict(claims)))
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(hmac.new(secret, signing_input, digest).digest())}"


# -- API keys ---------------------------------------------------------------------------

_KEY_FIELDS = frozenset({"sha256", "sub", "channels", "max_conns", "exp"})


def parse_api_keys(text: bytes | str) -> dict[str, ApiKey]:
    """The API key file: a JSON list of objects, by SHA-256 (docs/security.md).

    ``{"sha256": "<hex of the key>", "sub": "alice", "channels": ["book.*"],
    "max_conns": 5, "exp": 1798761600}``; only ``sha256`` is required. Unknown fields are
    errors (a misspelt ``chanels`` must not silently grant nothing).
    """
    try:
        entries = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ApiKeyFileError(f"not JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ApiKeyFileError("expected a JSON list of key objects")
    keys: dict[str, ApiKey] = {}
    for index, entry in enumerate(entries):
        where = f"entry {index}"
        if not isinstance(entry, dict):
            raise ApiKeyFileError(f"{where}: not an object")
        unknown = sorted(set(entry) - _KEY_FIELDS)
        if unknown:
            raise ApiKeyFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or _HEX64.fullmatch(digest) is None:
            raise ApiKeyFileError(f"{where}: sha256 must be 64 lowercase hex digits")
        if digest in keys:
            raise ApiKeyFileError(f"{where}: duplicate sha256")
        try:
            keys[digest] = ApiKey(
                digest,
                _subject(entry.get("sub")),
                _patterns(entry.get("channels", [])),
                _max_conns(entry.get("max_conns")),
                _instant("exp", entry.get("exp")),
            )
        except _BadClaim as exc:
            raise ApiKeyFileError(f"{where}: {exc}") from exc
    return keys


def check_api_key(
    token: str, keys: Mapping[str, ApiKey] | None, *, now: float, leeway: float
) -> Grant | Refusal:
    """Look an API key up by its SHA-256.

    The lookup is by digest, so its timing says nothing about the key; the final compare
    is constant-time all the same.
    """
    if keys is None:
        return Refusal(RefusalReason.UNSUPPORTED, "this relay accepts no API key")
    if not 0 < len(token) <= MAX_TOKEN_LENGTH:
        return _MALFORMED
    digest = api_key_digest(token)
    entry = keys.get(digest)
    if entry is None or not hmac.compare_digest(entry.sha256, digest):
        return Refusal(RefusalReason.UNKNOWN_KEY, "unknown API key")
    claims: dict[str, Any] = {
        "sub": entry.subject,
        "channels": list(entry.channels),
        "max_conns": entry.max_conns,
        "exp": entry.exp,
    }
    return _grant_from_claims(
        Method.API_KEY, token, claims, now=now, leeway=leeway, exp_required=False
    )


def verify_token(
    token: str,
    *,
    secrets: Sequence[bytes],
    algorithms: frozenset[str],
    api_keys: Mapping[str, ApiKey] | None,
    now: float,
    leeway: float,
    audience: str | None = None,
) -> Grant | Refusal:
    """A JWT (two dots) or an API key (anything else)."""
    if is_jwt(token):
        return verify_jwt(token, secrets, algorithms, now=now, leeway=leeway, audience=audience)
    return check_api_key(token, api_keys, now=now, leeway=leeway)
