"""``relay token`` and ``relay apikey``: credentials for operators and tests (docs/security.md).

``relay token`` signs a JWT with the first configured secret (the one relays list first
during a rotation); ``relay apikey`` makes a random key and prints the entry to add to
the key file, which holds only the key's SHA-256.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from relay.core.auth import HMAC_ALGORITHMS, MIN_SECRET_BYTES, api_key_digest, mint_jwt

API_KEY_PREFIX = "rk_"  # no dot: a token with two dots is read as a JWT


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _grant_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--sub", default=None, help="the principal (shows in the relay's logs)")
    cmd.add_argument(
        "--channels",
        type=_patterns,
        default=["*"],
        help="comma-separated channel patterns, fnmatch style: 'book.*,trades.BTC-USD' "
        "(default '*': every channel)",
    )
    cmd.add_argument(
        "--max-conns",
        type=_positive,
        default=None,
        help="connections open at once with it (default: the relay's RELAY_AUTH_MAX_CONNS)",
    )


def add_parsers(commands: Any, env: Mapping[str, str]) -> None:
    token = commands.add_parser(
        "token",
        help="sign a JWT for a client",
        description="Print an HMAC-signed JWT. The secret comes from --secret-file, else "
        "RELAY_JWT_SECRET_FILE, else the first of RELAY_JWT_SECRETS (--secret exists for "
        "tests: a secret on a command line lands in shell history and `ps`).",
    )
    token.add_argument(
        "--secret-file", default=env.get("RELAY_JWT_SECRET_FILE"), help="first line signs"
    )
    token.add_argument("--secret", default=None, help=argparse.SUPPRESS)
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until exp (3600)")
    token.add_argument("--alg", choices=sorted(HMAC_ALGORITHMS), default="HS256")
    token.add_argument("--aud", default=env.get("RELAY_JWT_AUDIENCE") or None, help="the aud claim")
    _grant_options(token)
    token.set_defaults(env_secrets=env.get("RELAY_JWT_SECRETS", ""))

    apikey = commands.add_parser(
        "apikey",
        help="make an API key and its key-file entry",
        description="Print a JSON object: `key` (give it to the client, store it nowhere "
        "else) and `entry` (append it to the RELAY_API_KEY_FILE list).",
    )
    apikey.add_argument("--ttl", type=float, default=None, help="seconds until exp (none)")
    _grant_options(apikey)


def _secret(args: argparse.Namespace) -> bytes:
    if args.secret:
        lines = [args.secret]
    elif args.secret_file:
        lines = Path(args.secret_file).read_text().splitlines()
    else:
        lines = args.env_secrets.split(",")
    chosen = next((s.strip() for s in lines if s.strip() and not s.startswith("#")), "")
    if not chosen:
        raise SystemExit(
            "relay token: no secret: --secret-file, RELAY_JWT_SECRET_FILE or RELAY_JWT_SECRETS"
        )
    if len(chosen.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(f"relay token: the secret is shorter than {MIN_SECRET_BYTES} bytes")
    return chosen.encode()


def _claims(args: argparse.Namespace, now: float) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    if args.sub is not None:
        claims["sub"] = args.sub
    claims["channels"] = args.channels
    if args.max_conns is not None:
        claims["max_conns"] = args.max_conns
    if args.ttl is not None:
        claims["exp"] = int(now + args.ttl)
    return claims


def run_token(args: argparse.Namespace) -> int:
    now = time.time()
    claims = {"iat": int(now), **_claims(args, now)}
    if args.aud:
        claims["aud"] = args.aud
    print(mint_jwt(_secret(args), claims, args.alg))
    return 0


def run_apikey(args: argparse.Namespace) -> int:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits: a hash needs no salt
    entry = {"sha256": api_key_digest(key), **_claims(args, time.time())}
    sys.stdout.write(orjson.dumps({"key": key, "entry": entry}).decode() + "\n")
    return 0
