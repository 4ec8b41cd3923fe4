"""The one event-time progress rule (flows/progress.py) shared by shards and the router."""

from __future__ import annotations

import numpy as np

from flows.progress import NEG_INF, POS_INF, Progress
from flows.router.clock import RouterClock
from flows.router.router import Router

L = 5_000


def ts(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_the_slowest_live_input_holds_and_late_events_are_marked() -> None:
    p = Progress.create(L, ("a", "b"))
    assert p.watermark() == NEG_INF  # b has not reported
    p.observe("a", ts(100_000))
    late = p.observe("b", ts(50_000, 60_000, 56_000, 40_000))
    assert late.tolist() == [False, False, False, True]  # 20 s behind b's own maximum
    assert p.watermark() == 60_000 - L
    p.observe("b", None, eof=True)  # an ended input no longer counts
    assert p.watermark() == 100_000 - L
    p.observe("a", None, eof=True)
    assert p.watermark() == POS_INF


def test_an_idle_input_stops_holding_and_all_idle_trusts_the_furthest() -> None:
    p = Progress.create(L, ("a", "b", "empty"))
    p.observe("a", ts(100_000))
    p.observe("b", ts(80_000))
    assert p.watermark() == NEG_INF  # the empty partition holds until it is idle
    p.observe("empty", None, idle=True)
    assert p.watermark() == 80_000 - L
    p.observe("b", None, idle=True)
    assert p.watermark() == 100_000 - L
    p.observe("a", None, idle=True)  # every input idle: nothing is on its way
    assert p.watermark() == 100_000 - L and p.paused


def test_after_a_pause_the_first_input_back_does_not_release_the_others() -> None:
    p = Progress.create(L, ("a", "b", "empty"), idle_timeout_s=5.0)
    p.observe("a", ts(100_000), now=0.0)
    p.observe("b", ts(100_000), now=0.0)
    for i in ("a", "b", "empty"):
        p.observe(i, None, idle=True, now=40.0)
    assert p.paused and p.watermark() == 100_000 - L
    # a resumes and runs minutes ahead; b went quiet with the pause and holds again. The
    # empty input was idle before the pause (it never delivered) and does not.
    p.observe("a", ts(110_000, 400_000), now=50.0)
    assert p.watermark() == 100_000 - L
    p.observe("b", None, idle=True, now=51.0)  # a heartbeat from before b's data came
    assert p.watermark() == 100_000 - L
    late = p.observe("b", ts(110_000, 200_000), now=52.0)  # b's in-order data: not late
    assert not late.any()
    assert p.watermark() == 200_000 - L
    p.observe("b", None, idle=True, now=60.0)  # idle again while a is live: stops holding
    assert p.watermark() == 400_000 - L


def test_a_held_input_that_stays_silent_is_let_go_the_idle_timeout_after_the_resume() -> None:
    p = Progress.create(L, ("a", "b"), idle_timeout_s=5.0)
    p.observe("a", ts(100_000), now=0.0)
    p.observe("b", ts(90_000), now=0.0)
    for i in ("a", "b"):
        p.observe(i, None, idle=True, now=40.0)
    p.observe("a", ts(400_000), now=50.0)
    p.observe("b", None, idle=True, now=54.9)
    assert p.watermark() == 90_000 - L
    p.observe("b", None, idle=True, now=55.0)
    assert p.watermark() == 400_000 - L


def test_a_held_input_is_let_go_at_any_input_report_past_the_timeout() -> None:
    # b's own heartbeats come a fraction of the timeout apart; the report of another input
    # after the timeout lets b go without waiting for b's next one.
    p = Progress.create(L, ("a", "b", "c"), idle_timeout_s=5.0)
    for i in ("a", "b", "c"):
        p.observe(i, ts(100_000), now=0.0)
    for i in ("a", "b", "c"):
        p.observe(i, None, idle=True, now=40.0)
    p.observe("a", ts(400_000), now=50.0)
    p.observe("c", ts(300_000), now=50.1)
    p.observe("b", None, idle=True, now=54.0)
    assert p.watermark() == 100_000 - L  # b holds: the timeout has not passed
    p.observe("c", None, idle=False, now=55.0)  # c's report; b said nothing since 54.0
    assert p.watermark() == 300_000 - L


def test_at_the_start_every_input_holds_until_it_reports() -> None:
    p = Progress.create(L, ("a", "b"), idle_timeout_s=5.0)
    p.observe("a", None, idle=True, now=1.0)
    p.observe("b", None, idle=True, now=1.0)
    assert p.paused
    p.observe("a", ts(100_000), now=2.0)
    assert p.watermark() == NEG_INF  # b's producer may be a fetch behind a's


def test_an_input_idle_long_before_a_pause_does_not_hold_after_it() -> None:
    # A fleet that reports in per-second bursts pauses every second: a price partition
    # that got its last price a minute ago must not hold every resume for the timeout.
    p = Progress.create(L, ("gpu", "prices"), idle_timeout_s=0.5)
    p.observe("prices", ts(60_000), now=0.0)
    p.observe("prices", None, idle=True, now=0.6)
    for second in range(61, 70):
        p.observe("gpu", ts(second * 1000), now=float(second))
        assert p.watermark() == second * 1000 - L
        p.observe("gpu", None, idle=True, now=second + 0.6)
        assert p.paused


def test_a_resume_without_a_pause_changes_nothing() -> None:
    p = Progress.create(L, ("a", "b"), idle_timeout_s=5.0)
    p.observe("a", ts(100_000), now=0.0)
    p.observe("b", ts(10_000), now=0.0)
    p.observe("b", None, idle=True, now=40.0)  # b idle while a is live: no pause
    p.observe("a", ts(200_000), now=41.0)
    assert not p.paused and p.watermark() == 200_000 - L


def test_the_router_clock_uses_the_same_progress() -> None:
    clock = RouterClock.create(Router(), ("gpu#0", "req#0"), idle_timeout_s=3.0)
    assert clock.progress.lateness_ms == int(clock.router.config.lateness_ms)
    assert clock.progress.idle_timeout_s == 3.0
    assert clock.watermark() == clock.progress.watermark() == NEG_INF
