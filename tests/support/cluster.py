"""A real three-master Redis Cluster on loopback ports, made by the test session."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from relay.redisproc import RedisProcess


class Cluster:
    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisProcess(appendonly=True, cluster=True) for _ in range(masters)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = [
                    redis.Redis(port=node.port).cluster("info")["cluster_state"]
                    for node in self.nodes
                ]
                if all(state == "ok" for state in states):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("cluster did not reach state ok")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
