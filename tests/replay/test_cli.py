"""``relay replay``: flags, the ``--check`` report, errors, and a run against Redis."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from relay import redisproc
from relay.replay import cli

from .conftest import market_path


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="relay")
    cli.add_parser(top.add_subparsers(dest="command", required=True), {})
    return top


def test_flags_and_defaults() -> None:
    args = _parser().parse_args(["replay", "some/dir"])
    assert (args.speed, args.max_speed, args.snapshot_every, args.paths) == (
        1.0,
        False,
        100,
        ["some/dir"],
    )
    args = _parser().parse_args(
        ["replay", "--redis", "redis://h:1/0", "--max-speed", "--snapshot-every", "7", "a", "b"]
    )
    assert (args.redis_url, args.max_speed, args.snapshot_every) == ("redis://h:1/0", True, 7)
    assert (args.log_level, args.log_format, args.key_prefix) == ("info", "json", "md:")


@pytest.mark.parametrize(
    "argv",
    [
        ["--speed", "2", "--max-speed", "x"],
        ["--speed", "0", "x"],
        ["--snapshot-every", "0", "x"],
        ["--venue", "nasdaq", "x"],
        [],
    ],
)
def test_bad_flags_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["replay", *argv])
    assert "error" in capsys.readouterr().err


def test_check_reports_the_venue_checks(capsys: pytest.CaptureFixture[str]) -> None:
    path = market_path("okx_cryptofeed_2021-07-22")
    args = _parser().parse_args(["replay", "--check", str(path)])
    assert asyncio.run(cli.run(args)) == 0
    out = capsys.readouterr().out
    assert "okx: OKEX.ws.1.0" in out
    assert "checksums: 1504 of 1504 agree" in out
    assert "not crossed: 1504 of 1504 agree" in out


def test_an_unreadable_recording_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.log"
    path.write_text("not a recording\n")
    args = _parser().parse_args(["replay", "--redis", "redis://127.0.0.1:1/0", str(path)])
    assert asyncio.run(cli.run(args)) == 2
    err = capsys.readouterr().err
    assert f"relay replay: error: {path}: unknown recording format" in err


def test_a_stream_shorter_than_the_snapshot_interval_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _parser().parse_args(["replay", "--maxlen", "50", "--snapshot-every", "100", "x"])
    assert asyncio.run(cli.run(args)) == 2
    assert "--maxlen 50 must be larger than --snapshot-every 100" in capsys.readouterr().err


@pytest.fixture(scope="module")
def replay_redis_url() -> Iterator[str]:
    """A private redis-server for this module (the suite stands alone)."""
    if not redisproc.available():
        pytest.skip("redis-server is not on PATH")
    proc = redisproc.RedisProcess()
    proc.start()
    try:
        yield proc.url
    finally:
        proc.cleanup()


@pytest.mark.redis
def test_replay_into_redis(replay_redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = market_path("bybit_nautilus")
    args = _parser().parse_args(
        ["replay", "--redis", replay_redis_url, "--max-speed", "--snapshot-every", "20", str(path)]
    )
    assert asyncio.run(cli.run(args)) == 0
    assert "50 entries on 1 channel in" in capsys.readouterr().out
    client: Any = sync_redis.Redis.from_url(replay_redis_url)  # its stubs type replies as unions
    try:
        entries = client.xrange("md:{book.XRPUSDT}")
        assert [int(fields[b"seq"]) for _, fields in entries] == list(range(1, 51))
        snapshot = client.hgetall("md:{book.XRPUSDT}:snapshot")
        assert snapshot[b"seq"] == b"40"
        assert snapshot[b"id"] == entries[39][0]
        assert client.hget("md:{book.XRPUSDT}:meta", "epoch").startswith(b"replay-")
    finally:
        client.close()
