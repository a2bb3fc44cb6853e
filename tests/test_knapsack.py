"""Knapsack solvers (exact multiple-choice DP, HALP augmented knapsack) against brute force (fast)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from halp_onnx.errors import HalpError
from halp_onnx.passes.knapsack import (KnapsackItem, KnapsackSolution, brute_force, min_cost, solve,
                                       solve_augmented, solve_exact)

TOL = 1e-9


def random_items(rng, groups=(2, 5), choices=(1, 6)) -> list[KnapsackItem]:
    """Monotone values (with ties), costs with flat steps and small negative deltas; width 0 sometimes."""
    items = []
    for g in range(int(rng.integers(groups[0], groups[1] + 1))):
        k = int(rng.integers(choices[0], choices[1] + 1))
        start = 0 if rng.random() < 0.3 else 8
        widths = start + 8 * np.arange(k)
        value = np.cumsum(np.where(rng.random(k) < 0.2, 0.0, rng.random(k)))
        step = rng.choice([0.0, 1.0, -0.05], size=k, p=[0.3, 0.55, 0.15]) * rng.uniform(0.1, 1.0, k)
        cost = rng.uniform(0.0, 0.5) + np.cumsum(step)
        items.append(KnapsackItem(10 * g + 1, widths, value, cost))
    return items


def dense_cost(items) -> float:
    return math.fsum(float(it.cost[-1]) for it in items)


def random_budget(rng, items) -> float:
    lo, hi = min_cost(items), max(dense_cost(items), min_cost(items))
    return lo + rng.uniform(0.0, 1.1) * (hi - lo)


def check_solution(items, sol: KnapsackSolution, budget: float):
    by_group = {it.group: it for it in items}
    assert set(sol.widths) == set(by_group)
    ks = {g: int(np.flatnonzero(by_group[g].widths == w)[0]) for g, w in sol.widths.items()}
    assert sol.value == pytest.approx(sum(by_group[g].value[k] for g, k in ks.items()), abs=TOL)
    assert sol.cost == pytest.approx(sum(by_group[g].cost[k] for g, k in ks.items()), abs=TOL)
    assert sol.cost <= budget + TOL
    assert sol.feasible
    assert sol.budget == budget
    assert sol.seconds >= 0


# ------------------------------------------------------------------ correctness vs brute force


def test_exact_matches_brute_force():
    rng = np.random.default_rng(0)
    bins = 2048
    exact_hits = 0
    for _ in range(300):
        items = random_items(rng)
        budget = random_budget(rng, items)
        sol = solve_exact(items, budget, bins=bins)
        check_solution(items, sol, budget)
        assert sol.solver == "exact"
        opt = brute_force(items, budget)
        assert sol.value <= opt.value + TOL
        step = (budget - min_cost(items)) / bins
        shrunk = budget - len(items) * step
        if shrunk >= min_cost(items):
            assert sol.value >= brute_force(items, shrunk).value - TOL
        exact_hits += sol.value >= opt.value - TOL
    assert exact_hits >= 290  # the greedy fill recovers nearly all of the rounding loss


def test_exact_is_optimal_on_flat_budget_grid():
    """Costs on a coarse grid and budgets on it: the fill makes the exact solver hit the optimum."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        items = [KnapsackItem(g, np.arange(1, k + 1), np.cumsum(rng.random(k)), rng.integers(0, 5, k).astype(float))
                 for g, k in enumerate(rng.integers(1, 5, size=int(rng.integers(2, 5))))]
        budget = float(rng.integers(int(min_cost(items)), int(dense_cost(items)) + 2))
        if budget < min_cost(items):
            continue
        assert solve_exact(items, budget, bins=64).value == pytest.approx(brute_force(items, budget).value)


def test_exact_at_least_augmented():
    rng = np.random.default_rng(2)
    for i in range(150):
        items = random_items(rng, groups=(2, 8), choices=(1, 12))
        budget = random_budget(rng, items)
        bins = int(rng.choice([64, 512, 4096]))
        ex = solve(items, budget, solver="exact", bins=bins)
        aug = solve(items, budget, solver="augmented", bins=bins)
        check_solution(items, ex, budget)
        check_solution(items, aug, budget)
        assert aug.solver == "augmented"
        assert ex.value >= aug.value - TOL
        if math.prod(it.widths.size for it in items) <= 100_000:
            assert aug.value <= brute_force(items, budget).value + TOL


def test_augmented_follows_prefixes_and_negative_deltas():
    # group 0: the second step lowers latency; group 1: a flat step then an expensive one
    items = [KnapsackItem(0, [8, 16, 24], [1.0, 2.0, 3.0], [1.0, 1.25, 1.2]),
             KnapsackItem(1, [8, 16, 24], [1.0, 1.5, 4.0], [1.0, 1.0, 2.0])]
    sol = solve_augmented(items, 2.3, bins=230)
    check_solution(items, sol, 2.3)
    assert sol.widths == {0: 24, 1: 16}
    assert sol.value == pytest.approx(brute_force(items, 2.3).value)
    # a step above the budget blocks the prefix (cells span the budget only); the exact DP skips it
    items[0] = KnapsackItem(0, [8, 16, 24], [1.0, 2.0, 3.0], [1.0, 1.5, 1.2])
    aug, ex = solve_augmented(items, 2.3, bins=230), solve_exact(items, 2.3, bins=230)
    check_solution(items, aug, 2.3)
    assert aug.widths == {0: 8, 1: 16} and ex.widths == {0: 24, 1: 16}


def test_augmented_is_greedy_one_solution_per_cell():
    """A cell keeping one solution may lose the optimum; the exact DP does not."""
    items = [KnapsackItem(0, [0, 1, 2], [0.0, 1.0, 1.1], [0.0, 1.0, 2.0]),
             KnapsackItem(1, [0, 1, 2], [0.0, 0.2, 5.0], [0.0, 1.0, 2.0])]
    ex, aug = solve_exact(items, 2.0, bins=2), solve_augmented(items, 2.0, bins=2)
    assert ex.widths == {0: 0, 1: 2} and ex.value == pytest.approx(5.0)
    assert aug.widths == {0: 1, 1: 1} and aug.value == pytest.approx(1.2)


def test_augmented_zero_importance_step_does_not_block():
    items = [KnapsackItem(0, [0, 8, 16, 24], [0.0, 1.0, 1.0, 3.0], [0.0, 1.0, 2.0, 3.0]),
             KnapsackItem(1, [8, 16], [1.0, 1.5], [1.0, 2.0])]
    sol = solve_augmented(items, 4.0, bins=40)
    assert sol.widths == {0: 24, 1: 8} and sol.value == pytest.approx(4.0)


def test_augmented_near_optimal_on_sorted_importances():
    """HALP's setting: channels ranked by importance, so value steps shrink (concave)."""
    rng = np.random.default_rng(5)
    ratios = []
    for _ in range(30):
        items = []
        for g in range(int(rng.integers(2, 5))):
            k = int(rng.integers(2, 7))
            items.append(KnapsackItem(g, 8 * np.arange(1, k + 1), np.cumsum(np.sort(rng.random(k))[::-1]),
                                      0.1 + np.cumsum(rng.uniform(0.0, 0.3, k))))
        budget = random_budget(rng, items)
        ratios.append(solve_augmented(items, budget, bins=4096).value / brute_force(items, budget).value)
    assert min(ratios) >= 0.8 and np.mean(ratios) >= 0.97


# ------------------------------------------------------------------ budgets


def test_infeasible_budget_names_smallest_latency():
    items = [KnapsackItem(0, [8, 16], [1.0, 2.0], [1.50, 2.0]), KnapsackItem(1, [0, 8], [0.0, 1.0], [2.02, 2.5])]
    assert min_cost(items) == pytest.approx(3.52)
    for solver in ("exact", "augmented"):
        with pytest.raises(HalpError) as err:
            solve(items, 3.10, solver=solver)
        assert err.value.stage == "knapsack"
        assert "3.52 ms" in str(err.value) and "3.10 ms" in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(HalpError, match="3.52"):
        brute_force(items, 3.1)
    with pytest.raises(HalpError, match=r"3\.519 ms .* 3\.520 ms"):  # close values get more decimals
        solve_exact(items, 3.519)


def test_budget_at_min_cost_takes_cheapest():
    items = [KnapsackItem(0, [8, 16, 24], [1.0, 2.0, 3.0], [1.0, 0.9, 1.3]), KnapsackItem(1, [0, 8], [0.0, 1.0], [0.0, 0.4])]
    budget = min_cost(items)
    for solver in ("exact", "augmented"):
        sol = solve(items, budget, solver=solver)
        check_solution(items, sol, budget)
        assert sol.widths == {0: 16, 1: 0}


@pytest.mark.parametrize("solver", ["exact", "augmented"])
def test_budget_above_dense_keeps_full_width(solver):
    rng = np.random.default_rng(3)
    for _ in range(20):
        items = random_items(rng)
        for budget in (dense_cost(items) + 1e-3, max(dense_cost(items), min_cost(items)) * 2 + 1, math.inf):
            sol = solve(items, budget, solver=solver)
            assert sol.widths == {it.group: int(it.widths[-1]) for it in items}
    items = [KnapsackItem(0, [8, 16], [1.0, 2.0], [1.0, 2.0]), KnapsackItem(1, [8, 16], [1.0, 2.0], [0.5, 0.75])]
    assert solve(items, 2.75, solver=solver).widths == {0: 16, 1: 16}  # exactly the dense cost


def test_single_choice_and_empty():
    items = [KnapsackItem(5, [64], [3.0], [0.7])]
    assert solve_exact(items, 0.7).widths == {5: 64}
    assert solve_augmented(items, 0.7).widths == {5: 64}
    sol = solve_exact([], 1.0)
    assert sol.widths == {} and sol.value == 0 and sol.cost == 0 and sol.feasible


def test_resnet50_sized_instance():
    rng = np.random.default_rng(4)
    items = []
    for g in range(60):
        k = int(rng.integers(8, 65))
        items.append(KnapsackItem(g, 8 * np.arange(1, k + 1), np.cumsum(np.sort(rng.random(k))[::-1]),
                                  np.cumsum(rng.uniform(0.0, 0.02, k))))
    budget = min_cost(items) + 0.5 * (dense_cost(items) - min_cost(items))
    ex, aug = solve_exact(items, budget), solve_augmented(items, budget)
    check_solution(items, ex, budget)
    check_solution(items, aug, budget)
    assert ex.value >= aug.value
    assert budget - ex.cost < 0.02  # the fill leaves less than one step unused


# ------------------------------------------------------------------ validation and serialisation


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=[8, 16], value=[1.0], cost=[1.0, 2.0]), "group 7: 2 widths but 1 values and 2 costs"),
    (dict(widths=[16, 8], value=[1.0, 2.0], cost=[1.0, 2.0]), "group 7: widths must be strictly ascending"),
    (dict(widths=[8, 8], value=[1.0, 2.0], cost=[1.0, 2.0]), "group 7: widths must be strictly ascending"),
    (dict(widths=[8, 16], value=[1.0, np.nan], cost=[1.0, 2.0]), "group 7: non-finite value"),
    (dict(widths=[8, 16], value=[1.0, 2.0], cost=[1.0, np.inf]), "group 7: non-finite cost"),
    (dict(widths=[], value=[], cost=[]), "group 7: widths must be a non-empty"),
    (dict(widths=[-8, 16], value=[1.0, 2.0], cost=[1.0, 2.0]), "group 7: negative width"),
    (dict(widths=[8.5, 16], value=[1.0, 2.0], cost=[1.0, 2.0]), "group 7: widths must be integers"),
])
def test_item_validation(kwargs, match):
    with pytest.raises(HalpError, match=match) as err:
        KnapsackItem(7, **kwargs)
    assert err.value.stage == "knapsack"


def test_group_id_must_be_int():
    with pytest.raises(HalpError, match="group id 'a' is not an integer"):
        KnapsackItem("a", [8], [1.0], [1.0])


def test_solver_validation():
    items = [KnapsackItem(0, [8, 16], [1.0, 2.0], [1.0, 2.0])]
    with pytest.raises(HalpError, match="solver 'greedy': expected one of exact, augmented"):
        solve(items, 3.0, solver="greedy")
    with pytest.raises(HalpError, match="group 0 appears more than once"):
        solve_exact(items + items, 5.0)
    with pytest.raises(HalpError, match="budget is NaN"):
        solve_exact(items, float("nan"))
    with pytest.raises(HalpError, match="bins must be a positive integer"):
        solve_exact(items, 1.5, bins=0)
    big = [KnapsackItem(g, np.arange(1, 11), np.arange(10.0), np.arange(10.0)) for g in range(7)]
    with pytest.raises(HalpError, match="10000000 combinations"):
        brute_force(big, 30.0)


def test_items_are_immutable_and_typed():
    it = KnapsackItem(np.int64(3), [0, 8], [0, 1], [0, 1])
    assert it.widths.dtype == np.int64 and it.value.dtype == np.float64 and it.cost.dtype == np.float64
    assert type(it.group) is int
    with pytest.raises(ValueError):
        it.widths[0] = 4
    assert json.loads(json.dumps(it.to_dict())) == {"group": 3, "widths": [0, 8], "value": [0.0, 1.0], "cost": [0.0, 1.0]}


def test_solution_to_dict_is_json():
    items = [KnapsackItem(np.int64(0), np.array([8, 16], dtype=np.int32), [1.0, 3.0], [1.0, 2.0]),
             KnapsackItem(1, [0, 8], [0.0, 1.0], [0.0, 0.5])]
    for solver in ("exact", "augmented"):
        d = solve(items, 2.2, solver=solver).to_dict()
        back = json.loads(json.dumps(d))
        assert back["widths"] == {"0": 16, "1": 0}
        assert back["solver"] == solver and back["feasible"] is True
        assert back["value"] == pytest.approx(3.0) and back["cost"] == pytest.approx(2.0)
        assert set(back) == {"widths", "value", "cost", "budget", "solver", "seconds", "feasible"}
