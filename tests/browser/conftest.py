"""One live stack for the console's browser tests: broker, job, API, Chromium.

The streaming job runs for real (``python -m tools run`` in a subprocess), the API serves on
a free loopback port from a thread, and Debian's Chromium is driven by Playwright (which
cannot download its own browsers here). The demo scenario is generated only when a test
asks for it, so a page can be opened before the electricity spike and watched live.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from api.console.routes import VENDOR
from api.settings import ApiSettings
from generators.run import generate
from generators.scenario import load_scenario
from generators.simulation import SimConfig
from hcp.topics import Topics
from tests.support.apikit import LiveApi, make_key
from tests.support.cleanup import delete_prefixes, stop_process
from tests.support.flowkit import make_topics

CHROMIUM = os.environ.get("HCP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PARTITIONS = 2
SITES = 3
SPEED = 30.0  # simulated seconds per wall second: one 60 s window every 2 s
DURATION_S = 900  # the spike (+180 s .. +1080 s) and the site-02 cap (+420 s .. +840 s)


class _StoppedError(Exception):
    """Ends the scenario's generation early, at the end of the module."""


@dataclass
class Stack:
    api: LiveApi
    topics: Topics
    prefix: str
    redis_url: str
    bootstrap: str
    admin: str
    acme: str
    globex: str
    browser: Browser
    job_log: Path
    job: subprocess.Popen[bytes]
    config: SimConfig
    shared: dict[str, object] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _scenario: threading.Thread | None = None
    _failure: list[BaseException] = field(default_factory=list)

    def start_scenario(self) -> None:
        """Generate the demo scenario live, once, in the background."""
        if self._scenario is not None:
            return

        def stop_when_asked(_sim: object, _second: int) -> None:
            if self._stop.is_set():
                raise _StoppedError

        def run() -> None:
            try:
                generate(self.config, self.bootstrap, self.topics, speed=SPEED,
                         partitions=PARTITIONS, on_second=stop_when_asked)
            except _StoppedError:
                pass
            except BaseException as exc:  # reported by check_job
                self._failure.append(exc)

        self._scenario = threading.Thread(target=run, daemon=True)
        self._scenario.start()

    def stop_scenario(self) -> None:
        self._stop.set()
        if self._scenario is not None:
            self._scenario.join(timeout=20)

    def check_job(self) -> None:
        """Fail with the job's log if it died, or with the generator's error."""
        assert self.job.poll() is None, self.job_log.read_text()[-3000:]
        assert not self._failure, repr(self._failure[0])

    def context(self, key: str | None) -> BrowserContext:
        """A fresh browser profile, signed in with ``key`` through the sign-in form."""
        ctx = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        if key is not None:
            page = ctx.new_page()
            page.goto(f"{self.api.url}/console/")
            page.fill("input[name=key]", key)
            page.click("button[type=submit]")
            page.wait_for_url("**/console/*")
            page.close()
        return ctx


class ConsoleErrors:
    """Console errors, Alpine's expression errors and uncaught exceptions of its pages.

    Alpine reports a binding that fails to evaluate as a console *warning*; those are
    broken pages too, so they count.
    """

    def __init__(self) -> None:
        self.items: list[str] = []

    def watch(self, page: Page) -> Page:
        page.on("console", lambda m: (
            m.type == "error" or (m.type == "warning" and "Alpine" in m.text)
        ) and self.items.append(f"{page.url}: {m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.items.append(f"{page.url}: {e}"))
        return page


@pytest.fixture(scope="module")
def stack(
    bootstrap: str, redis_url: str, own_pg_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    pg_dsn = own_pg_dsn  # its live job must not write into the session's database
    missing = [name for name, path in VENDOR.items() if not path.is_file()]
    assert not missing, f"console libraries missing ({missing}): run `make console-assets`"
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} missing: run `make system-deps`")
    tmp = tmp_path_factory.mktemp("console")
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    make_topics(bootstrap, topics, partitions=PARTITIONS)
    start = int(time.time()) // 60 * 60_000
    sites = [f"site-{i + 1:02d}" for i in range(SITES)]
    config = SimConfig(
        seed=13, gpus=24, asics=60, sites=SITES, start_ms=start, duration_s=DURATION_S,
        workload_rate=2.0, scenario=load_scenario("demo", start, sites), closed_loop=True,
    )
    env = dict(os.environ)
    env.update(
        HCP_KAFKA_BOOTSTRAP=bootstrap, HCP_TOPIC_PREFIX=topics.prefix, HCP_REDIS_URL=redis_url,
        HCP_REDIS_PREFIX=prefix, HCP_PG_DSN=pg_dsn, HCP_METRICS_PORT="0",
        HCP_LATENESS_S="0", HCP_IDLE_TIMEOUT_S="1", HCP_RECOVERY_DIR=str(tmp / "recovery"),
    )
    job_log = tmp / "job.log"
    admin = make_key(pg_dsn, "admin")
    acme = make_key(pg_dsn, "customer", "acme")
    globex = make_key(pg_dsn, "customer", "globex")
    job = subprocess.Popen([sys.executable, "-m", "tools", "run"], env=env,
                           stdout=job_log.open("w"), stderr=subprocess.STDOUT)
    settings = ApiSettings(
        bootstrap=bootstrap, redis=redis_url, pg=pg_dsn, redis_prefix=prefix,
        topic_prefix=topics.prefix, key_cache_s=0.0,
    )
    try:
        with LiveApi(settings) as api, sync_playwright() as pw:
            api.wait_ready()
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            live = Stack(api, topics, prefix, redis_url, bootstrap, admin, acme, globex,
                         browser, job_log, job, config)
            try:
                yield live
            finally:
                live.stop_scenario()
                browser.close()
    finally:
        stop_process(job)
        delete_prefixes(redis_url, prefix)


@pytest.fixture()
def errors() -> ConsoleErrors:
    return ConsoleErrors()
