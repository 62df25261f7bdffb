"""The `relay` command as a newcomer meets it: every knob documented, env then flags."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from relay.cli import parser
from relay.config import SERVE_KNOBS, ServeConfig, from_env, serve_config


def test_serve_help_documents_every_knob_with_its_environment_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(result.stdout.split())  # argparse wraps lines anywhere
    for knob in SERVE_KNOBS:
        assert knob.flag in text
        assert knob.env in text
    assert "--redis URL" in text
    assert {f.name for f in dataclasses.fields(ServeConfig)} == {k.name for k in SERVE_KNOBS}


def test_environment_sets_defaults_and_flags_override() -> None:
    env = {
        "RELAY_PORT": "9001",
        "RELAY_REDIS_URL": "redis://example:6380/2",
        "RELAY_CHANNELS": "book.A, trades.A",
    }
    args = parser(env).parse_args(["serve", "--port", "9002"])
    config = serve_config(args)
    assert config.port == 9002
    assert config.redis_url == "redis://example:6380/2"
    assert config.channels == ("book.A", "trades.A")
    assert from_env({}).redis_url == "redis://127.0.0.1:6379/0"


def test_a_bad_environment_value_is_an_error_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parser({"RELAY_PORT": "eighty"}).parse_args(["serve"])
    assert "RELAY_PORT='eighty'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_every_redis_subcommand_takes_redis_url(command: str) -> None:
    args = parser({}).parse_args([command, "--redis", "redis://h:1/0"])
    assert args.redis_url == "redis://h:1/0"
