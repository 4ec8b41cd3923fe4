"""Stage one of the profitability flow: event-time windows and decisions for one shard.

A shard owns the devices of one Kafka partition number of the telemetry topics, and sees
every price. Its state is numpy arrays indexed by dense device ids; each batch is folded
in with Numba kernels, and a window closes when the shard's watermark, the slowest of its
inputs, passes the window's end (SPEC section 2).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from bytewax.operators import StatefulBatchLogic

from flows import metrics
from flows.profitability import kernels as k
from flows.profitability.prices import DEFAULT_BLOCK_REWARD, PriceBook, price_rows
from flows.profitability.registry import DeviceRegistry
from flows.progress import NEG_INF, POS_INF, Progress
from flows.source import SourceBatch
from hcp.schemas import ASIC_STATES, GPU_STATES
from hcp.shutdown import Shutdown

__all__ = ["NEG_INF", "POS_INF", "ShardConfig", "ShardLogic", "ShardState"]

log = logging.getLogger(__name__)

# What an H100 SXM draws when rented: its board power. Used for the expected profit of
# an idle GPU, which has no busy samples of its own to go by.
GPU_RENTED_POWER_W = 700.0
S21_NOMINAL_THS = 200.0
S21_NOMINAL_W = 3500.0


@dataclass(frozen=True)
class ShardConfig:
    window_ms: int
    lateness_ms: int
    pool_fee: float
    hysteresis: float
    dwell_ms: int
    flush_on_eof: bool
    # Input ids ("topic#partition") whose progress bounds this shard's watermark.
    inputs: tuple[str, ...]
    # Oldest a fast-moving price (electricity, BTC, GPU spot) may be at a window's end
    # before the decision falls back to the stale-price rule; 0 turns the rule off.
    max_price_age_ms: int = 0
    # The source's --idle-timeout-s: how long an input idle through a pause holds the
    # watermark after the pause ends (flows/progress.py).
    idle_timeout_s: float = 0.0
    # Every shard sees every price: only one of them counts late prices in the metric.
    counts_late_prices: bool = True


@dataclass
class ShardState:
    """Everything a shard keeps; pickled whole for Bytewax recovery snapshots."""

    shard: str
    # Per-input event-time progress (flows/progress.py); made from the config on adoption.
    progress: Progress | None = None
    gpus: DeviceRegistry = field(default_factory=DeviceRegistry)
    asics: DeviceRegistry = field(default_factory=DeviceRegistry)
    gpu_windows: dict[int, np.ndarray] = field(default_factory=dict)
    asic_windows: dict[int, np.ndarray] = field(default_factory=dict)
    # ASIC decision state, by dense id.
    asic_action: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    asic_last_switch: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    asic_exp_hash: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    asic_exp_power: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    prices: PriceBook = field(default_factory=PriceBook)
    closed_until: int = NEG_INF
    emitted_wm: int = NEG_INF


def _grow(acc: np.ndarray, n: int) -> np.ndarray:
    if acc.shape[1] >= n:
        return acc
    grown = np.zeros((acc.shape[0], max(n, acc.shape[1] * 2)), dtype=acc.dtype)
    grown[:, : acc.shape[1]] = acc
    return grown


class ShardLogic(StatefulBatchLogic[tuple, tuple, bytes]):
    """Folds ``(shard, batch)`` items into windows.

    Emits ``("win", shard, start, df)`` per closed window and ``("wm", shard, W)`` when
    the shard's closed-window boundary moves. Bytewax 0.21 builds stateful logic without
    its key, so each item carries its shard and a fresh logic learns it from the first.
    """

    def __init__(
        self,
        make_config: Callable[[str], ShardConfig],
        state: ShardState | None,
        shutdown: Shutdown | None = None,
    ) -> None:
        self._make_config = make_config
        self._shutdown = shutdown or Shutdown()
        self.s: ShardState | None = None
        if state is not None:
            self._adopt(state)

    def _adopt(self, state: ShardState) -> None:
        self.s = state
        self.cfg = self._make_config(state.shard)
        if state.progress is None:
            state.progress = Progress.create(
                self.cfg.lateness_ms, self.cfg.inputs, self.cfg.idle_timeout_s
            )
        for input_id in self.cfg.inputs:
            state.progress.expect(input_id)

    # --- Bytewax hooks ---------------------------------------------------------------

    def on_batch(self, values: list[tuple]) -> tuple[list[tuple], bool]:
        for shard, batch in values:
            if self.s is None:
                self._adopt(ShardState(shard))
            self._fold(batch)
        out = self._close_ready(self.s.progress.watermark())
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple], bool]:
        # A SIGTERM ends the input early: closing every window then would emit partial
        # windows and snapshot a state that counts all later input as late. Asked here, not
        # when the logic was built, because the signal can come at any time in between.
        if self.s is None or not self.cfg.flush_on_eof or self._shutdown.requested:
            return [], StatefulBatchLogic.RETAIN
        return self._close_ready(POS_INF), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.s, protocol=pickle.HIGHEST_PROTOCOL)

    # --- folding -----------------------------------------------------------------------

    def _fold(self, batch: SourceBatch) -> None:
        rows = batch.rows
        progress = self.s.progress
        if rows.height == 0:
            progress.observe(batch.input_id, None, batch.eof, batch.idle)
            return
        started = time.perf_counter()
        ts = rows["ts"].to_numpy()
        late = progress.observe(batch.input_id, ts, batch.eof, batch.idle)
        # Windows already closed (possible only after an idle input resumed) are late too.
        late |= ts < self.s.closed_until
        n_late = int(late.sum())
        if n_late and (batch.kind != "prices" or self.cfg.counts_late_prices):
            metrics.LATE_EVENTS.labels(batch.kind).inc(n_late)
        if n_late:
            rows = rows.filter(pl.Series(~late))
            ts = ts[~late]
        if rows.height:
            if batch.kind == "gpu":
                self._fold_gpu(rows, ts)
            elif batch.kind == "asic":
                self._fold_asic(rows, ts)
            elif batch.kind == "prices":
                self.s.prices.add(price_rows(rows))
        metrics.BATCH_SECONDS.labels(batch.kind).observe(time.perf_counter() - started)

    def _window_groups(self, ts: np.ndarray) -> list[tuple[int, np.ndarray]]:
        starts = ts // self.cfg.window_ms * self.cfg.window_ms
        first = starts[0]
        if starts[-1] == first and (starts == first).all():
            return [(int(first), np.ones(ts.shape[0], dtype=np.bool_))]
        return [(int(w), starts == w) for w in np.unique(starts)]

    def _fold_gpu(self, rows: pl.DataFrame, ts: np.ndarray) -> None:
        reg = self.s.gpus
        dev = reg.lookup(rows["gpu_id"], rows["site"], rows["model"])
        state = (
            rows["state"]
            .replace_strict({s: i for i, s in enumerate(GPU_STATES)}, return_dtype=pl.Int8)
            .to_numpy()
        )
        cols = [rows[c].to_numpy() for c in ("util_pct", "power_w", "temp_c")]
        for start, mask in self._window_groups(ts):
            acc = self.s.gpu_windows.get(start)
            acc = _grow(acc if acc is not None else np.zeros((k.GPU_FIELDS_N, 0)), len(reg))
            self.s.gpu_windows[start] = acc
            k.accumulate_gpu(
                acc, dev[mask], cols[0][mask], cols[1][mask], cols[2][mask], state[mask]
            )

    def _fold_asic(self, rows: pl.DataFrame, ts: np.ndarray) -> None:
        reg = self.s.asics
        dev = reg.lookup(rows["asic_id"], rows["site"], rows["model"])
        n = len(reg)
        if self.s.asic_action.shape[0] < n:
            grow = n - self.s.asic_action.shape[0]
            self.s.asic_action = np.concatenate([self.s.asic_action, np.zeros(grow, np.int8)])
            self.s.asic_last_switch = np.concatenate(
                [self.s.asic_last_switch, np.full(grow, -1, np.int64)]
            )
            self.s.asic_exp_hash = np.concatenate(
                [self.s.asic_exp_hash, np.full(grow, S21_NOMINAL_THS)]
            )
            self.s.asic_exp_power = np.concatenate(
                [self.s.asic_exp_power, np.full(grow, S21_NOMINAL_W)]
            )
        state = (
            rows["state"]
            .replace_strict({s: i for i, s in enumerate(ASIC_STATES)}, return_dtype=pl.Int8)
            .to_numpy()
        )
        names = (
            "hashrate_ths",
            "power_w",
            "temp_c",
            "shares_accepted",
            "shares_rejected",
            "hw_errors",
        )
        cols = [rows[c].cast(pl.Float64).to_numpy() for c in names]
        for start, mask in self._window_groups(ts):
            acc = self.s.asic_windows.get(start)
            acc = _grow(acc if acc is not None else np.zeros((k.ASIC_FIELDS_N, 0)), n)
            self.s.asic_windows[start] = acc
            k.accumulate_asic(acc, dev[mask], *(c[mask] for c in cols), state[mask])

    # --- closing -------------------------------------------------------------------------

    def _close_ready(self, watermark: int) -> list[tuple]:
        out: list[tuple] = []
        w = self.cfg.window_ms
        starts = sorted(set(self.s.gpu_windows) | set(self.s.asic_windows))
        for start in starts:
            if start + w > watermark:
                break
            frames = []
            gacc = self.s.gpu_windows.pop(start, None)
            if gacc is not None:
                frames.append(self._close_gpu(start, gacc))
            aacc = self.s.asic_windows.pop(start, None)
            if aacc is not None:
                frames.append(self._close_asic(start, aacc))
            frames = [f for f in frames if f.height]
            if frames:
                out.append(("win", self.s.shard, start, pl.concat(frames, how="diagonal_relaxed")))
            self.s.closed_until = max(self.s.closed_until, start + w)
        closed = POS_INF if watermark >= POS_INF else max(self.s.closed_until, watermark // w * w)
        if closed > self.s.emitted_wm:
            self.s.emitted_wm = closed
            # Windows up to the watermark are closed even if this shard had no data in them.
            self.s.closed_until = max(self.s.closed_until, closed)
            self.s.prices.prune(self.s.closed_until)
            out.append(("wm", self.s.shard, closed))
        return out

    def _site_prices(self, reg: DeviceRegistry, kind: str, end: int) -> np.ndarray:
        table = np.array(
            [self.s.prices.as_of(f"{kind}:{name}", end, np.nan) for name in reg.site_names],
            dtype=np.float64,
        )
        return table[reg.site] if table.size else np.zeros(0)

    def _stale(self, reg: DeviceRegistry, keys: list[str], site_kind: str | None, end: int,
               idx: np.ndarray, model_kind: str | None = None) -> np.ndarray:
        """Which devices ``idx`` need a price older than the allowed age at ``end``.

        ``keys`` are global price keys; ``site_kind`` / ``model_kind`` add the device's
        site- or model-scoped price. A price never seen is ``no_price``, not stale.
        """
        n = idx.shape[0]
        limit = self.cfg.max_price_age_ms
        if limit <= 0 or n == 0:
            return np.zeros(n, np.bool_)
        book = self.s.prices

        def too_old(key: str) -> bool:
            age = book.age_ms(key, end)
            return age != float("inf") and age > limit

        stale = np.full(n, any(too_old(key) for key in keys), np.bool_)
        if site_kind is not None:
            by_site = np.array([too_old(f"{site_kind}:{s}") for s in reg.site_names], np.bool_)
            stale |= by_site[reg.site[idx]]
        if model_kind is not None:
            by_model = np.array([too_old(f"{model_kind}:{m}") for m in reg.model_names], np.bool_)
            stale |= by_model[reg.model[idx]]
        return stale

    def _common_columns(
        self, reg: DeviceRegistry, idx: np.ndarray, kind: str, start: int, count: np.ndarray
    ) -> dict[str, pl.Series]:
        n = idx.shape[0]
        end = start + self.cfg.window_ms
        return {
            "device_id": reg.device_ids.gather(idx),
            "device_type": pl.Series([kind] * n, dtype=pl.String)
            if n
            else pl.Series([], dtype=pl.String),
            "site": pl.Series(reg.site_names, dtype=pl.String).gather(reg.site[idx]),
            "model": pl.Series(reg.model_names, dtype=pl.String).gather(reg.model[idx]),
            "window_start": pl.Series(np.full(n, start, np.int64)),
            "window_end": pl.Series(np.full(n, end, np.int64)),
            "samples": pl.Series(count.astype(np.int64)),
        }

    def _close_gpu(self, start: int, acc: np.ndarray) -> pl.DataFrame:
        reg = self.s.gpus
        end = start + self.cfg.window_ms
        idx = np.nonzero(acc[k.G_COUNT, : len(reg)] > 0)[0]
        count = acc[k.G_COUNT, idx]
        elec = self._site_prices(reg, "electricity_usd_mwh", end)[idx]
        cap = self._site_prices(reg, "power_cap_mw", end)[idx]
        spot_table = np.array(
            [self.s.prices.as_of(f"gpu_spot_usd_hr:{m}", end, np.nan) for m in reg.model_names]
        )
        spot = spot_table[reg.model[idx]]
        busy = acc[k.G_BUSY, idx] / count
        power = acc[k.G_POWER, idx] / count
        out = np.zeros((8, idx.shape[0]))
        action = np.zeros(idx.shape[0], np.int8)
        reason = np.zeros(idx.shape[0], np.int8)
        stale = self._stale(reg, [], "electricity_usd_mwh", end, idx, "gpu_spot_usd_hr")
        k.gpu_decisions(
            busy,
            power,
            acc[k.G_LAST_STATE, idx].astype(np.int8),
            spot,
            elec,
            stale,
            GPU_RENTED_POWER_W,
            out,
            action,
            reason,
        )
        metrics.WINDOWS_CLOSED.labels("gpu").inc(idx.shape[0])
        _count_stale("gpu", reason)
        cols = self._common_columns(reg, idx, "gpu", start, count)
        cols |= {
            "util_pct": pl.Series(acc[k.G_UTIL, idx] / count),
            "power_w": pl.Series(power),
            "temp_c": pl.Series(acc[k.G_TEMP, idx] / count),
            "busy_fraction": pl.Series(busy),
        }
        cols |= _decision_columns(out, action, reason)
        cols |= {
            "electricity_usd_mwh": pl.Series(elec, nan_to_null=True),
            "gpu_spot_usd_hr": pl.Series(spot, nan_to_null=True),
            "power_cap_mw": pl.Series(cap, nan_to_null=True),
        }
        return pl.DataFrame(cols)

    def _close_asic(self, start: int, acc: np.ndarray) -> pl.DataFrame:
        reg = self.s.asics
        end = start + self.cfg.window_ms
        idx = np.nonzero(acc[k.A_COUNT, : len(reg)] > 0)[0]
        count = acc[k.A_COUNT, idx]
        elec = self._site_prices(reg, "electricity_usd_mwh", end)[idx]
        cap = self._site_prices(reg, "power_cap_mw", end)[idx]
        book = self.s.prices
        btc = book.as_of("btc_usd", end, np.nan)
        difficulty = book.as_of("difficulty", end, np.nan)
        reward = book.as_of("block_reward_btc", end, DEFAULT_BLOCK_REWARD)
        mean_hash = acc[k.A_HASH, idx] / count
        mean_power = acc[k.A_POWER, idx] / count
        mcount = acc[k.A_MCOUNT, idx]
        # Only a window mined from end to end teaches what the miner draws when mining: a
        # miner ramping down to sleep still reports some hashrate, and learning its 500 W
        # would let the power cap wake it into a budget it does not fit.
        whole = (mcount > 0) & (mcount == count)
        with np.errstate(invalid="ignore", divide="ignore"):
            mining_hash = np.where(whole, acc[k.A_MHASH, idx] / mcount, np.nan)
            mining_power = np.where(whole, acc[k.A_MPOWER, idx] / mcount, np.nan)
        out = np.zeros((8, idx.shape[0]))
        action = np.zeros(idx.shape[0], np.int8)
        reason = np.zeros(idx.shape[0], np.int8)
        # The kernel updates decision state in place, so hand it contiguous copies and
        # scatter them back.
        st_action = self.s.asic_action[idx]
        st_switch = self.s.asic_last_switch[idx]
        st_hash = self.s.asic_exp_hash[idx]
        st_power = self.s.asic_exp_power[idx]
        # Difficulty moves every two weeks on chain, so only the fast feeds can go stale.
        stale = self._stale(reg, ["btc_usd"], "electricity_usd_mwh", end, idx)
        k.asic_decisions(
            mean_hash,
            mean_power,
            mining_hash,
            mining_power,
            acc[k.A_LAST_STATE, idx].astype(np.int8),
            elec,
            stale,
            btc,
            difficulty,
            reward,
            self.cfg.pool_fee,
            self.cfg.hysteresis,
            self.cfg.dwell_ms,
            end,
            st_action,
            st_switch,
            st_hash,
            st_power,
            out,
            action,
            reason,
        )
        self.s.asic_action[idx] = st_action
        self.s.asic_last_switch[idx] = st_switch
        self.s.asic_exp_hash[idx] = st_hash
        self.s.asic_exp_power[idx] = st_power
        metrics.WINDOWS_CLOSED.labels("asic").inc(idx.shape[0])
        _count_stale("asic", reason)
        accepted = acc[k.A_ACC, idx]
        rejected = acc[k.A_REJ, idx]
        shares = accepted + rejected
        with np.errstate(invalid="ignore", divide="ignore"):
            j_per_th = np.where(mean_hash > 0, mean_power / mean_hash, np.nan)
            reject_rate = np.where(shares > 0, rejected / shares, np.nan)
        n = idx.shape[0]
        cols = self._common_columns(reg, idx, "asic", start, count)
        cols |= {
            "power_w": pl.Series(mean_power),
            "temp_c": pl.Series(acc[k.A_TEMP, idx] / count),
            "hashrate_ths": pl.Series(mean_hash),
            "shares_accepted": pl.Series(accepted.astype(np.int64)),
            "shares_rejected": pl.Series(rejected.astype(np.int64)),
            "hw_errors": pl.Series(acc[k.A_HW, idx].astype(np.int64)),
            "j_per_th": pl.Series(j_per_th, nan_to_null=True),
            "reject_rate": pl.Series(reject_rate, nan_to_null=True),
        }
        cols |= _decision_columns(out, action, reason)
        cols |= {
            "btc_usd": pl.Series(np.full(n, btc), nan_to_null=True),
            "difficulty": pl.Series(np.full(n, difficulty), nan_to_null=True),
            "block_reward_btc": pl.Series(np.full(n, reward), nan_to_null=True),
            "electricity_usd_mwh": pl.Series(elec, nan_to_null=True),
            "power_cap_mw": pl.Series(cap, nan_to_null=True),
        }
        return pl.DataFrame(cols)


def _count_stale(device_type: str, reason: np.ndarray) -> None:
    n = int((reason == k.STALE_PRICE).sum())
    if n:
        metrics.STALE_PRICE_DECISIONS.labels(device_type).inc(n)


_ACTIONS = pl.Series(k.ACTIONS, dtype=pl.String)
_REASONS = pl.Series(k.REASONS, dtype=pl.String)


def _decision_columns(
    out: np.ndarray, action: np.ndarray, reason: np.ndarray
) -> dict[str, pl.Series]:
    names = (
        "revenue_usd_hr",
        "cost_usd_hr",
        "net_usd_hr",
        "score",
        "expected_revenue_usd_hr",
        "expected_cost_usd_hr",
        "expected_net_usd_hr",
        "expected_power_w",
    )
    cols = {name: pl.Series(out[i], nan_to_null=True) for i, name in enumerate(names)}
    cols["action"] = _ACTIONS.gather(action.astype(np.int64))
    cols["reason"] = _REASONS.gather(reason.astype(np.int64))
    return cols
