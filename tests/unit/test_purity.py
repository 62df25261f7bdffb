"""The core stays pure: importing it pulls in no event loop, web server or Redis client."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, sys
import relay.core
import relay.core.book, relay.core.channel, relay.core.entry
import relay.core.frames, relay.core.protocol, relay.core.ratelimit, relay.core.auth
import relay.core.admission
import relay.backoff, relay.market
print(json.dumps(sorted(sys.modules)))
"""

FORBIDDEN = ("asyncio", "aiohttp", "redis", "uvloop")


def test_importing_the_core_imports_no_io_library() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(result.stdout)
    assert "relay.core.protocol" in loaded  # the check ran against the real modules
    offending = [name for name in loaded if name.split(".")[0] in FORBIDDEN]
    assert offending == []
