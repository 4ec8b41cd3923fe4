"""The router's Numba kernels against plain-Python references on seeded random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flows.router.kernels import (
    NEVER,
    TEMP_WEIGHT,
    assign_greedy,
    gpu_order,
    gpu_scores,
    pick_gpus,
    score_matrix,
)

TEMP_MAX = 85.0


def ref_feasible(g, need_mem, max_price, free, mem_free, temp, spot):
    if not free[g] or need_mem > mem_free[g] or not temp[g] < TEMP_MAX:
        return False
    return math.isnan(max_price) or (not math.isnan(spot[g]) and spot[g] <= max_price)


def ref_score(spot, elec, temp, power_kw):
    s = 0.0 if math.isnan(spot) else spot
    e = 0.0 if math.isnan(elec) else elec
    return s - power_kw * e / 1000.0 - TEMP_WEIGHT * temp


def ref_pick(k, need_mem, max_price, free, mem_free, temp, spot, site, score, rank):
    """Brute force: per site, the k best feasible GPUs by (score desc, rank); best site sum."""
    feas = [g for g in range(len(free))
            if ref_feasible(g, need_mem, max_price, free, mem_free, temp, spot)]
    feas.sort(key=lambda g: (-score[g], rank[g]))
    best = None
    for s in sorted(set(site.tolist())):
        chosen = [g for g in feas if site[g] == s][:k]
        if len(chosen) < k:
            continue
        key = (-sum(score[g] for g in chosen), feas.index(chosen[0]))
        if best is None or key < best[0]:
            best = (key, chosen)
    return None if best is None else best[1]


def random_fleet(rng, n_gpus, n_sites):
    free = rng.random(n_gpus) < 0.7
    mem_total = rng.choice([40.0, 80.0, 141.0], n_gpus)
    mem_free = mem_total - rng.choice([0.0, 10.0, 50.0], n_gpus)
    temp = rng.uniform(30, 95, n_gpus).round(0)  # rounding makes score ties happen
    models = rng.integers(0, 3, n_gpus)
    spot_by_model = np.array([2.0, 2.5, np.nan])
    spot = spot_by_model[models]
    site = rng.integers(0, n_sites, n_gpus).astype(np.int64)
    elec_by_site = rng.choice([30.0, 60.0, np.nan], n_sites)
    elec = elec_by_site[site]
    return free, mem_free, temp, spot, site, elec


def random_workloads(rng, n):
    gpus = rng.choice([1, 1, 1, 2, 3, 4], n).astype(np.int64)
    mem = rng.choice([5.0, 20.0, 60.0, 100.0], n)
    maxp = np.where(rng.random(n) < 0.5, np.nan, rng.choice([1.5, 2.2, 3.0], n))
    return gpus, mem, maxp


@pytest.mark.parametrize("seed", range(25))
def test_score_matrix_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    free, mem_free, temp, spot, _site, elec = random_fleet(rng, 40, 3)
    gpus, mem, maxp = random_workloads(rng, 15)
    score = gpu_scores(spot, elec, temp, 0.7)
    for g in range(len(free)):
        assert score[g] == pytest.approx(ref_score(spot[g], elec[g], temp[g], 0.7))
    mat = score_matrix(mem, maxp, free, mem_free, temp, spot, score, TEMP_MAX)
    for w in range(len(gpus)):
        for g in range(len(free)):
            ok = ref_feasible(g, mem[w], maxp[w], free, mem_free, temp, spot)
            assert mat[w, g] == (score[g] if ok else -np.inf)


@pytest.mark.parametrize("seed", range(25))
def test_pick_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    free, mem_free, temp, spot, site, elec = random_fleet(rng, 30, 3)
    score = gpu_scores(spot, elec, temp, 0.7)
    rank = rng.permutation(len(free)).astype(np.int64)
    order = gpu_order(score, rank)
    gpus, mem, maxp = random_workloads(rng, 20)
    out = np.empty(8, dtype=np.int64)
    for w in range(len(gpus)):
        k = int(gpus[w])
        ok = pick_gpus(k, mem[w], maxp[w], order, free, mem_free, temp, spot, site, score,
                       3, TEMP_MAX, out)
        expected = ref_pick(k, mem[w], maxp[w], free, mem_free, temp, spot, site, score, rank)
        if expected is None:
            assert not ok
        else:
            assert ok
            assert out[:k].tolist() == expected
            assert len({int(site[g]) for g in out[:k]}) == 1  # one site per job


NOW = 1_000_000


def ref_reserve(k, need_mem, max_price, avail, mem_cap, spot, site, order_pos, taken, avoid):
    """Brute force: the site whose k-th eligible GPU frees up first; (start, GPUs) or None."""
    elig = [g for g in range(len(avail))
            if avail[g] != NEVER and g not in taken and g not in avoid
            and need_mem <= mem_cap[g]
            and (math.isnan(max_price) or (not math.isnan(spot[g]) and spot[g] <= max_price))]
    elig.sort(key=lambda g: (avail[g], order_pos[g]))
    best = None
    for s in sorted(set(site.tolist())):
        chosen = [g for g in elig if site[g] == s][:k]
        if len(chosen) == k:
            key = (elig.index(chosen[-1]),)
            if best is None or key < best[0]:
                best = (key, chosen)
    if best is None:
        return None
    chosen = best[1]
    return max(NOW, int(avail[chosen[-1]])), chosen


@pytest.mark.parametrize("max_res", [0, 3])
@pytest.mark.parametrize("seed", range(10))
def test_assign_greedy_matches_sequential_reference(seed: int, max_res: int) -> None:
    check_against_reference(seed, max_res)


def test_the_seeds_exercise_reservations() -> None:
    reserved = [check_against_reference(seed, 3) for seed in range(10)]
    assert sum(n > 0 for n in reserved) >= 8


def check_against_reference(seed: int, max_res: int) -> int:
    """Kernel vs the sequential reference on one seeded case; returns the reservations."""
    rng = np.random.default_rng(200 + seed)
    free, mem_free, temp, spot, site, elec = random_fleet(rng, 50, 4)
    score = gpu_scores(spot, elec, temp, 0.7)
    rank = np.arange(len(free), dtype=np.int64)
    order = gpu_order(score, rank)
    order_pos = np.empty(50, dtype=np.int64)
    order_pos[order] = np.arange(50)
    gpus, mem, maxp = random_workloads(rng, 30)
    dur = rng.choice([60, 600, 3600], 30).astype(np.int64) * 1000
    mem_cap = np.maximum(mem_free, rng.choice([40.0, 80.0, 141.0], 50))
    # Busy GPUs free up at seeded times; a few never (down).
    avail = np.where(free, NOW, NOW + rng.choice([30, 300, 900, 2400], 50) * 1000)
    avail[rng.random(50) < 0.1] = NEVER
    avail = avail.astype(np.int64)
    by_avail = np.lexsort((order_pos, avail)).astype(np.int64)
    block = rng.random(30) < (0.1 if seed % 2 else 0.0)
    # Some workloads avoid a few GPUs (ones that never started them before).
    avoid = [sorted(rng.choice(50, int(rng.integers(0, 6)), replace=False).tolist())
             if rng.random() < 0.3 else [] for _ in range(30)]
    avoid_ptr = np.cumsum([0, *map(len, avoid)]).astype(np.int64)
    avoid_gpu = np.array([g for a in avoid for g in a], dtype=np.int64)
    start, out, res_start, res_pos, res_gpus = assign_greedy(
        gpus, mem, maxp, order, free.copy(), mem_free, temp, spot, site, score, 4, TEMP_MAX,
        block, avoid_ptr, avoid_gpu, dur, avail, by_avail, mem_cap, NOW, max_res)
    ref_free = free.copy()
    reserved: dict[int, int] = {}  # GPU -> start of the reservation holding it
    used: set[int] = set()
    stopped = False
    n_res = 0
    for w in range(len(gpus)):
        if stopped:
            assert start[w] == -1 and res_start[w] == -1
            continue
        own_free = ref_free.copy()
        own_free[avoid[w]] = False
        for g, t in reserved.items():
            if NOW + dur[w] > t:
                own_free[g] = False  # would not end before the reservation starts
        expected = ref_pick(int(gpus[w]), mem[w], maxp[w], own_free, mem_free, temp, spot, site,
                            score, rank)
        if expected is not None:
            got = out[start[w] : start[w] + gpus[w]].tolist()
            assert got == expected
            assert not used & set(got)  # no GPU given twice
            used |= set(got)
            ref_free[got] = False
            assert res_start[w] == -1
            continue
        assert start[w] == -1
        res = None
        if n_res < max_res:
            res = ref_reserve(int(gpus[w]), mem[w], maxp[w], avail, mem_cap, spot, site,
                              order_pos, reserved, avoid[w])
        if res is None:
            assert res_start[w] == -1
        else:
            t, chosen = res
            assert res_start[w] == t
            p = res_pos[w]
            assert sorted(res_gpus[p : p + gpus[w]].tolist()) == sorted(chosen)
            reserved.update(dict.fromkeys(chosen, t))
            n_res += 1
        stopped = bool(block[w])
    assert n_res == int((res_start >= 0).sum())
    return n_res


def test_backfill_may_use_a_reserved_gpu_only_if_it_ends_first() -> None:
    # One site, 3 GPUs: two free now, one busy for 10 minutes. A 3-GPU job waits for it and
    # reserves all three from +600 s; a 1-GPU job of 5 minutes may use a free one, one of
    # an hour may not.
    free = np.array([True, True, False])
    mem = np.full(3, 80.0)
    temp = np.full(3, 50.0)
    spot = np.full(3, 2.0)
    site = np.zeros(3, dtype=np.int64)
    score = gpu_scores(spot, np.full(3, 50.0), temp, 0.7)
    order = gpu_order(score, np.arange(3, dtype=np.int64))
    avail = np.array([NOW, NOW, NOW + 600_000], dtype=np.int64)
    by_avail = np.lexsort((np.arange(3), avail)).astype(np.int64)
    need = np.array([3, 1, 1], dtype=np.int64)
    dur = np.array([3600, 3600, 300], dtype=np.int64) * 1000
    no = np.zeros(3, dtype=np.bool_)
    ptr = np.zeros(4, dtype=np.int64)
    start, _, res_start, _, _ = assign_greedy(
        need, np.full(3, 10.0), np.full(3, np.nan), order, free.copy(), mem, temp, spot,
        site, score, 1, TEMP_MAX, no, ptr, np.empty(0, np.int64), dur, avail, by_avail, mem,
        NOW, 8)
    assert res_start.tolist() == [NOW + 600_000, -1, -1]
    assert start[1] == -1  # an hour: it would delay the head
    assert start[2] >= 0  # five minutes: it ends before the reservation starts
    # Without reservations the hour-long job takes a GPU the head needs.
    start0, *_ = assign_greedy(
        need, np.full(3, 10.0), np.full(3, np.nan), order, free.copy(), mem, temp, spot,
        site, score, 1, TEMP_MAX, no, ptr, np.empty(0, np.int64), dur, avail, by_avail, mem,
        NOW, 0)
    assert start0[1] >= 0


def test_cheaper_power_wins_at_equal_gpu_price() -> None:
    spot = np.array([2.0, 2.0])
    elec = np.array([80.0, 40.0])  # GPU 1's site has cheaper power
    temp = np.array([50.0, 50.0])
    score = gpu_scores(spot, elec, temp, 0.7)
    order = gpu_order(score, np.array([0, 1], dtype=np.int64))
    out = np.empty(1, dtype=np.int64)
    assert pick_gpus(1, 10.0, np.nan, order, np.array([True, True]), np.array([80.0, 80.0]),
                     temp, spot, np.array([0, 1], dtype=np.int64), score, 2, TEMP_MAX, out)
    assert out[0] == 1
