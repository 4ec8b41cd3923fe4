"""Leaving nothing behind: the Redis keys and the job processes a test started."""

from __future__ import annotations

import subprocess

import redis

__all__ = ["delete_prefixes", "stop_process"]


def delete_prefixes(redis_url: str, *prefixes: str) -> None:
    """Delete every key under each prefix (a test's own, so nothing else is touched)."""
    client = redis.Redis.from_url(redis_url)
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(f"{prefix}*", count=10_000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
    finally:
        client.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
