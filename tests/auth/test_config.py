"""The auth knobs and the operator's tools: what starts, what refuses to, what is printed."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from relay.auth import AuthConfigError, Gate
from relay.cli import main
from relay.config import from_env
from relay.core.auth import Grant, api_key_digest, parse_api_keys, verify_jwt
from relay.metrics import Metrics

SECRET = "s" * 40


def test_auth_is_off_by_default_and_secrets_stay_out_of_the_repr() -> None:
    assert from_env({}).auth is False
    config = from_env({"RELAY_AUTH": "1", "RELAY_JWT_SECRETS": SECRET})
    assert config.auth is True
    assert config.jwt_secrets == SECRET
    assert SECRET not in repr(config)


def test_only_hmac_algorithms_are_accepted_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert from_env({"RELAY_JWT_ALGORITHMS": "HS256,HS512"}).jwt_algorithms == ("HS256", "HS512")
    with pytest.raises(SystemExit):
        from_env({"RELAY_JWT_ALGORITHMS": "HS256,none"})
    assert "unsupported JWT algorithm(s) none" in capsys.readouterr().err


def test_a_configuration_that_cannot_admit_anyone_or_has_a_weak_secret_does_not_start(
    tmp_path: Path,
) -> None:
    with pytest.raises(AuthConfigError, match="no client could ever connect"):
        Gate.from_config(from_env({}, auth=True), Metrics())
    short = "too-short-secret"
    with pytest.raises(AuthConfigError, match="1 JWT secret") as caught:
        Gate.from_config(from_env({}, auth=True, jwt_secrets=f"{SECRET},{short}"), Metrics())
    assert short not in str(caught.value)
    secrets = tmp_path / "jwt"
    secrets.write_text(f"# rotated 2026-11\n{SECRET}\n\n{'t' * 32}\n")
    gate = Gate.from_config(from_env({}, auth=True, jwt_secret_file=str(secrets)), Metrics())
    assert gate.enabled


def test_relay_token_prints_a_jwt_the_relay_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "jwt"
    secret_file.write_text(f"{SECRET}\nthe-old-secret-which-must-not-sign-anymore\n")
    argv = ["token", "--sub", "alice", "--channels", "book.*, trades.BTC-USD", "--max-conns", "4"]
    assert main([*argv, "--ttl", "120"], env={"RELAY_JWT_SECRET_FILE": str(secret_file)}) == 0
    token = capsys.readouterr().out.strip()
    grant = verify_jwt(token, [SECRET.encode()], frozenset({"HS256"}), now=time.time(), leeway=0)
    assert isinstance(grant, Grant)
    assert grant.subject == "alice"
    assert grant.channels.patterns == ("book.*", "trades.BTC-USD")
    assert grant.max_conns == 4
    assert grant.expires_at is not None
    assert 100 < grant.expires_at - time.time() <= 120
    env = {"RELAY_JWT_SECRETS": SECRET, "RELAY_JWT_AUDIENCE": "wss://md.example.com"}
    assert main(["token"], env=env) == 0
    token = capsys.readouterr().out.strip()
    hs256 = frozenset({"HS256"})
    audience = "wss://md.example.com"
    assert isinstance(
        verify_jwt(token, [SECRET.encode()], hs256, now=time.time(), leeway=0, audience=audience),
        Grant,
    )
    with pytest.raises(SystemExit, match="shorter than 32 bytes"):
        main(["token"], env={"RELAY_JWT_SECRETS": "short"})
    with pytest.raises(SystemExit, match="no secret"):
        main(["token"], env={})


def test_relay_apikey_prints_a_key_and_an_entry_holding_only_its_hash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["apikey", "--sub", "bob", "--channels", "trades.*"], env={}) == 0
    printed = orjson.loads(capsys.readouterr().out)
    key, entry = printed["key"], printed["entry"]
    assert key.startswith("rk_")
    assert "." not in key  # never mistaken for a JWT
    assert len(key) >= 40
    assert entry == {"sha256": api_key_digest(key), "sub": "bob", "channels": ["trades.*"]}
    assert key not in orjson.dumps(entry).decode()
    [parsed] = parse_api_keys(orjson.dumps([entry])).values()
    assert parsed.subject == "bob"
