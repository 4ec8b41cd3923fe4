"""Scoring a replayed policy, the recorded fleet and an always-on fleet on the same windows.

A recommendation made on window W is the command in force during W+1 (the job decides
when W closes; docs/control-loop.md). Per device-window, with ``h`` its length in hours:

- policy: command on (mine/serve/offer, and every device's first window) -> an ASIC earns
  its expected net (last mining rate at this window's prices) and draws its expected power;
  a GPU earns its observed net (rented share at the spot rate) at its observed power.
  Command off (curtail/power_down) -> 0 USD, 0 W (standby draw left out).
- recorded: what the recorded fleet did, the observed net and mean power.
- always_on: every device on in every window (the policy rule with no off command).

Net USD = sum of net x h; energy MWh = sum of power x h / 1e6; switches = changes of the
on/off command per device, per device-day; minutes over cap = minutes of windows in which
a site's summed power exceeded its power cap (the caps of the recording, or the policy's).
"""

from __future__ import annotations

import polars as pl

__all__ = ["OFF_FRACTION", "score_always_on", "score_policy", "score_recorded"]

ON = ["mine", "serve", "offer"]
OFF_FRACTION = 0.05  # as flows/compliance.py: below 5 % of expected power is off


def _hours() -> pl.Expr:
    return (pl.col("window_end") - pl.col("window_start")) / 3_600_000.0


def _value(on: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    asic = pl.col("device_type") == "asic"
    net = pl.when(asic).then(pl.col("expected_net_usd_hr")).otherwise(pl.col("net_usd_hr"))
    power = pl.when(asic).then(pl.col("expected_power_w")).otherwise(pl.col("power_w"))
    return (
        pl.when(on).then(net.fill_null(0.0)).otherwise(0.0),
        pl.when(on).then(power.fill_null(0.0)).otherwise(0.0),
    )


def _summary(df: pl.DataFrame, caps: pl.DataFrame) -> dict[str, float]:
    """``df`` has device_id, site, window_start/end, on, value_hr, draw_w."""
    h = _hours()
    totals = df.select(
        (pl.col("value_hr") * h).sum().alias("net_usd"),
        (pl.col("draw_w") * h / 1e6).sum().alias("energy_mwh"),
        (h.sum() / 24.0).alias("device_days"),
    ).row(0, named=True)
    switches = (
        df.sort("device_id", "window_start")
        .select(
            (pl.col("on") != pl.col("on").shift(1).over("device_id")).fill_null(False).sum()
        )
        .item()
    )
    per_site = (
        df.group_by("site", "window_start", "window_end")
        .agg(pl.col("draw_w").sum().alias("draw_w"))
        .join(caps, on=["site", "window_start"], how="left")
    )
    over = per_site.filter(
        pl.col("power_cap_mw").is_not_null() & (pl.col("draw_w") > pl.col("power_cap_mw") * 1e6)
    )
    minutes = over.select(((pl.col("window_end") - pl.col("window_start")) / 60_000.0).sum())
    days = totals["device_days"] or 1.0
    return {
        "net_usd": float(totals["net_usd"] or 0.0),
        "energy_mwh": float(totals["energy_mwh"] or 0.0),
        "switches_per_device_day": float(switches) / days,
        "minutes_over_cap": float(minutes.item() or 0.0),
        "device_days": float(totals["device_days"] or 0.0),
    }


def site_caps(frame: pl.DataFrame) -> pl.DataFrame:
    """The power cap each site had in each window (from any run's recommendations)."""
    return frame.group_by("site", "window_start").agg(pl.col("power_cap_mw").max())


def score_policy(frame: pl.DataFrame) -> dict[str, float]:
    """A policy's run: the previous window's recommendation is the command in force."""
    df = frame.sort("device_id", "window_start").with_columns(
        pl.col("action").shift(1).over("device_id").is_in(ON).fill_null(True).alias("on")
    )
    value, draw = _value(pl.col("on"))
    df = df.with_columns(value.alias("value_hr"), draw.alias("draw_w"))
    return _summary(df, site_caps(frame))


def score_always_on(frame: pl.DataFrame, caps: pl.DataFrame) -> dict[str, float]:
    value, draw = _value(pl.lit(True))
    df = frame.with_columns(pl.lit(True).alias("on"), value.alias("value_hr"), draw.alias("draw_w"))
    return _summary(df, caps)


def score_recorded(frame: pl.DataFrame, caps: pl.DataFrame) -> dict[str, float]:
    df = frame.with_columns(
        (pl.col("power_w") > OFF_FRACTION * pl.col("expected_power_w")).fill_null(True).alias("on"),
        pl.col("net_usd_hr").fill_null(0.0).alias("value_hr"),
        pl.col("power_w").fill_null(0.0).alias("draw_w"),
    )
    return _summary(df, caps)
