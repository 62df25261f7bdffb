"""relay: a market-data WebSocket fanout relay (Redis Streams in, sequenced frames out)."""

__version__ = "0.1.0"
