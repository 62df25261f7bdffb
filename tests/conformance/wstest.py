"""Run Autobahn|Testsuite's fuzzing client (``wstest -m fuzzingclient``) and read its report.

wstest lives in its own Python 2.7 virtualenv (scripts/install-autobahn). Without it the
conformance tests skip, except where ``RELAY_REQUIRE_AUTOBAHN=1`` (CI, .ci/run): there a
missing install is a failure, so CI cannot turn green by skipping.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WSTEST = ROOT / ".autobahn" / "venv" / "bin" / "wstest"
AGENT = "relay"

# Autobahn's verdicts on a case (autobahntestsuite/case/case.py). ``behavior`` judges what
# the server sent; ``behaviorClose`` judges the closing handshake.
OK = "OK"
NON_STRICT = "NON-STRICT"
INFORMATIONAL = "INFORMATIONAL"
UNIMPLEMENTED = "UNIMPLEMENTED"
FAILED = "FAILED"


def wstest() -> Path:
    """The wstest executable, or skip (fail where RELAY_REQUIRE_AUTOBAHN=1) saying why."""
    if WSTEST.exists():
        return WSTEST
    reason = f"Autobahn|Testsuite not installed ({WSTEST}): run scripts/install-autobahn"
    if os.environ.get("RELAY_REQUIRE_AUTOBAHN") == "1":
        pytest.fail(f"{reason} (RELAY_REQUIRE_AUTOBAHN=1: required here)")
    pytest.skip(reason)


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int
    report: Mapping[str, Any]  # the case's own JSON report: description, expected, ...

    def expects_a_message(self) -> bool:
        """Whether any outcome Autobahn accepts has the server send a data message."""
        expected: Mapping[str, list[list[Any]]] = self.report["expected"]
        return any(event[0] == "message" for events in expected.values() for event in events)

    def explain(self) -> str:
        r = self.report
        return (
            f"{self.case} {self.behavior}/{self.behavior_close} close={self.remote_close_code}: "
            f"{r['description']!r}; expected {r['expectation']!r}; "
            f"got: {r['result']!r} / {r['resultClose']!r}"
        )


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


async def fuzz(
    url: str,
    workdir: Path,
    cases: Iterable[str],
    exclude: Iterable[str] = (),
    timeout: float = 240.0,
) -> dict[str, CaseResult]:
    """Run the fuzzing client against ``url`` and return its results by case id.

    Runs as a subprocess so the relay under test, on this event loop, keeps serving."""
    executable = wstest()
    outdir = workdir / "reports"
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": AGENT, "url": url}],
        "cases": list(cases),
        "exclude-cases": list(exclude),
        "exclude-agent-cases": {},
    }
    spec_path = workdir / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    log_path = workdir / "wstest.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(executable),
            "--mode",
            "fuzzingclient",
            "--spec",
            str(spec_path),
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(timeout):
                returncode = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    index = outdir / "index.json"
    if returncode != 0 or not index.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        pytest.fail(f"wstest exited with {returncode}, no report at {index}:\n{tail}")
    by_case = json.loads(index.read_text())[AGENT]
    return {
        case: CaseResult(
            case,
            entry["behavior"],
            entry["behaviorClose"],
            entry["remoteCloseCode"],
            entry["duration"],
            json.loads((outdir / entry["reportfile"]).read_text()),
        )
        for case, entry in sorted(by_case.items(), key=lambda item: case_key(item[0]))
    }


def tally(results: Mapping[str, CaseResult]) -> dict[str, int]:
    """Case counts by behaviour, the figures docs/conformance.md gives."""
    return dict(sorted(Counter(r.behavior for r in results.values()).items()))
