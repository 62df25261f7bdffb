"""Where the relay reads producers' streams from: Redis Streams, or an in-memory twin."""
