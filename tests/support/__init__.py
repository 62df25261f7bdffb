"""Helpers shared by the integration tests: a relay in-process, clients, books."""
