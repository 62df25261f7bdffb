"""Configuration, read once: ``RELAY_*`` environment variables, overridden by flags.

Every knob is declared once: its default in ``ServeConfig``, its help in ``SERVE_KNOBS``.
The argument parser and ``--help`` come from that table, so they cannot disagree.
The environment is injected as a mapping, so tests pass a dict.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.core.auth import AlgorithmError, parse_algorithms

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Every knob of ``relay serve``; the defaults here are the documented defaults."""

    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    reuse_port: bool = False
    listen_backlog: int = 4096
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "md:"
    channels: tuple[str, ...] = ()
    discovery_interval: float = 5.0
    read_count: int = 1000
    read_block_ms: int = 1000
    cluster_poll_ms: int = 5
    history: int = 2000
    trades_snapshot: int = 50
    checksum_depth: int = 10
    max_frame_bytes: int = 4096
    max_subscriptions: int = 100
    rate_limit: float = 20.0
    rate_burst: float = 50.0
    rate_strikes: int = 20
    error_limit: float = 1.0
    error_burst: float = 30.0
    handshake_timeout: float = 10.0
    subscribe_timeout: float = 30.0
    max_connections: int = 10000
    # Per-address limits are off by default: behind a load balancer every client has the
    # balancer's address until RELAY_TRUSTED_PROXIES names it (docs/limits.md).
    max_connections_per_address: int = 0
    connect_rate: float = 0.0
    connect_burst: float = 20.0
    trusted_proxies: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_header_bytes: int = 8190
    max_headers: int = 64
    slow_consumer_bytes: int = 4 * 1024 * 1024
    slow_consumer_seconds: float = 10.0
    slow_close_timeout: float = 5.0
    ping_interval: float = 20.0
    shutdown_timeout: float = 20.0
    reconnect_window: float = 5.0
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    ready_grace: float = 10.0
    log_level: str = "info"
    log_format: str = "json"
    page: bool = True
    metrics_channel_labels: int = 0
    test_echo: bool = False
    # Who may connect (docs/security.md). Secrets never appear in a repr or a log line.
    auth: bool = False
    jwt_secrets: str = field(default="", repr=False)
    jwt_secret_file: str = ""
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str = ""
    auth_leeway: float = 10.0
    api_key_file: str = ""
    public_channels: tuple[str, ...] = ()
    auth_max_conns: int = 10


@dataclass(frozen=True, slots=True)
class Knob:
    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    flag_name: str | None = None

    @property
    def env(self) -> str:
        return "RELAY_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.name.replace("_", "-"))


def _channels(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _log_format(text: str) -> str:
    if text not in {"json", "text"}:
        raise argparse.ArgumentTypeError("log format is json or text")
    return text


def _networks(text: str) -> tuple[str, ...]:
    parts = _channels(text)
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not an address or CIDR: {part!r}") from exc
    return parts


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _algorithms(text: str) -> tuple[str, ...]:
    names = _channels(text)
    try:
        parse_algorithms(names)
    except AlgorithmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return names


_DEFAULTS = ServeConfig()


def _knob(name: str, type_: Callable[[str], Any], help_: str, flag: str | None = None) -> Knob:
    return Knob(name, type_, getattr(_DEFAULTS, name), help_, flag)


REDIS_KNOB = _knob(
    "redis_url",
    str,
    "Redis URL of the producers' streams; redis+cluster://host:port for a Redis Cluster",
    flag="redis",
)
PREFIX_KNOB = _knob("key_prefix", str, "prefix of stream keys: <prefix>{<channel>}")
LOG_KNOBS = (
    _knob("log_level", str, "log level: debug, info, warning, error"),
    _knob("log_format", _log_format, "log format: json (one event a line) or text"),
)

SERVE_KNOBS: tuple[Knob, ...] = (
    _knob("host", str, "address to listen on"),
    _knob("port", int, "port to listen on"),
    _knob("workers", int, "relay processes sharing the port (SO_REUSEPORT), supervised"),
    _knob("reuse_port", _bool, "listen with SO_REUSEPORT (set for each of several workers)"),
    _knob(
        "listen_backlog",
        int,
        "connections the kernel queues before they are accepted (capped by "
        "net.core.somaxconn); too few and a reconnect storm waits out SYN retries",
    ),
    REDIS_KNOB,
    PREFIX_KNOB,
    _knob("channels", _channels, "fixed comma-separated channel list; empty = discover"),
    _knob("discovery_interval", float, "seconds between channel rescans and epoch checks"),
    _knob("read_count", int, "XREAD COUNT: max entries per stream per read"),
    _knob("read_block_ms", int, "XREAD BLOCK in milliseconds"),
    _knob("cluster_poll_ms", int, "Redis Cluster: pause between reads that found nothing, ms"),
    _knob("history", int, "encoded updates kept per channel for resume"),
    _knob("trades_snapshot", int, "last trades sent on subscribe to a trades channel"),
    _knob("checksum_depth", int, "levels per side in book frames' checksum; 0: no checksum"),
    _knob("max_frame_bytes", int, "largest client frame accepted (close 1009 above)"),
    _knob("max_subscriptions", int, "subscriptions per connection"),
    _knob("rate_limit", float, "client messages per second per connection (sustained)"),
    _knob("rate_burst", float, "client messages allowed in a burst per connection"),
    _knob("rate_strikes", int, "consecutive rate-limited messages before close 1008"),
    _knob(
        "error_limit",
        float,
        "error replies per second per connection (sustained) before close 1008",
    ),
    _knob("error_burst", float, "error replies allowed in a burst per connection"),
    _knob(
        "handshake_timeout",
        float,
        "seconds to send a complete HTTP request head after connecting (also the HTTP "
        "keep-alive); the socket is closed after that",
    ),
    _knob(
        "subscribe_timeout",
        float,
        "seconds a WebSocket may stay open without a subscription before close 1008; 0: never",
    ),
    _knob("max_connections", _non_negative, "open WebSockets at most (HTTP 503 above); 0: no cap"),
    _knob(
        "max_connections_per_address",
        _non_negative,
        "open WebSockets per client address (IPv6: per /64) at most (HTTP 429); 0: no cap",
    ),
    _knob(
        "connect_rate",
        float,
        "WebSocket connection attempts per second per client address (HTTP 429); 0: no limit",
    ),
    _knob("connect_burst", float, "connection attempts allowed in a burst per client address"),
    _knob(
        "trusted_proxies",
        _networks,
        "comma-separated CIDRs of proxies whose X-Forwarded-For is believed; empty: none",
    ),
    _knob(
        "allowed_origins",
        _channels,
        "comma-separated origins browsers may connect from (HTTP 403 otherwise); empty: any",
    ),
    _knob(
        "max_header_bytes",
        int,
        "longest HTTP request line and header field, bytes (longer: HTTP 400)",
    ),
    _knob("max_headers", int, "HTTP request header fields at most (more: HTTP 400)"),
    _knob("slow_consumer_bytes", int, "unsent bytes to one client before close 4000"),
    _knob(
        "slow_consumer_seconds",
        float,
        "seconds a client's unsent backlog may stay non-empty before close 4000; 0: off",
    ),
    _knob("slow_close_timeout", float, "seconds a slow consumer has to take its close frame"),
    _knob("ping_interval", float, "seconds between WebSocket pings; no pong in half: dropped"),
    _knob("shutdown_timeout", float, "seconds for an orderly shutdown on SIGTERM"),
    _knob(
        "reconnect_window",
        float,
        "on shutdown, clients are told to reconnect at a random time within this many seconds",
    ),
    _knob("backoff_base", float, "first retry delay after a Redis error, seconds"),
    _knob("backoff_max", float, "cap of the retry delay after Redis errors, seconds"),
    _knob("ready_grace", float, "seconds without Redis contact before /readyz fails"),
    _knob("page", _bool, "serve the live book page at / and its files at /static/ (0: off)"),
    *LOG_KNOBS,
    _knob(
        "metrics_channel_labels",
        _non_negative,
        "per-channel metric series for at most N channels (relay_channel_*); 0: none",
    ),
    _knob(
        "test_echo",
        _bool,
        "for conformance tests only (docs/conformance.md): also serve /echo, a WebSocket "
        "echo with /ws's limits; never enable in production",
    ),
    # -- who may connect (docs/security.md) --
    _knob("auth", _bool, "require a bearer token (JWT or API key) at the handshake (0: off)"),
    _knob(
        "jwt_secrets",
        str,
        "comma-separated HMAC secrets for JWTs, each >= 32 bytes; the first signs `relay "
        "token`, all verify (rotation). Prefer RELAY_JWT_SECRET_FILE",
    ),
    _knob("jwt_secret_file", str, "file of JWT secrets, one a line (a Kubernetes Secret)"),
    _knob("jwt_algorithms", _algorithms, "accepted JWT algorithms: HS256, HS384, HS512"),
    _knob("jwt_audience", str, "if set, a JWT's aud claim must name it (e.g. the relay's URL)"),
    _knob("auth_leeway", float, "seconds of clock skew allowed on a token's exp and nbf"),
    _knob("api_key_file", str, "JSON file of API keys by SHA-256 (docs/security.md)"),
    _knob(
        "public_channels",
        _channels,
        "comma-separated channel patterns anonymous clients may read when auth is on",
    ),
    _knob(
        "auth_max_conns",
        _non_negative,
        "open connections per token unless its max_conns says otherwise; 0: no limit",
    ),
)


def add_knobs(
    parser: argparse.ArgumentParser, knobs: tuple[Knob, ...], env: Mapping[str, str]
) -> None:
    """Add one flag per knob; its default comes from the environment, then the table."""
    for knob in knobs:
        raw = env.get(knob.env)
        try:
            default = knob.type(raw) if raw is not None else knob.default
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{knob.env}={raw!r}: {exc}")
        shown = ",".join(knob.default) if isinstance(knob.default, tuple) else knob.default
        parser.add_argument(
            knob.flag,
            dest=knob.name,
            type=knob.type,
            default=default,
            metavar=knob.name.rsplit("_", 1)[-1].upper(),
            help=f"{knob.help} (env {knob.env}; default {shown!s})",
        )


def serve_config(args: argparse.Namespace) -> ServeConfig:
    names = {f.name for f in dataclasses.fields(ServeConfig)}
    return ServeConfig(**{k: v for k, v in vars(args).items() if k in names})


def from_env(env: Mapping[str, str], **overrides: Any) -> ServeConfig:
    """A ServeConfig from an environment mapping, then overrides (tests, embedding)."""
    parser = argparse.ArgumentParser()
    add_knobs(parser, SERVE_KNOBS, env)
    return dataclasses.replace(serve_config(parser.parse_args([])), **overrides)
