"""The per-event logic of the benchmark baseline (``tools/bench/baseline/flow.py``).

This is what a user writing the profitability job without HCP would write: one
``json.loads`` and one validation per message, a per-device fold over each window's
samples, and per-device Python functions for the as-of price join, the economics and the
decisions of contract sections 2-3. The windowing, the price join, the economics and the
power cap are written independently of ``flows/``, so the benchmark can check that HCP and
the baseline decide the same; the mine/curtail switching rule and the revenue rate are the
job's own scalar functions (``flows/profitability/kernels.py``: one copy of each rule), called
once per device window. No polars on the hot path.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from dataclasses import dataclass, field

from flows import decode
from flows.profitability import kernels as k
from hcp.schemas import (
    ASIC_FIELDS,
    GPU_FIELDS,
    PRICE_FIELDS,
    SITE_SCOPED_KINDS,
    Field,
)

__all__ = [
    "BaselineConfig",
    "Gathered",
    "check_message",
    "decide",
    "fold_sample",
    "price_key",
]

FIELDS: dict[str, tuple[Field, ...]] = {
    "gpu": GPU_FIELDS,
    "asic": ASIC_FIELDS,
    "prices": PRICE_FIELDS,
}
DEFAULT_BLOCK_REWARD = 3.125
GPU_RENTED_POWER_W = 700.0  # H100 SXM board power, as HCP (docs/architecture.md)
S21_NOMINAL_THS = 200.0
S21_NOMINAL_W = 3500.0
_RUNNING = ("mine", "serve", "offer")
NAN = float("nan")


@dataclass(frozen=True)
class BaselineConfig:
    """The decision knobs, with HCP's defaults."""

    window_ms: int = 60_000
    pool_fee: float = 0.0
    hysteresis: float = 0.05
    dwell_ms: int = 600_000


# --- decoding and validation, one message at a time ------------------------------------


def check_message(kind: str, raw: bytes | None) -> tuple[dict | None, str | None]:
    """``(message, None)`` for a valid message of topic ``kind``, else ``(None, reason)``.

    The same strict rules as HCP's decoder applies to a batch it cannot vouch for.
    """
    obj, reason = decode.check_message(raw, FIELDS[kind])
    if reason is not None:
        return None, reason
    assert isinstance(obj, dict)
    for name in ("gpu_id", "asic_id", "site", "model"):
        if name in obj and not isinstance(obj[name], str):
            obj[name] = json.dumps(obj[name])  # numbers given for strings: their JSON text
    return obj, None


def price_key(msg: dict) -> str:
    """``kind`` or ``kind:scope`` (site for site-scoped kinds, model for the GPU spot rate)."""
    kind = msg["kind"]
    if kind in SITE_SCOPED_KINDS:
        return f"{kind}:{msg['site']}"
    if kind == "gpu_spot_usd_hr":
        return f"{kind}:{msg['model']}"
    return kind


# --- the per-device window fold -----------------------------------------------------------

# GPU state: [count, util, power, temp, busy, last_state, site, model]
# ASIC state: [count, hash, power, temp, acc, rej, hw, mcount, mhash, mpower, site, model,
#              last_state]


def fold_sample(state: list | None, item: tuple[str, dict]) -> list:
    """Add one sample to its device's window sums, in arrival order."""
    kind, m = item
    if kind == "gpu":
        if state is None:
            state = [0.0, 0.0, 0.0, 0.0, 0.0, "", m["site"], m["model"]]
        state[0] += 1.0
        state[1] += m["util_pct"]
        state[2] += m["power_w"]
        state[3] += m["temp_c"]
        if m["state"] == "busy":
            state[4] += 1.0
        state[5] = m["state"]
        return state
    if state is None:
        state = [0.0] * 10 + [m["site"], m["model"], ""]
    h, p = m["hashrate_ths"], m["power_w"]
    state[0] += 1.0
    state[1] += h
    state[2] += p
    state[3] += m["temp_c"]
    state[4] += m["shares_accepted"]
    state[5] += m["shares_rejected"]
    state[6] += m["hw_errors"]
    if m["state"] == "mining":
        state[7] += 1.0
        state[8] += h
        state[9] += p
    state[12] = m["state"]
    return state


# --- everything gathered: prices and closed windows -------------------------------------


@dataclass
class Gathered:
    """Every price event and every closed device window, collected until end of input."""

    prices: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    # window start -> [(kind, device_id, sums)]
    windows: dict[int, list[tuple[str, str, list]]] = field(default_factory=dict)

    def add(self, item: tuple) -> Gathered:
        if item[0] == "price":
            _, key, ts, value = item
            self.prices.setdefault(key, []).append((ts, value))
        else:
            _, start, kind, device, sums = item
            self.windows.setdefault(start, []).append((kind, device, sums))
        return self


class _Prices:
    """As-of lookups: the latest value with ``ts < end``; equal times keep arrival order."""

    def __init__(self, prices: dict[str, list[tuple[int, float]]]) -> None:
        self._ts: dict[str, list[int]] = {}
        self._v: dict[str, list[float]] = {}
        for key, events in prices.items():
            ordered = sorted(events, key=lambda e: e[0])  # stable: arrival order on ties
            self._ts[key] = [t for t, _ in ordered]
            self._v[key] = [v for _, v in ordered]

    def as_of(self, key: str, end: int, default: float = NAN) -> float:
        times = self._ts.get(key)
        if not times:
            return default
        at = bisect_left(times, end) - 1
        return self._v[key][at] if at >= 0 else default


def _score(revenue: float, cost: float) -> float:
    if math.isnan(revenue) or math.isnan(cost):
        return NAN
    if revenue > 0:
        return (revenue - cost) / revenue * 100.0
    return -100.0 if cost > 0 else 0.0


@dataclass
class _Asic:
    action: str = "mine"
    last_switch: int = -1
    exp_hash: float = S21_NOMINAL_THS
    exp_power: float = S21_NOMINAL_W


def _asic_rec(st: _Asic, sums: list, prices: _Prices, end: int, cfg: BaselineConfig) -> dict:
    count = sums[0]
    mean_hash, mean_power = sums[1] / count, sums[2] / count
    if sums[7] > 0 and sums[7] == count:
        mining_hash, mining_power = sums[8] / sums[7], sums[9] / sums[7]
        if not math.isnan(mining_hash) and mining_hash > 0:
            st.exp_hash, st.exp_power = mining_hash, mining_power
    site = sums[10]
    btc = prices.as_of("btc_usd", end)
    difficulty = prices.as_of("difficulty", end)
    reward = prices.as_of("block_reward_btc", end, DEFAULT_BLOCK_REWARD)
    elec = prices.as_of(f"electricity_usd_mwh:{site}", end)
    usd_per_th_hr = k.usd_per_th_hour(btc, difficulty, reward, cfg.pool_fee)
    revenue = mean_hash * usd_per_th_hr
    cost = mean_power / 1e6 * elec
    e_rev = st.exp_hash * usd_per_th_hr
    e_cost = st.exp_power / 1e6 * elec
    e_net = e_rev - e_cost
    if sums[12] == "fault":
        # As the job: curtailed, and its mine/curtail state is kept for when it recovers.
        action, reason = "curtail", "device_fault"
    else:
        # The switching rule is the job's own (one copy); the baseline differs in how it
        # gets here.
        code, why, st.last_switch = k.asic_switch(
            k.ACTIONS.index(st.action), st.last_switch, e_net, e_rev, cfg.hysteresis,
            cfg.dwell_ms, end,
        )
        st.action = action = k.ACTIONS[code]
        reason = k.REASONS[why]
    return {
        "device_type": "asic", "site": site, "model": sums[11],
        "action": action, "reason": reason,
        "revenue_usd_hr": revenue, "cost_usd_hr": cost, "net_usd_hr": revenue - cost,
        "score": _score(revenue, cost),
        "expected_revenue_usd_hr": e_rev, "expected_cost_usd_hr": e_cost,
        "expected_net_usd_hr": e_net, "expected_power_w": st.exp_power,
        "btc_usd": btc, "difficulty": difficulty, "block_reward_btc": reward,
        "electricity_usd_mwh": elec, "gpu_spot_usd_hr": NAN,
        "power_cap_mw": prices.as_of(f"power_cap_mw:{site}", end),
    }


def _gpu_rec(sums: list, prices: _Prices, end: int) -> dict:
    count = sums[0]
    busy, power = sums[4] / count, sums[2] / count
    site, model = sums[6], sums[7]
    spot = prices.as_of(f"gpu_spot_usd_hr:{model}", end)
    elec = prices.as_of(f"electricity_usd_mwh:{site}", end)
    revenue = spot * busy
    cost = power / 1e6 * elec
    e_cost = GPU_RENTED_POWER_W / 1e6 * elec
    e_net = spot - e_cost
    last = sums[5]
    if last == "down":
        action, reason = "power_down", "device_down"
    elif last == "busy":
        action, reason = "serve", "running_workload"
    elif math.isnan(e_net):
        action, reason = "offer", "no_price"
    elif e_net > 0:
        action, reason = "offer", "profitable"
    else:
        action, reason = "power_down", "unprofitable"
    return {
        "device_type": "gpu", "site": site, "model": model,
        "action": action, "reason": reason,
        "revenue_usd_hr": revenue, "cost_usd_hr": cost, "net_usd_hr": revenue - cost,
        "score": _score(revenue, cost),
        "expected_revenue_usd_hr": spot, "expected_cost_usd_hr": e_cost,
        "expected_net_usd_hr": e_net, "expected_power_w": GPU_RENTED_POWER_W,
        "btc_usd": NAN, "difficulty": NAN, "block_reward_btc": NAN,
        "electricity_usd_mwh": elec, "gpu_spot_usd_hr": spot,
        "power_cap_mw": prices.as_of(f"power_cap_mw:{site}", end),
    }


def _rank_key(rec: dict) -> tuple:
    # Best expected net per kWh first, ties by device id; a device without a net (no
    # price) ranks first, as a null does in HCP's sort.
    net, kw = rec["expected_net_usd_hr"], rec["expected_power_w"] / 1000.0
    if math.isnan(net):
        return (0, 0.0, rec["device_id"])
    per_kwh = net / kw if kw > 0 else math.inf
    return (1, -per_kwh, rec["device_id"])


def _apply_power_caps(recs: list[dict]) -> None:
    """Stop what a site's cap has no room for: best net per kWh kept first (SPEC 3)."""
    by_site: dict[str, list[dict]] = {}
    for rec in recs:
        by_site.setdefault(rec["site"], []).append(rec)
    for items in by_site.values():
        used, full = 0.0, False
        for rec in sorted(items, key=_rank_key):
            if rec["action"] not in _RUNNING or math.isnan(rec["power_cap_mw"]):
                continue
            net, power = rec["expected_net_usd_hr"], rec["expected_power_w"]
            if not full and net > 0 and used + power <= rec["power_cap_mw"] * 1e6:
                used += power
            else:
                full = True
                rec["action"] = "curtail" if rec["device_type"] == "asic" else "power_down"
                rec["reason"] = "power_cap"


def decide(gathered: Gathered, cfg: BaselineConfig) -> list[dict]:
    """Every device window's recommendation, windows in order (the ASIC state carries over)."""
    prices = _Prices(gathered.prices)
    asics: dict[str, _Asic] = {}
    out: list[dict] = []
    for start in sorted(gathered.windows):
        end = start + cfg.window_ms
        recs = []
        for kind, device, sums in gathered.windows[start]:
            if kind == "asic":
                rec = _asic_rec(asics.setdefault(device, _Asic()), sums, prices, end, cfg)
            else:
                rec = _gpu_rec(sums, prices, end)
            rec["device_id"] = device
            rec["window_start"] = start
            rec["window_end"] = end
            recs.append(rec)
        _apply_power_caps(recs)
        out.extend(recs)
    for rec in out:
        for name, v in rec.items():
            if isinstance(v, float) and math.isnan(v):
                rec[name] = None
    return out
