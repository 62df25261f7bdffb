"""The soak of scripts/bench/soak.py, shortened for CI: two minutes of a steady population
with connection churn, slow readers and subscribe storms, and its verdict.

It runs the soak as a user would (``python scripts/bench/soak.py``), with nothing but the
relay's own dependencies, redis-server and a C compiler (the steady population is the C
load client). The full 20-minute run and its chart are in docs/performance.md, "Soak".
Deselect locally with ``-m "not soak"``; ``SOAK_SECONDS`` changes the duration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "scripts" / "bench" / "soak.py"
SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))

pytestmark = [
    pytest.mark.soak,
    pytest.mark.redis,
    # The soak bounds itself (its duration plus setup); this is the backstop.
    pytest.mark.timeout(SECONDS + 240),
]


def _relay_command() -> str:
    local = Path(sys.executable).parent / "relay"
    return str(local) if local.exists() else (shutil.which("relay") or "relay")


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    argv = [
        sys.executable, str(SOAK),
        "--duration", str(SECONDS),
        # Cycles of 20 s: 5 fit in 2 minutes, 2 of them warm-up (history, allocator pools),
        # the verdict over the other quiet points.
        "--cycle", "20",
        "--warmup-cycles", "2",
        "--interval", "3",
        "--rate", "600",
        "--channels", "5",
        "--steady", "50",
        "--churn-rate", "10",
        "--slow", "4",
        "--storm", "150",
        "--relay-cmd", _relay_command(),
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 200)
    log = f"--- soak stdout\n{done.stdout[-6000:]}\n--- soak stderr\n{done.stderr[-4000:]}"
    assert out.exists(), log
    result: dict[str, Any] = json.loads(out.read_text())
    result["_log"] = log
    result["_returncode"] = done.returncode
    return result


def _check(result: dict[str, Any], name: str) -> None:
    check = result["verdict"]["checks"][name]
    assert check["ok"], f"{name}: {check['detail']}\n{result['_log']}"


def test_every_episode_happened(soak: dict[str, Any]) -> None:
    """The verdict below is about real load: several cycles, each with all three episodes."""
    _check(soak, "quiet points")
    assert soak["cycles"] >= 4, soak["_log"]
    assert soak["churn"]["launched"] >= 10 * 20 * soak["cycles"] * 0.8
    assert soak["slow"]["launched"] == 4 * soak["cycles"]
    assert soak["storm"]["launched"] == 150 * soak["cycles"]
    assert soak["steady"]["updates"] > 0


def test_rss_fds_and_tasks_stay_flat(soak: dict[str, Any]) -> None:
    _check(soak, "like for like")
    _check(soak, "fds flat")
    _check(soak, "tasks flat")
    _check(soak, "rss flat")


def test_no_update_lost_or_repeated(soak: dict[str, Any]) -> None:
    _check(soak, "zero gaps")
    _check(soak, "steady clients stayed")


def test_churned_and_storm_clients_are_all_served(soak: dict[str, Any]) -> None:
    _check(soak, "churned clients served")
    _check(soak, "storm clients served")


def test_slow_readers_are_closed_with_4000(soak: dict[str, Any]) -> None:
    _check(soak, "slow readers closed 4000")
    assert soak["slow"]["close_codes"] == {"4000": soak["slow"]["launched"]}


def test_the_relay_logged_no_error_and_the_soak_passed(soak: dict[str, Any]) -> None:
    _check(soak, "relay log clean")
    assert soak["verdict"]["ok"], soak["_log"]
    assert soak["_returncode"] == 0, soak["_log"]
