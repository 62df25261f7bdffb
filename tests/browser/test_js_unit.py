"""The JavaScript client's unit tests (``node --test``), run from pytest so that CI runs them.

They replay vectors made by the Python implementation (tests/browser/gen_vectors.py); the
first test checks the committed ``clients/js/test/vectors.json`` is still what it makes.
Skips, saying so, only when there is no ``node`` on PATH.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from browser.gen_vectors import ROOT, VECTORS, render
from browser.stack import page_stack

NODE = shutil.which("node")
TESTS = ROOT / "clients" / "js" / "test"
needs_node = pytest.mark.skipif(NODE is None, reason="no node on PATH (apt-get install nodejs)")


def _node_major() -> int:
    assert NODE is not None
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


def test_the_vectors_are_what_the_python_implementation_makes() -> None:
    assert VECTORS.read_text() == render(), (
        "clients/js/test/vectors.json is stale: run .venv/bin/python tests/browser/gen_vectors.py"
    )


@needs_node
def test_node_unit_tests_pass() -> None:
    assert NODE is not None
    if _node_major() < 20:
        pytest.skip("node 20 or newer is needed for node --test")
    files = sorted(str(p.relative_to(ROOT)) for p in TESTS.glob("*.test.mjs"))
    assert len(files) >= 4, files
    result = subprocess.run(
        [NODE, "--test", "--test-reporter=tap", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", output, re.M)
    failed = re.search(r"^# fail (\d+)$", output, re.M)
    assert passed, output
    assert failed, output
    assert int(failed[1]) == 0, output
    assert int(passed[1]) >= 30, output  # every test file ran
    print(f"\nnode --test: {passed[1]} passed, {failed[1]} failed")


LIVE = """
import { RelayClient } from "./relay/static/relay-client.js";
const [url, want] = [process.argv[1], Number(process.argv[2])];
const client = new RelayClient(url, ["book.BTC-USD", "trades.BTC-USD"], { WebSocket });
const done = setTimeout(() => finish(1), 20000);
function finish(code) {
  clearTimeout(done);
  client.close();
  const out = {};
  for (const c of client.channels) out[c] = client.counters(c);
  out.book = client.book("book.BTC-USD")?.toPayload() ?? null;
  out.seq = client.position("book.BTC-USD")?.[1] ?? null;
  console.log(JSON.stringify(out));
  process.exit(code);
}
// The trades channel exists from its first trade on (the client retries unknown_channel):
// wait for its snapshot too, within the 20 s bound, rather than race it.
client.on("bookUpdate", () => {
  const trades = client.counters("trades.BTC-USD");
  if (client.counters("book.BTC-USD").updates >= want && trades.snapshots >= 1) finish(0);
});
client.start();
"""


@needs_node
@pytest.mark.redis
async def test_the_client_keeps_a_verified_book_from_a_live_relay_in_node(redis_url: str) -> None:
    """Node's own WebSocket (``--experimental-websocket`` on Node 20) against a real relay."""
    assert NODE is not None
    flags = ["--experimental-websocket"] if _node_major() < 22 else []
    async with page_stack(redis_url) as stack:
        url = f"ws://127.0.0.1:{stack.config.port}/ws"
        proc = await asyncio.create_subprocess_exec(
            NODE,
            *flags,
            "--no-warnings",
            "--input-type=module",
            "-e",
            LIVE,
            url,
            "40",
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode == 0, (out, err)
        result = json.loads(out)
        await stack.pause_simulator()
    book = result["book.BTC-USD"]
    assert book["updates"] >= 40
    assert book["gaps"] == 0
    assert book["checksumFailures"] == 0
    assert book["checksumsVerified"] == book["updates"] + book["snapshots"]
    assert result["trades.BTC-USD"]["snapshots"] == 1
    assert result["book"]["bids"]
    assert result["book"]["asks"]
    print(
        f"\nnode client: {book['updates']} updates verified, seq {result['seq']}", file=sys.stderr
    )
