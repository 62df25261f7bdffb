"""Replay of recorded exchange market data into the relay's producer contract.

- ``venues``: one pure parser per venue, recording lines in, normalized events out
  (``events``), each after the venue's own book sync procedure.
- ``checks``: exchange checksums and top-of-book checks over a ``relay.core.book.Book``,
  and a ``Verifier`` that tallies them over an event stream.
- ``writer``: events to contract ``Publication``s, and ``replay`` (paced, batched).
- ``cli``: the ``relay replay`` subcommand.
"""
