"""relay.core.admission: origin allowlist, connection caps and connect rate per address,
and the client address behind trusted proxies. Time is passed in."""

from __future__ import annotations

import pytest

from relay.config import from_env
from relay.core.admission import (
    Admission,
    Policy,
    Refusal,
    RefusalReason,
    Ticket,
    address_key,
    client_address,
    origin_allowed,
    parse_networks,
)

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


def _reason(decision: Ticket | Refusal) -> RefusalReason | None:
    return decision.reason if isinstance(decision, Refusal) else None


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # an untrusted peer's header is ignored, whatever it says
        ("203.0.113.7", ["1.2.3.4"], "203.0.113.7"),
        # a trusted proxy: the rightmost untrusted hop is the client
        ("10.1.1.1", ["198.51.100.9"], "198.51.100.9"),
        # the client forged a left part; two proxies appended what they saw
        ("10.1.1.1", ["6.6.6.6, 198.51.100.9, 10.2.2.2"], "198.51.100.9"),
        # several headers are one list, in order
        ("10.1.1.1", ["6.6.6.6", "198.51.100.9"], "198.51.100.9"),
        # garbage where a proxy should have written an address: the proxy is the client
        ("10.1.1.1", ["198.51.100.9, not-an-ip"], "10.1.1.1"),
        # a trusted proxy without the header
        ("10.1.1.1", [], "10.1.1.1"),
        # every hop is a proxy: the leftmost one
        ("10.1.1.1", ["10.3.3.3, 10.2.2.2"], "10.3.3.3"),
        ("fd00::1", ["[2001:db8::5]"], "2001:db8::5"),
    ],
)
def test_client_address_believes_only_trusted_proxies(
    peer: str, forwarded: list[str], expected: str
) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_without_trusted_proxies_the_header_means_nothing() -> None:
    assert client_address("127.0.0.1", ["1.2.3.4"], ()) == "127.0.0.1"


def test_bad_cidrs_are_named() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.300/8"):
        parse_networks(["10.0.0.300/8"])


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::5") != address_key("2001:db8:1:3::5")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") == "192.0.2.1"


def test_origins_compare_case_insensitively_and_absent_origins_pass() -> None:
    allowed = frozenset({"https://app.example.com"})
    assert origin_allowed("https://APP.example.com/", allowed)
    assert not origin_allowed("https://evil.example.com", allowed)
    assert not origin_allowed("null", allowed)
    assert origin_allowed(None, allowed)  # not a browser
    assert origin_allowed("https://evil.example.com", frozenset())  # no allowlist


def test_the_global_cap_refuses_with_503_and_frees_on_release() -> None:
    admission = Admission(Policy(max_connections=2))
    first, second = admission.admit("a", None, 0.0), admission.admit("b", None, 0.0)
    refused = admission.admit("c", None, 0.0)
    assert isinstance(refused, Refusal)
    assert (refused.reason, refused.status, refused.retry_after) == (
        RefusalReason.MAX_CONNECTIONS,
        503,
        1,
    )
    assert isinstance(first, Ticket)
    assert isinstance(second, Ticket)
    admission.release(first)
    assert isinstance(admission.admit("c", None, 0.0), Ticket)


def test_the_per_address_cap_refuses_with_429_and_leaves_others_alone() -> None:
    admission = Admission(Policy(max_per_address=2))
    tickets = [admission.admit("a", None, 0.0) for _ in range(2)]
    refused = admission.admit("a", None, 0.0)
    assert isinstance(refused, Refusal)
    assert (refused.reason, refused.status) == (RefusalReason.MAX_PER_ADDRESS, 429)
    assert isinstance(admission.admit("b", None, 0.0), Ticket)
    for ticket in tickets:
        assert isinstance(ticket, Ticket)
        admission.release(ticket)
    assert "a" not in admission.open  # no entry for an address without connections
    assert admission.open_total == 1


def test_the_connect_rate_refuses_with_a_retry_after() -> None:
    admission = Admission(Policy(connect_rate=0.5, connect_burst=2))
    assert [_reason(admission.admit("a", None, 0.0)) for _ in range(3)] == [
        None,
        None,
        RefusalReason.CONNECT_RATE,
    ]
    refused = admission.admit("a", None, 0.0)
    assert isinstance(refused, Refusal)
    assert (refused.status, refused.retry_after) == (429, 2)  # one token at 0.5/s
    assert _reason(admission.admit("b", None, 0.0)) is None
    assert _reason(admission.admit("a", None, 2.0)) is None


def test_an_origin_outside_the_allowlist_gets_403_and_takes_no_slot() -> None:
    admission = Admission(Policy(allowed_origins=frozenset({"https://ok.example"})))
    refused = admission.admit("a", "https://bad.example", 0.0)
    assert isinstance(refused, Refusal)
    assert (refused.reason, refused.status) == (RefusalReason.ORIGIN, 403)
    assert admission.open_total == 0


def test_rate_buckets_of_quiet_addresses_are_forgotten() -> None:
    admission = Admission(Policy(connect_rate=10.0, connect_burst=5))
    for n in range(10_000):
        ticket = admission.admit(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", None, n * 1e-4)
        assert isinstance(ticket, Ticket)
        admission.release(ticket)
    assert len(admission.buckets) > 1000
    admission.admit("192.0.2.1", None, 10.0)  # one refill period (0.5 s) later
    admission.admit("192.0.2.1", None, 11.0)
    assert len(admission.buckets) <= 1
    assert admission.open_total == 2
    assert admission.open == {"192.0.2.1": 2}


def test_the_knobs_parse_cidrs_and_origins_and_name_a_bad_cidr() -> None:
    config = from_env(
        {
            "RELAY_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8,127.0.0.1",
            "RELAY_ALLOWED_ORIGINS": "https://a.example,http://localhost:8080",
        }
    )
    assert config.trusted_proxies == ("10.0.0.0/8", "fd00::/8", "127.0.0.1")
    assert config.allowed_origins == ("https://a.example", "http://localhost:8080")
    with pytest.raises(SystemExit):
        from_env({"RELAY_TRUSTED_PROXIES": "10.0.0.0/33"})
