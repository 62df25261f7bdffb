"""The live book page in a real browser: Debian's chromium, driven by Playwright.

The whole stack runs here: a private redis-server (the session's), the simulator writing
to it, and the relay with the page routes. The test opens ``/`` and checks what a person
would look at: the ladder shows the simulator's book, trades come in, the status bar has
no gaps and no checksum failures; then the relay is stopped and started again on the same
port, and the page must come back by itself. Screenshots go to ``artifacts/``.

Skips (with the reason) only where chromium or Playwright is missing: scripts/install-browser
installs both.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from browser.stack import Stack, page_stack

try:
    from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - the skip below says what to install
    HAVE_PLAYWRIGHT = False

CHROMIUM = os.environ.get("RELAY_CHROMIUM") or shutil.which("chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("RELAY_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts")
)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium on PATH (scripts/install-browser, or apt-get install chromium)",
    ),
    pytest.mark.skipif(
        not HAVE_PLAYWRIGHT,
        reason="playwright is not installed in .venv (scripts/install-browser)",
    ),
]

CHANNEL = "book.BTC-USD"
TRADES = "trades.BTC-USD"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


class Watched:
    """A page, the errors it reported (uncaught exceptions, console errors), and the test's
    time budget: every wait ends by the deadline, so the test is bounded whatever happens."""

    def __init__(self, page: Page, budget: float) -> None:
        self.page = page
        self.errors: list[str] = []
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.phases: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # Chromium logs every refused WebSocket attempt while the relay is down: expected.
        if message.type == "error" and "WebSocket connection" not in message.text:
            self.errors.append(f"console: {message.text}")

    async def status(self) -> dict[str, str]:
        """The status bar as shown: every ``#status-*`` element's text and data-value."""
        result: dict[str, str] = await self.page.evaluate(
            """() => {
                const out = {};
                for (const node of document.querySelectorAll('[id^="status-"]')) {
                    const key = node.id.slice(7);
                    out[key] = node.dataset.value ?? node.dataset.state ?? node.textContent;
                }
                out.text = document.getElementById('status').innerText.replace(/\\s+/g, ' ');
                return out;
            }"""
        )
        return result

    async def wait(self, condition: str, timeout: float, arg: Any = None) -> None:
        left = self.deadline - time.monotonic()
        assert left > 0, f"over the test's time budget; phases: {self.phases}"
        await self.page.wait_for_function(
            condition, arg=arg, timeout=min(timeout, left) * 1000, polling=50
        )

    def mark(self, phase: str) -> None:
        self.phases.append(f"{time.monotonic() - self.started:.1f}s {phase}")

    async def ladder(self) -> tuple[list[list[str]], list[list[str]]]:
        """(bids, asks) as the ladder shows them, best first, as [price, size] strings."""
        sides: dict[str, list[list[str]]] = await self.page.evaluate(
            """() => {
                const rows = (id) => [...document.querySelectorAll(`#${id} .row[data-price]`)]
                    .map((r) => [r.dataset.price, r.dataset.size]);
                return {bids: rows('bids'), asks: rows('asks').reverse()};
            }"""
        )
        return sides["bids"], sides["asks"]


async def _settle_on_producer(stack: Stack, watched: Watched, channel: str = CHANNEL) -> int:
    """Pause the producer and wait until the page shows its last book seq; returns it."""
    await stack.pause_simulator()
    seq = stack.simulator.seqs[channel]
    await watched.wait(
        "(seq) => Number(document.getElementById('status-seq').dataset.value) === seq", 10, seq
    )
    await watched.page.wait_for_timeout(100)  # a frame or two: the ladder is drawn first anyway
    return seq


async def _assert_ladder_is_the_producers_book(
    stack: Stack, watched: Watched, market: int = 0
) -> None:
    bids, asks = await watched.ladder()
    assert len(bids) >= 10, bids
    assert len(asks) >= 10, asks
    book = stack.simulator.markets[market].book_payload()  # the simulator's own book
    assert bids == book["bids"][: len(bids)]
    assert asks == book["asks"][: len(asks)]
    shown_bid = await watched.page.inner_text("#t-bid")
    assert shown_bid.replace(",", "") == book["bids"][0][0]


async def _last_trade(redis_url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries: Any = await client.xrevrange(f"md:{{{TRADES}}}", count=1)
    finally:
        await client.aclose()
    data: dict[str, Any] = orjson.loads(entries[0][1][b"data"])
    return data


async def test_the_page_shows_the_book_and_trades_and_resumes_after_a_relay_restart(
    redis_url: str, browser: Browser, artifacts: Path
) -> None:
    async with page_stack(redis_url) as stack:
        page = await browser.new_page(viewport={"width": 1440, "height": 900})
        watched = Watched(page, budget=50)
        await page.goto(stack.url)

        # Live: a book, levels on both sides, a seq, and trades coming in.
        await watched.wait("document.getElementById('status-state').dataset.state === 'live'", 15)
        await watched.wait(
            "document.querySelectorAll('#bids .row[data-price]').length >= 10"
            " && document.querySelectorAll('#asks .row[data-price]').length >= 10",
            10,
        )
        await watched.wait("document.querySelectorAll('#trades .trade.new').length >= 2", 15)
        await watched.wait("Number(document.getElementById('status-rate').dataset.value) > 5", 5)
        await watched.wait("Number(document.getElementById('status-seq').dataset.value) > 40", 10)
        assert await page.title() == "BTC-USD · relay"
        watched.mark("live")

        # The ladder is the simulator's book, level for level, at the same seq.
        await _settle_on_producer(stack, watched)
        await _assert_ladder_is_the_producers_book(stack, watched)
        last = await _last_trade(redis_url)
        await watched.wait(
            "(id) => document.querySelector('#trades .trade')?.dataset.id === id", 5, last["id"]
        )
        top = await page.eval_on_selector(
            "#trades .trade", "(r) => [r.dataset.price, r.dataset.side]"
        )
        assert top == [last["price"], last["side"]]
        status = await watched.status()
        assert status["gaps"] == "0", status
        assert status["checksum-failures"] == "0", status
        assert int(status["checksums"]) > 20, status
        assert status["resyncs"] == "0", status
        assert status["reconnects"] == "0", status
        assert "127.0.0.1:" in status["replica"], status
        watched.mark("checked against the simulator")

        # Drawing is done on animation frames, and cheaply: our script's share of a frame.
        perf = await page.evaluate("window.relayPage.view.perf")
        assert perf["frames"] > 10, perf
        assert perf["scriptMs"] / perf["frames"] < 12, perf

        stack.resume_simulator()
        await page.wait_for_timeout(1500)  # a lively picture: flashes, fresh trades
        await page.screenshot(path=str(artifacts / "page.png"))

        # Stop the relay (clients get 1001), keep the producer going, start it again.
        seq_before = int((await watched.status())["seq"])
        await stack.stop_relay()
        await watched.wait(
            "['reconnecting', 'connecting'].includes("
            "document.getElementById('status-state').dataset.state)",
            5,
        )
        watched.mark("relay stopped")
        await page.wait_for_timeout(1000)
        await stack.start_relay()
        await watched.wait(
            "document.getElementById('status-state').dataset.state === 'live'"
            " && Number(document.getElementById('status-reconnects').dataset.value) >= 1",
            20,
        )
        await watched.wait(
            "(seq) => Number(document.getElementById('status-seq').dataset.value) > seq + 20",
            10,
            seq_before,
        )
        watched.mark("resumed")
        await _settle_on_producer(stack, watched)
        await _assert_ladder_is_the_producers_book(stack, watched)
        status = await watched.status()
        assert status["gaps"] == "0", status
        assert status["checksum-failures"] == "0", status
        assert int(status["reconnects"]) >= 1, status
        counters = await page.evaluate(f"window.relayPage.client.counters('{CHANNEL}')")
        assert counters["reconnects"] >= 1
        assert counters["resumesReplayed"] + counters["resumesSnapshot"] >= 1, counters
        stack.resume_simulator()
        await page.wait_for_timeout(1000)
        await page.screenshot(path=str(artifacts / "page-after-restart.png"))
        assert watched.errors == []
        watched.mark("done")
        perf = await page.evaluate("window.relayPage.view.perf")
        print(
            f"\npage: {counters}\nstatus: {status['text']}\nphases: {watched.phases}"
            f"\ndrawing: {perf['frames']} frames, {perf['scriptMs'] / perf['frames']:.2f} ms"
            f" of script each (max {perf['maxMs']:.1f})"
        )


async def test_the_page_fits_a_phone(redis_url: str, browser: Browser, artifacts: Path) -> None:
    async with page_stack(redis_url) as stack:
        page = await browser.new_page(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
        )
        watched = Watched(page, budget=40)
        await page.goto(f"{stack.url}?symbol=ETH-USD")
        await watched.wait("document.getElementById('status-state').dataset.state === 'live'", 15)
        await watched.wait(
            "document.querySelectorAll('#bids .row[data-price]').length >= 8"
            " && document.querySelectorAll('#trades .trade').length >= 1",
            15,
        )
        assert await page.input_value("#market") == "ETH-USD"
        assert await page.text_content("#book-channel") == "book.ETH-USD"
        # Nothing sticks out sideways; the ladder, the chart and the tape are all there.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        for selector in ("#ladder", "#depth", "#trades", "#status"):
            box = await page.locator(selector).bounding_box()
            assert box is not None, selector
            assert box["width"] > 300, (selector, box)
        await page.wait_for_timeout(2000)
        await page.screenshot(path=str(artifacts / "page-phone.png"), full_page=True)
        assert watched.errors == []


async def test_the_market_picker_switches_channels(redis_url: str, browser: Browser) -> None:
    async with page_stack(redis_url) as stack:
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        watched = Watched(page, budget=40)
        await page.goto(stack.url)
        await watched.wait("document.getElementById('status-state').dataset.state === 'live'", 15)
        options = await page.eval_on_selector_all(
            "#market option", "(os) => os.map((o) => o.value)"
        )
        assert options == ["BTC-USD", "ETH-USD", "SOL-USD"]
        await page.select_option("#market", "SOL-USD")
        await watched.wait(
            "document.getElementById('book-channel').textContent === 'book.SOL-USD'"
            " && document.getElementById('status-state').dataset.state === 'live'"
            " && document.querySelectorAll('#bids .row[data-price]').length >= 10",
            10,
        )
        assert "symbol=SOL-USD" in page.url
        await _settle_on_producer(stack, watched, "book.SOL-USD")
        await _assert_ladder_is_the_producers_book(stack, watched, market=2)
        status = await watched.status()
        assert status["gaps"] == "0", status
        assert status["checksum-failures"] == "0", status
        # The BTC-USD subscriptions are gone from the relay.
        channels = await page.evaluate("window.relayPage.client.channels")
        assert channels == ["book.SOL-USD", "trades.SOL-USD"]
        assert watched.errors == []
