"""zoo.deal.ddmin against synthetic oracles: a hidden required set is found exactly, results are
1-minimal (checked by brute force over single removals), order is kept, the oracle is memoised and
called far fewer than 2^n times, the budget and the precondition."""

from __future__ import annotations

import itertools
import random

import pytest

from zoo.core.errors import ConfigError
from zoo.deal.ddmin import DDMinResult, ddmin


class Oracle:
    """Counts calls and records every subset asked about."""

    def __init__(self, passes) -> None:
        self.passes, self.calls = passes, []

    def __call__(self, subset: list) -> bool:
        self.calls.append(list(subset))
        return bool(self.passes(set(subset)))


def assert_one_minimal(result: DDMinResult, items: list, passes) -> None:
    assert passes(set(result.minimal))
    assert result.minimal == [x for x in items if x in set(result.minimal)], "input order kept"
    for x in result.minimal:
        assert not passes(set(result.minimal) - {x}), f"removing {x!r} still passes"


@pytest.mark.parametrize("required", [{3}, {0, 7}, {2, 3, 4}, {1, 5, 8, 9, 13}, set(range(16))])
def test_hidden_required_set_is_found_exactly(required):
    items = list(range(16))
    oracle = Oracle(lambda s: required <= s)
    result = ddmin(items, oracle)
    assert result.minimal == sorted(required)
    assert result.complete
    assert result.tests == len(oracle.calls) == len(result.history)
    assert [sorted(s) for s, _ in result.history] == [sorted(c) for c in oracle.calls]
    assert all(outcome == (required <= set(s)) for s, outcome in result.history)
    assert len({tuple(sorted(c)) for c in oracle.calls}) == len(oracle.calls), "no subset tested twice"
    assert result.tests < 2 ** 16 / 100


def test_any_two_of_three():
    items = ["x", "a", "y", "b", "z", "c", "w"]
    passes = lambda s: len(s & {"a", "b", "c"}) >= 2  # noqa: E731
    result = ddmin(items, Oracle(passes))
    assert len(result.minimal) == 2 and set(result.minimal) <= {"a", "b", "c"}
    assert_one_minimal(result, items, passes)


def test_items_need_not_be_hashable_and_keep_order():
    items = [[i] for i in range(10)]
    result = ddmin(items, lambda s: [6] in s and [2] in s)
    assert result.minimal == [[2], [6]]


@pytest.mark.parametrize("seed", range(12))
def test_monotone_random_oracles_give_one_minimal_sets(seed):
    """An upward-closed oracle: a set passes iff it contains one of a few random 'cores'."""
    rng = random.Random(seed)
    n = rng.randint(12, 16)
    items = [f"site{i}" for i in range(n)]
    cores = [set(rng.sample(items, rng.randint(1, 4))) for _ in range(rng.randint(1, 4))]
    passes = lambda s: any(core <= s for core in cores)  # noqa: E731
    oracle = Oracle(passes)
    result = ddmin(items, oracle)
    assert_one_minimal(result, items, passes)
    assert any(core <= set(result.minimal) for core in cores)
    assert result.tests == len(oracle.calls) <= n * n, "O(n^2) at worst"
    assert result.tests < 2 ** n / 20


@pytest.mark.parametrize("seed", range(6))
def test_non_monotone_oracle_still_one_minimal(seed):
    """ddmin promises 1-minimality for any oracle: here a random (cached) truth table."""
    rng = random.Random(100 + seed)
    items = list(range(12))
    table: dict[frozenset, bool] = {frozenset(items): True}
    passes = lambda s: table.setdefault(frozenset(s), rng.random() < 0.5)  # noqa: E731
    result = ddmin(items, passes)
    assert_one_minimal(result, items, passes)


def test_small_and_edge_cases():
    assert ddmin([], lambda s: True).minimal == []
    assert ddmin(["a"], lambda s: s == ["a"]).minimal == ["a"]
    result = ddmin(["a", "b", "c"], lambda s: True)
    assert result.minimal == [], "the empty set passes: nothing is needed"
    # brute force agrees on every monotone oracle over 4 items (each minimal set is a smallest one here)
    items = list(range(4))
    for core in itertools.chain.from_iterable(itertools.combinations(items, k) for k in range(1, 5)):
        assert ddmin(items, lambda s: set(core) <= set(s)).minimal == list(core)


def test_budget_stops_early_with_a_passing_set():
    items = list(range(16))
    required = {1, 5, 8, 9, 13}
    oracle = Oracle(lambda s: required <= s)
    result = ddmin(items, oracle, max_tests=5)
    assert not result.complete and result.tests == 5 == len(oracle.calls)
    assert required <= set(result.minimal)
    with pytest.raises(ConfigError, match="max_tests"):
        ddmin(items, oracle, max_tests=0)


def test_precondition():
    with pytest.raises(ConfigError, match="test\\(items\\) to be True for all 3 items"):
        ddmin([1, 2, 3], lambda s: False)
