"""Plain-Python twins of flows/profitability/kernels.py, written from the contract directly."""

from __future__ import annotations

import math

ACTIONS = ("mine", "curtail", "serve", "offer", "power_down")


def late_flags(ts: list[int], running_max: int, lateness: int) -> tuple[list[bool], int]:
    out = []
    for t in ts:
        late = t < running_max - lateness
        out.append(late)
        if not late:
            running_max = max(running_max, t)
    return out, running_max


def score(revenue: float, cost: float) -> float:
    if math.isnan(revenue) or math.isnan(cost):
        return math.nan
    if revenue > 0:
        return (revenue - cost) / revenue * 100
    return -100.0 if cost > 0 else 0.0


def asic_revenue(
    hashrate_ths: float, btc: float, difficulty: float, reward: float, fee: float
) -> float:
    return hashrate_ths * 1e12 * 3600 * reward / (difficulty * 2**32) * btc * (1 - fee)


def asic_step(
    state: dict,
    mean_hash: float,
    mean_power: float,
    mining_hash: float,
    mining_power: float,
    elec: float,
    btc: float,
    difficulty: float,
    reward: float,
    fee: float,
    hysteresis: float,
    dwell: int,
    window_end: int,
    stale: bool = False,
) -> tuple[str, str, dict]:
    """One window of one ASIC: returns action, reason and the figures."""
    if not math.isnan(mining_hash) and mining_hash > 0:
        state["exp_hash"], state["exp_power"] = mining_hash, mining_power
    revenue = asic_revenue(mean_hash, btc, difficulty, reward, fee)
    cost = mean_power / 1e6 * elec
    e_rev = asic_revenue(state["exp_hash"], btc, difficulty, reward, fee)
    e_net = e_rev - state["exp_power"] / 1e6 * elec
    figures = {
        "revenue": revenue,
        "cost": cost,
        "net": revenue - cost,
        "score": score(revenue, cost),
        "e_net": e_net,
    }
    cur = state["action"]
    if math.isnan(e_net):
        return cur, "no_price", figures
    if stale:  # a feed is down: keep the last action, never switch on an old price
        return cur, "stale_price", figures
    margin = hysteresis * e_rev
    want = cur
    if cur == "mine" and e_net < -margin:
        want = "curtail"
    elif cur == "curtail" and e_net > margin:
        want = "mine"
    if want != cur:
        if state["last_switch"] < 0 or window_end - state["last_switch"] >= dwell:
            state["action"], state["last_switch"] = want, window_end
            return want, ("profitable" if want == "mine" else "unprofitable"), figures
        return cur, "hysteresis_hold", figures
    if cur == "mine" and e_net >= 0:
        return cur, "profitable", figures
    if cur == "curtail" and e_net <= 0:
        return cur, "unprofitable", figures
    return cur, "hysteresis_hold", figures


def gpu_step(
    busy_fraction: float,
    mean_power: float,
    last_state: str,
    spot: float,
    elec: float,
    rented_w: float,
    stale: bool = False,
) -> tuple[str, str, float, float]:
    revenue = spot * busy_fraction
    cost = mean_power / 1e6 * elec
    e_net = spot - rented_w / 1e6 * elec
    if last_state == "down":
        return "power_down", "device_down", revenue, cost
    if last_state == "busy":
        return "serve", "running_workload", revenue, cost
    if math.isnan(e_net):
        return "offer", "no_price", revenue, cost
    if stale:
        return "offer", "stale_price", revenue, cost
    if e_net > 0:
        return "offer", "profitable", revenue, cost
    return "power_down", "unprofitable", revenue, cost


def power_cap(devices: list[dict]) -> set[str]:
    """Ids kept running. Each device: id, site, cap_w (None = no cap), running, power, net."""
    kept: set[str] = set()
    by_site: dict[str, list[dict]] = {}
    for d in devices:
        by_site.setdefault(d["site"], []).append(d)
    for items in by_site.values():

        def rank(d: dict) -> float:
            kw = d["power"] / 1000
            return d["net"] / kw if kw > 0 else math.inf

        items = sorted(items, key=lambda d: (-rank(d), d["id"]))
        used = 0.0
        full = False
        for d in items:
            if not d["running"]:
                continue
            if d["cap_w"] is None:
                kept.add(d["id"])
                continue
            if not full and d["net"] > 0 and used + d["power"] <= d["cap_w"]:
                used += d["power"]
                kept.add(d["id"])
            else:
                full = True
    return kept
