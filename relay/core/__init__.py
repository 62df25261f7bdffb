"""The pure core of the relay: books, sequencing, channel history and the client protocol.

Nothing in this package performs I/O or imports asyncio, aiohttp or redis; the adapters
around it (ingest, fanout, server, source) feed it bytes and act on the values it returns.
"""
