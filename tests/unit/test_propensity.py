"""Marginal propensities: P(item at rank) under the serving policy, checked against exact enumeration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dql_model.config import ConfigError, ScoreConfig
from dql_model.scoring.policy import CatalogueRest, Policy, SlotCandidates, marginal_propensities
from dql_model.scoring.ranking import top_k_deterministic
from tests.unit.test_score import bias_only_model, item_features, many_users, score, softmax

torch.set_num_threads(1)


def exact_marginals(q: dict[int, float], slot_eps: list[float], temperature: float) -> np.ndarray:
    """[ranks, max item + 1] P(item at rank), enumerating every coin and every draw order.

    Slot r is greedy (the best item left, ties by item) with probability 1 - eps_r, else a draw
    from the softmax over the items left.
    """
    out = np.zeros((len(slot_eps), max(q) + 1))

    def walk(rank: int, left: tuple[int, ...], mass: float) -> None:
        if rank == len(slot_eps) or not left:
            return
        best = min(left, key=lambda i: (-q[i], i))
        p_draw = softmax(np.array([q[i] for i in left]), temperature)
        for item, p in zip(left, p_draw, strict=True):
            chance = slot_eps[rank] * p + (1.0 - slot_eps[rank]) * (item == best)
            if chance > 0:
                out[rank, item] += mass * chance
                walk(rank + 1, tuple(i for i in left if i != item), mass * chance)

    walk(0, tuple(sorted(q)), 1.0)
    return out


Q = [1.0, 0.4, 0.7, -0.2, 0.1]
"""Five items: with top_k 3 the greedy list holds three and the rest two, so replicates draw from both."""


@pytest.mark.parametrize(
    ("options", "temperature"),
    [
        ({"explore_slots": 2}, 0.8),
        ({"explore_epsilon": 0.3}, 0.8),
        ({"explore_slots": 1, "explore_epsilon": 0.3}, 2.0),
    ],
)
def test_marginals_match_exact_enumeration(options, temperature):
    policy = Policy(top_k=3, temperature=temperature, seed=3, **options)
    exact = exact_marginals(dict(enumerate(Q, start=1)), policy.slot_epsilon().tolist(), temperature)
    np.testing.assert_allclose(exact.sum(axis=1), 1.0)  # each rank holds exactly one item
    table = score(bias_only_model(Q), many_users(100), item_features(5), top_k=3, batch_size=16,
                  temperature=temperature, seed=3, propensity_draws=4000, **options)  # fmt: skip
    rows = table.to_pylist()
    got = np.array([r["propensity"] for r in rows])
    expected = np.array([exact[r["rank"] - 1, int(r["item_id"][1:])] for r in rows])
    # One estimate's standard deviation is at most ~0.007 here (4000 draws); their mean has no bias.
    np.testing.assert_allclose(got, expected, atol=0.03)
    assert abs(got - expected).mean() < 0.004
    assert abs((got - expected).mean()) < 0.001


def candidates_of(
    q: list[float], k: int, temperature: float, key: int = 11
) -> tuple[SlotCandidates, CatalogueRest]:
    """One user's candidates (its drawn list is not read by the replicates) and catalogue rest."""
    scores = torch.tensor([[float("-inf"), *q]])
    greedy, greedy_q = top_k_deterministic(scores, k)
    top = greedy_q[:, :1]
    rest = CatalogueRest.from_q(scores, greedy, top, temperature)
    greedy, greedy_q = greedy.numpy().astype(np.int64), greedy_q.numpy().astype(np.float64)
    c = SlotCandidates(
        users=np.zeros(1, dtype=np.int64),
        keys=np.array([key]),
        greedy=greedy,
        greedy_q=greedy_q,
        drawn=greedy,
        drawn_q=greedy_q,
        log_rest=np.zeros(1),
        top=top[:, 0].double().numpy(),
    )
    return c, rest


def test_replicate_estimates_over_all_items_of_a_rank_sum_to_one():
    # Every replicate's conditional probabilities over the items of a rank sum to 1, so do their means.
    policy = Policy(top_k=3, explore_epsilon=0.3, temperature=0.8, propensity_draws=50)
    c, rest = candidates_of(Q, 3, 0.8)
    n = len(Q)
    every = SlotCandidates(
        **{name: np.repeat(getattr(c, name), n, axis=0) for name in c.__dataclass_fields__}
    )
    items = np.repeat(np.arange(1, n + 1)[:, None], 3, axis=1)  # row j: item j at every rank
    q = np.array(Q, dtype=np.float32).astype(np.float64)[items - 1]  # as the model scores them
    rest_n = CatalogueRest(
        cumulative=np.repeat(rest.cumulative, n, axis=0), log_scale=np.repeat(rest.log_scale, n)
    )
    marginal = marginal_propensities(policy, every, rest_n, items, q)
    np.testing.assert_allclose(marginal[:, 1:].sum(axis=0), 1.0, rtol=1e-12)


@pytest.mark.parametrize("draws", [1, 7, 64])
def test_ranks_without_a_random_rank_above_are_exact_whatever_the_draws(draws):
    q = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])
    model, items, temperature = bias_only_model(q.tolist()), item_features(6), 0.7
    rows = score(model, many_users(40), items, top_k=4, explore_slots=2, temperature=temperature,
                 propensity_draws=draws, seed=5).to_pylist()  # fmt: skip
    assert {r["propensity"] for r in rows if r["rank"] <= 2} == {1.0}  # greedy ranks
    third = softmax(q[[1, 2, 3, 4]], temperature)  # after the greedy 6 and 1
    for r in (r for r in rows if r["rank"] == 3):
        assert r["propensity"] == pytest.approx(third[[2, 3, 4, 5].index(int(r["item_id"][1:]))], rel=1e-6)
    # with epsilon on every rank, rank 1 alone has nothing random above it
    rows = score(model, many_users(40), items, top_k=3, explore_epsilon=0.3, temperature=temperature,
                 propensity_draws=draws, seed=5).to_pylist()  # fmt: skip
    first = softmax(q, temperature)
    for r in (r for r in rows if r["rank"] == 1):
        item = int(r["item_id"][1:])
        assert r["propensity"] == pytest.approx(0.3 * first[item - 1] + 0.7 * (item == 6), rel=1e-6)


def test_marginals_are_seeded_and_independent_of_batches():
    model = bias_only_model([1.0, 1.2, 0.8, 1.1, 0.9, 1.05, 0.3, 0.6])
    states, items = many_users(120), item_features(8)
    run = lambda **kw: score(model, states, items, top_k=4, explore_epsilon=0.4, **({"seed": 1} | kw))  # noqa: E731
    first = run(batch_size=7)
    assert first.equals(run(batch_size=7))
    assert first.equals(run(batch_size=500))
    other = run(batch_size=7, propensity_draws=65)  # the same items, other estimates below rank 1
    assert first.column("item_id").equals(other.column("item_id"))
    ranks = np.array(first.column("rank"))
    changed = np.array(first.column("propensity")) != np.array(other.column("propensity"))
    assert not changed[ranks == 1].any() and changed[ranks > 1].any()


def test_propensity_draws_is_checked_and_carried_into_the_policy():
    with pytest.raises(ConfigError, match="score.propensity_draws=0 must be at least 1"):
        ScoreConfig(propensity_draws=0)
    with pytest.raises(ValueError, match="propensity_draws must be at least 1"):
        Policy(top_k=3, propensity_draws=0)
    assert Policy.from_config(ScoreConfig(propensity_draws=9), "2026-11-27").propensity_draws == 9
