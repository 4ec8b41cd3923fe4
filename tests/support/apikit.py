"""Helpers of the API tests: the app served by uvicorn in a thread, keys, SSE reading."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import uvicorn

from api.app import create_app
from api.keys import create_key
from api.settings import ApiSettings
from sinks.postgres.schema import apply_migrations
from tools.broker import free_port


class LiveApi:
    """``create_app(settings)`` on a free loopback port, served from a daemon thread."""

    def __init__(self, settings: ApiSettings) -> None:
        port = free_port()
        self.settings = ApiSettings(**{**settings.__dict__, "port": port})
        self.url = f"http://127.0.0.1:{port}"
        self.app = create_app(self.settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, loop="asyncio", log_level="warning",
            lifespan="on", timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveApi:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def wait_ready(self, timeout_s: float = 20) -> None:
        """Until the read model has loaded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            doc = httpx.get(f"{self.url}/api/v1/health", timeout=5).json()
            if doc["read_model"]["ready"]:
                return
            time.sleep(0.1)
        raise AssertionError("read model not ready")

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)


def make_key(dsn: str, role: str, customer: str | None = None) -> str:
    apply_migrations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return create_key(conn, role, customer)[1]


def wait_for(check, timeout_s: float = 10.0, step_s: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(step_s)
    raise AssertionError(f"condition not met in {timeout_s} s (last: {last!r})")


@contextlib.contextmanager
def sse_events(
    client: httpx.Client, path: str, headers: dict[str, str] | None = None
) -> Iterator[Iterator[dict[str, str]]]:
    """Parsed SSE events (``id``, ``event``, ``data``) of one streaming GET."""
    with client.stream("GET", path, headers=headers or {}, timeout=30) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")

        def events() -> Iterator[dict[str, str]]:
            current: dict[str, str] = {}
            for line in resp.iter_lines():
                if not line:
                    if current:
                        yield current
                    current = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    current[name] = value.lstrip(" ")

        yield events()
