"""Who may open a WebSocket, decided before the upgrade. Pure: time is passed in.

The checks, in this order (docs/limits.md):

1. Origin: a request with an ``Origin`` header (a browser) must name an allowed origin when
   an allowlist is configured -> 403. Requests without one (other programs) pass: the
   header only means something for browsers, which cannot forge it.
2. Global cap: at most ``max_connections`` open at once -> 503 with Retry-After.
3. Per-address cap: at most ``max_per_address`` open from one client address -> 429.
4. Per-address rate: connection attempts from one address through a token bucket -> 429
   with Retry-After saying when the next token comes.

The client address is the peer's, unless the peer is a trusted proxy: then it is the
rightmost address of ``X-Forwarded-For`` that is not itself a trusted proxy. Reading from
the right matters: each proxy appends the address it saw, so only the right end was written
by someone we trust; anything to the left is whatever the client chose to send.
IPv6 clients are counted per /64, the smallest block a host is usually given: one host
can pick any address inside it.

Invariants kept by ``Admission``:
- ``open_total`` equals the sum of the per-address counts, and an address has a count
  entry only while it has an open connection;
- a rate bucket is kept only until it has refilled (``TokenBucket.full``) and a sweep
  (at most one per refill period, ``burst / rate`` seconds) found it so: the tables are
  bounded by the addresses seen in the last two refill periods, however many addresses
  were ever seen.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from relay.core.ratelimit import TokenBucket

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

IPV6_GROUP_PREFIX = 64


class RefusalReason(StrEnum):
    """Why an upgrade was refused: a closed set, used as a metric label."""

    ORIGIN = "origin"
    MAX_CONNECTIONS = "max_connections"
    MAX_PER_ADDRESS = "max_per_address"
    CONNECT_RATE = "connect_rate"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    status: int  # the HTTP status of the answer
    message: str
    retry_after: int | None = None  # whole seconds, for the Retry-After header


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted connection; hand it back to ``Admission.release`` when it ends."""

    key: str  # the address (or IPv6 /64) the connection is counted under


@dataclass(frozen=True, slots=True)
class Policy:
    max_connections: int = 0  # 0: no cap
    max_per_address: int = 0  # 0: no cap
    connect_rate: float = 0.0  # attempts per second per address; 0: no limit
    connect_burst: float = 1.0
    allowed_origins: frozenset[str] = frozenset()  # normalised; empty: any origin


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError names the bad one."""
    networks: list[Network] = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"not an address or CIDR: {text!r}") from exc
    return tuple(networks)


def normalise_origin(origin: str) -> str:
    """``https://Example.com/`` and ``https://example.com`` are one origin (RFC 6454: the
    scheme and host compare case-insensitively; an origin has no path)."""
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    if origin is None or not allowed:
        return True
    return normalise_origin(origin) in allowed


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: Address | None, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The address a connection is counted and logged under.

    ``forwarded_for`` is every ``X-Forwarded-For`` header of the request, in order. It is
    used only when ``peer`` is a trusted proxy; then the hops are read from the right and
    the first untrusted one is the client. A hop that is not an address stops the walk:
    the proxy that handed it to us is the last address we can vouch for.
    """
    if not trusted:  # the common case, and the cheap one: no address to parse
        return peer
    peer_address = _address(peer)
    if not _trusted(peer_address, trusted):
        return peer
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    vouched = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return vouched
        if not _trusted(address, trusted):
            return str(address)
        vouched = str(address)
    return vouched  # every hop was a trusted proxy: the leftmost one is the client


def address_key(address: str) -> str:
    """The key a connection is counted under: the address, or its /64 for IPv6."""
    parsed = _address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((parsed, IPV6_GROUP_PREFIX), strict=False))
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return address


class Admission:
    """Open connections per address and connection-attempt buckets per address."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.open_total = 0
        self.open: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self._next_sweep = 0.0

    def admit(self, address: str, origin: str | None, now: float) -> Ticket | Refusal:
        policy = self.policy
        if not origin_allowed(origin, policy.allowed_origins):
            return Refusal(RefusalReason.ORIGIN, 403, "origin not allowed")
        if policy.max_connections and self.open_total >= policy.max_connections:
            return Refusal(RefusalReason.MAX_CONNECTIONS, 503, "relay at its connection limit", 1)
        # Parsing the address is a third of this call: only when a per-address limit is on.
        per_address = policy.max_per_address > 0 or policy.connect_rate > 0
        key = address_key(address) if per_address else ""
        if policy.max_per_address and self.open.get(key, 0) >= policy.max_per_address:
            return Refusal(
                RefusalReason.MAX_PER_ADDRESS,
                429,
                f"at most {policy.max_per_address} connections per address",
                1,
            )
        if policy.connect_rate > 0:
            self._sweep(now)
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = TokenBucket(
                    policy.connect_rate, policy.connect_burst, now
                )
            if not bucket.take(now):
                wait = bucket.wait(now)
                return Refusal(
                    RefusalReason.CONNECT_RATE,
                    429,
                    f"over {policy.connect_rate:g} connections/s per address",
                    max(1, math.ceil(wait)) if math.isfinite(wait) else 60,
                )
        self.open_total += 1
        self.open[key] = self.open.get(key, 0) + 1
        return Ticket(key)

    def release(self, ticket: Ticket) -> None:
        count = self.open.get(ticket.key, 0) - 1
        if count > 0:
            self.open[ticket.key] = count
        else:
            self.open.pop(ticket.key, None)
        self.open_total = max(self.open_total - 1, 0)

    def _sweep(self, now: float) -> None:
        """Forget refilled buckets, at most once per refill period: O(1) amortised."""
        if now < self._next_sweep:
            return
        policy = self.policy
        self._next_sweep = now + max(policy.connect_burst / policy.connect_rate, 1.0)
        for key in [key for key, bucket in self.buckets.items() if bucket.full(now)]:
            del self.buckets[key]
