"""A recording that cannot be replayed fails with an error naming the file and the line.

Every file here is synthetic text written by the test, in the venues' formats.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from relay.replay.errors import ReplayFormatError
from relay.replay.events import BookDiff, Snapshot
from relay.replay.recordings import recordings
from relay.replay.venues import binance, bybit, detect

KRAKEN_HEAD = "wss://ws.kraken.com <-> 1700000000.0\n"
SNAPSHOT = '1700000000.1: [1,{"as":[["2.0","1.0","1"]],"bs":[["1.0","1.0","1"]]},"book-10","A/B"]\n'
UPDATE = '1700000000.2: [1,{"a":[["2.0","3.0","2"]],"c":"1"},"book-10","A/B"]\n'


def _events(path: Path) -> list[object]:
    return [event for recording in recordings([path]) for event in recording.events()]


def test_corrupt_json_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "KRAKEN.ws.synthetic"
    path.write_text(KRAKEN_HEAD + SNAPSHOT + "\n" + UPDATE[:40] + "\n" + UPDATE)
    with pytest.raises(ReplayFormatError) as caught:
        _events(path)
    # Line 4: the blank line 3 counts, as in an editor.
    assert caught.value.path == path
    assert caught.value.line == 4
    assert str(caught.value).startswith(f"{path}:4: corrupt JSON")


def test_a_line_without_a_timestamp_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "KRAKEN.ws.synthetic"
    path.write_text(KRAKEN_HEAD + SNAPSHOT + "garbage\n")
    with pytest.raises(ReplayFormatError, match=r"KRAKEN\.ws\.synthetic:3: .*'<unix ts>: <JSON>'"):
        _events(path)


def test_a_missing_field_is_reported_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "spot_xyz_20240101.gz"
    with gzip.open(path, "wt") as out:
        out.write('100 {"stream":"xyzusdt@trade","data":{"s":"XYZUSDT","t":1,"p":"1","q":"1"}}\n')
    with pytest.raises(ReplayFormatError, match=r"spot_xyz_20240101\.gz:1: missing field 'm'"):
        _events(path)


def _binance_lines() -> list[str]:
    return [
        '100 {"stream":"xyzusdt@depth@100ms","data":{"e":"depthUpdate","s":"XYZUSDT",'
        '"U":5,"u":7,"b":[["1.0","1"]],"a":[]}}',
        '200 {"lastUpdateId":6,"bids":[["1.0","2"]],"asks":[["2.0","1"]]}',
        '300 {"stream":"xyzusdt@depth@100ms","data":{"e":"depthUpdate","s":"XYZUSDT",'
        '"U":8,"u":9,"b":[],"a":[["2.0","0"]]}}',
    ]


def test_corrupt_line_in_a_gzip_recording(tmp_path: Path) -> None:
    path = tmp_path / "spot_xyz_20240101.gz"
    lines = _binance_lines()
    lines.insert(2, lines[2][:60])
    with gzip.open(path, "wt") as out:
        out.write("\n".join(lines) + "\n")
    with pytest.raises(ReplayFormatError, match=r"spot_xyz_20240101\.gz:3: corrupt JSON"):
        _events(path)


def test_a_truncated_gzip_stream_is_reported(tmp_path: Path) -> None:
    trades = [
        f'{100 + i} {{"stream":"xyzusdt@trade","data":{{"s":"XYZUSDT","t":{i},"p":"1.{i}",'
        f'"q":"1","m":true,"T":{i}}}}}'
        for i in range(2000)
    ]
    whole = gzip.compress(("\n".join(trades) + "\n").encode())
    path = tmp_path / "spot_xyz_20240101.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ReplayFormatError, match=r"spot_xyz_20240101\.gz:\d+: cannot read"):
        list(binance.events([path]))


def test_an_update_id_gap_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "spot_xyz_20240101.gz"
    lines = [*_binance_lines()]
    lines[2] = lines[2].replace('"U":8', '"U":9')
    with gzip.open(path, "wt") as out:
        out.write("\n".join(lines) + "\n")
    with pytest.raises(ReplayFormatError, match=r":3: update id gap: U=9 after u=7"):
        _events(path)


def test_the_good_binance_lines_sync(tmp_path: Path) -> None:
    path = tmp_path / "spot_xyz_20240101.gz"
    with gzip.open(path, "wt") as out:
        out.write("\n".join(_binance_lines()) + "\n")
    snapshot, diff = _events(path)
    assert snapshot == Snapshot(
        binance.SPOT, "XYZUSDT", 200, (("1.0", "1"),), (("2.0", "1"),), {"lastUpdateId": 6, "u": 7}
    )
    assert diff == BookDiff(binance.SPOT, "XYZUSDT", 300, (), (("2.0", "0"),), {"U": 8, "u": 9})


def test_diffs_without_any_snapshot_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "spot_xyz_20240101.gz"
    with gzip.open(path, "wt") as out:
        out.write(_binance_lines()[0] + "\n")
    with pytest.raises(ReplayFormatError, match="1 depth diffs but no REST depth snapshot"):
        _events(path)


def test_bytes_that_are_not_utf8_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "KRAKEN.ws.synthetic"
    path.write_bytes((KRAKEN_HEAD + SNAPSHOT).encode() + b"1700000000.3: \xff\xfe\n")
    with pytest.raises(ReplayFormatError, match=r"KRAKEN\.ws\.synthetic:3: not UTF-8"):
        _events(path)


def test_an_unknown_format_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.log"
    path.write_text("this is not a market data recording\n")
    with pytest.raises(ReplayFormatError, match=r"notes\.log: unknown recording format"):
        detect(path)
    with pytest.raises(ReplayFormatError, match=r"no such file or directory"):
        recordings([tmp_path / "missing"])


def test_a_bybit_update_id_gap_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "2024-01-01_XYZ_ob500.data"
    line = (
        '{{"topic":"orderbook.500.XYZ","type":"{kind}","ts":{ts},"cts":{ts},'
        '"data":{{"s":"XYZ","b":[["1","1"]],"a":[["2","1"]],"u":{u},"seq":{u}}}}}'
    )
    path.write_text(
        line.format(kind="snapshot", ts=1, u=1) + "\n" + line.format(kind="delta", ts=2, u=3) + "\n"
    )
    assert detect(path) == bybit.VENUE
    with pytest.raises(
        ReplayFormatError, match=r"ob500\.data:2: update id gap in XYZ: u=3 after 1"
    ):
        _events(path)
