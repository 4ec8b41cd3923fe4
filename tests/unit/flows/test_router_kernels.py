"""The router's Numba kernels against plain-Python references on seeded random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flows.router.kernels import (
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


@pytest.mark.parametrize("seed", range(10))
def test_assign_greedy_matches_sequential_reference(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    free, mem_free, temp, spot, site, elec = random_fleet(rng, 50, 4)
    score = gpu_scores(spot, elec, temp, 0.7)
    rank = np.arange(len(free), dtype=np.int64)
    order = gpu_order(score, rank)
    gpus, mem, maxp = random_workloads(rng, 30)
    block = rng.random(30) < (0.1 if seed % 2 else 0.0)
    # Some workloads avoid a few GPUs (ones that never started them before).
    avoid = [sorted(rng.choice(50, int(rng.integers(0, 6)), replace=False).tolist())
             if rng.random() < 0.3 else [] for _ in range(30)]
    avoid_ptr = np.cumsum([0, *map(len, avoid)]).astype(np.int64)
    avoid_gpu = np.array([g for a in avoid for g in a], dtype=np.int64)
    start, out = assign_greedy(gpus, mem, maxp, order, free.copy(), mem_free, temp, spot, site,
                               score, 4, TEMP_MAX, block, avoid_ptr, avoid_gpu)
    ref_free = free.copy()
    used: set[int] = set()
    stopped = False
    for w in range(len(gpus)):
        if stopped:
            assert start[w] == -1
            continue
        own_free = ref_free.copy()
        own_free[avoid[w]] = False
        expected = ref_pick(int(gpus[w]), mem[w], maxp[w], own_free, mem_free, temp, spot, site,
                            score, rank)
        if expected is None:
            assert start[w] == -1
            stopped = bool(block[w])
            continue
        got = out[start[w] : start[w] + gpus[w]].tolist()
        assert got == expected
        assert not used & set(got)  # no GPU given twice
        used |= set(got)
        ref_free[got] = False


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
