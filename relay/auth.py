"""The aiohttp side of who may connect: the token from the request, 401/429 before the
upgrade, per-token connection counts, and the timer that ends a session at its token's exp.

The checks themselves are pure (relay/core/auth.py). Here:

- ``token_from_request``: ``Authorization: Bearer <token>``, or a WebSocket subprotocol
  ``bearer.<token>`` offered with ``relay.v1`` (browsers cannot set headers). The query
  string is never read: proxies log request lines (docs/security.md).
- ``Gate.admit``: a verified ``Admission`` or an ``HTTPException`` (401 with
  ``WWW-Authenticate: Bearer``, 429 over the token's connection limit), raised before the
  WebSocket handshake is answered.
- ``guard``: wraps the ``/ws`` handler so every admission is released however it ends.
- ``bind``: a connection's channel access and its expiry timer (one event-loop timer per
  connection, due at exp: no polling).

No token, and nothing derived from one but a hash prefix, is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import orjson
from aiohttp import hdrs, web

from relay.config import ServeConfig
from relay.core.auth import (
    ALL_CHANNELS,
    ANONYMOUS,
    MIN_SECRET_BYTES,
    ApiKey,
    ApiKeyFileError,
    ChannelAccess,
    Grant,
    Refusal,
    RefusalReason,
    parse_algorithms,
    parse_api_keys,
    verify_token,
)
from relay.metrics import Metrics

log = logging.getLogger("relay.auth")

SUBPROTOCOL = "relay.v1"  # the one subprotocol the relay speaks (and answers with)
BEARER_PREFIX = "bearer."
REALM = "relay"
_MAX_TIMER = 86_400.0  # seconds: a later exp is re-armed after a day


class AuthConfigError(ValueError):
    """The auth knobs do not make a working configuration (raised at startup)."""


class Bound(Protocol):
    """What ``bind`` needs of a connection (relay.connection.Connection is one)."""

    access: ChannelAccess


@dataclass(slots=True)
class Admission:
    """One admitted handshake: what it may read, and its place in the per-token count."""

    grant: Grant
    access: ChannelAccess
    counted: bool
    _gate: Gate | None
    _timer: asyncio.TimerHandle | None = field(default=None)
    _released: bool = False

    def expire_with(
        self, clock: Callable[[], float], on_expiry: Callable[[Any], None], conn: Bound
    ) -> None:
        """Call ``on_expiry(conn)`` once ``clock()`` reaches the grant's ``expires_at``,
        unless released first. One timer at a time; a far exp is reached in steps of at
        most ``_MAX_TIMER`` (event-loop timers are not meant for years)."""
        expires_at = self.grant.expires_at
        if expires_at is None or self._released:
            return
        remaining = expires_at - clock()
        if remaining <= 0:
            self._timer = None
            on_expiry(conn)
            return
        self._timer = asyncio.get_running_loop().call_later(
            min(remaining, _MAX_TIMER), self.expire_with, clock, on_expiry, conn
        )

    def release(self) -> None:
        """Idempotent: the timer is cancelled and the token's count given back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._released:
            self._released = True
            if self.counted and self._gate is not None:
                self._gate.give_back(self.grant.key)


ADMISSION = web.RequestKey("relay_admission", Admission)


def read_secrets(config: ServeConfig, read: Callable[[str], str]) -> list[bytes]:
    """The JWT secrets: the comma-separated knob, then the file's lines (rotation: any of
    them verifies; the first signs ``relay token``)."""
    texts = [s.strip() for s in config.jwt_secrets.split(",")]
    if config.jwt_secret_file:
        texts += [line.strip() for line in read(config.jwt_secret_file).splitlines()]
    secrets = [t.encode() for t in texts if t and not t.startswith("#")]
    short = sum(1 for s in secrets if len(s) < MIN_SECRET_BYTES)
    if short:
        # Never the secret itself in the message: only how many are too short.
        raise AuthConfigError(
            f"{short} JWT secret(s) shorter than {MIN_SECRET_BYTES} bytes (RFC 7518 3.2): "
            "use e.g. `openssl rand -base64 48`"
        )
    return secrets


class Gate:
    """Admission at the handshake for one relay process."""

    def __init__(
        self,
        *,
        enabled: bool,
        secrets: list[bytes],
        algorithms: frozenset[str],
        api_keys: dict[str, ApiKey] | None,
        public: ChannelAccess,
        leeway: float,
        audience: str | None = None,
        default_max_conns: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = enabled
        self._secrets = secrets
        self._algorithms = algorithms
        self._api_keys = api_keys
        self.public = public
        self.leeway = leeway
        self.audience = audience
        self.default_max_conns = default_max_conns
        self.metrics = metrics
        self.clock = clock
        self._open: dict[str, int] = {}  # grant key -> connections now open

    @classmethod
    def from_config(
        cls,
        config: ServeConfig,
        metrics: Metrics,
        read: Callable[[str], str] = lambda path: Path(path).read_text(),
    ) -> Gate:
        try:
            secrets = read_secrets(config, read)
            api_keys = parse_api_keys(read(config.api_key_file)) if config.api_key_file else None
        except ApiKeyFileError as exc:
            raise AuthConfigError(f"RELAY_API_KEY_FILE {config.api_key_file}: {exc}") from exc
        except OSError as exc:
            raise AuthConfigError(f"cannot read a credentials file: {exc}") from exc
        if config.auth and not secrets and api_keys is None:
            raise AuthConfigError(
                "RELAY_AUTH is on but neither RELAY_JWT_SECRETS, RELAY_JWT_SECRET_FILE nor "
                "RELAY_API_KEY_FILE is set: no client could ever connect"
            )
        if not config.auth and (secrets or api_keys is not None):
            log.warning("credentials are configured but RELAY_AUTH is off: anyone may connect")
        return cls(
            enabled=config.auth,
            secrets=secrets,
            algorithms=parse_algorithms(config.jwt_algorithms),
            api_keys=api_keys,
            public=ChannelAccess(config.public_channels),
            leeway=config.auth_leeway,
            audience=config.jwt_audience or None,
            default_max_conns=config.auth_max_conns,
            metrics=metrics,
        )

    def open_count(self, key: str) -> int:
        return self._open.get(key, 0)

    def give_back(self, key: str) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)  # bounded: only tokens with open connections stay

    def admit(self, request: web.Request) -> Admission:
        """Who this handshake is, or an HTTP error raised before the upgrade."""
        try:
            token = token_from_request(request, strict=self.enabled)
        except web.HTTPBadRequest:
            self._count_refusal(request, RefusalReason.MALFORMED)
            raise
        if not self.enabled:
            return Admission(ANONYMOUS, ALL_CHANNELS, False, None)  # everyone, everything
        if token is None:
            if self.public.patterns:
                return Admission(ANONYMOUS, self.public, False, None)
            self._refuse(request, Refusal(RefusalReason.MISSING, "a bearer token is required"))
        outcome = verify_token(
            token,
            secrets=self._secrets,
            algorithms=self._algorithms,
            api_keys=self._api_keys,
            now=self.clock(),
            leeway=self.leeway,
            audience=self.audience,
        )
        if isinstance(outcome, Refusal):
            self._refuse(request, outcome)
        grant = outcome
        limit = grant.max_conns or self.default_max_conns
        if limit and self.open_count(grant.key) >= limit:
            self._count_refusal(request, RefusalReason.TOO_MANY_CONNECTIONS, grant.subject)
            raise web.HTTPTooManyRequests(
                text=_body(
                    "too_many_connections",
                    f"at most {limit} connections at once with this token",
                ),
                content_type="application/json",
            )
        self._open[grant.key] = self.open_count(grant.key) + 1
        log.debug(
            "authenticated",
            extra={"remote": request.remote, "sub": grant.subject, "method": grant.method.value},
        )
        return Admission(grant, grant.channels | self.public, True, self)

    def _count_refusal(
        self, request: web.Request, reason: RefusalReason, subject: str | None = None
    ) -> None:
        self.metrics.auth_refusals.labels(reason.value).inc()
        # A warning, so that RateLimitFilter keeps a flood of bad tokens to one line per
        # interval (with a count); the metric counts every one.
        log.warning(
            "auth refused", extra={"remote": request.remote, "reason": reason.value, "sub": subject}
        )

    def _refuse(self, request: web.Request, refusal: Refusal) -> NoReturn:
        self._count_refusal(request, refusal.reason)
        raise unauthorized(refusal)


def _body(error: str, message: str) -> str:
    return orjson.dumps({"error": error, "message": message}).decode()


def unauthorized(refusal: Refusal) -> web.HTTPUnauthorized:
    """401 with RFC 6750's challenge: no error code when no token came (3.1)."""
    if refusal.reason is RefusalReason.MISSING:
        challenge = f'Bearer realm="{REALM}"'
        error = "missing_token"
    else:
        error = "invalid_token"
        challenge = (
            f'Bearer realm="{REALM}", error="{error}", error_description="{refusal.description}"'
        )
    return web.HTTPUnauthorized(
        headers={hdrs.WWW_AUTHENTICATE: challenge},
        text=_body(error, refusal.description),
        content_type="application/json",
    )


def _bad_request(message: str) -> web.HTTPBadRequest:
    challenge = f'Bearer realm="{REALM}", error="invalid_request", error_description="{message}"'
    return web.HTTPBadRequest(
        headers={hdrs.WWW_AUTHENTICATE: challenge},
        text=_body("invalid_request", message),
        content_type="application/json",
    )


def token_from_request(request: web.Request, *, strict: bool) -> str | None:
    """The bearer token of a handshake: the Authorization header or a subprotocol.

    A ``bearer.<token>`` subprotocol must come with ``relay.v1``, always (auth on or off):
    aiohttp logs the offered subprotocols when none of them is one the server speaks, and
    that line would carry the token. With ``strict`` (auth on), two tokens, or a header that
    is not ``Bearer``, are a 400 (RFC 6750 2: one method per request).
    """
    offered = [
        p.strip()
        for value in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
        for p in value.split(",")
    ]
    bearers = [p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)]
    if bearers and SUBPROTOCOL not in offered:
        raise _bad_request(f"a bearer.<token> subprotocol must be offered with {SUBPROTOCOL}")
    header = request.headers.get(hdrs.AUTHORIZATION)
    if not strict:
        return None
    from_header: str | None = None
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _bad_request("the Authorization header must be `Bearer <token>`")
        from_header = value.strip()
    if len(bearers) > 1 or (bearers and from_header is not None):
        raise _bad_request("send one token, in one place")
    if from_header is not None:
        return from_header
    return bearers[0] if bearers else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AUTH = web.AppKey("relay_auth", Gate)


def guard(handler: Handler) -> Handler:
    """``handler`` behind the gate: admitted first (or 400/401/429), released at the end."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        admission = request.app[AUTH].admit(request)
        request[ADMISSION] = admission
        try:
            return await handler(request)
        finally:
            admission.release()

    return guarded


C = TypeVar("C", bound=Bound)


def bind(request: web.Request, conn: C, on_expiry: Callable[[C], None]) -> None:
    """Give a new connection its channel access and, for a token with an exp, a timer that
    calls ``on_expiry(conn)`` at that instant (``Admission.release`` cancels it)."""
    admission = request.get(ADMISSION)
    if admission is None:  # a route that is not behind guard(): fail closed when auth is on
        if request.app[AUTH].enabled:
            raise RuntimeError(f"{request.path} serves WebSockets without relay.auth.guard")
        admission = Admission(ANONYMOUS, ALL_CHANNELS, False, None)
    conn.access = admission.access
    admission.expire_with(request.app[AUTH].clock, on_expiry, conn)
